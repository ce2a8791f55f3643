"""Prometheus counters for visual-token pruning, exported on vLLM's ``/metrics`` next to the ``vllm:`` series.

    vs_vllm:visual_tokens_kept_total    visual tokens kept (placeholders emitted) over all images and videos
    vs_vllm:visual_tokens_total         visual tokens the unpruned model would have used for the same media
    vs_vllm:images_total                images sized by the processor
    vs_vllm:images_pruned_total         images that lost at least one token (kept < total)
    vs_vllm:videos_total                videos sized by the processor
    vs_vllm:videos_pruned_total         videos that lost at least one token

(prometheus_client appends ``_total`` to counter names that lack it, so the counter created as
``vs_vllm:visual_tokens_total`` is exposed under that very name.) The kept fraction over a window is
``rate(vs_vllm:visual_tokens_kept_total[5m]) / rate(vs_vllm:visual_tokens_total[5m])``.

The multimodal processor in the API-server process calls :func:`observe_visual_tokens` once per image or video (through
:func:`vs_vllm.vllm_plugin.request_stats.record_visual_tokens`). The counters live in prometheus_client's default
``REGISTRY``, which vLLM's ``/metrics`` serves (with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client's
multiprocess mode picks them up from the value files instead). Importing this module only creates the counters; a
second import under another name, or a reload, reuses the ones already registered.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter

__all__ = ["IMAGES", "IMAGES_PRUNED", "VIDEOS", "VIDEOS_PRUNED", "VISUAL_TOKENS_KEPT", "VISUAL_TOKENS_TOTAL",
           "observe_visual_tokens"]


def _counter(name: str, documentation: str) -> Counter:
    """The counter ``name`` in the default registry, created on first use in this process."""
    try:
        return Counter(name, documentation)
    except ValueError:  # already registered (module reloaded or imported twice): reuse it
        existing = REGISTRY._names_to_collectors.get(name)  # no public lookup by name
        if isinstance(existing, Counter):
            return existing
        raise


VISUAL_TOKENS_KEPT = _counter(
    "vs_vllm:visual_tokens_kept", "Visual tokens kept by VisionSelector pruning (placeholders sent to the LLM)."
)
VISUAL_TOKENS_TOTAL = _counter(
    "vs_vllm:visual_tokens_total", "Visual tokens the unpruned model would have used for the same images and videos."
)
IMAGES = _counter("vs_vllm:images", "Images sized by the vs-vllm multimodal processor.")
IMAGES_PRUNED = _counter("vs_vllm:images_pruned", "Images that kept fewer visual tokens than the unpruned model.")
VIDEOS = _counter("vs_vllm:videos", "Videos sized by the vs-vllm multimodal processor.")
VIDEOS_PRUNED = _counter("vs_vllm:videos_pruned", "Videos that kept fewer visual tokens than the unpruned model.")


def observe_visual_tokens(kept: int, total: int, modality: str = "image") -> None:
    """Count one image or video: ``kept`` of its ``total`` visual tokens survived."""
    VISUAL_TOKENS_KEPT.inc(kept)
    VISUAL_TOKENS_TOTAL.inc(total)
    items, pruned = (VIDEOS, VIDEOS_PRUNED) if modality == "video" else (IMAGES, IMAGES_PRUNED)
    items.inc()
    if kept < total:
        pruned.inc()
