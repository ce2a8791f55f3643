"""The position channels: how each kept token's original (t, h, w) travels from the encoder to the position hook.

vLLM's pruning hook (``recompute_mrope_positions``) receives the media embeddings exactly as ``embed_multimodal``
returned them (sliced per prefill chunk), so the kept tokens' coordinates ride along as extra trailing columns in the
embeddings' dtype and are stripped by the hook before the merge (both runners strip every media row alike, which is
why unpruned media carry channels too). The layout itself — (value // 256, value % 256) per coordinate, t = -1 for
media whose positions are already exact — is defined once, in ``vs_vllm.kernels.position_channels``: the selection
kernels write pruned items straight into it (``PositionChannels``); this module adds it to whole items and strips it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vs_vllm.kernels.position_channels import (
    MAX_COORDINATE,
    NUM_POSITION_CHANNELS,
    check_coordinates,
    decode_position_channels,
    encode_position_channels,
)

__all__ = ["MAX_COORDINATE", "NUM_POSITION_CHANNELS", "check_grid_fits", "decode_channels", "strip_channels",
           "unpositioned", "with_channels"]

decode_channels = decode_position_channels
check_grid_fits = check_coordinates  # host-side bound check of a grid (instead of reading coordinates back)


def with_channels(rows: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """[K, D] rows + [K, 3] (t offset, h, w) -> [K, D + 6] in the rows' dtype. No host sync."""
    channels = encode_position_channels(coords.to(device=rows.device), rows.dtype)
    return torch.cat([rows, channels], dim=1)


def unpositioned(rows: torch.Tensor) -> torch.Tensor:
    """Channels that mark every row as already positioned (t = -1)."""
    coords = torch.full((rows.shape[0], 3), -1, dtype=torch.long, device=rows.device)
    return with_channels(rows, coords)


def strip_channels(embeddings: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(embeddings without channels, [sum R, 3] coordinates) of one request's media rows in a window."""
    hidden = [mm[:, :-NUM_POSITION_CHANNELS] for mm in embeddings]
    coords = decode_channels(torch.cat([mm[:, -NUM_POSITION_CHANNELS:] for mm in embeddings]))
    return hidden, coords
