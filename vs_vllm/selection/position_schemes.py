"""Position schemes: how a pruned prompt's kept media tokens and text are positioned, one entry per scheme.

An architecture adapter names its scheme; the generic pruning layer and the HF references call it through this
table. ``qwen2_mrope`` (Qwen2-VL, Qwen2.5-VL) is ``vs_vllm.selection.positions``; ``qwen3_frames`` (Qwen3-VL,
Qwen3.5) has the same position ids for images (interleaving only changes how the rotary frequencies read them) and
places each video frame one past its own ``<|vision_start|>``, with timestamp text between frames; a pruned video's
kept tokens sit in its first frame's run (``fill_frame_positions``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vs_vllm.selection import positions as _qwen2

__all__ = ["POSITION_SCHEMES", "PositionScheme", "get_position_scheme"]


@dataclass(frozen=True)
class PositionScheme:
    name: str
    #: (num_tokens, spans) -> (positions [3, L], decode delta): text exact, pruned media provisional or exact.
    prompt_positions: Callable
    #: (positions, input_ids, media_token_ids, coords, start, validate=...) -> positions with the kept tokens placed.
    fill_media_positions: Callable
    #: (flat indices, grid, validate=...) -> [3, K] coordinates.
    grid_coordinates: Callable


POSITION_SCHEMES: dict[str, PositionScheme] = {
    "qwen2_mrope": PositionScheme(
        name="qwen2_mrope",
        prompt_positions=_qwen2.mrope_positions_for_spans,
        fill_media_positions=_qwen2.fill_media_positions,
        grid_coordinates=_qwen2.grid_coordinates,
    ),
    # fill_media_positions needs frame_anchor_id=<|vision_start|> (the adapter's fill_kwargs)
    "qwen3_frames": PositionScheme(
        name="qwen3_frames",
        prompt_positions=_qwen2.mrope_positions_for_spans,
        fill_media_positions=_qwen2.fill_frame_positions,
        grid_coordinates=_qwen2.grid_coordinates,
    ),
}


def get_position_scheme(name: str) -> PositionScheme:
    try:
        return POSITION_SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown position scheme {name!r}; known: {', '.join(sorted(POSITION_SCHEMES))}") from None
