"""Plain-torch selection: the oracle for the Triton kernels and the production path on CPU.

Built only from the shared core: ``importance_scores`` (closed-form scorer, per-image mean key) and ``select_topk``
(exact top-K, ties to the lowest index, ascending), then ``index_select`` for the rows.
"""

from __future__ import annotations

import torch

from vs_vllm.selection.positions import scaled_temporal
from vs_vllm.selection.scorer import importance_scores
from vs_vllm.selection.topk import select_topk

from .common import (
    Plan,
    Selection,
    check_channels,
    check_scorer_weights,
    empty_selection,
    host_ints_on,
    make_gather_plan,
    make_plan,
)
from .position_channels import NUM_POSITION_CHANNELS, PositionChannels, encode_position_channels

__all__ = [
    "gather_selected_ref",
    "gather_with_plan_ref",
    "scores_with_plan_ref",
    "select_tokens_ref",
    "select_with_scores_ref",
]


def _positions(plan: Plan, indices: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    if not plan.has_grids:
        return None
    keep = host_ints_on(plan.keep, device)
    if plan.grids is not None:
        grids = host_ints_on([v for g in plan.grids for v in g], device).reshape(-1, 3)
    else:
        grids = plan.grids_tensor.to(device=device, dtype=torch.long)
    g = torch.repeat_interleave(grids, keep, dim=0, output_size=plan.total_keep)  # [sum K, 3]
    h, w = g[:, 1], g[:, 2]
    j = indices.to(torch.long)
    return torch.stack((j // (h * w), (j // w) % h, j % w), dim=1)


def _channel_coords(positions: torch.Tensor, plan: Plan, channels: PositionChannels) -> torch.Tensor:
    """(int(t * t_factor), h, w) of each kept row, image by image (``scaled_temporal``)."""
    check_channels(plan, channels)
    factors = channels.factors_for(plan.num_images)
    cuk = plan.cu_keep
    temporal = torch.cat([scaled_temporal(positions[cuk[b] : cuk[b + 1], :1], factors[b])
                          for b in range(plan.num_images)])
    return torch.cat([temporal, positions[:, 1:]], dim=1)


def gather_with_plan_ref(
    x: torch.Tensor,
    plan: Plan,
    indices: torch.Tensor,
    *,
    source: torch.Tensor | None = None,
    channels: PositionChannels | None = None,
) -> Selection:
    """Rows and (t, h, w) of the kept local ``indices`` (concatenated per image) for a validated plan; rows come
    from ``source`` when given, and with ``channels`` also in the packed layout (``Selection.packed``)."""
    src_rows = x if source is None else source
    if plan.num_images == 0:
        return empty_selection(src_rows, plan, channels)
    dev = x.device
    indices = indices.to(device=dev, dtype=torch.long)
    starts = host_ints_on(plan.cu_seqlens[:-1], dev)
    keep = host_ints_on(plan.keep, dev)
    src = indices + torch.repeat_interleave(starts, keep, output_size=plan.total_keep)
    cu_keep = host_ints_on(plan.cu_keep, dev)
    positions = _positions(plan, indices, dev)
    if channels is None:
        return Selection(src_rows.index_select(0, src), indices, positions, cu_keep)
    # the rows land in the packed buffer directly (index_select into the strided view: no second copy for a cat)
    d = src_rows.shape[1]
    packed = torch.empty((plan.total_keep, d + NUM_POSITION_CHANNELS), dtype=src_rows.dtype, device=dev)
    torch.index_select(src_rows, 0, src, out=packed[:, :d])
    packed[:, d:] = encode_position_channels(_channel_coords(positions, plan, channels), src_rows.dtype)
    return Selection(packed[:, :d], indices, positions, cu_keep, packed)


def scores_with_plan_ref(
    x: torch.Tensor, plan: Plan, q_weight: torch.Tensor, q_bias: torch.Tensor, k_weight: torch.Tensor,
    k_bias: torch.Tensor,
) -> torch.Tensor:
    """VisionSelector's fp32 scores [sum N] with each image's own mean key (every learned method starts here)."""
    cu = torch.tensor(plan.cu_seqlens, dtype=torch.long)  # host sizes: validated on the host, copied without a sync
    return importance_scores(x, q_weight, q_bias, k_weight, k_bias, cu_seqlens=cu, scope="per_image")


def select_with_scores_ref(
    x: torch.Tensor,
    plan: Plan,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    *,
    source: torch.Tensor | None = None,
    channels: PositionChannels | None = None,
) -> tuple[Selection, torch.Tensor]:
    """Reference selection for a validated plan; also returns the fp32 scores [sum N]."""
    if plan.num_images == 0:
        return (empty_selection(x if source is None else source, plan, channels),
                torch.empty(0, dtype=torch.float32, device=x.device))
    scores = scores_with_plan_ref(x, plan, q_weight, q_bias, k_weight, k_bias)
    cs = plan.cu_seqlens
    picked = [select_topk(scores[cs[i] : cs[i + 1]], k) for i, k in enumerate(plan.keep)]
    indices = torch.cat(picked) if picked else torch.empty(0, dtype=torch.long, device=x.device)
    return gather_with_plan_ref(x, plan, indices, source=source, channels=channels), scores


def select_tokens_ref(
    x: torch.Tensor,
    cu_seqlens,
    keep_k,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    grids=None,
) -> Selection:
    """VisionSelector selection in plain torch (same contract as ``vs_vllm.kernels.select_tokens``)."""
    plan = make_plan(x, cu_seqlens, keep_k, grids)
    check_scorer_weights(x, q_weight, q_bias, k_weight, k_bias)
    return select_with_scores_ref(x, plan, q_weight, q_bias, k_weight, k_bias)[0]


def gather_selected_ref(x: torch.Tensor, cu_seqlens, indices: torch.Tensor, cu_keep, grids=None) -> Selection:
    """Gather kept rows (and their (t, h, w)) given per-image local indices, in plain torch."""
    plan = make_gather_plan(x, cu_seqlens, indices, cu_keep, grids)
    if plan.num_images == 0:
        return empty_selection(x, plan)
    return gather_with_plan_ref(x, plan, indices)
