"""Reference inference for a transformers Qwen2.5-VL with visual-token selection: the generic Qwen-VL reference
(:mod:`vs_vllm.hf.qwen_vl`), re-exported under its historical import path."""

from __future__ import annotations

from vs_vllm.hf.qwen_vl import PrunedPrompt, QwenVLSelector

__all__ = ["PrunedPrompt", "QwenVLSelector"]
