"""Triton MMR selection over a precomputed similarity matrix: the greedy K steps of one image in one launch, each step
a pass over one row of that image's N x N cosine matrix instead of its N x D embeddings.

Same op and contract as :func:`vs_vllm.kernels.mmr_select.mmr_select_triton` (torch reference:
``vs_vllm.kernels.mmr_reference.mmr_with_plan_ref``, i.e. ``vs_vllm.selection.mmr.mmr_select`` per image; arithmetic
contract in that module's docstring). Why a second kernel: the streaming kernel re-reads the image's N x D rows every
step on one SM (4.6 ms per step at N = 16384 on an H200), and the torch loop is a chain of small launches (~85 µs per
step). Here

1. the host computes, per image, S = U U^T with U = ``F.normalize(x.float())`` (cuBLAS fp32 GEMM, TF32 off: the
   same fp32 unit rows and dot products as the reference, summed in GEMM order), packed image after image;
2. ``_mmr_gram_kernel`` (grid (G,), one program per image) runs all K steps: min / max of the scores, the first
   argmax of ``lam * s'``, then per step one fused tile loop over the N entries of row c of S (c = the token chosen
   last): maxsim_j = max(maxsim_j, S[c, j]), taken_c = 1, and the running (best gain, lowest index) of
   ``lam * s'_j - (1 - lam) * maxsim_j`` -> the next c; finally the ascending compaction of the taken mask.
   A chosen token's maxsim is set to +inf (its gain is then -inf, since 1 - lam > 0 on this route), so no taken
   mask is kept. Per step the program reads 12 N bytes (row c of S, maxsim, scores) and writes 4 N, versus
   D x elem x N bytes for the streaming kernel: ~450x less at D = 3584 bf16.

One launch for every step: no per-step launch or host sync, so the time does not scale with K launches. Cost: the
GEMM (2 N^2 D flops per image) and 4 N^2 bytes of memory per image; images whose matrix does not fit
``gram_max_bytes`` (``MMRConfig``; 0 by default, so the route is opt-in until timed) go to the streaming kernel; a batch is
processed in groups whose matrices fit together. Untimed on a GPU so far: ``make gpu-check`` (bench_mmr.py) measures
it against torch and the streaming kernel.

Why not one persistent multi-program launch per image (programs over N tiles, a device-wide barrier per step): the
interpreter runs programs one after another, so a spin barrier deadlocks there and the kernel could not be tested on
the CPU; the one-program-per-image loop over a row of S reads few enough bytes per step that one SM suffices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import Plan, host_segments_on
from .mmr_select import MMRConfig, _argmax_update, _host_floats_on, _relevance, _score_range, get_mmr_config

__all__ = ["MMR_GRAM_KERNELS", "compile_specs", "gram_groups", "mmr_gram_with_plan_triton"]


@triton.jit
def _mmr_gram_kernel(
    sim_ptr,
    sim_off_ptr,
    scores_ptr,
    cu_ptr,
    cuk_ptr,
    img_ptr,
    lam_ptr,
    maxsim_ptr,
    idx_ptr,
    BLOCK_N: tl.constexpr,
):
    """One program per image b = img[g]: K_b greedy MMR steps over the rows of its cosine matrix at sim_off[g], then
    ascending compaction into idx[cu_keep_b:]."""
    g = tl.program_id(0)
    b = tl.load(img_ptr + g)
    start = tl.load(cu_ptr + b)
    n = (tl.load(cu_ptr + b + 1) - start).to(tl.int32)
    out0 = tl.load(cuk_ptr + b)
    k = (tl.load(cuk_ptr + b + 1) - out0).to(tl.int32)
    lam = tl.load(lam_ptr + 2 * g)  # lam and (1 - lam), both rounded from the host's doubles like torch's scalars
    oml = tl.load(lam_ptr + 2 * g + 1)
    sim_img = sim_ptr + tl.load(sim_off_ptr + g)  # 64-bit base of this image's N x N matrix
    s_row = scores_ptr + start
    ms_row = maxsim_ptr + start  # +inf marks a token already chosen: its gain is then -inf, as (1 - lam) > 0 here
    offs = tl.arange(0, BLOCK_N)

    # min / max of the scores
    lo, denom, pos_span = _score_range(s_row, n, BLOCK_N)

    # scratch init and the first choice: argmax of lam * s' (no diversity term yet)
    best_val = tl.full((), float("-inf"), tl.float32)
    best_idx = n
    for v0 in range(0, n, BLOCK_N):
        loc = v0 + offs
        m = loc < n
        tl.store(ms_row + loc, tl.full((BLOCK_N,), float("-inf"), tl.float32), mask=m)
        rel = _relevance(tl.load(s_row + loc, mask=m, other=0.0), lo, denom, pos_span, lam)
        best_val, best_idx = _argmax_update(tl.where(m, rel, float("-inf")), loc, m, best_val, best_idx, n)
    c = best_idx
    tl.debug_barrier()

    # steps 2..K: row c of S, running max, next choice (one fused pass over N)
    for _step in range(1, k):
        c_row = sim_img + c.to(tl.int64) * n
        best_val = tl.full((), float("-inf"), tl.float32)
        best_idx = n
        for n0 in range(0, n, BLOCK_N):
            loc = n0 + offs
            m = loc < n
            ms = tl.maximum(tl.load(ms_row + loc, mask=m, other=0.0), tl.load(c_row + loc, mask=m, other=0.0))
            ms = tl.where(loc == c, float("inf"), ms)
            tl.store(ms_row + loc, ms, mask=m)
            rel = _relevance(tl.load(s_row + loc, mask=m, other=0.0), lo, denom, pos_span, lam)
            gain = tl.where(m & (ms != float("inf")), rel - oml * ms, float("-inf"))
            best_val, best_idx = _argmax_update(gain, loc, m, best_val, best_idx, n)
        c = best_idx
        tl.debug_barrier()  # this step's maxsim / taken stores before the next step's loads

    # ascending compaction of the taken mask (plus the last choice, never marked)
    seen = tl.zeros((), dtype=tl.int32)
    for v0 in range(0, n, BLOCK_N):
        loc = v0 + offs
        m = loc < n
        sel = m & ((tl.load(ms_row + loc, mask=m, other=0.0) == float("inf")) | (loc == c))
        sel_i = sel.to(tl.int32)
        pos = seen + tl.cumsum(sel_i, 0) - sel_i
        tl.store(idx_ptr + out0 + pos, loc.to(tl.int64), mask=sel)
        seen += tl.sum(sel_i, axis=0)


MMR_GRAM_KERNELS = {"mmr_gram": _mmr_gram_kernel}

_empty = torch.empty  # every buffer the kernel or the GEMM fills comes from here (tests poison it)


def _block_n(max_n: int, cfg: MMRConfig) -> int:
    if not cfg.shrink:
        return cfg.gram_block_n
    return min(cfg.gram_block_n, max(16, 1 << max(0, max_n - 1).bit_length()))


def gram_groups(lengths: Sequence[int], images: Sequence[int], max_bytes: int) -> tuple[list[list[int]], list[int]]:
    """(groups of images whose fp32 N x N matrices fit ``max_bytes`` together, in order; images too large alone)."""
    groups: list[list[int]] = []
    too_large: list[int] = []
    used = max_bytes + 1
    for i in images:
        size = 4 * lengths[i] * lengths[i]
        if size > max_bytes:
            too_large.append(i)
            continue
        if used + size > max_bytes:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += size
    return groups, too_large


@contextlib.contextmanager
def _fp32_matmul():
    """cuBLAS in true fp32 for the Gram GEMM whatever the process chose (TF32 would round the unit rows to 10 bits)."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def mmr_gram_with_plan_triton(
    scores: torch.Tensor,
    x: torch.Tensor,
    plan: Plan,
    lambdas: Sequence[float],
    images: Sequence[int],
    indices: torch.Tensor,
    config: MMRConfig | None = None,
) -> None:
    """Write the MMR choices of ``images`` (each with lam < 1 and K < N, and a matrix that fits ``gram_max_bytes``)
    into their segments of ``indices`` [sum K_i]; ``scores`` fp32 contiguous on x's device."""
    cfg = config if config is not None else get_mmr_config()
    dev = x.device
    cs = plan.cu_seqlens
    groups, too_large = gram_groups(plan.lengths, images, cfg.gram_max_bytes)
    if too_large:
        raise ValueError(f"images {too_large} need more than gram_max_bytes = {cfg.gram_max_bytes} for their matrix")
    cu, cuk = host_segments_on([cs, plan.cu_keep], dev)
    maxsim = _empty((x.shape[0],), dtype=torch.float32, device=dev)
    for group in groups:
        offsets, total = [], 0
        for i in group:
            offsets.append(total)
            total += plan.lengths[i] ** 2
        sim = _empty((total,), dtype=torch.float32, device=dev)
        with torch.no_grad(), _fp32_matmul():
            for i, off in zip(group, offsets):
                n = plan.lengths[i]
                unit = F.normalize(x[cs[i] : cs[i + 1]].float(), dim=-1, eps=1e-12)
                torch.mm(unit, unit.T, out=sim[off : off + n * n].view(n, n))
        img, sim_off = host_segments_on([group, offsets], dev)
        lam = _host_floats_on([v for i in group for v in (lambdas[i], 1.0 - lambdas[i])], dev)
        block_n = _block_n(max(plan.lengths[i] for i in group), cfg)
        _mmr_gram_kernel[(len(group),)](
            sim, sim_off, scores, cu, cuk, img, lam, maxsim, indices, BLOCK_N=block_n,
            num_warps=cfg.gram_num_warps,
        )


def compile_specs(dtype: str = "bf16", cfg: MMRConfig | None = None, aligned: bool = True) -> dict:
    """(kernel, signature, constexprs, num_warps) of the Gram kernel the host launches on a GPU. It never reads x
    (only the fp32 matrix), so ``dtype`` and ``aligned`` change nothing; they are accepted like the other specs'."""
    from .mmr_select import GPU_MMR_CONFIG

    cfg = cfg if cfg is not None else GPU_MMR_CONFIG
    i64p, f32p = "*i64", "*fp32"
    sig = {
        "sim_ptr": f32p,
        "sim_off_ptr": i64p,
        "scores_ptr": f32p,
        "cu_ptr": i64p,
        "cuk_ptr": i64p,
        "img_ptr": i64p,
        "lam_ptr": f32p,
        "maxsim_ptr": f32p,
        "idx_ptr": i64p,
    }
    return {f"mmr_gram_n{cfg.gram_block_n}": (_mmr_gram_kernel, sig, {"BLOCK_N": cfg.gram_block_n},
                                              cfg.gram_num_warps)}
