"""Position channels: the layout in which a kept token's M-RoPE coordinates ride behind its embedding row.

An engine that prunes media tokens before the LLM must carry each kept token's original (t, h, w) to the place where
positions are computed. vs-vllm appends them to the row as NUM_POSITION_CHANNELS trailing columns in the rows' own
dtype: each coordinate v becomes (v // 256, v % 256), integers in [0, 256) that bf16 and fp16 hold exactly (bf16 is
exact only up to 256), so a coordinate up to MAX_COORDINATE survives any float dtype. t = -1 (channels (-1, 255))
marks a row whose position is already exact.

The temporal coordinate is the M-RoPE *offset* int(t * t_factor) (videos of Qwen2/2.5-VL: seconds per temporal patch
x tokens per second; 1 for images), computed on the host per frame index (``temporal_offsets``) exactly as
``vs_vllm.selection.positions.scaled_temporal`` computes it on tensors, so the Triton gather (``gather.py``) only looks
the offsets up. This module is the layout's one definition: the torch encoder here (the reference and the CPU path)
and the gather kernel write it, the vLLM plugin's position hook reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "CHANNEL_BASE",
    "MAX_COORDINATE",
    "NUM_POSITION_CHANNELS",
    "PositionChannels",
    "check_coordinates",
    "decode_position_channels",
    "encode_position_channels",
    "temporal_offsets",
    "temporal_tables",
]

NUM_POSITION_CHANNELS = 6
CHANNEL_BASE = 256
MAX_COORDINATE = CHANNEL_BASE * CHANNEL_BASE - 1


@dataclass(frozen=True)
class PositionChannels:
    """Ask a gather for the engine's layout: rows [sum K, D_src + NUM_POSITION_CHANNELS], each kept row followed by
    its (t offset, h, w) channels, written straight into one buffer (no gather -> copy -> concat).

    t_factors: per image, the factor its temporal index is scaled by (None: 1 for every image).
    """

    t_factors: tuple[float, ...] | None = None

    def factors_for(self, num_images: int) -> tuple[float, ...]:
        if self.t_factors is None:
            return (1.0,) * num_images
        if len(self.t_factors) != num_images:
            raise ValueError(f"t_factors has {len(self.t_factors)} entries for {num_images} images")
        for f in self.t_factors:
            if not (f >= 0.0 and f != float("inf")):
                raise ValueError(f"t_factors must be finite and >= 0, got {f!r}")
        return tuple(float(f) for f in self.t_factors)


def temporal_offsets(frames: int, t_factor: float) -> list[int]:
    """int(t * t_factor) for t in [0, frames): the same float64 rule as ``scaled_temporal`` (Python floats are
    float64; int() truncates toward zero like torch's float -> long)."""
    if t_factor == 1.0:
        return list(range(frames))
    return [int(t * t_factor) for t in range(frames)]


def temporal_tables(
    grids: Sequence[Sequence[int]], factors: Sequence[float]
) -> tuple[list[int], list[int]]:
    """(t_cu [B + 1], t_offsets [sum t_i]): the temporal offset of frame t of image b is t_offsets[t_cu[b] + t]."""
    t_cu, t_offsets = [0], []
    for (t, _, _), factor in zip(grids, factors):
        t_offsets.extend(temporal_offsets(int(t), factor))
        t_cu.append(len(t_offsets))
    return t_cu, t_offsets


def check_coordinates(grid: Sequence[int], t_factor: float = 1.0) -> None:
    """Host-side bound check of a (t, h, w) grid against the layout (instead of reading coordinates back)."""
    t, h, w = (int(v) for v in grid)
    largest = max(int(max(t - 1, 0) * t_factor), h - 1, w - 1)
    if largest > MAX_COORDINATE:
        raise ValueError(f"grid {tuple(grid)} too large for the position channels (max coordinate {MAX_COORDINATE})")


def encode_position_channels(coords: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[K, 3] integer (t offset, h, w) -> [K, NUM_POSITION_CHANNELS] in ``dtype``. No host sync."""
    coords = coords.to(torch.long)
    hi = torch.div(coords, CHANNEL_BASE, rounding_mode="floor")
    lo = coords - hi * CHANNEL_BASE
    return torch.stack([hi, lo], dim=2).reshape(coords.shape[0], NUM_POSITION_CHANNELS).to(dtype)


def decode_position_channels(channels: torch.Tensor) -> torch.Tensor:
    """[R, NUM_POSITION_CHANNELS] channels -> [R, 3] int64 (t offset, h, w)."""
    pairs = channels.round().long().reshape(channels.shape[0], 3, 2)
    return pairs[..., 0] * CHANNEL_BASE + pairs[..., 1]
