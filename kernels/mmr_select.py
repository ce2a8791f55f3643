"""Triton MMR selection (learned + diversity, :mod:`vs_vllm.selection.mmr`) over a packed batch of images.

For B images packed in ``x`` [sum N_i, D] (fp32 / fp16 / bf16) with fp32 scores [sum N_i], per image i choose K_i
tokens greedily: step 1 the argmax of ``lam * s'`` (s' = min-max normalised scores), then the argmax of
``lam * s'_j - (1 - lam) * max_{c chosen} cos(x_j, x_c)``; ties to the lowest index, chosen tokens never again; the
K_i indices come back ascending. Every pass is deterministic (no atomics).

1. ``_mmr_inv_norm_kernel``  grid (row tiles, G): inv[j] = 1 / max(||x_j||, 1e-12) in fp32, one pass over the rows
                             of the G images that need MMR (as ``F.normalize``'s clamp).
2. ``_mmr_kernel``           grid (G,): one program per image, looping over its K steps:
     a. min / max of the image's scores (a tile loop over N);
     b. initialise the image's slices of two global scratch buffers: ``maxsim`` (fp32, -inf) and ``taken`` (int32,
        0) -- N can be 16384+, more than registers or shared memory hold -- and take the argmax of ``lam * s'``;
     c. for each further step, one fused tile loop over N: cos_j = (x_j . x_c) * inv_j * inv_c in fp32 against the
        token c chosen last (an inner loop over D), maxsim_j = max(maxsim_j, cos_j), taken_c = 1, and the running
        (best gain, lowest index) of ``lam * s'_j - (1 - lam) * maxsim_j`` over tokens not taken -> the next c.
        s' is recomputed from the scores each step (cheaper than another N-float buffer). A barrier ends each step;
     d. order-preserving compaction of the ``taken`` mask (cumsum) -> ascending local indices at cu_keep[i].
   Per step the program reads the image's N x D rows once (the mat-vec of the torch reference), O(K·N·D) in all.

Images with ``lam == 1`` (VisionSelector's own top-K: the reference short-cuts to ``select_topk`` on the raw scores)
or ``K == N`` never enter the MMR kernel: the host routes them to the exact top-K select kernel of ``topk_select.py``
(``topk_segments_triton``), which fills the whole output first; the MMR kernel then writes its images' segments.

Routes: images whose fp32 N x N cosine matrix fits ``MMRConfig.gram_max_bytes`` go first to the Gram route
(``mmr_gram.py``: one GEMM, then every step over one row of that matrix, all K steps in one launch); the kernels below
(the streaming route) take the rest, and every image when ``gram_max_bytes = 0``.

Parallelism: the greedy steps are sequential, so an image is one program -- one SM on a GPU. Batches of several
images fill several SMs; a single large image is bounded by one SM's bandwidth (see the benchmark's caveat).

Addressing: image bases and row offsets are int64 (N_i * stride can pass 2**31); columns inside a tile are int32.
Specialisation: every per-request size (N_i, K_i, lambda, image ids) reaches the kernels through device arrays, so
the only integer arguments are D and x's row stride -- fixed per model, and worth specialising on (divisibility by
16 lets loads vectorise). Nothing varies per request, so no argument needs ``do_not_specialize``. Block sizes come
from a small fixed set (``BLOCK_D`` in {``block_d_small``, ``block_d``} by D; on the GPU ``BLOCK_N`` is fixed; in
the interpreter it shrinks to the largest image, which only saves numpy work).
Importing this module imports triton (as ``select.py`` does); ``vs_vllm.kernels.dispatch`` imports it on first use.
NaN scores or rows are not detected (that would need a host sync).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from .common import Plan, Selection, empty_selection, host_segments_on, make_plan, require_powers_of_two
from .position_channels import PositionChannels
from .config import INTERPRET, _row_major
from .gather import gather_with_plan_triton
from .mmr_reference import Lambdas, lambdas_for
from .select import select_with_scores_triton
from .topk_select import topk_segments_triton as _topk_segments_triton

__all__ = [
    "GPU_MMR_CONFIG",
    "INTERPRETER_MMR_CONFIG",
    "MMR_KERNELS",
    "MMRConfig",
    "compile_specs",
    "get_mmr_config",
    "mmr_routes",
    "mmr_select_triton",
    "mmr_with_plan_triton",
    "select_mmr_with_plan_triton",
    "set_mmr_config",
]


@dataclass(frozen=True)
class MMRConfig:
    block_n: int  # tokens per tile of the per-step similarity loop
    block_d: int  # columns per inner step (D > block_d_small)
    block_d_small: int  # columns per inner step when D <= block_d_small
    block_v: int  # tokens per tile of the vector-only loops (min/max, init, compaction)
    norm_block_r: int  # rows per program of the inverse-norm pass
    num_warps: int  # warps of the MMR kernel (one program per image: it has the SM to itself)
    norm_num_warps: int  # warps of the inverse-norm pass
    shrink: bool  # shrink block_n / block_v to the largest image (interpreter: saves numpy work; no compile cost)
    # tokens per tile when x is not 16-aligned (odd D or row stride, or an offset view): without the divisibility
    # hints every load is scalar and needs its own address registers; at BLOCK_N = 64 the kernel hit 255 registers
    # and spilled 156 bytes with triton 3.6 on sm_90 (first H200 gpu-check run), so unaligned inputs get a shorter tile
    block_n_unaligned: int = 16
    # the Gram route (kernels/mmr_gram.py): images whose fp32 N x N cosine matrices fit gram_max_bytes (together per
    # launch) run their steps over rows of that matrix; tokens per tile and warps of its one-program-per-image kernel
    # Off (0) by default: the route is untimed on a GPU and the load-time warm-up does not compile its variants yet
    # (kernels/warmup.py); MMRConfig(gram_max_bytes=1 << 30) turns it on (one N = 16384 image per GiB).
    gram_max_bytes: int = 0
    gram_block_n: int = 2048
    gram_num_warps: int = 8


# Interpreter: every op is a numpy call per program step, so few large blocks.
INTERPRETER_MMR_CONFIG = MMRConfig(
    block_n=1024, block_d=128, block_d_small=32, block_v=4096, norm_block_r=1024, num_warps=4, norm_num_warps=4,
    shrink=True,
)
# GPU: a 64 x 128 tile per inner step over 8 warps (32 fp32 accumulators per thread); 16 x 128 for unaligned x.
# Registers/spills: see tests/kernels/test_kernels_compile.py (compile-only, ptxas -v).
GPU_MMR_CONFIG = MMRConfig(
    block_n=64, block_d=128, block_d_small=32, block_v=1024, norm_block_r=32, num_warps=8, norm_num_warps=4,
    shrink=False,
)

_CONFIG = INTERPRETER_MMR_CONFIG if INTERPRET else GPU_MMR_CONFIG


def get_mmr_config() -> MMRConfig:
    return _CONFIG


def set_mmr_config(config: MMRConfig | None = None, **changes) -> MMRConfig:
    """Replace the active block configuration (tests run GPU-sized tiles in the interpreter); returns the old one."""
    global _CONFIG
    base = config if config is not None else _CONFIG
    new = replace(base, **changes) if changes else base
    require_powers_of_two(new, ("block_n", "block_n_unaligned", "block_d", "block_d_small", "block_v", "norm_block_r",
                                "gram_block_n"))
    old = _CONFIG
    _CONFIG = new
    return old


# --------------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------------


@triton.jit
def _mmr_inv_norm_kernel(
    x_ptr,
    stride_x,
    cu_ptr,
    img_ptr,
    inv_ptr,
    D,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """inv[start_b + r] = 1 / max(||x[start_b + r]||, 1e-12) for a tile of rows of image b = img[g]."""
    pid_t = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.load(img_ptr + g)
    start = tl.load(cu_ptr + b)
    n = (tl.load(cu_ptr + b + 1) - start).to(tl.int32)
    rows = pid_t * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    d_hi = tl.where(pid_t * BLOCK_R < n, D, 0)  # tiles past the image's end do nothing
    offs_d = tl.arange(0, BLOCK_D)
    row_ptr = (x_ptr + start * stride_x) + (rows.to(tl.int64) * stride_x)[:, None]
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for d0 in range(0, d_hi, BLOCK_D):
        cols = d0 + offs_d
        xv = tl.load(row_ptr + cols[None, :], mask=rmask[:, None] & (cols < D)[None, :], other=0.0).to(tl.float32)
        acc += xv * xv
    norm = tl.sqrt_rn(tl.sum(acc, axis=1))
    inv = tl.math.div_rn(tl.full((BLOCK_R,), 1.0, tl.float32), tl.maximum(norm, 1e-12))
    tl.store(inv_ptr + start + rows, inv, mask=rmask)


@triton.jit
def _score_range(s_row, n, BLOCK: tl.constexpr):
    """(lo, denom, pos_span) of the min-max normalisation of an image's N scores: min, max - min where positive
    (else 1.0), and whether it is positive."""
    offs = tl.arange(0, BLOCK)
    lo = tl.full((), float("inf"), tl.float32)
    hi = tl.full((), float("-inf"), tl.float32)
    for v0 in range(0, n, BLOCK):
        loc = v0 + offs
        m = loc < n
        s = tl.load(s_row + loc, mask=m, other=0.0)
        lo = tl.minimum(lo, tl.min(tl.where(m, s, float("inf")), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(m, s, float("-inf")), axis=0))
    span = hi - lo
    pos_span = span > 0
    return lo, tl.where(pos_span, span, 1.0), pos_span


@triton.jit
def _relevance(s, lo, denom, pos_span, lam):
    """lam * min-max normalised score, with the reference's fp32 operations (IEEE division)."""
    return lam * tl.where(pos_span, tl.math.div_rn(s - lo, denom), 0.0)


@triton.jit
def _argmax_update(gain, loc, valid, best_val, best_idx, n):
    """Fold a tile into the running (max gain, lowest index attaining it)."""
    tile_max = tl.max(gain, axis=0)
    tile_idx = tl.min(tl.where(valid & (gain == tile_max), loc, n), axis=0)
    better = (tile_max > best_val) | ((tile_max == best_val) & (tile_idx < best_idx))
    return tl.where(better, tile_max, best_val), tl.where(better, tile_idx, best_idx)


@triton.jit
def _mmr_kernel(
    x_ptr,
    stride_x,
    scores_ptr,
    inv_ptr,
    cu_ptr,
    cuk_ptr,
    img_ptr,
    lam_ptr,
    maxsim_ptr,
    taken_ptr,
    idx_ptr,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One program per image b = img[g]: K_b greedy MMR steps, then ascending compaction into idx[cu_keep_b:]."""
    g = tl.program_id(0)
    b = tl.load(img_ptr + g)
    start = tl.load(cu_ptr + b)
    n = (tl.load(cu_ptr + b + 1) - start).to(tl.int32)
    out0 = tl.load(cuk_ptr + b)
    k = (tl.load(cuk_ptr + b + 1) - out0).to(tl.int32)
    lam = tl.load(lam_ptr + 2 * g)  # lam and (1 - lam), both rounded from the host's doubles like torch's scalars
    oml = tl.load(lam_ptr + 2 * g + 1)
    s_row = scores_ptr + start
    inv_row = inv_ptr + start
    ms_row = maxsim_ptr + start
    tk_row = taken_ptr + start
    x_img = x_ptr + start * stride_x  # 64-bit image base
    offs_v = tl.arange(0, BLOCK_V)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    # a. min / max of the scores
    lo, denom, pos_span = _score_range(s_row, n, BLOCK_V)

    # b. scratch init and the first choice: argmax of lam * s' (no diversity term yet)
    best_val = tl.full((), float("-inf"), tl.float32)
    best_idx = n
    for v0 in range(0, n, BLOCK_V):
        loc = v0 + offs_v
        m = loc < n
        tl.store(ms_row + loc, tl.full((BLOCK_V,), float("-inf"), tl.float32), mask=m)
        tl.store(tk_row + loc, tl.zeros((BLOCK_V,), dtype=tl.int32), mask=m)
        rel = _relevance(tl.load(s_row + loc, mask=m, other=0.0), lo, denom, pos_span, lam)
        best_val, best_idx = _argmax_update(tl.where(m, rel, float("-inf")), loc, m, best_val, best_idx, n)
    c = best_idx
    tl.debug_barrier()

    # c. steps 2..K: similarity to the last choice c, running max, next choice (one fused pass over N)
    for _step in range(1, k):
        c_row = x_img + c.to(tl.int64) * stride_x
        inv_c = tl.load(inv_row + c)
        best_val = tl.full((), float("-inf"), tl.float32)
        best_idx = n
        for n0 in range(0, n, BLOCK_N):
            loc = n0 + offs_n
            m = loc < n
            row_ptr = x_img + (loc.to(tl.int64) * stride_x)[:, None]
            acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + offs_d
                cm = cols < D
                xv = tl.load(row_ptr + cols[None, :], mask=m[:, None] & cm[None, :], other=0.0).to(tl.float32)
                cv = tl.load(c_row + cols, mask=cm, other=0.0).to(tl.float32)
                acc += xv * cv[None, :]
            cos = tl.sum(acc, axis=1) * tl.load(inv_row + loc, mask=m, other=0.0) * inv_c
            ms = tl.maximum(tl.load(ms_row + loc, mask=m, other=0.0), cos)
            tk = tl.load(tk_row + loc, mask=m, other=1) | (loc == c).to(tl.int32)
            tl.store(ms_row + loc, ms, mask=m)
            tl.store(tk_row + loc, tk, mask=m)
            rel = _relevance(tl.load(s_row + loc, mask=m, other=0.0), lo, denom, pos_span, lam)
            free = m & (tk == 0)
            gain = tl.where(free, rel - oml * ms, float("-inf"))
            best_val, best_idx = _argmax_update(gain, loc, m, best_val, best_idx, n)
        c = best_idx
        tl.debug_barrier()  # this step's maxsim / taken stores before the next step's loads

    # d. ascending compaction of the taken mask (plus the last choice, never marked)
    seen = tl.zeros((), dtype=tl.int32)
    for v0 in range(0, n, BLOCK_V):
        loc = v0 + offs_v
        m = loc < n
        sel = m & ((tl.load(tk_row + loc, mask=m, other=0) != 0) | (loc == c))
        sel_i = sel.to(tl.int32)
        pos = seen + tl.cumsum(sel_i, 0) - sel_i
        tl.store(idx_ptr + out0 + pos, loc.to(tl.int64), mask=sel)
        seen += tl.sum(sel_i, axis=0)


MMR_KERNELS = {"mmr_inv_norm": _mmr_inv_norm_kernel, "mmr": _mmr_kernel}


# --------------------------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------------------------

_empty = torch.empty  # every buffer the kernels fill comes from here (tests poison it to catch unwritten entries)
_MAX_GRID_Y = 65535  # CUDA limit of grid dimension y (images of the inverse-norm pass)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, v - 1).bit_length()


def _block_d(d: int, cfg: MMRConfig) -> int:
    return cfg.block_d_small if d <= cfg.block_d_small else cfg.block_d


def _aligned16(x: torch.Tensor) -> bool:
    """Whether Triton's JIT will see x's pointer, row stride and D as multiples of 16 (its divisibility hints)."""
    return x.shape[1] % 16 == 0 and x.stride(0) % 16 == 0 and x.data_ptr() % 16 == 0


def _blocks(max_n: int, cfg: MMRConfig, aligned: bool = True) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_V, norm BLOCK_R) for images of up to ``max_n`` tokens."""
    block_n = cfg.block_n if aligned else cfg.block_n_unaligned
    if not cfg.shrink:
        return block_n, cfg.block_v, cfg.norm_block_r
    cap = max(16, _pow2_at_least(max_n))
    return min(block_n, cap), min(cfg.block_v, cap), min(cfg.norm_block_r, cap)


def mmr_routes(plan: Plan, lambdas: Sequence[float]) -> tuple[list[int], list[int]]:
    """(images for the exact top-K kernel: lam == 1 or K == N, images for the MMR kernel)."""
    topk, mmr = [], []
    for i, (n, k, lam) in enumerate(zip(plan.lengths, plan.keep, lambdas)):
        (topk if lam == 1.0 or k == n else mmr).append(i)
    return topk, mmr


def _host_floats_on(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """Host floats as fp32 on ``device`` without a sync (pinned, non-blocking on CUDA)."""
    t = torch.tensor(list(values), dtype=torch.float32)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def mmr_with_plan_triton(
    scores: torch.Tensor,
    x: torch.Tensor,
    plan: Plan,
    lambdas: Sequence[float],
    config: MMRConfig | None = None,
) -> torch.Tensor:
    """[sum K_i] int64 ascending local indices for a validated plan and validated per-image ``lambdas``."""
    dev = x.device
    if plan.num_images == 0:
        return _empty(0, dtype=torch.long, device=dev)
    cfg = config if config is not None else _CONFIG
    topk_imgs, mmr_imgs = mmr_routes(plan, lambdas)
    scores = scores.to(device=dev, dtype=torch.float32).contiguous()
    if topk_imgs:
        indices = _topk_segments_triton(scores, plan)  # every image; the MMR images' segments are overwritten below
    else:
        indices = _empty((plan.total_keep,), dtype=torch.long, device=dev)
    if not mmr_imgs:
        return indices
    if len(mmr_imgs) > _MAX_GRID_Y:
        raise ValueError(f"the Triton MMR path handles at most {_MAX_GRID_Y} images per call, got {len(mmr_imgs)}")
    x = _row_major(x)
    from .mmr_gram import gram_groups, mmr_gram_with_plan_triton  # imports this module: imported here

    groups, mmr_imgs = gram_groups(plan.lengths, mmr_imgs, cfg.gram_max_bytes)
    if groups:  # the Gram route first; the streaming kernel below takes the images whose matrix is too large
        mmr_gram_with_plan_triton(scores, x, plan, lambdas, [i for g in groups for i in g], indices, cfg)
    if not mmr_imgs:
        return indices
    total, d = x.shape
    G = len(mmr_imgs)
    max_n = max(plan.lengths[i] for i in mmr_imgs)
    block_n, block_v, block_r = _blocks(max_n, cfg, _aligned16(x))
    block_d = _block_d(d, cfg)
    cu, cuk, img = host_segments_on([plan.cu_seqlens, plan.cu_keep, mmr_imgs], dev)
    lam = _host_floats_on([v for i in mmr_imgs for v in (lambdas[i], 1.0 - lambdas[i])], dev)  # [G, 2]

    inv = _empty((total,), dtype=torch.float32, device=dev)
    _mmr_inv_norm_kernel[(_cdiv(max_n, block_r), G)](
        x, x.stride(0), cu, img, inv, d, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=cfg.norm_num_warps
    )
    maxsim = _empty((total,), dtype=torch.float32, device=dev)
    taken = _empty((total,), dtype=torch.int32, device=dev)
    _mmr_kernel[(G,)](
        x,
        x.stride(0),
        scores,
        inv,
        cu,
        cuk,
        img,
        lam,
        maxsim,
        taken,
        indices,
        d,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        BLOCK_V=block_v,
        num_warps=cfg.num_warps,
    )
    return indices


def mmr_select_triton(
    scores: torch.Tensor, x: torch.Tensor, cu_seqlens, keep, lambdas: Lambdas, config: MMRConfig | None = None
) -> torch.Tensor:
    """MMR selection of K_i tokens per image of a packed batch (the op of :func:`vs_vllm.selection.mmr.mmr_select`,
    batched).

    scores:     [sum N_i] fp32 VisionSelector scores (e.g. from the score passes of ``score.py``).
    x:          [sum N_i, D] float32 / float16 / bfloat16 embeddings (cosine similarities are taken in fp32).
    cu_seqlens: [B + 1] cumulative token counts (host list or CPU tensor); keep: K_i per image (or one int).
    lambdas:    one float in [0, 1] for every image or one per image (host floats).
    Returns [sum K_i] int64: per image, its K_i local indices, ascending, image after image.
    """
    plan = make_plan(x, cu_seqlens, keep)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.shape[0] != x.shape[0]:
        raise ValueError(f"scores must be [{x.shape[0]}], got {tuple(getattr(scores, 'shape', ()))}")
    if scores.device != x.device:
        raise ValueError(f"scores are on {scores.device}, x on {x.device}")
    return mmr_with_plan_triton(scores, x, plan, lambdas_for(lambdas, plan.num_images, plan.keep), config)


def select_mmr_with_plan_triton(
    x: torch.Tensor,
    plan: Plan,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    lambdas: Sequence[float],
    config: MMRConfig | None = None,
    *,
    source: torch.Tensor | None = None,
    channels: PositionChannels | None = None,
) -> tuple[Selection, torch.Tensor]:
    """Scores (the score pass of ``select.py``), MMR, then the shared gather (``source`` and ``channels`` as for
    ``select_with_scores_triton``); also returns the fp32 scores.

    A batch whose every image is routed to the exact top-K is ``select_with_scores_triton`` itself. Otherwise the
    score pass runs with K = 1 per image (its top-1 select and B-row gather are negligible next to MMR's K·N·D).
    """
    if plan.num_images == 0:
        return (empty_selection(x if source is None else source, plan, channels),
                _empty(0, dtype=torch.float32, device=x.device))
    _, mmr_imgs = mmr_routes(plan, lambdas)
    if not mmr_imgs:
        return select_with_scores_triton(x, plan, q_weight, q_bias, k_weight, k_bias, source=source,
                                         channels=channels)
    score_plan = Plan(plan.cu_seqlens, tuple(range(plan.num_images + 1)), None, None)
    _, scores = select_with_scores_triton(x, score_plan, q_weight, q_bias, k_weight, k_bias)
    indices = mmr_with_plan_triton(scores, x, plan, lambdas, config)
    return gather_with_plan_triton(x, plan, indices, source=source, channels=channels), scores


# --------------------------------------------------------------------------------------------------------------------
# Compile-only checks (tests/kernels/compile_check.py)
# --------------------------------------------------------------------------------------------------------------------


def compile_specs(dtype: str = "bf16", cfg: MMRConfig = GPU_MMR_CONFIG, aligned: bool = True) -> dict:
    """(kernel, signature, constexprs, num_warps) of every MMR kernel variant the host code launches on a GPU, for
    16-aligned x (compile it with ``aligned_attrs``) or not (no divisibility hints: the shorter token tile)."""
    block_n = _blocks(0, replace(cfg, shrink=False), aligned)[0]
    X = f"*{dtype}"
    i64p, f32p = "*i64", "*fp32"
    specs = {}
    for block_d in sorted({cfg.block_d_small, cfg.block_d}):
        specs[f"mmr_inv_norm_d{block_d}"] = (
            _mmr_inv_norm_kernel,
            {"x_ptr": X, "stride_x": "i32", "cu_ptr": i64p, "img_ptr": i64p, "inv_ptr": f32p, "D": "i32"},
            {"BLOCK_R": cfg.norm_block_r, "BLOCK_D": block_d},
            cfg.norm_num_warps,
        )
        specs[f"mmr_d{block_d}"] = (
            _mmr_kernel,
            {
                "x_ptr": X,
                "stride_x": "i32",
                "scores_ptr": f32p,
                "inv_ptr": f32p,
                "cu_ptr": i64p,
                "cuk_ptr": i64p,
                "img_ptr": i64p,
                "lam_ptr": f32p,
                "maxsim_ptr": f32p,
                "taken_ptr": "*i32",
                "idx_ptr": i64p,
                "D": "i32",
            },
            {"BLOCK_N": block_n, "BLOCK_D": block_d, "BLOCK_V": cfg.block_v},
            cfg.num_warps,
        )
    from .mmr_gram import compile_specs as gram_specs  # the Gram route's kernel (kernels/mmr_gram.py)

    specs.update(gram_specs(dtype, cfg, aligned))
    return specs
