"""Triton selection (interpreter on CPU) against the plain-torch reference.

Exact index equality is checked against select_topk applied to the kernel's own scores (the summation order differs
from torch's), and against the reference indices up to near-ties; rows and positions must be bit-identical to
x[indices]; buffers start poisoned so unwritten entries show up.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("numpy")

from kernel_testlib import (
    SCORE_ATOL,
    SCORE_RTOL,
    assert_same_selection_up_to_near_ties,
    bits,
    factor_grid,
    keep_counts,
    make_problem,
    own_topk,
    poisoned_buffers,
)
from vs_vllm.kernels import PositionChannels, select_tokens
from vs_vllm.kernels import config as kconfig
from vs_vllm.kernels import select as ksel
from vs_vllm.kernels.common import make_plan
from vs_vllm.kernels.reference import gather_with_plan_ref, select_with_scores_ref

if not torch.cuda.is_available() and not ksel.INTERPRET:
    pytest.skip("no CUDA device and TRITON_INTERPRET was not set before triton was imported", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: Interpreter cases of more than a few seconds on the CPU: make test runs them, make test-fast keeps the small ones
#: (on a GPU, make gpu-check runs them all in seconds).
SLOW = pytest.mark.slow

# GPU-sized tiles, splits over D/H as on a 4-SM device, chunked select with small chunks, narrow radix digits:
# exercises every loop and split of the GPU configuration on small inputs.
SMALL_GPU_LIKE = {
    "block_n": 16,
    "block_d": 32,
    "gemv_block_h": 16,
    "gemv_block_d": 32,
    "gemv_block_b": 4,
    "gather_block_r": 16,
    "gather_block_d": 32,
    "sel_one_chunk_max": 256,
    "sel_block_max": 256,
    "radix_bits": 4,
    "programs_per_sm": 8,
    "sm_count": 4,
}


@pytest.fixture
def gpu_like_config():
    old = ksel.set_config(ksel.GPU_CONFIG, **SMALL_GPU_LIKE)
    try:
        yield ksel.get_config()
    finally:
        ksel.set_config(old)


def run_both(x, cu, keep, weights, grids=None):
    x = x.to(DEVICE)
    weights = tuple(w.to(DEVICE) for w in weights)
    plan = make_plan(x, cu, keep, grids)
    with poisoned_buffers(kconfig):
        sel, scores = ksel.select_with_scores_triton(x, plan, *weights)
    ref, ref_scores = select_with_scores_ref(x, plan, *weights)
    return plan, x, sel, scores, ref, ref_scores


def check(plan, x, sel, scores, ref, ref_scores):
    cu, keep = list(plan.cu_seqlens), plan.keep
    assert scores.dtype == torch.float32 and not torch.isnan(scores).any()
    torch.testing.assert_close(scores.cpu(), ref_scores.cpu(), rtol=SCORE_RTOL, atol=SCORE_ATOL)
    assert sel.indices.dtype == torch.long and sel.indices.shape == (plan.total_keep,)
    idx = sel.indices.cpu()
    assert torch.equal(idx, own_topk(scores.cpu(), cu, keep))
    assert_same_selection_up_to_near_ties(idx, ref.indices.cpu(), ref_scores.cpu(), cu, keep)
    # rows / positions: bit-identical to a torch gather of the kernel's own indices
    expect = gather_with_plan_ref(x, plan, sel.indices)
    assert sel.rows.dtype == x.dtype and sel.rows.shape == (plan.total_keep, x.shape[1])
    assert torch.equal(bits(sel.rows.cpu()), bits(expect.rows.cpu()))
    assert torch.equal(sel.cu_keep.cpu(), torch.tensor(plan.cu_keep))
    if plan.has_grids:
        assert torch.equal(sel.positions.cpu(), expect.positions.cpu())
    else:
        assert sel.positions is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [33, 130, 257])
@pytest.mark.parametrize("n", [1, 7, pytest.param(37, marks=SLOW), pytest.param(577, marks=SLOW)])
def test_images_k_sweep(n, d, dtype):
    """One batch holds the same image size four times with K in {1, small, N-1, N}."""
    ks = keep_counts(n)
    seed = 1000 * n + 10 * d + (dtype == torch.bfloat16)
    x, cu, w = make_problem([n] * len(ks), d, dtype, seed)
    grids = [factor_grid(n)] * len(ks)
    check(*run_both(x, cu, ks, w, grids))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ragged_batch_different_k(dtype):
    lengths = [577, 1, 37, 130, 7]
    keep = [115, 1, 36, 13, 7]
    x, cu, w = make_problem(lengths, 130, dtype, seed=7)
    grids = [factor_grid(n) for n in lengths]
    check(*run_both(x, cu, keep, w, grids))


def test_weights_in_bf16_and_strided_rows():
    x, cu, w = make_problem([300, 45], 96, torch.bfloat16, seed=11, strided=True)
    assert x.stride(0) != x.shape[1]
    w = tuple(t.to(torch.bfloat16) for t in w)
    check(*run_both(x, cu, [30, 9], w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_ties_go_to_lowest_index(dtype):
    """Rows copied from a small pool: scores tie exactly, the lowest indices of a tied group must win."""
    lengths = [200, 57]
    x, cu, w = make_problem(lengths, 64, dtype, seed=3, dup_pool=5)
    plan, x, sel, scores, ref, ref_scores = run_both(x, cu, [37, 20], w)
    check(plan, x, sel, scores, ref, ref_scores)
    assert torch.equal(sel.indices.cpu(), ref.indices.cpu())
    # within image 0, equal rows -> equal kernel scores; the kept members of the boundary group are its first ones
    s = scores[: lengths[0]].cpu()
    kept = set(sel.indices[:37].tolist())
    kth = torch.sort(s, descending=True).values[36]
    group = [j for j in range(lengths[0]) if s[j] == kth]
    taken = [j for j in group if j in kept]
    assert taken == group[: len(taken)] and len(taken) >= 1


def test_all_scores_equal_keeps_first_k():
    """Zero scorer weights: every score is +-0.0 (signs differ per row); -0.0 == +0.0, so the first K win."""
    lengths = [50, 9]
    x, cu, w = make_problem(lengths, 40, torch.float32, seed=5)
    w = tuple(torch.zeros_like(t) for t in w)
    _plan, x, sel, _scores, ref, _ref_scores = run_both(x, cu, [13, 4], w)
    assert torch.equal(sel.indices.cpu(), torch.tensor(list(range(13)) + list(range(4))))
    assert torch.equal(sel.indices.cpu(), ref.indices.cpu())


@SLOW
def test_gpu_like_config_splits_and_chunks(gpu_like_config):
    """Small tiles, D/H splits and the chunked select (N > sel_one_chunk_max) in the interpreter."""
    lengths = [577, 37, 300, 1]
    x, cu, w = make_problem(lengths, 130, torch.bfloat16, seed=40)
    check(*run_both(x, cu, [115, 36, 1, 1], w, [factor_grid(n) for n in lengths]))


@SLOW
def test_gpu_like_config_ties_chunked(gpu_like_config):
    """Ties spanning several select chunks: the equal-rank carry across chunks must keep the lowest indices."""
    x, cu, w = make_problem([700], 48, torch.float32, seed=9, dup_pool=3)
    plan, x, sel, scores, ref, ref_scores = run_both(x, cu, [350], w)
    check(plan, x, sel, scores, ref, ref_scores)
    assert torch.equal(sel.indices.cpu(), ref.indices.cpu())


@SLOW
def test_large_images():
    """16384 tokens (register-resident select in the interpreter config) and 16385 (chunked: one token past it)."""
    lengths = [16384, 16385]
    x, cu, w = make_problem(lengths, 24, torch.bfloat16, seed=21)
    check(*run_both(x, cu, [int(16384 * 0.2), int(16385 * 0.1)], w, [(1, 128, 128), (5, 29, 113)]))


# ---------------------------------------------------------------------------------------------------------------
# The select kernel alone, on hand-made scores
# ---------------------------------------------------------------------------------------------------------------

POOL = [float("-inf"), -2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, float("inf")]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("radix_bits", [pytest.param(1, marks=SLOW), pytest.param(2, marks=SLOW), 4, 8])
def test_topk_kernel_on_tie_pool(radix_bits, chunked):
    """Scores from a pool with +-0.0 and +-inf (many exact ties), every digit width, one chunk or several."""
    g = torch.Generator().manual_seed(radix_bits + 10 * chunked)
    lengths = [1, 9, 300, 1000]
    scores = torch.tensor(POOL)[torch.randint(0, len(POOL), (sum(lengths),), generator=g)]
    keep = [1] + [int(torch.randint(1, n + 1, (1,), generator=g)) for n in lengths[1:]]
    x = torch.empty(sum(lengths), 1)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    plan = make_plan(x, cu, keep)
    if chunked:
        old = ksel.set_config(sel_one_chunk_max=128, sel_block_max=128, radix_bits=radix_bits)
    else:
        old = ksel.set_config(radix_bits=radix_bits)
    try:
        with poisoned_buffers(kconfig):
            idx = ksel.topk_segments_triton(scores.to(DEVICE), plan)
    finally:
        ksel.set_config(old)
    assert torch.equal(idx.cpu(), own_topk(scores, cu, keep))


def test_topk_kernel_extremes_and_nan():
    """Tiny and huge magnitudes, subnormals, both zeros; NaN ranks above +inf (like torch.topk)."""
    vals = torch.tensor([1e-45, -1e-45, 3.4e38, -3.4e38, 0.0, -0.0, 1.0, -1.0, 1e-38, -1e-38, 2.0, float("nan")])
    x = torch.empty(vals.numel(), 1)
    n = vals.numel()
    for k in range(1, n + 1):
        plan = make_plan(x, [0, n], [k])
        idx = ksel.topk_segments_triton(vals.to(DEVICE), plan).cpu()
        finite = vals.clone()
        finite[11] = float("inf")  # NaN ranks first; compare with NaN replaced by +inf
        assert torch.equal(idx, own_topk(finite, [0, n], [k])), k


# ---------------------------------------------------------------------------------------------------------------
# Many images per call: the two mat-vecs run as GEMMs over blocks of gemv_block_b images
# ---------------------------------------------------------------------------------------------------------------


@SLOW
@pytest.mark.parametrize("num_images", [15, 16, 17, 40])
def test_many_images_share_the_weight_reads(gpu_like_config, num_images):
    """Image counts around and past the image blocks (up to 4 images per program here, 8 on a GPU): every block's
    rows of kbar / u land on their own image."""
    g = torch.Generator().manual_seed(num_images)
    lengths = [int(v) for v in torch.randint(1, 70, (num_images,), generator=g)]
    x, cu, w = make_problem(lengths, 72, torch.bfloat16, seed=num_images, hidden=40)
    keep = [max(1, n // 3) for n in lengths]
    check(*run_both(x, cu, keep, w, [factor_grid(n) for n in lengths]))


@SLOW
def test_many_images_interpreter_config():
    """The interpreter's own blocks (one program per 8 images, no splits) on 33 images of different sizes."""
    lengths = [3 + 7 * i for i in range(33)]
    x, cu, w = make_problem(lengths, 130, torch.float32, seed=33)
    check(*run_both(x, cu, [max(1, n // 4) for n in lengths], w))


# ---------------------------------------------------------------------------------------------------------------
# The engine's packed layout from the whole chain: score x, gather wider source rows + position channels
# ---------------------------------------------------------------------------------------------------------------


@SLOW
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_select_into_packed_layout_from_wider_source(dtype, gpu_like_config):
    """The scorer reads the first D columns (a strided view); rows come whole from the wider source (DeepStack
    levels), followed by the position channels of (int(t * f), h, w)."""
    lengths = [300, 60, 1, 130]
    grids = [(1, 20, 15), (3, 4, 5), (1, 1, 1), (2, 5, 13)]
    keep = [61, 59, 1, 13]
    factors = PositionChannels((1.0, 2.0, 1.0, 0.5))
    x, cu, w = make_problem(lengths, 64, dtype, seed=77, strided=True)
    source = x.as_strided((x.shape[0], x.stride(0)), (x.stride(0), 1))  # the whole wide buffer
    assert source.shape[1] == 64 + 11 and torch.equal(bits(source[:, :64]), bits(x))
    source = source.to(DEVICE)
    x = source[:, :64]
    weights = tuple(t.to(DEVICE) for t in w)
    plan = make_plan(x, cu, keep, grids)
    with poisoned_buffers(kconfig):
        sel, scores = ksel.select_with_scores_triton(x, plan, *weights, source=source, channels=factors)
    ref, ref_scores = select_with_scores_ref(x, plan, *weights, source=source, channels=factors)
    check(plan, x, ksel.select_with_scores_triton(x, plan, *weights)[0], scores, ref, ref_scores)
    expect = gather_with_plan_ref(x, plan, sel.indices, source=source, channels=factors)
    assert sel.packed.shape == (plan.total_keep, 64 + 11 + 6)
    assert torch.equal(bits(sel.packed.cpu()), bits(expect.packed.cpu()))
    assert torch.equal(sel.positions.cpu(), expect.positions.cpu())


def test_select_tokens_packed_layout_auto_equals_torch():
    x, cu, w = make_problem([90, 41], 48, torch.bfloat16, seed=5)
    grids, factors = [(2, 9, 5), (1, 41, 1)], PositionChannels((1.5, 1.0))
    x, w = x.to(DEVICE), tuple(t.to(DEVICE) for t in w)
    auto = select_tokens(x, cu, [30, 7], *w, grids=grids, channels=factors)
    ref = select_tokens(x, cu, [30, 7], *w, grids=grids, channels=factors, backend="torch")
    assert torch.equal(auto.indices.cpu(), ref.indices.cpu())
    assert torch.equal(bits(auto.packed.cpu()), bits(ref.packed.cpu()))
    with pytest.raises(ValueError, match="source must hold the 131 rows"):
        select_tokens(x, cu, [30, 7], *w, grids=grids, source=x[:5])
