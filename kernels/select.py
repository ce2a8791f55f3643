"""Triton implementation of VisionSelector token selection over a packed variable-length batch of images.

The composition score -> select -> gather for B images packed in ``x`` [sum N_i, D] (fp32 / fp16 / bf16), every pass
deterministic (no atomics), one op per module:

- ``score.py``        passes 1-5: per-image mean xbar, kbar = W_k xbar + b_k, u = W_q^T kbar and c = b_q . kbar, and
                      the partial dot products x_i . u_b (fp32, split over D / H when a GPU needs more programs);
- ``topk_select.py``  pass 6: scores = (sum of partials + c_b) / sqrt(H), exact per-image top-K by a radix select,
                      ties to the lowest index, ascending local indices (also ``topk_segments_triton`` alone);
- ``gather.py``       pass 7: the kept rows and their (t, h, w) positions, or rows + position channels in the
                      engine's packed layout (also ``gather_with_plan_triton`` alone);
- ``config.py``       block configurations (``KernelConfig``, ``get_config`` / ``set_config``) and launch-size helpers;
- ``compile_specs.py`` the kernel variants the host code launches, for compile-only checks.

This module re-exports their public names, so ``vs_vllm.kernels.select`` stays the one import for the Triton path.
"""

from __future__ import annotations

import math

import torch

from .common import Plan, Selection, empty_selection
from .compile_specs import KERNELS, aligned_attrs, compile_specs
from .config import (
    _MAX_GRID_YZ,
    GPU_CONFIG,
    INTERPRET,
    INTERPRETER_CONFIG,
    KernelConfig,
    _device_meta,
    _row_major,
    _target_programs,
    empty_buffer,
    get_config,
    set_config,
)
from .gather import _launch_gather, gather_with_plan_triton
from .position_channels import PositionChannels
from .score import _launch_scores
from .topk_select import _launch_select, topk_segments_triton

__all__ = [
    "GPU_CONFIG",
    "INTERPRET",
    "INTERPRETER_CONFIG",
    "KERNELS",
    "KernelConfig",
    "aligned_attrs",
    "compile_specs",
    "gather_with_plan_triton",
    "get_config",
    "select_with_scores_triton",
    "set_config",
    "topk_segments_triton",
]


def select_with_scores_triton(
    x: torch.Tensor,
    plan: Plan,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    config: KernelConfig | None = None,
    *,
    source: torch.Tensor | None = None,
    channels: PositionChannels | None = None,
) -> tuple[Selection, torch.Tensor]:
    """Triton selection for a validated plan; also returns the kernel's fp32 scores [sum N]. Rows come from
    ``source`` when given (the same tokens as ``x``, any width), and with ``channels`` straight into the packed
    layout (``Selection.packed``)."""
    if plan.num_images == 0:
        return (empty_selection(x if source is None else source, plan, channels),
                empty_buffer(0, dtype=torch.float32, device=x.device))
    cfg = config if config is not None else get_config()
    if plan.num_images > _MAX_GRID_YZ:
        raise ValueError(f"the Triton path handles at most {_MAX_GRID_YZ} images per call, got {plan.num_images}")
    dev = x.device
    x = _row_major(x)
    wq, wk = _row_major(q_weight), _row_major(k_weight)
    bq, bk = q_bias.contiguous(), k_bias.contiguous()
    target = _target_programs(dev, cfg)
    meta = _device_meta(plan, dev, channels)
    cu, cuk = meta.cu, meta.cuk

    # 1-5. fp32 partial scores (and partial c = b_q . kbar) per slice of D (H)
    part_s, part_c, n_ss, n_us = _launch_scores(x, cu, wq, bq, wk, bk, plan, cfg, target)

    # 6. per-image exact top-K -> ascending local indices
    sqrt_h = math.sqrt(wq.shape[0])
    scores, indices = _launch_select(part_s, part_c, cu, cuk, x.shape[0], n_ss, n_us, sqrt_h, plan, cfg)

    # 7. rows and positions (with channels: both straight into the packed layout)
    rows, positions, packed = _launch_gather(x, plan, meta, indices, cfg, target, source)
    return Selection(rows, indices, positions, cuk, packed), scores
