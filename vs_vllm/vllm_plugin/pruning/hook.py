"""The position hook, shared by every architecture: vLLM's ``recompute_mrope_positions`` calls land here.

Two calling conventions reach it (both are tested on CPU):

- V1 runner (vLLM's CPU runner and the V1 GPU runner): ``input_ids`` is the prompt as a Python list, positions a CPU
  int64 tensor [3, L]; called for every request on every step, decodes included (then with no embeddings).
- V2 runner (vLLM's default on GPUs): ``input_ids`` an int32 device tensor, positions a device tensor converted with
  ``.long()``; called only for requests with media rows in the step's window.

Kept tokens get ``base + (t, h, w)`` from their position channels, base = one past the position of the token before
their span; text positions were made exact by ``get_mrope_input_positions`` before the encoder ran. The rewrite is
fixed-shape (no host sync). The decode delta is a host int by vLLM's contract, so on device tensors it costs one
scalar read, taken inside vLLM's ``gpu_sync_allowed()`` like vLLM's own pruning hooks (once per media chunk, never
on a decode step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from vs_vllm.vllm_plugin.pruning.channels import strip_channels

__all__ = ["decode_delta", "recompute_positions"]

FillFn = Callable[..., torch.Tensor]


def _on_host(input_ids: Sequence[int] | torch.Tensor) -> bool:
    return not isinstance(input_ids, torch.Tensor) or input_ids.device.type == "cpu"


def _allowed_sync():
    try:
        from vllm.utils.gpu_sync_debug import gpu_sync_allowed
    except ImportError:  # pragma: no cover - older vLLM: nothing to tell
        return contextlib.nullcontext()
    return gpu_sync_allowed()


def decode_delta(input_ids: Sequence[int] | torch.Tensor, positions: torch.Tensor, media_token_ids: Sequence[int]) -> int:
    """P_max + 1 - L: decoding continues one past the largest prompt position.

    Text positions only grow and every media span sits below the text after it, so when the prompt ends with text its
    last position is P_max (one element, no reduction); only a prompt that ends inside a media span needs the max.
    """
    length = positions.shape[1]
    if _on_host(input_ids) and positions.device.type == "cpu":
        if int(input_ids[-1]) not in media_token_ids:
            return int(positions[0, -1]) + 1 - length
        return int(positions.max()) + 1 - length
    last = input_ids[-1] if isinstance(input_ids, torch.Tensor) else int(input_ids[-1])
    if isinstance(last, int):
        p_max = positions.max() if last in media_token_ids else positions[0, -1]
    else:
        ends_in_media = torch.zeros((), dtype=torch.bool, device=last.device)
        for token in media_token_ids:  # Python-scalar comparisons: no id list copied to the device
            ends_in_media = ends_in_media | (last == token)
        p_max = torch.where(ends_in_media, positions.max(), positions[0, -1])
    with _allowed_sync():
        return int(p_max) + 1 - length


def recompute_positions(
    input_ids: Sequence[int] | torch.Tensor,
    multimodal_embeddings: Sequence[torch.Tensor],
    mrope_positions: torch.Tensor,
    num_computed_tokens: int,
    media_token_ids: Sequence[int],
    fill_media_positions: FillFn,
) -> tuple[Sequence[torch.Tensor], torch.Tensor, int]:
    """vLLM's pruning-hook contract: (embeddings without channels, positions, decode delta)."""
    if len(multimodal_embeddings) == 0:
        # The V1 runner calls the hook for every request on every step, decodes included: keep that O(1).
        return multimodal_embeddings, mrope_positions, decode_delta(input_ids, mrope_positions, media_token_ids)
    hidden, coords = strip_channels(multimodal_embeddings)
    device = mrope_positions.device
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids.to(device=device, dtype=torch.long)
    else:
        ids = torch.tensor(input_ids, dtype=torch.long).to(device, non_blocking=True)
    positions = fill_media_positions(mrope_positions, ids, media_token_ids, coords, num_computed_tokens,
                                     validate=False)
    return hidden, positions, decode_delta(input_ids, positions, media_token_ids)
