"""Per-request visual-token counts, from the processor (which knows K_i and N_i) to the HTTP layer (which answers).

The HTTP middleware opens a :func:`collecting` scope around each request; the multimodal processor, running inside
that request's context in the same API-server process, calls :func:`record_visual_tokens` once per image and once per
video. Outside a scope (offline ``LLM``, the start-up warm-up and profiling) nothing is recorded, so /metrics counts
client requests only.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["VisualTokenStats", "collecting", "current_stats", "record_visual_tokens"]


@dataclass
class VisualTokenStats:
    kept: int = 0
    total: int = 0
    images: int = 0
    videos: int = 0

    @property
    def items(self) -> int:
        return self.images + self.videos


_CURRENT: contextvars.ContextVar[VisualTokenStats | None] = contextvars.ContextVar("vs_vllm_stats", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[VisualTokenStats]:
    stats = VisualTokenStats()
    token = _CURRENT.set(stats)
    try:
        yield stats
    finally:
        _CURRENT.reset(token)


def current_stats() -> VisualTokenStats | None:
    return _CURRENT.get()


def record_visual_tokens(kept: int, total: int, modality: str = "image") -> None:
    """Called by the processor for each image or video it sizes: ``kept`` visual tokens out of ``total``."""
    if modality not in ("image", "video"):
        raise ValueError(f"modality {modality!r}: expected 'image' or 'video'")
    stats = _CURRENT.get()
    if stats is None:
        return
    stats.kept += kept
    stats.total += total
    if modality == "image":
        stats.images += 1
    else:
        stats.videos += 1
    try:
        from vs_vllm.vllm_plugin.metrics import observe_visual_tokens
    except ImportError:  # metrics are optional (prometheus_client ships with vLLM)
        return
    observe_visual_tokens(kept, total, modality)
