"""Reference inference for a transformers Qwen2-VL with visual-token selection.

transformers' ``Qwen2VLModel`` has the same interface as Qwen2.5-VL's where the reference touches it
(``get_image_features`` returns the per-image merger outputs as ``pooler_output``; ``visual``, ``language_model``,
``lm_head``; image M-RoPE with the same (t, h, w) layout), so this is the generic :mod:`vs_vllm.hf.qwen_vl` class.
The two differ for videos (Qwen2-VL's temporal positions step by 1 per frame group, not by seconds-per-grid *
tokens-per-second), which the reference does not prune.
"""

from __future__ import annotations

from vs_vllm.hf.qwen_vl import PrunedPrompt, QwenVLSelector

__all__ = ["PrunedPrompt", "QwenVLSelector"]
