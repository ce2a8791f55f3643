"""Triton exact per-image top-K over a packed batch of fp32 scores: one program per image, no sort, no topk.

``_select_kernel``  grid (B,): score_i = (sum of partials + c_b) / sqrt(H) -> order-preserving int32 keys -> exact
K-th largest key by an MSD radix select (``tl.histogram`` of RADIX_BITS-wide digits, 32 / RADIX_BITS rounds) -> every
key above it plus the first ``need`` keys equal to it (a cumsum, so ties go to the lowest index) -> compaction with
``cumsum(selected) - 1``, which yields ascending local indices. Deterministic (no atomics).

NaN scores are not detected here (that would need a host sync); they rank above +inf, like ``torch.topk``.
Variants: one per select bucket (``_select_params``: BLOCK 256 ... ``sel_one_chunk_max`` register-resident, then the
chunked kernel); the per-request counts (``total``, split counts, ``B``) are ``do_not_specialize``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import Plan
from .config import KernelConfig, _device_meta, empty_buffer, get_config


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


@triton.jit(do_not_specialize=["total", "n_ssplits", "n_csplits", "B"])
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



def _launch_select(
    spart: torch.Tensor,
    cpart: torch.Tensor,
    cu: torch.Tensor,
    cuk: torch.Tensor,
    total: int,
    n_ssplits: int,
    n_csplits: int,
    sqrt_h: float,
    plan: Plan,
    cfg: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The select kernel over score partials [n_ssplits, total] and c partials [n_csplits, B]: (fp32 scores [total],
    ascending local indices [sum K])."""
    dev = spart.device
    scores = empty_buffer((total,), dtype=torch.float32, device=dev)
    indices = empty_buffer((plan.total_keep,), dtype=torch.long, device=dev)
    block, one_chunk, warps = _select_params(max(plan.lengths), cfg)
    _select_kernel[(plan.num_images,)](
        spart,
        cpart,
        cu,
        cuk,
        scores,
        indices,
        total,
        n_ssplits,
        n_csplits,
        plan.num_images,
        sqrt_h,
        BLOCK=block,
        ONE_CHUNK=one_chunk,
        RADIX_BITS=cfg.radix_bits,
        num_warps=warps,
    )
    return scores, indices


def topk_segments_triton(scores: torch.Tensor, plan: Plan, config: KernelConfig | None = None) -> torch.Tensor:
    """Exact per-image top-K of given fp32 ``scores`` [sum N] (the select kernel alone): ascending local indices,
    ties to the lowest index, -0.0 == +0.0, NaN above +inf. K_i come from ``plan.keep``."""
    if plan.num_images == 0:
        return empty_buffer(0, dtype=torch.long, device=scores.device)
    cfg = config if config is not None else get_config()
    dev = scores.device
    scores = scores.to(torch.float32).contiguous()
    meta = _device_meta(plan, dev)
    cu, cuk = meta.cu, meta.cuk
    zeros = torch.zeros((plan.num_images,), dtype=torch.float32, device=dev)
    _, indices = _launch_select(scores, zeros, cu, cuk, scores.shape[0], 1, 1, 1.0, plan, cfg)
    return indices
