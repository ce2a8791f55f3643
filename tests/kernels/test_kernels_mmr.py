"""Triton MMR selection (interpreter on CPU) against the plain-torch reference built on ``mmr_select``.

Tolerance rules, per dtype: the kernel gets the reference's exact inputs (the same fp32 scores; for bf16 / fp16 the
same rounded rows, which both sides widen to fp32), so the chosen indices must be identical for fp32, bf16 and fp16
alike; only the summation order of the cosine similarities differs, and the fixed seeds hold no near-tie that flips.
Duplicate rows are the exception: there the reference itself does not tie equal rows exactly (the CPU mat-vec rounds a
row's dot product differently depending on its position), so the kernel is checked against a float64 oracle with
explicit ties (lowest index wins) and against the reference only group by group. Buffers start poisoned (NaN /
sentinel) so unwritten outputs or uninitialised scratch show up. The dispatcher entry (``select_tokens_mmr``) is
checked against the reference applied to the Triton score pass's own scores, and its rows / positions against a torch
gather of its indices, bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("numpy")

import vs_vllm.kernels as K
from kernel_testlib import bits, factor_grid, keep_counts, make_problem, poisoned_buffers
from vs_vllm.kernels import config as kconfig
from vs_vllm.kernels import dispatch
from vs_vllm.kernels import mmr_gram as kgram
from vs_vllm.kernels import mmr_select as kmmr
from vs_vllm.kernels import select as ksel
from vs_vllm.kernels.common import make_plan
from vs_vllm.kernels.mmr_reference import mmr_select_ref, mmr_with_plan_ref, select_tokens_mmr_ref
from vs_vllm.kernels.reference import gather_with_plan_ref, select_tokens_ref

if not torch.cuda.is_available() and not ksel.INTERPRET:
    pytest.skip("no CUDA device and TRITON_INTERPRET was not set before triton was imported", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: Interpreter cases of more than a few seconds on the CPU: make test runs them, make test-fast keeps the small ones
#: (on a GPU, make gpu-check runs them all in seconds).
SLOW = pytest.mark.slow
LAMBDAS = (0.0, 0.3, 0.5, 1.0)

# Small tiles: several N tiles, several D chunks and vector tiles per image, as the GPU configuration has on real sizes.
SMALL_TILES = kmmr.MMRConfig(
    block_n=16, block_d=16, block_d_small=8, block_v=32, norm_block_r=16, num_warps=4, norm_num_warps=4, shrink=False
)


@pytest.fixture(autouse=True)
def _fresh_fallbacks(monkeypatch):
    monkeypatch.delenv(dispatch.FORCE_TORCH_ENV, raising=False)
    dispatch.reset_fallbacks()
    yield
    dispatch.reset_fallbacks()


def cumsum0(lengths):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu


def random_case(lengths, d, dtype, seed):
    """Fresh random rows (rounded to ``dtype``) and fp32 scores, never zeros."""
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    x = torch.randn(total, d, generator=g).to(dtype)
    scores = torch.randn(total, generator=g)
    return x, scores, cumsum0(lengths)


def duplicate_case(lengths, d, dtype, seed, pool):
    """Every row of an image is a copy of one of ``pool`` random rows, with that row's score: exact ties."""
    g = torch.Generator().manual_seed(seed)
    xs, ss = [], []
    for n in lengths:
        rows = torch.randn(pool, d, generator=g).to(dtype)
        vals = torch.randn(pool, generator=g)
        pick = torch.randint(0, pool, (n,), generator=g)
        xs.append(rows[pick])
        ss.append(vals[pick])
    return torch.cat(xs), torch.cat(ss), cumsum0(lengths)


ROUTES = ("gram", "stream")


def route_config(config, route):
    """``config`` (None: the active one) with every MMR image on the Gram route (matrices always fit) or on the
    streaming kernel (no matrix fits)."""
    base = config if config is not None else kmmr.get_mmr_config()
    return replace(base, gram_max_bytes=1 << 40 if route == "gram" else 0)


def triton_indices(x, scores, cu, keep, lams, config=None, route="gram"):
    with poisoned_buffers(kmmr), poisoned_buffers(kconfig), poisoned_buffers(kgram):
        return kmmr.mmr_select_triton(scores.to(DEVICE), x.to(DEVICE), cu, keep, lams,
                                      config=route_config(config, route)).cpu()


def run_and_check(x, scores, cu, keep, lams, config=None):
    """Triton (poisoned buffers) on both routes vs the reference on the same inputs; returns the indices (CPU)."""
    ref = mmr_select_ref(scores, x, cu, keep, lams)
    for route in ROUTES:
        got = check_against(triton_indices(x, scores, cu, keep, lams, config, route), ref, cu, keep)
    return got


def check_against(got, ref, cu, keep):
    assert got.dtype == torch.long and got.shape == ref.shape
    keep_list = [keep] * (len(cu) - 1) if isinstance(keep, int) else list(keep)
    off = 0
    for i, k in enumerate(keep_list):  # per image: ascending, distinct, in range
        seg = got[off : off + k]
        off += k
        assert bool((seg[1:] > seg[:-1]).all()) and int(seg[0]) >= 0 and int(seg[-1]) < cu[i + 1] - cu[i], (i, seg)
    assert torch.equal(got, ref), f"triton {got.tolist()}\nref    {ref.tolist()}"
    return got


def k_lambda_pairs(n, rotate):
    """Images of one batch: every K in {1, small, N-1, N} with every lambda for small N; for larger N each K with one
    lambda, rotated per call site (the interpreter runs K-1 sequential steps per image)."""
    ks = keep_counts(n)
    if n <= 40:
        return [(k, lam) for k in ks for lam in LAMBDAS]
    return [(k, LAMBDAS[(j + rotate) % len(LAMBDAS)]) for j, k in enumerate(ks)]


# --------------------------------------------------------------------------------------------------------------------
# The MMR op itself: mmr_select_triton vs mmr_select_ref
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [5, 24, 72])
@pytest.mark.parametrize("n", [1, 2, 7, *(pytest.param(n, marks=SLOW) for n in (33, 130, 257))])
def test_sweep_fp32(n, d):
    """One batch per (N, D): the same image size repeated with K in {1, small, N-1, N} and lambda in {0, .3, .5, 1}."""
    pairs = k_lambda_pairs(n, rotate=d)
    x, scores, cu = random_case([n] * len(pairs), d, torch.float32, seed=100 * n + d)
    run_and_check(x, scores, cu, [k for k, _ in pairs], [lam for _, lam in pairs])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "d"), [(7, 5), pytest.param(33, 72, marks=SLOW), pytest.param(130, 24, marks=SLOW),
                                      pytest.param(257, 72, marks=SLOW)])
def test_sweep_half(n, d, dtype):
    """bf16 / fp16 rows: the reference runs on the same rounded rows (widened to fp32 on both sides)."""
    pairs = k_lambda_pairs(n, rotate=n)
    x, scores, cu = random_case([n] * len(pairs), d, dtype, seed=7 * n + d + (dtype == torch.float16))
    run_and_check(x, scores, cu, [k for k, _ in pairs], [lam for _, lam in pairs])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("lengths", "keep", "lams"),
    [
        ([130], [13], [0.5]),
        pytest.param([33, 257], [32, 40], [0.0, 0.3], marks=SLOW),
        pytest.param([1, 130, 7], [1, 64, 6], [0.3, 0.5, 0.0], marks=SLOW),
        ([257, 2, 33], [25, 2, 5], [1.0, 0.5, 0.3]),  # a lam == 1 image and a K == N image beside MMR images
    ],
)
def test_ragged_batches(lengths, keep, lams, dtype):
    x, scores, cu = random_case(lengths, 24 if dtype == torch.float32 else 72, dtype, seed=sum(lengths) + len(lams))
    run_and_check(x, scores, cu, keep, lams)


@SLOW
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_config_in_interpreter(dtype):
    """The GPU block configuration (64 x 128 tiles for 16-aligned x, 16 x 128 otherwise, 1024-token vector tiles, no
    shrinking), both BLOCK_D widths."""
    x, scores, cu = random_case([130, 70], 160, dtype, seed=11)
    assert kmmr._blocks(130, kmmr.GPU_MMR_CONFIG, kmmr._aligned16(x))[0] == 64
    run_and_check(x, scores, cu, [13, 30], [0.5, 0.3], config=kmmr.GPU_MMR_CONFIG)
    x, scores, cu = random_case([130, 70], 150, dtype, seed=12)
    assert kmmr._blocks(130, kmmr.GPU_MMR_CONFIG, kmmr._aligned16(x))[0] == 16
    run_and_check(x, scores, cu, [13, 30], [0.5, 0.3], config=kmmr.GPU_MMR_CONFIG)
    x, scores, cu = random_case([33], 24, dtype, seed=13)
    run_and_check(x, scores, cu, [10], [0.0], config=kmmr.GPU_MMR_CONFIG)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_tiles_cross_tile_and_d_chunks(dtype):
    """16-row tiles, 16-column D chunks, 32-token vector tiles: running argmax and compaction across many tiles."""
    x, scores, cu = random_case([70, 33], 40, dtype, seed=5)
    run_and_check(x, scores, cu, [20, 12], [0.5, 0.0], config=SMALL_TILES)
    x, scores, cu = random_case([45, 7], 5, dtype, seed=6)  # D <= block_d_small: the narrow variant
    run_and_check(x, scores, cu, [10, 6], [0.3, 0.5], config=SMALL_TILES)


def greedy_oracle(scores, x, k, lam, tie_tol=1e-9):
    """MMR in float64 with exact ties made explicit: gains within ``tie_tol`` of the best count as tied (lowest index
    wins). Equal rows then tie exactly, whatever the position-dependent rounding of a mat-vec does to them."""
    s = scores.double()
    span = float(s.max() - s.min())
    rel = lam * ((s - s.min()) / span if span > 0 else torch.zeros_like(s))
    xd = x.double()
    unit = xd / xd.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = unit @ unit.T
    taken = torch.zeros(len(s), dtype=torch.bool)
    max_sim = None
    for _ in range(k):
        gain = rel.clone() if max_sim is None else rel - (1 - lam) * max_sim
        gain[taken] = -float("inf")
        c = int(torch.nonzero(gain >= gain.max() - tie_tol)[0, 0])
        taken[c] = True
        max_sim = sim[c] if max_sim is None else torch.maximum(max_sim, sim[c])
    return torch.nonzero(taken)[:, 0]


def check_duplicates(x, scores, cu, keep, lams, config=None, route="stream"):
    """Kernel == the tie-aware oracle; kept members of each group of equal rows are its first ones; the torch
    reference keeps as many rows of each group (it may pick other members: the CPU mat-vec rounds a row's product
    differently by its position, so equal rows need not tie there)."""
    got = triton_indices(x, scores, cu, keep, lams, config, route)
    ref = mmr_select_ref(scores, x, cu, keep, lams)
    off = 0
    for i, (k, lam) in enumerate(zip(keep, lams)):
        a, b = cu[i], cu[i + 1]
        seg, ref_seg = got[off : off + k], ref[off : off + k]
        off += k
        assert torch.equal(seg, greedy_oracle(scores[a:b], x[a:b], k, lam)), (i, seg.tolist())
        rows = [tuple(r) for r in bits(x[a:b]).tolist()]
        group = {r: g for g, r in enumerate(dict.fromkeys(rows))}
        members = [[j for j, r in enumerate(rows) if group[r] == g] for g in range(len(group))]
        kept = set(seg.tolist())
        for mem in members:
            taken = [j for j in mem if j in kept]
            assert taken == mem[: len(taken)], (i, mem, taken)
        assert Counter(group[rows[j]] for j in seg.tolist()) == Counter(group[rows[j]] for j in ref_seg.tolist())
    return got


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("config", [pytest.param(None, marks=SLOW), SMALL_TILES], ids=["default", "small_tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=SLOW)])
def test_duplicate_rows_ties_to_lowest_index(dtype, config, route):
    """Rows (and their scores) copied from a small pool: gains tie exactly; the lowest index of a group must win."""
    n0 = 130 if config is None else 60
    x, scores, cu = duplicate_case([n0, 57], 24, dtype, seed=3, pool=6)
    check_duplicates(x, scores, cu, [40, 20], [0.5, 0.3], config=config, route=route)
    # lam = 0: pure diversity from token 0; K up to the pool size keeps one representative per group
    x, scores, cu = duplicate_case([n0], 24, dtype, seed=4, pool=6)
    check_duplicates(x, scores, cu, [6], [0.0], config=config, route=route)


@SLOW
def test_all_rows_and_scores_equal_keep_first_k():
    """One repeated row, equal scores: every gain ties at every step, so the first K tokens win."""
    x = torch.randn(1, 24).repeat(77, 1)
    scores = torch.full((77,), 0.25)
    cu = [0, 40, 77]
    for lam in (0.0, 0.5):
        for route in ROUTES:
            got = check_duplicates(x, scores, cu, [9, 30], [lam, lam], route=route)
            assert got.tolist() == list(range(9)) + list(range(30))


@SLOW
def test_large_image():
    """N = 2000, D = 64, K = 10% in one image and 5% of a second: several interpreter tiles per step."""
    x, scores, cu = random_case([2000, 1500], 64, torch.float32, seed=77)
    run_and_check(x, scores, cu, [200, 75], [0.5, 0.3])


def test_lambda_validation():
    x, scores, cu = random_case([7, 9], 5, torch.float32, seed=0)
    for bad in ([0.5], [0.5, 1.5], [0.5, float("nan")], [True, 0.5], "0.5"):
        with pytest.raises(ValueError, match="lambda"):
            kmmr.mmr_select_triton(scores.to(DEVICE), x.to(DEVICE), cu, [3, 3], bad)
    with pytest.raises(ValueError, match="scores"):
        kmmr.mmr_select_triton(scores[:-1].to(DEVICE), x.to(DEVICE), cu, [3, 3], 0.5)
    with pytest.raises(ValueError, match="k must"):
        kmmr.mmr_select_triton(scores.to(DEVICE), x.to(DEVICE), cu, [8, 3], 0.5)


# --------------------------------------------------------------------------------------------------------------------
# The dispatcher entry: select_tokens_mmr
# --------------------------------------------------------------------------------------------------------------------


def test_public_export():
    assert "select_tokens_mmr" in K.__all__ and K.select_tokens_mmr is dispatch.select_tokens_mmr


@SLOW
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_select_tokens_mmr_triton_vs_torch(dtype):
    lengths = [130, 7, 57, 33]
    keep = [20, 7, 56, 10]  # image 1: K == N (routed to the top-K kernel)
    lams = [0.5, 0.3, 0.0, 1.0]  # image 3: lam == 1 (routed to the top-K kernel)
    x, cu, w = make_problem(lengths, 72, dtype, seed=31)
    x, w = x.to(DEVICE), tuple(t.to(DEVICE) for t in w)
    grids = [factor_grid(n) for n in lengths]
    with poisoned_buffers(kmmr), poisoned_buffers(kconfig):
        sel = K.select_tokens_mmr(x, cu, keep, *w, lams, grids=grids, backend="triton")
    ref = K.select_tokens_mmr(x, cu, keep, *w, lams, grids=grids, backend="torch")
    plan = make_plan(x, cu, keep, grids)
    # indices: the reference MMR applied to the Triton score pass's own scores
    _, scores = ksel.select_with_scores_triton(x, plan, *w)
    own = mmr_with_plan_ref(scores.cpu(), x.cpu(), plan, lams)
    assert torch.equal(sel.indices.cpu(), own)
    # the torch backend is the packed reference; both agree here (no near-ties in the scores of this case)
    assert torch.equal(ref.indices.cpu(), select_tokens_mmr_ref(x, cu, keep, *w, lams, grids=grids).indices.cpu())
    assert torch.equal(sel.indices.cpu(), ref.indices.cpu())
    # rows / positions / cu_keep: the shared gather of those indices, bit for bit
    expect = gather_with_plan_ref(x, plan, sel.indices)
    assert sel.rows.dtype == x.dtype and torch.equal(bits(sel.rows.cpu()), bits(expect.rows.cpu()))
    assert torch.equal(sel.positions.cpu(), expect.positions.cpu())
    assert torch.equal(sel.cu_keep.cpu(), torch.tensor(plan.cu_keep))


@pytest.mark.parametrize("all_top_k", [pytest.param(False, marks=SLOW), True])
def test_select_tokens_mmr_into_packed_layout_from_wider_source(all_top_k):
    """The engine's call: scores on the first D columns, rows gathered whole from the wider source, position
    channels written by the gather; also when every image is routed to the top-K kernel (lam == 1)."""
    lengths, keep = [130, 57], [20, 56]
    lams = [1.0, 1.0] if all_top_k else [0.5, 0.2]
    x, cu, w = make_problem(lengths, 48, torch.bfloat16, seed=41, strided=True)
    source = x.as_strided((x.shape[0], x.stride(0)), (x.stride(0), 1)).to(DEVICE)
    x, w = source[:, :48], tuple(t.to(DEVICE) for t in w)
    grids, channels = [(2, 5, 13), (3, 19, 1)], K.PositionChannels((1.0, 2.5))
    with poisoned_buffers(kmmr), poisoned_buffers(kconfig):
        sel = K.select_tokens_mmr(x, cu, keep, *w, lams, grids=grids, backend="triton", source=source,
                                  channels=channels)
    ref = K.select_tokens_mmr(x, cu, keep, *w, lams, grids=grids, backend="torch", source=source, channels=channels)
    assert torch.equal(sel.indices.cpu(), ref.indices.cpu())
    expect = gather_with_plan_ref(x, make_plan(x, cu, keep, grids), sel.indices, source=source, channels=channels)
    assert sel.packed.shape == (sum(keep), source.shape[1] + 6)
    assert torch.equal(bits(sel.packed.cpu()), bits(expect.packed.cpu()))
    assert torch.equal(bits(ref.packed.cpu()), bits(expect.packed.cpu()))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_lambda_one_is_select_tokens(backend):
    """Every image at lam == 1: exactly VisionSelector's top-K (same scores, same indices, same rows)."""
    x, cu, w = make_problem([57, 9], 33, torch.float32, seed=8)
    x, w = x.to(DEVICE), tuple(t.to(DEVICE) for t in w)
    a = K.select_tokens_mmr(x, cu, [11, 4], *w, 1.0, backend=backend)
    b = K.select_tokens(x, cu, [11, 4], *w, backend=backend)
    assert torch.equal(a.indices.cpu(), b.indices.cpu()) and torch.equal(a.rows.cpu(), b.rows.cpu())
    assert a.positions is None
    if backend == "torch":
        assert torch.equal(a.indices, select_tokens_ref(x, cu, [11, 4], *w).indices)


def test_select_tokens_mmr_empty_batch_and_validation():
    x = torch.empty(0, 8, device=DEVICE)
    w = torch.randn(4, 8, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    for backend in ("torch", "triton"):
        sel = K.select_tokens_mmr(x, [0], [], w, b, w, b, [], backend=backend)
        assert sel.rows.shape == (0, 8) and sel.cu_keep.tolist() == [0]
    x = torch.randn(10, 8, device=DEVICE)
    with pytest.raises(ValueError, match="lambdas"):
        K.select_tokens_mmr(x, [0, 4, 10], [2, 2], w, b, w, b, [0.5], backend="triton")
    with pytest.raises(ValueError, match="lambdas"):
        K.select_tokens_mmr(x, [0, 4, 10], [2, 2], w, b, w, b, -0.1, backend="torch")


def test_explicit_triton_raises_automatic_falls_back(monkeypatch):
    x, cu, w = make_problem([20, 9], 16, torch.float32, seed=2)
    x, w = x.to(DEVICE), tuple(t.to(DEVICE) for t in w)

    def boom(*args, **kwargs):
        raise RuntimeError("mmr kernel exploded")

    monkeypatch.setattr(kmmr, "select_mmr_with_plan_triton", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        K.select_tokens_mmr(x, cu, [5, 3], *w, 0.5, backend="triton")
    # Automatic calls stay on torch unless the kernel is opted into.
    sel = K.select_tokens_mmr(x, cu, [5, 3], *w, 0.5)
    assert torch.equal(sel.indices, select_tokens_mmr_ref(x, cu, [5, 3], *w, 0.5).indices)
    monkeypatch.setenv(dispatch.MMR_TRITON_ENV, "1")
    monkeypatch.delenv(dispatch.STRICT_ENV, raising=False)  # the production behaviour: warn and fall back
    if dispatch.resolve_backend(x) == "triton":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sel = K.select_tokens_mmr(x, cu, [5, 3], *w, 0.5)
        assert any("exploded" in str(c.message) for c in caught)
        ref = select_tokens_mmr_ref(x, cu, [5, 3], *w, 0.5)
        assert torch.equal(sel.indices, ref.indices)


@SLOW  # a fresh interpreter (subprocess)
def test_torch_path_never_imports_triton():
    code = textwrap.dedent(
        """
        import sys, torch
        import vs_vllm.kernels as K
        x = torch.randn(20, 8)
        w = torch.randn(4, 8)
        b = torch.randn(4)
        sel = K.select_tokens_mmr(x, [0, 12, 20], [3, 8], w, b, w, b, [0.5, 0.0], grids=[(1, 3, 4), (2, 2, 2)])
        assert sel.rows.shape == (11, 8) and sel.positions.shape == (11, 3)
        assert "triton" not in sys.modules, "triton was imported on the torch path"
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", dispatch.FORCE_TORCH_ENV)}
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------------------------------------------------------
# The Gram route (kernels/mmr_gram.py): steps over rows of each image's precomputed cosine matrix
# --------------------------------------------------------------------------------------------------------------------

GRAM_SMALL_TILES = replace(SMALL_TILES, gram_block_n=16)


def test_gram_groups_split_by_bytes():
    lengths = [10, 20, 5, 40, 3]
    groups, too_large = kgram.gram_groups(lengths, [0, 1, 2, 3, 4], max_bytes=4 * 20 * 20 + 4 * 5 * 5)
    assert groups == [[0], [1, 2], [4]] and too_large == [3]
    assert kgram.gram_groups(lengths, [0, 4], max_bytes=0) == ([], [0, 4])
    assert kgram.gram_groups(lengths, [], max_bytes=1 << 30) == ([], [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gram_route_groups_and_streaming_rest(dtype, monkeypatch):
    """A ragged batch at 16-token tiles: the matrices of images 0 and 2 fill one launch, image 3 a second, image 1's
    is too large and goes to the streaming kernel; a lam == 1 image and a K == N image go to the top-K kernel."""
    lengths, keep, lams = [37, 70, 29, 45, 9, 12], [9, 21, 28, 4, 9, 5], [0.5, 0.3, 0.0, 0.7, 0.5, 1.0]
    x, scores, cu = random_case(lengths, 5 if dtype == torch.float32 else 33, dtype, seed=90 + len(str(dtype)))
    launches = []
    real = kgram.mmr_gram_with_plan_triton

    def spy(scores, x, plan, lambdas, images, indices, config=None):
        launches.append(kgram.gram_groups(plan.lengths, images, config.gram_max_bytes)[0])
        return real(scores, x, plan, lambdas, images, indices, config)

    monkeypatch.setattr(kgram, "mmr_gram_with_plan_triton", spy)
    cfg = replace(GRAM_SMALL_TILES, gram_max_bytes=4 * (37 * 37 + 29 * 29))
    ref = mmr_select_ref(scores, x, cu, keep, lams)
    with poisoned_buffers(kmmr), poisoned_buffers(kconfig), poisoned_buffers(kgram):
        got = kmmr.mmr_select_triton(scores.to(DEVICE), x.to(DEVICE), cu, keep, lams, config=cfg).cpu()
    check_against(got, ref, cu, keep)
    assert launches == [[[0, 2], [3]]]


@pytest.mark.parametrize("n", [2, 17, 64, pytest.param(257, marks=SLOW)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram_sweep_small_tiles(n, dtype):
    """Odd N across 16-token tiles, K in {1, small, N-1} and every lambda; the Gram route alone."""
    pairs = [(k, lam) for k, lam in k_lambda_pairs(n, rotate=n) if k < n and lam < 1.0] or [(1, 0.5)]
    x, scores, cu = random_case([n] * len(pairs), 24, dtype, seed=300 + n)
    keep, lams = [k for k, _ in pairs], [lam for _, lam in pairs]
    check_against(triton_indices(x, scores, cu, keep, lams, GRAM_SMALL_TILES, "gram"),
                  mmr_select_ref(scores, x, cu, keep, lams), cu, keep)


@SLOW
def test_gram_large_image():
    """N = 2000 with K = 20% and a clustered second image (strong diversity term), default interpreter tiles."""
    g = torch.Generator().manual_seed(4)
    x, scores, cu = random_case([2000, 700], 64, torch.float32, seed=78)
    centres = torch.randn(6, 64, generator=g)
    x[2000:] = 2 * torch.randn(1, 64, generator=g) + centres[torch.randint(0, 6, (700,), generator=g)] + 0.3 * x[2000:]
    keep, lams = [400, 140], [0.5, 0.5]
    check_against(triton_indices(x, scores, cu, keep, lams, None, "gram"), mmr_select_ref(scores, x, cu, keep, lams),
                  cu, keep)
