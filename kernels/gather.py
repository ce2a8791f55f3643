"""Triton gather of the kept rows (and their (t, h, w) positions) of a packed batch of images, shared by every
selection method.

``_gather_kernel``  grid (kept-row tiles, B, D splits): out[cu_keep_b + r] = x[start_b + idx[r]] and, with grids, the
(t, h, w) of each kept index; asked for ``PositionChannels``, it writes rows and position channels straight into the
engine's packed [sum K, D + 6] layout (one pass instead of gather -> copy -> concat). The base of each image is
int64; in-image offsets are int32 and switch to int64 (WIDE) when an image spans 2**31 elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import Plan, Selection, empty_selection
from .config import (
    _MAX_GRID_YZ,
    DeviceMeta,
    KernelConfig,
    _cdiv,
    _device_meta,
    _row_major,
    _split,
    _target_programs,
    empty_buffer,
    get_config,
)
from .position_channels import CHANNEL_BASE as _CHANNEL_BASE
from .position_channels import NUM_POSITION_CHANNELS, PositionChannels

CHANNEL_BASE: tl.constexpr = tl.constexpr(_CHANNEL_BASE)
NUM_CHANNELS: tl.constexpr = tl.constexpr(NUM_POSITION_CHANNELS)

_WIDE_LIMIT = 2**31  # gather uses 64-bit in-image row offsets once an image spans this many elements


@triton.jit
def _gather_kernel(
    x_ptr,
    stride_x,
    cu_ptr,
    cuk_ptr,
    idx_ptr,
    grid_ptr,
    tcu_ptr,
    toff_ptr,
    out_ptr,
    pos_ptr,
    D,
    d_per_split,
    HAS_POS: tl.constexpr,
    CHANNELS: tl.constexpr,
    WIDE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[cu_keep_b + r, :D] = x[start_b + idx[cu_keep_b + r], :D] for a tile of kept rows of image b; with HAS_POS
    also pos[...] = (j // (h*w), (j // w) % h, j % w) for local index j and the image's grid (t, h, w); with CHANNELS
    also out[..., D:D+6] = the position channels of (toff[tcu_b + t], h, w) (``position_channels.py``)."""
    pid_t = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.program_id(2)
    # the packed layout's row stride follows from D (no argument): D's divisibility hint then carries over
    stride_out = D + NUM_CHANNELS if CHANNELS else D
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
    dst = (out_ptr + r0 * stride_out) + (tl.arange(0, BLOCK_R) * stride_out)[:, None]
    d_lo = s * d_per_split
    d_hi = tl.minimum(D, d_lo + d_per_split)
    d_hi = tl.where(r0 < k_end, d_hi, d_lo)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        d0 = tl.multiple_of(d0, BLOCK_D)
        cols = d0 + offs_d
        m = rmask[:, None] & (cols < d_hi)[None, :]
        tl.store(dst + cols[None, :], tl.load(src + cols[None, :], mask=m), mask=m)
    if (HAS_POS or CHANNELS) and s == 0:
        gh = tl.load(grid_ptr + b * 3 + 1)
        gw = tl.load(grid_ptr + b * 3 + 2)
        pt = j // (gh * gw)
        ph = (j // gw) % gh
        pw = j % gw
        if HAS_POS:
            tl.store(pos_ptr + rows * 3, pt, mask=rmask)
            tl.store(pos_ptr + rows * 3 + 1, ph, mask=rmask)
            tl.store(pos_ptr + rows * 3 + 2, pw, mask=rmask)
        if CHANNELS:
            t_off = tl.load(toff_ptr + tl.load(tcu_ptr + b) + pt, mask=rmask, other=0)
            ch = out_ptr + rows * stride_out + D
            _store_channel_pair(ch, t_off, rmask)
            _store_channel_pair(ch + 2, ph, rmask)
            _store_channel_pair(ch + 4, pw, rmask)


@triton.jit
def _store_channel_pair(ptr, value, mask):
    """ptr[0], ptr[1] = value // CHANNEL_BASE, value % CHANNEL_BASE in the output's dtype, through fp32: every
    channel is an integer in [0, 256), exact in each step (the interpreter also mistranslates a direct int -> bf16
    cast as a bit cast)."""
    ty = ptr.dtype.element_ty
    tl.store(ptr, (value // CHANNEL_BASE).to(tl.float32).to(ty), mask=mask)
    tl.store(ptr + 1, (value % CHANNEL_BASE).to(tl.float32).to(ty), mask=mask)


def _launch_gather(
    x: torch.Tensor,
    plan: Plan,
    meta: DeviceMeta,
    indices: torch.Tensor,
    cfg: KernelConfig,
    target: int,
    source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(rows [sum K, D_src], positions or None, packed [sum K, D_src + 6] or None): rows of ``source`` (default
    ``x``; same row count, any width), written into the packed layout when ``meta`` carries temporal offsets."""
    src = x if source is None else _row_major(source)
    D = src.shape[1]
    total_k = plan.total_keep
    channels = meta.t_offsets is not None
    width = D + NUM_POSITION_CHANNELS if channels else D
    out = empty_buffer((total_k, width), dtype=src.dtype, device=src.device)
    rows = out[:, :D] if channels else out
    has_pos = meta.grids is not None
    positions = empty_buffer((total_k, 3), dtype=torch.long, device=src.device) if has_pos else None
    max_k = max(plan.keep) if plan.num_images else 0
    if total_k == 0 or max_k == 0:
        return rows, positions, out if channels else None
    r_tiles = _cdiv(max_k, cfg.gather_block_r)
    d_blocks = _cdiv(D, cfg.gather_block_d)
    per, n_split = _split(d_blocks, r_tiles * plan.num_images, target)
    _gather_kernel[(r_tiles, plan.num_images, n_split)](
        src,
        src.stride(0),
        meta.cu,
        meta.cuk,
        indices,
        meta.grids if has_pos else meta.cu,  # dummy pointers when unused
        meta.t_cu if channels else meta.cu,
        meta.t_offsets if channels else meta.cu,
        out,
        positions if positions is not None else out,
        D,
        per * cfg.gather_block_d,
        HAS_POS=has_pos,
        CHANNELS=channels,
        WIDE=max(plan.lengths) * src.stride(0) >= _WIDE_LIMIT,
        BLOCK_R=cfg.gather_block_r,
        BLOCK_D=cfg.gather_block_d,
        num_warps=cfg.num_warps,
    )
    return rows, positions, out if channels else None


def gather_with_plan_triton(
    x: torch.Tensor,
    plan: Plan,
    indices: torch.Tensor,
    config: KernelConfig | None = None,
    *,
    source: torch.Tensor | None = None,
    channels: PositionChannels | None = None,
) -> Selection:
    """Triton gather of kept rows (and positions) for validated per-image local ``indices``; rows come from
    ``source`` when given (same row count as ``x``), and with ``channels`` straight into the packed layout."""
    if plan.num_images == 0:
        return empty_selection(x if source is None else source, plan, channels)
    cfg = config if config is not None else get_config()
    if plan.num_images > _MAX_GRID_YZ:
        raise ValueError(f"the Triton path handles at most {_MAX_GRID_YZ} images per call, got {plan.num_images}")
    x = _row_major(x)
    indices = indices.to(device=x.device, dtype=torch.long).contiguous()
    meta = _device_meta(plan, x.device, channels)
    rows, positions, packed = _launch_gather(x, plan, meta, indices, cfg, _target_programs(x.device, cfg), source)
    return Selection(rows, indices, positions, meta.cuk, packed)
