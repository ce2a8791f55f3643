"""The position channels: how each kept token's original (t, h, w) travels from the encoder to the position hook.

vLLM's pruning hook (``recompute_mrope_positions``) receives the media embeddings exactly as ``embed_multimodal``
returned them (sliced per prefill chunk), so the kept tokens' coordinates ride along as extra trailing columns in the
embeddings' dtype and are stripped by the hook before the merge (both runners strip every media row alike, which is
why unpruned media carry channels too). Each of (t, h, w) is written as (value // 256, value % 256): every channel is
an integer in [0, 256), which bf16 and fp16 hold exactly (bf16 is exact only up to 256). t = -1 marks media whose
positions are already exact (unpruned media): the hook leaves those slots alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["MAX_COORDINATE", "NUM_POSITION_CHANNELS", "check_grid_fits", "decode_channels", "strip_channels",
           "with_channels"]

NUM_POSITION_CHANNELS = 6
_SPLIT = 256
MAX_COORDINATE = _SPLIT * _SPLIT - 1


def check_grid_fits(grid: Sequence[int]) -> None:
    """Host-side bound check (instead of reading the coordinates back from the device)."""
    if max(int(v) for v in grid) - 1 > MAX_COORDINATE:
        raise ValueError(f"grid {tuple(grid)} too large for the position channels (max coordinate {MAX_COORDINATE})")


def with_channels(rows: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """[K, D] rows + [K, 3] (t, h, w) -> [K, D + 6] in the rows' dtype. No host sync."""
    coords = coords.to(device=rows.device, dtype=torch.long)
    hi = torch.div(coords, _SPLIT, rounding_mode="floor")
    lo = coords - hi * _SPLIT
    channels = torch.stack([hi, lo], dim=2).reshape(coords.shape[0], NUM_POSITION_CHANNELS)
    return torch.cat([rows, channels.to(rows.dtype)], dim=1)


def unpositioned(rows: torch.Tensor) -> torch.Tensor:
    """Channels that mark every row as already positioned (t = -1)."""
    coords = torch.full((rows.shape[0], 3), -1, dtype=torch.long, device=rows.device)
    return with_channels(rows, coords)


def decode_channels(channels: torch.Tensor) -> torch.Tensor:
    """[R, 6] channels -> [R, 3] int64 (t, h, w)."""
    pairs = channels.round().long().reshape(channels.shape[0], 3, 2)
    return pairs[..., 0] * _SPLIT + pairs[..., 1]


def strip_channels(embeddings: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(embeddings without channels, [sum R, 3] coordinates) of one request's media rows in a window."""
    hidden = [mm[:, :-NUM_POSITION_CHANNELS] for mm in embeddings]
    coords = decode_channels(torch.cat([mm[:, -NUM_POSITION_CHANNELS:] for mm in embeddings]))
    return hidden, coords
