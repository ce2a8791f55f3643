"""transformers integration: reference inference with pruning (the oracle for the vLLM plugin)."""
