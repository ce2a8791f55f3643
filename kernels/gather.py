"""Triton gather of the kept rows (and their (t, h, w) positions) of a packed batch of images, shared by every
selection method.

``_gather_kernel``  grid (kept-row tiles, B, D splits): out[cu_keep_b + r] = x[start_b + idx[r]] and, with grids, the
(t, h, w) of each kept index. The base of each image is int64; in-image offsets are int32 and switch to int64 (WIDE)
when an image spans 2**31 elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import Plan, Selection, empty_selection
from .config import (
    _MAX_GRID_YZ,
    KernelConfig,
    _cdiv,
    _device_meta,
    _row_major,
    _split,
    _target_programs,
    empty_buffer,
    get_config,
)

_WIDE_LIMIT = 2**31  # gather uses 64-bit in-image row offsets once an image spans this many elements


@triton.jit
def _gather_kernel(
    x_ptr,
    stride_x,
    cu_ptr,
    cuk_ptr,
    idx_ptr,
    grid_ptr,
    out_ptr,
    pos_ptr,
    D,
    d_per_split,
    HAS_POS: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[cu_keep_b + r, :] = x[start_b + idx[cu_keep_b + r], :] for a tile of kept rows of image b; with HAS_POS
    also pos[...] = (j // (h*w), (j // w) % h, j % w) for local index j and the image's grid (t, h, w)."""
    pid_t = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.program_id(2)
    start = tl.load(cu_ptr + b)
    k_end = tl.load(cuk_ptr + b + 1)
    r0 = tl.load(cuk_ptr + b) + pid_t.to(tl.int64) * BLOCK_R
    rows = r0 + tl.arange(0, BLOCK_R)
    rmask = rows < k_end
    j = tl.load(idx_ptr + rows, mask=rmask, other=0)
    if WIDE:  # an image spans 2**31 elements or more: 64-bit row offsets
        src = x_ptr + (start + j)[:, None] * stride_x
    else:
        src = (x_ptr + start * stride_x) + (j.to(tl.int32) * stride_x)[:, None]
    dst = (out_ptr + r0 * D) + (tl.arange(0, BLOCK_R) * D)[:, None]
    d_lo = s * d_per_split
    d_hi = tl.minimum(D, d_lo + d_per_split)
    d_hi = tl.where(r0 < k_end, d_hi, d_lo)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        d0 = tl.multiple_of(d0, BLOCK_D)
        cols = d0 + offs_d
        m = rmask[:, None] & (cols < d_hi)[None, :]
        tl.store(dst + cols[None, :], tl.load(src + cols[None, :], mask=m), mask=m)
    if HAS_POS and s == 0:
        gh = tl.load(grid_ptr + b * 3 + 1)
        gw = tl.load(grid_ptr + b * 3 + 2)
        tl.store(pos_ptr + rows * 3, j // (gh * gw), mask=rmask)
        tl.store(pos_ptr + rows * 3 + 1, (j // gw) % gh, mask=rmask)
        tl.store(pos_ptr + rows * 3 + 2, j % gw, mask=rmask)


def _launch_gather(
    x: torch.Tensor,
    plan: Plan,
    cu: torch.Tensor,
    cuk: torch.Tensor,
    grids: torch.Tensor | None,
    indices: torch.Tensor,
    cfg: KernelConfig,
    target: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    D = x.shape[1]
    total_k = plan.total_keep
    rows = empty_buffer((total_k, D), dtype=x.dtype, device=x.device)
    positions = empty_buffer((total_k, 3), dtype=torch.long, device=x.device) if grids is not None else None
    max_k = max(plan.keep) if plan.num_images else 0
    if total_k == 0 or max_k == 0:
        return rows, positions
    r_tiles = _cdiv(max_k, cfg.gather_block_r)
    d_blocks = _cdiv(D, cfg.gather_block_d)
    per, n_split = _split(d_blocks, r_tiles * plan.num_images, target)
    _gather_kernel[(r_tiles, plan.num_images, n_split)](
        x,
        x.stride(0),
        cu,
        cuk,
        indices,
        grids if grids is not None else cu,  # dummy pointer when HAS_POS is False
        rows,
        positions if positions is not None else rows,
        D,
        per * cfg.gather_block_d,
        HAS_POS=grids is not None,
        WIDE=max(plan.lengths) * x.stride(0) >= _WIDE_LIMIT,
        BLOCK_R=cfg.gather_block_r,
        BLOCK_D=cfg.gather_block_d,
        num_warps=cfg.num_warps,
    )
    return rows, positions



def gather_with_plan_triton(
    x: torch.Tensor, plan: Plan, indices: torch.Tensor, config: KernelConfig | None = None
) -> Selection:
    """Triton gather of kept rows (and positions) for validated per-image local ``indices``."""
    if plan.num_images == 0:
        return empty_selection(x, plan)
    cfg = config if config is not None else get_config()
    if plan.num_images > _MAX_GRID_YZ:
        raise ValueError(f"the Triton path handles at most {_MAX_GRID_YZ} images per call, got {plan.num_images}")
    x = _row_major(x)
    indices = indices.to(device=x.device, dtype=torch.long).contiguous()
    cu, cuk, grids = _device_meta(plan, x.device)
    rows, positions = _launch_gather(x, plan, cu, cuk, grids, indices, cfg, _target_programs(x.device, cfg))
    return Selection(rows, indices, positions, cuk)
