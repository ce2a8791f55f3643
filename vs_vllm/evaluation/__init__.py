"""``vs-vllm eval``: accuracy of any OpenAI-compatible VLM server over a sweep of retention ratios and methods.

- :mod:`vs_vllm.evaluation.metrics`: exact match, yes/no accuracy, ANLS, relative-to-unpruned scores;
- :mod:`vs_vllm.evaluation.data`: JSONL loading and validation (eval records or LLaVA conversations);
- :mod:`vs_vllm.evaluation.runner`: the asynchronous request sweep against a running server;
- :mod:`vs_vllm.evaluation.report`: aggregation and the CSV, markdown, PNG and predictions files.
"""

from vs_vllm.evaluation.errors import EvalError

__all__ = ["EvalError"]
