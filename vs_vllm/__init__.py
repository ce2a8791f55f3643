"""vs-vllm: VisionSelector learned visual-token compression for vLLM.

The public API is resolved lazily so that ``import vs_vllm`` (which vLLM does in every process through the plugin
entry point) stays cheap and never initialises a device.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "TransformerScorer": "vs_vllm.selection.scorer",
    "importance_scores": "vs_vllm.selection.scorer",
    "keep_count": "vs_vllm.selection.budget",
    "validate_ratio": "vs_vllm.selection.budget",
    "select_topk": "vs_vllm.selection.topk",
    "soft_topk": "vs_vllm.selection.soft_topk",
    "get_method": "vs_vllm.selection.methods",
    "list_methods": "vs_vllm.selection.methods",
    "load_scorer": "vs_vllm.selection.checkpoint",
    "save_scorer": "vs_vllm.selection.checkpoint",
}

__all__ = [
    "TransformerScorer",
    "__version__",
    "get_method",
    "importance_scores",
    "keep_count",
    "list_methods",
    "load_scorer",
    "save_scorer",
    "select_topk",
    "soft_topk",
    "validate_ratio",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vs_vllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from vs_vllm.selection.budget import keep_count, validate_ratio
    from vs_vllm.selection.checkpoint import load_scorer, save_scorer
    from vs_vllm.selection.methods import get_method, list_methods
    from vs_vllm.selection.scorer import TransformerScorer, importance_scores
    from vs_vllm.selection.soft_topk import soft_topk
    from vs_vllm.selection.topk import select_topk
