"""Triton implementation of VisionSelector token selection over a packed variable-length batch of images.

Pipeline for B images packed in ``x`` [sum N_i, D] (fp32 / fp16 / bf16), every pass deterministic (no atomics):

1. ``_mean_partial_kernel``   grid (row tiles, B, D blocks): column sums of a tile of rows, fp32 partials.
2. ``_mean_finalize_kernel``  grid (D blocks, B): xbar_b = (sum of the tile partials, fixed order) / N_b.
3. ``_kbar_partial_kernel``   grid (H blocks, B, D splits): partial W_k xbar over a slice of D (reads bf16 weights
                              directly, fp32 accumulation: no fp32 copy of the weights per call).
4. ``_u_partial_kernel``      grid (D blocks, B, H splits): kbar = sum(partials) + b_k for its H slice, then the
                              partial u = W_q^T kbar and the partial c = b_q . kbar. torch sums the u partials.
5. ``_score_partial_kernel``  grid (row tiles, B, D splits): partial x_i . u_b over a slice of D.
6. ``_select_kernel``         grid (B,): score_i = (sum of partials + c_b) / sqrt(H) -> order-preserving int32 keys
                              -> exact K-th largest key by an MSD radix select (``tl.histogram`` of RADIX_BITS-wide
                              digits, 32 / RADIX_BITS rounds) -> every key above it plus the first ``need`` keys
                              equal to it (a cumsum, so ties go to the lowest index) -> compaction with
                              ``cumsum(selected) - 1``, which yields ascending local indices. No sort, no topk.
7. ``_gather_kernel``         grid (kept-row tiles, B, D splits): out[cu_keep_b + r] = x[start_b + idx[r]] and,
                              with grids, the (t, h, w) of each kept index. Shared by every selection method.

The splits over D / H exist only to give a GPU enough programs when there are few rows or few images; the number of
programs aimed at is ``programs_per_sm`` x the SM count. Addressing: the base of each tile (or of each image, in the
gather) is computed in int64 (row index cast to int64 before it is multiplied by the row stride); offsets inside a
tile are int32 (BLOCK rows x stride), and the gather switches to int64 in-image offsets (WIDE) when an image spans
2**31 elements. Loads vectorise to 16 bytes when x's row stride is a multiple of 16 elements (the JIT specialises on
it; D = 2048 / 3584 / 4096 are); odd D still works, with scalar loads.
Block sizes depend on TRITON_INTERPRET, read at import: the interpreter runs numpy per program step, so it wants few
large blocks; a GPU wants register-safe 32 x 128 tiles with 4 warps.

NaN scores are not detected here (that would need a host sync); they rank above +inf, like ``torch.topk``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from .common import Plan, Selection, empty_selection, host_ints_on, require_powers_of_two

__all__ = [
    "GPU_CONFIG",
    "INTERPRET",
    "INTERPRETER_CONFIG",
    "KERNELS",
    "KernelConfig",
    "gather_with_plan_triton",
    "get_config",
    "select_with_scores_triton",
    "set_config",
    "topk_segments_triton",
]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off")


@dataclass(frozen=True)
class KernelConfig:
    block_n: int  # rows per step of the mean and score passes
    block_d: int  # columns per step of the mean and score passes
    gemv_block_h: int  # weight tile rows (H) of the two mat-vecs
    gemv_block_d: int  # weight tile columns (D) of the two mat-vecs
    gather_block_r: int  # kept rows per gather program
    gather_block_d: int  # columns per gather step
    num_warps: int  # warps of every kernel except the select kernel
    sel_one_chunk_max: int  # images up to this many tokens keep their keys in registers during the select
    sel_block_max: int  # chunk of the select kernel for larger images (scores re-read from L1/L2 each round)
    radix_bits: int  # digit width of the radix select (1, 2, 4 or 8)
    programs_per_sm: int  # split D / H until a pass has this many programs per SM; 0 never splits
    sm_count: int = 0  # SMs assumed when > 0 (tests: exercises the splits on CPU); 0 asks the CUDA device


# Interpreter: every program step costs milliseconds of Python, so use few, large blocks and never split.
INTERPRETER_CONFIG = KernelConfig(
    block_n=1024,
    block_d=128,
    gemv_block_h=128,
    gemv_block_d=512,
    gather_block_r=512,
    gather_block_d=128,
    num_warps=4,
    sel_one_chunk_max=16384,
    sel_block_max=16384,
    radix_bits=8,
    programs_per_sm=0,
)
# GPU: 32 x 128 tiles, 4 warps. ptxas -v (compile-only, tests/kernels/test_kernels_compile.py), bf16, aligned:
# 25-91 registers on sm_90 and 25-89 on sm_80 for the streaming kernels, select <= 128, no spills anywhere.
GPU_CONFIG = KernelConfig(
    block_n=32,
    block_d=128,
    gemv_block_h=32,
    gemv_block_d=128,
    gather_block_r=32,
    gather_block_d=128,
    num_warps=4,
    sel_one_chunk_max=4096,
    sel_block_max=8192,
    radix_bits=4,
    programs_per_sm=8,
)

_CONFIG = INTERPRETER_CONFIG if INTERPRET else GPU_CONFIG


def get_config() -> KernelConfig:
    return _CONFIG


def set_config(config: KernelConfig | None = None, **changes) -> KernelConfig:
    """Replace the active block configuration (tests use it to run GPU-sized tiles in the interpreter)."""
    global _CONFIG
    base = config if config is not None else _CONFIG
    new = replace(base, **changes) if changes else base
    if new.radix_bits not in (1, 2, 4, 8):
        raise ValueError(f"radix_bits must be 1, 2, 4 or 8, got {new.radix_bits}")
    require_powers_of_two(new, ("block_n", "block_d", "gemv_block_h", "gemv_block_d", "gather_block_r",
                                "gather_block_d", "sel_one_chunk_max", "sel_block_max"))
    old = _CONFIG
    _CONFIG = new
    return old


# --------------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------------


@triton.jit
def _mean_partial_kernel(
    x_ptr,
    cu_ptr,
    part_ptr,
    D,
    stride_x,
    tile_rows,
    n_tiles,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """part[b, t, :] = sum of rows [t * tile_rows, (t + 1) * tile_rows) of image b (fp32)."""
    pid_t = tl.program_id(0)
    b = tl.program_id(1)
    pid_d = tl.program_id(2)
    start = tl.load(cu_ptr + b)
    end = tl.load(cu_ptr + b + 1)
    row0 = start + pid_t.to(tl.int64) * tile_rows
    n_rows = tl.minimum(end - row0, tile_rows).to(tl.int32)  # <= 0 for tiles past the image's end
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    offs_n = tl.arange(0, BLOCK_N)
    tile = x_ptr + row0 * stride_x  # 64-bit base, 32-bit offsets inside the tile
    offs = (offs_n * stride_x)[:, None] + cols[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for r in range(0, n_rows, BLOCK_N):
        rmask = (r + offs_n) < n_rows
        acc += tl.load(tile + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        tile += BLOCK_N * stride_x
    dst = part_ptr + (b.to(tl.int64) * n_tiles + pid_t) * D + cols
    tl.store(dst, tl.sum(acc, axis=0), mask=cmask)


@triton.jit
def _mean_finalize_kernel(part_ptr, cu_ptr, xbar_ptr, D, n_tiles, BLOCK_D: tl.constexpr):
    """xbar[b, :] = sum_t part[b, t, :] / N_b, the tiles summed in order."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    base = part_ptr + b.to(tl.int64) * n_tiles * D + cols
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for _t in range(n_tiles):
        acc += tl.load(base, mask=cmask, other=0.0)
        base += D
    count = (tl.load(cu_ptr + b + 1) - tl.load(cu_ptr + b)).to(tl.float32)
    count = tl.maximum(count, 1.0)
    tl.store(xbar_ptr + b.to(tl.int64) * D + cols, acc / count, mask=cmask)


@triton.jit
def _kbar_partial_kernel(
    wk_ptr,
    xbar_ptr,
    part_ptr,
    H,
    D,
    stride_w,
    d_per_split,
    B,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """part[s, b, h] = sum over the s-th slice of D of W_k[h, d] * xbar[b, d]."""
    pid_h = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.program_id(2)
    hs = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = hs < H
    d_lo = s * d_per_split
    d_hi = tl.minimum(D, d_lo + d_per_split)
    offs_d = tl.arange(0, BLOCK_D)
    w_tile = wk_ptr + (pid_h * BLOCK_H).to(tl.int64) * stride_w
    w_offs = (tl.arange(0, BLOCK_H) * stride_w)[:, None] + offs_d[None, :]
    x_row = xbar_ptr + b.to(tl.int64) * D
    acc = tl.zeros((BLOCK_H, BLOCK_D), dtype=tl.float32)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        d0 = tl.multiple_of(d0, BLOCK_D)
        cols = d0 + offs_d
        cmask = cols < d_hi
        w = tl.load(w_tile + d0 + w_offs, mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        xv = tl.load(x_row + cols, mask=cmask, other=0.0)
        acc += w * xv[None, :]
    dst = part_ptr + (s.to(tl.int64) * B + b) * H + hs
    tl.store(dst, tl.sum(acc, axis=1), mask=hmask)


@triton.jit
def _u_partial_kernel(
    wq_ptr,
    bq_ptr,
    bk_ptr,
    kpart_ptr,
    upart_ptr,
    cpart_ptr,
    H,
    D,
    stride_w,
    h_per_split,
    B,
    n_ksplits,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """For the s-th slice of H: kbar = sum(kbar partials) + b_k, upart[s, b, :] = W_q[slice]^T kbar[slice],
    cpart[s, b] = b_q[slice] . kbar[slice]."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.program_id(2)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    h_lo = s * h_per_split
    h_hi = tl.minimum(H, h_lo + h_per_split)
    offs_h = tl.arange(0, BLOCK_H)
    w_offs = (offs_h * stride_w)[:, None] + cols[None, :]
    w_tile = wq_ptr + h_lo.to(tl.int64) * stride_w
    acc = tl.zeros((BLOCK_H, BLOCK_D), dtype=tl.float32)
    cacc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for h0 in range(h_lo, h_hi, BLOCK_H):
        hs = h0 + offs_h
        hmask = hs < h_hi
        kb = tl.zeros((BLOCK_H,), dtype=tl.float32)
        kp = kpart_ptr + b.to(tl.int64) * H + hs
        for _sk in range(n_ksplits):
            kb += tl.load(kp, mask=hmask, other=0.0)
            kp += B * H
        kb += tl.load(bk_ptr + hs, mask=hmask, other=0.0).to(tl.float32)
        w = tl.load(w_tile + w_offs, mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        w_tile += BLOCK_H * stride_w
        acc += w * kb[:, None]
        cacc += kb * tl.load(bq_ptr + hs, mask=hmask, other=0.0).to(tl.float32)
    tl.store(upart_ptr + (s.to(tl.int64) * B + b) * D + cols, tl.sum(acc, axis=0), mask=cmask)
    if pid_d == 0:
        tl.store(cpart_ptr + s * B + b, tl.sum(cacc, axis=0))


@triton.jit
def _score_partial_kernel(
    x_ptr,
    cu_ptr,
    u_ptr,
    part_ptr,
    D,
    stride_x,
    total,
    d_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """part[s, i] = x_i . u_b over the s-th slice of D, for a tile of BLOCK_N rows of image b."""
    pid_t = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.program_id(2)
    start = tl.load(cu_ptr + b)
    end = tl.load(cu_ptr + b + 1)
    row0 = start + pid_t.to(tl.int64) * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    rmask = rows < end
    d_lo = s * d_per_split
    d_hi = tl.minimum(D, d_lo + d_per_split)
    d_hi = tl.where(row0 < end, d_hi, d_lo)  # tiles past the image's end do nothing
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    tile = x_ptr + row0 * stride_x  # 64-bit base of the tile, 32-bit offsets inside it
    offs = (offs_n * stride_x)[:, None] + offs_d[None, :]
    u_row = u_ptr + b.to(tl.int64) * D
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        d0 = tl.multiple_of(d0, BLOCK_D)
        cols = d0 + offs_d
        cmask = cols < d_hi
        xv = tl.load(tile + d0 + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        uv = tl.load(u_row + cols, mask=cmask, other=0.0)
        acc += xv * uv[None, :]
    tl.store(part_ptr + s.to(tl.int64) * total + rows, tl.sum(acc, axis=1), mask=rmask)


@triton.jit
def _order_key(score):
    """int32 key whose signed order is the float order: -0.0 == +0.0, every NaN above +inf."""
    bits = score.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = tl.where(score == 0.0, 0, key)
    key = tl.where(score != score, 0x7FFFFFFF, key)
    return key


@triton.jit
def _radix_digit(key, prefix, valid, R: tl.constexpr, RADIX_BITS: tl.constexpr):
    """Digit R (most significant first) of each key and whether the key matches the digits chosen so far."""
    SHIFT: tl.constexpr = 32 - (R + 1) * RADIX_BITS
    MASK: tl.constexpr = (1 << RADIX_BITS) - 1
    digit = (key >> SHIFT) & MASK
    if R == 0:
        digit = digit ^ (1 << (RADIX_BITS - 1))  # the top digit holds the sign: flip it so digits order like keys
        match = valid
    else:
        match = valid & (((key ^ prefix) >> (SHIFT + RADIX_BITS)) == 0)
    return digit, match


@triton.jit
def _select_kernel(
    spart_ptr,
    cpart_ptr,
    cu_ptr,
    cuk_ptr,
    scores_ptr,
    idx_ptr,
    total,
    n_ssplits,
    n_csplits,
    B,
    sqrt_h,
    BLOCK: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
    RADIX_BITS: tl.constexpr,
):
    """One program per image: scores, exact K-th largest key, tie-broken selection, ascending compaction."""
    b = tl.program_id(0)
    start = tl.load(cu_ptr + b)
    n = (tl.load(cu_ptr + b + 1) - start).to(tl.int32)
    out0 = tl.load(cuk_ptr + b)
    k = (tl.load(cuk_ptr + b + 1) - out0).to(tl.int32)
    offs = tl.arange(0, BLOCK)
    s_row = scores_ptr + start
    c = tl.zeros((), dtype=tl.float32)
    cp = cpart_ptr + b
    for _sc in range(n_csplits):
        c += tl.load(cp)
        cp += B

    # 1. scores = (sum of the partial dot products + c) / sqrt(H)
    for c0 in range(0, n, BLOCK):
        loc = c0 + offs
        m = loc < n
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        sp = spart_ptr + start + loc
        for _s in range(n_ssplits):
            acc += tl.load(sp, mask=m, other=0.0)
            sp += total
        tl.store(s_row + loc, (acc + c) / sqrt_h, mask=m)
    tl.debug_barrier()

    # 2. the exact K-th largest key T, one RADIX_BITS-wide digit per round, most significant first.
    #    k_rem = how many of the keys that match the chosen prefix still have to be taken.
    NUM_BINS: tl.constexpr = 1 << RADIX_BITS
    bins = tl.arange(0, NUM_BINS)
    prefix = tl.zeros((), dtype=tl.int32)
    k_rem = k
    if ONE_CHUNK:
        valid = offs < n
        keys = _order_key(tl.load(s_row + offs, mask=valid, other=0.0))
    for r in tl.static_range(32 // RADIX_BITS):
        if ONE_CHUNK:
            digit, match = _radix_digit(keys, prefix, valid, r, RADIX_BITS)
            hist = tl.histogram(digit, NUM_BINS, mask=match)
        else:
            hist = tl.zeros((NUM_BINS,), dtype=tl.int32)
            for c0 in range(0, n, BLOCK):
                loc = c0 + offs
                m = loc < n
                ck = _order_key(tl.load(s_row + loc, mask=m, other=0.0))
                digit, match = _radix_digit(ck, prefix, m, r, RADIX_BITS)
                hist += tl.histogram(digit, NUM_BINS, mask=match)
        at_least = tl.cumsum(hist, 0, reverse=True)  # matching keys whose digit is >= bin
        dstar = tl.max(tl.where(at_least >= k_rem, bins, -1), axis=0)
        above = tl.sum(tl.where(bins == dstar, at_least - hist, 0), axis=0)
        k_rem = k_rem - above
        if r == 0:
            dstar = dstar ^ (1 << (RADIX_BITS - 1))
        prefix = prefix | (dstar << (32 - (r + 1) * RADIX_BITS))

    # 3. keep every key > T and the first k_rem keys == T; write ascending local indices.
    if ONE_CHUNK:
        eq = (valid & (keys == prefix)).to(tl.int32)
        sel = (valid & (keys > prefix)) | ((eq != 0) & ((tl.cumsum(eq, 0) - eq) < k_rem))
        sel_i = sel.to(tl.int32)
        pos = tl.cumsum(sel_i, 0) - sel_i
        tl.store(idx_ptr + out0 + pos, offs.to(tl.int64), mask=sel)
    else:
        eq_seen = tl.zeros((), dtype=tl.int32)
        sel_seen = tl.zeros((), dtype=tl.int32)
        for c0 in range(0, n, BLOCK):
            loc = c0 + offs
            m = loc < n
            ck = _order_key(tl.load(s_row + loc, mask=m, other=0.0))
            eq = (m & (ck == prefix)).to(tl.int32)
            sel = (m & (ck > prefix)) | ((eq != 0) & ((eq_seen + tl.cumsum(eq, 0) - eq) < k_rem))
            sel_i = sel.to(tl.int32)
            pos = sel_seen + tl.cumsum(sel_i, 0) - sel_i
            tl.store(idx_ptr + out0 + pos, loc.to(tl.int64), mask=sel)
            eq_seen += tl.sum(eq, axis=0)
            sel_seen += tl.sum(sel_i, axis=0)


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


KERNELS = {
    "mean_partial": _mean_partial_kernel,
    "mean_finalize": _mean_finalize_kernel,
    "kbar_partial": _kbar_partial_kernel,
    "u_partial": _u_partial_kernel,
    "score_partial": _score_partial_kernel,
    "select": _select_kernel,
    "gather": _gather_kernel,
}


# --------------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------------

_SM_COUNT: dict = {}
_empty = torch.empty  # every buffer the kernels fill comes from here (tests poison it to catch unwritten entries)
_MAX_GRID_YZ = 65535  # CUDA limit of grid dimensions y and z (images are on y)
_WIDE_LIMIT = 2**31  # gather uses 64-bit in-image row offsets once an image spans this many elements


def _target_programs(device: torch.device, cfg: KernelConfig) -> int:
    if cfg.programs_per_sm <= 0:
        return 0
    if cfg.sm_count > 0:
        return cfg.programs_per_sm * cfg.sm_count
    if device.type != "cuda":
        return 0
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return cfg.programs_per_sm * _SM_COUNT[idx]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _split(units: int, base_programs: int, target: int) -> tuple[int, int]:
    """Cut ``units`` blocks into S slices so that base_programs * S reaches ``target``: (blocks per slice, S)."""
    if units <= 1 or target <= 0 or base_programs >= target:
        return max(units, 1), 1
    want = min(units, _cdiv(target, max(base_programs, 1)))
    per = _cdiv(units, want)
    return per, _cdiv(units, per)


def _select_warps(block: int, one_chunk: bool) -> int:
    """Warps of the select kernel, <= 16 keys per thread (ptxas -v, sm_80 and sm_90, no spills: 4096 register-resident
    keys with 8 warps use 128 registers; the chunked 8192 with 16 warps, 128; register-resident 8192 keys would spill
    on sm_80 at 32 warps, hence sel_one_chunk_max = 4096)."""
    return max(4, min(16, block // 512))


def _select_params(max_n: int, cfg: KernelConfig) -> tuple[int, bool, int]:
    """(BLOCK, ONE_CHUNK, num_warps) of the select kernel for images of up to ``max_n`` tokens."""
    one_chunk = max_n <= cfg.sel_one_chunk_max
    block = max(256, triton.next_power_of_2(max_n)) if one_chunk else cfg.sel_block_max
    return block, one_chunk, _select_warps(block, one_chunk)


def _device_meta(plan: Plan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """cu_seqlens, cu_keep and host grids as int64 on ``device``, in one host-to-device copy."""
    host = list(plan.cu_seqlens) + list(plan.cu_keep)
    if plan.grids is not None:
        for g in plan.grids:
            host.extend(g)
    t = host_ints_on(host, device)
    nb = len(plan.cu_seqlens)
    cu, cuk = t[:nb], t[nb : 2 * nb]
    if plan.grids is not None:
        grids = t[2 * nb :]
    elif plan.grids_tensor is not None:
        grids = plan.grids_tensor.to(device=device, dtype=torch.long).contiguous().reshape(-1)
    else:
        grids = None
    return cu, cuk, grids


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
    rows = _empty((total_k, D), dtype=x.dtype, device=x.device)
    positions = _empty((total_k, 3), dtype=torch.long, device=x.device) if grids is not None else None
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


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def select_with_scores_triton(
    x: torch.Tensor,
    plan: Plan,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    config: KernelConfig | None = None,
) -> tuple[Selection, torch.Tensor]:
    """Triton selection for a validated plan; also returns the kernel's fp32 scores [sum N]."""
    if plan.num_images == 0:
        return empty_selection(x, plan), _empty(0, dtype=torch.float32, device=x.device)
    cfg = config if config is not None else _CONFIG
    if plan.num_images > _MAX_GRID_YZ:
        raise ValueError(f"the Triton path handles at most {_MAX_GRID_YZ} images per call, got {plan.num_images}")
    dev = x.device
    x = _row_major(x)
    wq, wk = _row_major(q_weight), _row_major(k_weight)
    bq, bk = q_bias.contiguous(), k_bias.contiguous()
    total, D = x.shape
    H = wq.shape[0]
    B = plan.num_images
    max_n = max(plan.lengths)
    target = _target_programs(dev, cfg)
    warps = cfg.num_warps
    f32 = torch.float32
    cu, cuk, grids = _device_meta(plan, dev)

    # 1-2. per-image mean xbar [B, D]
    d_blocks = _cdiv(D, cfg.block_d)
    tiles_wanted = _cdiv(target, B * d_blocks) if target else 1
    tile_rows = _cdiv(_cdiv(max_n, tiles_wanted), cfg.block_n) * cfg.block_n
    n_tiles = _cdiv(max_n, tile_rows)
    part_mean = _empty((B, n_tiles, D), dtype=f32, device=dev)
    _mean_partial_kernel[(n_tiles, B, d_blocks)](
        x,
        cu,
        part_mean,
        D,
        x.stride(0),
        tile_rows,
        n_tiles,
        BLOCK_N=cfg.block_n,
        BLOCK_D=cfg.block_d,
        num_warps=warps,
    )
    xbar = _empty((B, D), dtype=f32, device=dev)
    _mean_finalize_kernel[(d_blocks, B)](part_mean, cu, xbar, D, n_tiles, BLOCK_D=cfg.block_d, num_warps=warps)

    # 3. kbar partials over slices of D
    h_blocks = _cdiv(H, cfg.gemv_block_h)
    gd_blocks = _cdiv(D, cfg.gemv_block_d)
    per_d, n_ks = _split(gd_blocks, h_blocks * B, target)
    part_k = _empty((n_ks, B, H), dtype=f32, device=dev)
    _kbar_partial_kernel[(h_blocks, B, n_ks)](
        wk,
        xbar,
        part_k,
        H,
        D,
        wk.stride(0),
        per_d * cfg.gemv_block_d,
        B,
        BLOCK_H=cfg.gemv_block_h,
        BLOCK_D=cfg.gemv_block_d,
        num_warps=warps,
    )

    # 4. u = W_q^T kbar and c = b_q . kbar, partial over slices of H
    per_h, n_us = _split(h_blocks, gd_blocks * B, target)
    part_u = _empty((n_us, B, D), dtype=f32, device=dev)
    part_c = _empty((n_us, B), dtype=f32, device=dev)
    _u_partial_kernel[(gd_blocks, B, n_us)](
        wq,
        bq,
        bk,
        part_k,
        part_u,
        part_c,
        H,
        D,
        wq.stride(0),
        per_h * cfg.gemv_block_h,
        B,
        n_ks,
        BLOCK_H=cfg.gemv_block_h,
        BLOCK_D=cfg.gemv_block_d,
        num_warps=warps,
    )
    u = part_u.sum(dim=0) if n_us > 1 else part_u[0]

    # 5. partial scores over slices of D
    n_blocks = _cdiv(max_n, cfg.block_n)
    per_s, n_ss = _split(d_blocks, n_blocks * B, target)
    part_s = _empty((n_ss, total), dtype=f32, device=dev)
    _score_partial_kernel[(n_blocks, B, n_ss)](
        x,
        cu,
        u,
        part_s,
        D,
        x.stride(0),
        total,
        per_s * cfg.block_d,
        BLOCK_N=cfg.block_n,
        BLOCK_D=cfg.block_d,
        num_warps=warps,
    )

    # 6. per-image exact top-K -> ascending local indices
    scores = _empty((total,), dtype=f32, device=dev)
    indices = _empty((plan.total_keep,), dtype=torch.long, device=dev)
    block, one_chunk, sel_warps = _select_params(max_n, cfg)
    _select_kernel[(B,)](
        part_s,
        part_c,
        cu,
        cuk,
        scores,
        indices,
        total,
        n_ss,
        n_us,
        B,
        math.sqrt(H),
        BLOCK=block,
        ONE_CHUNK=one_chunk,
        RADIX_BITS=cfg.radix_bits,
        num_warps=sel_warps,
    )

    # 7. rows and positions
    rows, positions = _launch_gather(x, plan, cu, cuk, grids, indices, cfg, target)
    return Selection(rows, indices, positions, cuk), scores


def topk_segments_triton(scores: torch.Tensor, plan: Plan, config: KernelConfig | None = None) -> torch.Tensor:
    """Exact per-image top-K of given fp32 ``scores`` [sum N] (the select kernel alone): ascending local indices,
    ties to the lowest index, -0.0 == +0.0, NaN above +inf. K_i come from ``plan.keep``."""
    if plan.num_images == 0:
        return _empty(0, dtype=torch.long, device=scores.device)
    cfg = config if config is not None else _CONFIG
    dev = scores.device
    scores = scores.to(torch.float32).contiguous()
    cu, cuk, _ = _device_meta(plan, dev)
    out_scores = _empty(scores.shape, dtype=torch.float32, device=dev)
    indices = _empty((plan.total_keep,), dtype=torch.long, device=dev)
    zeros = torch.zeros((plan.num_images,), dtype=torch.float32, device=dev)
    block, one_chunk, warps = _select_params(max(plan.lengths), cfg)
    _select_kernel[(plan.num_images,)](
        scores,
        zeros,
        cu,
        cuk,
        out_scores,
        indices,
        scores.shape[0],
        1,
        1,
        plan.num_images,
        1.0,
        BLOCK=block,
        ONE_CHUNK=one_chunk,
        RADIX_BITS=cfg.radix_bits,
        num_warps=warps,
    )
    return indices


def gather_with_plan_triton(
    x: torch.Tensor, plan: Plan, indices: torch.Tensor, config: KernelConfig | None = None
) -> Selection:
    """Triton gather of kept rows (and positions) for validated per-image local ``indices``."""
    if plan.num_images == 0:
        return empty_selection(x, plan)
    cfg = config if config is not None else _CONFIG
    if plan.num_images > _MAX_GRID_YZ:
        raise ValueError(f"the Triton path handles at most {_MAX_GRID_YZ} images per call, got {plan.num_images}")
    x = _row_major(x)
    indices = indices.to(device=x.device, dtype=torch.long).contiguous()
    cu, cuk, grids = _device_meta(plan, x.device)
    rows, positions = _launch_gather(x, plan, cu, cuk, grids, indices, cfg, _target_programs(x.device, cfg))
    return Selection(rows, indices, positions, cuk)


def compile_specs(dtype: str = "bf16", cfg: KernelConfig = GPU_CONFIG) -> dict:
    """(kernel, signature, constexprs, num_warps) of every kernel variant the host code launches, for compile-only
    checks with ``triton.compile(ASTSource(...), target=GPUTarget(...))``. ``dtype`` is the element type of x.
    Use ``aligned_attrs`` for the attributes the JIT adds when pointers and sizes are multiples of 16."""
    X = f"*{dtype}"
    i64p, f32p = "*i64", "*fp32"
    nw = cfg.num_warps
    gemv = {"BLOCK_H": cfg.gemv_block_h, "BLOCK_D": cfg.gemv_block_d}
    specs = {
        "mean_partial": (
            _mean_partial_kernel,
            {
                "x_ptr": X,
                "cu_ptr": i64p,
                "part_ptr": f32p,
                "D": "i32",
                "stride_x": "i32",
                "tile_rows": "i32",
                "n_tiles": "i32",
            },
            {"BLOCK_N": cfg.block_n, "BLOCK_D": cfg.block_d},
            nw,
        ),
        "mean_finalize": (
            _mean_finalize_kernel,
            {"part_ptr": f32p, "cu_ptr": i64p, "xbar_ptr": f32p, "D": "i32", "n_tiles": "i32"},
            {"BLOCK_D": cfg.block_d},
            nw,
        ),
        "kbar_partial": (
            _kbar_partial_kernel,
            {
                "wk_ptr": X,
                "xbar_ptr": f32p,
                "part_ptr": f32p,
                "H": "i32",
                "D": "i32",
                "stride_w": "i32",
                "d_per_split": "i32",
                "B": "i32",
            },
            gemv,
            nw,
        ),
        "u_partial": (
            _u_partial_kernel,
            {
                "wq_ptr": X,
                "bq_ptr": X,
                "bk_ptr": X,
                "kpart_ptr": f32p,
                "upart_ptr": f32p,
                "cpart_ptr": f32p,
                "H": "i32",
                "D": "i32",
                "stride_w": "i32",
                "h_per_split": "i32",
                "B": "i32",
                "n_ksplits": "i32",
            },
            gemv,
            nw,
        ),
        "score_partial": (
            _score_partial_kernel,
            {
                "x_ptr": X,
                "cu_ptr": i64p,
                "u_ptr": f32p,
                "part_ptr": f32p,
                "D": "i32",
                "stride_x": "i32",
                "total": "i32",
                "d_per_split": "i32",
            },
            {"BLOCK_N": cfg.block_n, "BLOCK_D": cfg.block_d},
            nw,
        ),
    }
    sel_sig = {
        "spart_ptr": f32p,
        "cpart_ptr": f32p,
        "cu_ptr": i64p,
        "cuk_ptr": i64p,
        "scores_ptr": f32p,
        "idx_ptr": i64p,
        "total": "i32",
        "n_ssplits": "i32",
        "n_csplits": "i32",
        "B": "i32",
        "sqrt_h": "fp32",
    }
    blocks = sorted({min(b, cfg.sel_one_chunk_max) for b in (256, 1024, 2048, cfg.sel_one_chunk_max)})
    for block, one in [(b, True) for b in blocks] + [(cfg.sel_block_max, False)]:
        specs[f"select_{block}_{'one' if one else 'chunked'}"] = (
            _select_kernel,
            sel_sig,
            {"BLOCK": block, "ONE_CHUNK": one, "RADIX_BITS": cfg.radix_bits},
            _select_warps(block, one),
        )
    gather_sig = {
        "x_ptr": X,
        "stride_x": "i32",
        "cu_ptr": i64p,
        "cuk_ptr": i64p,
        "idx_ptr": i64p,
        "grid_ptr": i64p,
        "out_ptr": X,
        "pos_ptr": i64p,
        "D": "i32",
        "d_per_split": "i32",
    }
    for has_pos, wide in ((True, False), (False, False), (True, True)):
        specs[f"gather_{'pos' if has_pos else 'nopos'}{'_wide' if wide else ''}"] = (
            _gather_kernel,
            gather_sig,
            {"HAS_POS": has_pos, "WIDE": wide, "BLOCK_R": cfg.gather_block_r, "BLOCK_D": cfg.gather_block_d},
            nw,
        )
    return specs


def aligned_attrs(fn, signature: dict) -> dict:
    """ASTSource attrs marking every pointer and every int argument divisible by 16, as the JIT does when a call's
    pointers are 16-byte aligned and its sizes/strides are multiples of 16 (the usual case: D = 2048, 3584, ...)."""
    out = {}
    for name, ty in signature.items():
        if ty.startswith("*") or ty in ("i32", "i64"):
            out[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return out
