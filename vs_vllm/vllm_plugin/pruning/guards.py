"""Start-up guards of the pruning layer."""

from __future__ import annotations

from typing import Any

__all__ = ["refuse_vllm_video_pruning"]


def refuse_vllm_video_pruning(model_config: Any) -> None:
    """vLLM's EVS (``--video-pruning-rate``) and vs-vllm would both own the video placeholder count: refuse the pair.

    Until vs-vllm prunes videos itself, the two cannot cooperate; the message says which to use.
    """
    mm_config = getattr(model_config, "multimodal_config", None)
    rate = getattr(mm_config, "video_pruning_rate", None)
    if rate is not None and rate > 0:
        raise ValueError(
            f"--video-pruning-rate {rate} (vLLM's EVS video pruning) cannot be combined with the vs-vllm plugin: "
            "both would set the video placeholder count. Either drop --video-pruning-rate (vs-vllm prunes images per "
            "request with retention_ratio / --retention-ratio), or serve without the plugin (unset VS_VLLM_ENABLE / "
            "use plain `vllm serve`) to use EVS."
        )
