"""Start-up guards of the pruning layer."""

from __future__ import annotations

from typing import Any

__all__ = ["refuse_vllm_video_pruning"]


def refuse_vllm_video_pruning(model_config: Any) -> None:
    """vLLM's EVS (``--video-pruning-rate``) and vs-vllm would both own the video placeholder count: refuse the pair.

    vs-vllm prunes videos itself, per request, so it keeps the one owner; the message says how to get the same with
    vs-vllm (``video_retention_ratio`` and ``--selection-method temporal``, which ranks tokens as EVS does).
    """
    mm_config = getattr(model_config, "multimodal_config", None)
    rate = getattr(mm_config, "video_pruning_rate", None)
    if rate is not None and rate > 0:
        raise ValueError(
            f"--video-pruning-rate {rate} (vLLM's EVS video pruning) cannot be combined with the vs-vllm plugin: "
            "both would set the video placeholder count. Either drop --video-pruning-rate (vs-vllm prunes videos per "
            "request with video_retention_ratio / --video-retention-ratio, and selection_method 'temporal' ranks "
            "tokens as EVS does), or serve without the plugin (unset VS_VLLM_ENABLE / use plain `vllm serve`) to use "
            "EVS."
        )
