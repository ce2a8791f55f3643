"""Triton scorer of VisionSelector over a packed variable-length batch of images: the fp32 partial scores that the
select kernel (``topk_select.py``) sums. Every pass is deterministic (no atomics).

1. ``_mean_partial_kernel``   grid (row tiles, B, D blocks): column sums of a tile of rows, fp32 partials.
2. ``_mean_finalize_kernel``  grid (D blocks, B): xbar_b = (sum of the tile partials, fixed order) / N_b.
3. ``_kbar_partial_kernel``   grid (H blocks, image blocks, D splits): partial W_k xbar over a slice of D for a block
                              of up to ``gemv_block_b`` images (a small GEMM: each weight tile is read once per image
                              block, not once per image; bf16 weights read directly, fp32 accumulation).
4. ``_u_partial_kernel``      grid (D blocks, image blocks, H splits): kbar = sum(partials) + b_k for its H slice, then
                              the partial u = W_q^T kbar (per image block, as in 3) and the partial c = b_q . kbar.
                              torch sums the u partials.
5. ``_score_partial_kernel``  grid (row tiles, B, D splits): partial x_i . u_b over a slice of D.

Addressing: the base of each tile is computed in int64 (row index cast to int64 before it is multiplied by the row
stride); offsets inside a tile are int32 (BLOCK rows x stride). Loads vectorise to 16 bytes when x's row stride is a
multiple of 16 elements (the JIT specialises on it; D = 2048 / 3584 / 4096 are); odd D still works, with scalar loads.
Specialisation: D, H and the strides are fixed per model and worth specialising on; the slice sizes (``tile_rows``,
``d_per_split``, ``h_per_split``) are always multiples of a block size, so they fall in one specialisation class;
the per-request counts (images ``B``, row tiles, split counts, ``total`` rows) are ``do_not_specialize``: the JIT
compiles one variant per model and block configuration, never one per request shape (``warmup.py`` compiles them
all at model load; tests/kernels/test_kernels_no_recompile.py counts the variants a sweep of request shapes hits).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import Plan
from .config import KernelConfig, _cdiv, _split, empty_buffer


@triton.jit(do_not_specialize=["n_tiles"])
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


@triton.jit(do_not_specialize=["n_tiles"])
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


@triton.jit(do_not_specialize=["B"])
def _kbar_partial_kernel(
    wk_ptr,
    xbar_ptr,
    part_ptr,
    H,
    D,
    stride_w,
    d_per_split,
    B,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """part[s, b, h] = sum over the s-th slice of D of W_k[h, d] * xbar[b, d] for a block of BLOCK_B images: each
    weight tile is loaded once and multiplied into all of them ([BLOCK_B, BLOCK_H, BLOCK_D] products in registers,
    fp32 FMAs as for one image: no padding to a tensor-core tile, no TF32)."""
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    s = tl.program_id(2)
    hs = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = hs < H
    bs = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    bmask = bs < B
    d_lo = s * d_per_split
    d_hi = tl.minimum(D, d_lo + d_per_split)
    offs_d = tl.arange(0, BLOCK_D)
    w_tile = wk_ptr + (pid_h * BLOCK_H).to(tl.int64) * stride_w
    w_offs = (tl.arange(0, BLOCK_H) * stride_w)[:, None] + offs_d[None, :]
    x_offs = (bs.to(tl.int64) * D)[:, None] + offs_d[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        d0 = tl.multiple_of(d0, BLOCK_D)
        cmask = (d0 + offs_d) < d_hi
        w = tl.load(w_tile + d0 + w_offs, mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        xv = tl.load(xbar_ptr + d0 + x_offs, mask=bmask[:, None] & cmask[None, :], other=0.0)
        acc += tl.sum(xv[:, None, :] * w[None, :, :], axis=2)
    dst = part_ptr + (s.to(tl.int64) * B + bs)[:, None] * H + hs[None, :]
    tl.store(dst, acc, mask=bmask[:, None] & hmask[None, :])


@triton.jit(do_not_specialize=["B", "n_ksplits"])
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
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """For the s-th slice of H and a block of BLOCK_B images: kbar = sum(kbar partials) + b_k,
    upart[s, b, :] = kbar[slice] W_q[slice] (each weight tile loaded once for all BLOCK_B images, as in
    ``_kbar_partial_kernel``) and cpart[s, b] = b_q[slice] . kbar[slice]."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    s = tl.program_id(2)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    bs = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    bmask = bs < B
    h_lo = s * h_per_split
    h_hi = tl.minimum(H, h_lo + h_per_split)
    offs_h = tl.arange(0, BLOCK_H)
    w_offs = (offs_h * stride_w)[:, None] + cols[None, :]
    w_tile = wq_ptr + h_lo.to(tl.int64) * stride_w
    k_rows = (bs.to(tl.int64) * H)[:, None]
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    cacc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for h0 in range(h_lo, h_hi, BLOCK_H):
        hs = h0 + offs_h
        hmask = hs < h_hi
        kmask = bmask[:, None] & hmask[None, :]
        kb = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        kp = kpart_ptr + k_rows + hs[None, :]
        for _sk in range(n_ksplits):
            kb += tl.load(kp, mask=kmask, other=0.0)
            kp += B * H
        kb += tl.load(bk_ptr + hs, mask=hmask, other=0.0).to(tl.float32)[None, :]
        kb = tl.where(kmask, kb, 0.0)
        w = tl.load(w_tile + w_offs, mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        w_tile += BLOCK_H * stride_w
        acc += tl.sum(kb[:, :, None] * w[None, :, :], axis=1)
        cacc += tl.sum(kb * tl.load(bq_ptr + hs, mask=hmask, other=0.0).to(tl.float32)[None, :], axis=1)
    tl.store(upart_ptr + (s.to(tl.int64) * B + bs)[:, None] * D + cols[None, :], acc,
             mask=bmask[:, None] & cmask[None, :])
    if pid_d == 0:
        tl.store(cpart_ptr + s * B + bs, cacc, mask=bmask)


def gemv_buckets(cfg: KernelConfig) -> list[int]:
    """The image-block sizes of the two mat-vecs (1, 2, 4, ... ``gemv_block_b``, see ``_gemv_blocks``): one kernel
    variant each."""
    out, block_b = [], 1
    while block_b <= cfg.gemv_block_b:
        out.append(block_b)
        block_b *= 2
    return out


def _gemv_blocks(num_images: int, cfg: KernelConfig) -> tuple[int, int, int]:
    """(BLOCK_B, D step of the kbar pass, H step of the u pass): images per program from the buckets 1, 2, 4, ...
    ``gemv_block_b``, and the reduced dimension's step shrunk by the same factor, so that the product tile of a
    program stays gemv_block_h x gemv_block_d elements whatever the bucket (registers, as for one image)."""
    block_b = min(cfg.gemv_block_b, triton.next_power_of_2(max(num_images, 1)))
    kbar_step = min(cfg.gemv_block_d, max(cfg.gemv_block_d // block_b, 16))  # divides every D slice
    return block_b, kbar_step, max(cfg.gemv_block_h // block_b, 1)


@triton.jit(do_not_specialize=["total"])
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


def _launch_scores(
    x: torch.Tensor,
    cu: torch.Tensor,
    wq: torch.Tensor,
    bq: torch.Tensor,
    wk: torch.Tensor,
    bk: torch.Tensor,
    plan: Plan,
    cfg: KernelConfig,
    target: int,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Passes 1-5 for row-major x and weights: (score partials [S, sum N], c partials [S', B], S, S')."""
    dev = x.device
    total, D = x.shape
    H = wq.shape[0]
    B = plan.num_images
    max_n = max(plan.lengths)
    warps = cfg.num_warps
    f32 = torch.float32

    # 1-2. per-image mean xbar [B, D]
    d_blocks = _cdiv(D, cfg.block_d)
    tiles_wanted = _cdiv(target, B * d_blocks) if target else 1
    tile_rows = _cdiv(_cdiv(max_n, tiles_wanted), cfg.block_n) * cfg.block_n
    n_tiles = _cdiv(max_n, tile_rows)
    part_mean = empty_buffer((B, n_tiles, D), dtype=f32, device=dev)
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
    xbar = empty_buffer((B, D), dtype=f32, device=dev)
    _mean_finalize_kernel[(d_blocks, B)](part_mean, cu, xbar, D, n_tiles, BLOCK_D=cfg.block_d, num_warps=warps)

    # 3. kbar partials over slices of D, BLOCK_B images per program (the weights are read once per image block)
    h_blocks = _cdiv(H, cfg.gemv_block_h)
    gd_blocks = _cdiv(D, cfg.gemv_block_d)
    block_b, kbar_step, u_step = _gemv_blocks(B, cfg)
    b_blocks = _cdiv(B, block_b)
    per_d, n_ks = _split(gd_blocks, h_blocks * b_blocks, target)
    part_k = empty_buffer((n_ks, B, H), dtype=f32, device=dev)
    _kbar_partial_kernel[(h_blocks, b_blocks, n_ks)](
        wk,
        xbar,
        part_k,
        H,
        D,
        wk.stride(0),
        per_d * cfg.gemv_block_d,
        B,
        BLOCK_B=block_b,
        BLOCK_H=cfg.gemv_block_h,
        BLOCK_D=kbar_step,
        num_warps=warps,
    )

    # 4. u = W_q^T kbar and c = b_q . kbar, partial over slices of H
    per_h, n_us = _split(h_blocks, gd_blocks * b_blocks, target)
    part_u = empty_buffer((n_us, B, D), dtype=f32, device=dev)
    part_c = empty_buffer((n_us, B), dtype=f32, device=dev)
    _u_partial_kernel[(gd_blocks, b_blocks, n_us)](
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
        BLOCK_B=block_b,
        BLOCK_H=u_step,
        BLOCK_D=cfg.gemv_block_d,
        num_warps=warps,
    )
    u = part_u.sum(dim=0) if n_us > 1 else part_u[0]

    # 5. partial scores over slices of D
    n_blocks = _cdiv(max_n, cfg.block_n)
    per_s, n_ss = _split(d_blocks, n_blocks * B, target)
    part_s = empty_buffer((n_ss, total), dtype=f32, device=dev)
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
    return part_s, part_c, n_ss, n_us
