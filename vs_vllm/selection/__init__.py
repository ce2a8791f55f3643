"""VisionSelector and baseline token selection in plain PyTorch; imports nothing from vLLM or transformers."""
