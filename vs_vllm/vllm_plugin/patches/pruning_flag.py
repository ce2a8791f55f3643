"""Patch: switch vLLM's multimodal-pruning hook on for one model's config instance.

What: ``MultiModalConfig.is_multimodal_pruning_enabled`` (vllm/config/multimodal.py), shadowed by an instance
attribute on *this model's* config object only — never the class, never other models.
Why: vLLM gates its pruning hook (the runners' call of ``recompute_mrope_positions``, MRv2's
``maybe_create_mm_pruner``) on that method, which knows only video pruning (``video_pruning_rate > 0``).
Versions: vLLM 0.32.x, 0.33.x and 0.34.x (method unchanged), both runners: V1 reads it for its runner flag, MRv2's
``maybe_create_mm_pruner`` (GPU, and 0.34's CPU copy) reads it to create its pruner.
"""

from __future__ import annotations

from typing import Any

__all__ = ["enable_pruning_for"]


def enable_pruning_for(model_config: Any) -> None:
    """Turn on vLLM's multimodal-pruning hook for this model's config instance (this process only)."""
    mm_config = getattr(model_config, "multimodal_config", None)
    if mm_config is None:
        raise RuntimeError("vs-vllm needs a multimodal model config; this model has none")
    object.__setattr__(mm_config, "is_multimodal_pruning_enabled", _always_true)


def _always_true() -> bool:
    return True
