"""The selection-method registry: every method honours the contract; each method's own behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.selection import methods as M
from vs_vllm.selection.methods import get_method, list_methods, register_method, select
from vs_vllm.selection.scorer import TransformerScorer, importance_scores
from vs_vllm.selection.topk import select_topk

EXPECTED_METHODS = {"visionselector", "random", "uniform", "norm", "divprune", "dart", "temporal"}
GRIDS = [(1, 1, 1), (1, 1, 13), (1, 13, 1), (1, 3, 5), (1, 7, 9), (2, 3, 3), (3, 5, 7), (4, 2, 3)]


def make_scorer(d: int, seed: int = 0) -> TransformerScorer:
    torch.manual_seed(seed)
    scorer = TransformerScorer(d)
    scorer.reset_parameters(init_std=0.3)
    with torch.no_grad():
        scorer.q_proj.bias.normal_()
        scorer.k_proj.bias.normal_()
    return scorer


def check_contract(idx: torch.Tensor, n: int, k: int, device: torch.device) -> None:
    assert isinstance(idx, torch.Tensor)
    assert idx.dtype == torch.long and idx.shape == (k,) and idx.device == device
    values = idx.tolist()
    assert values == sorted(set(values))
    assert all(0 <= v < n for v in values)


def ks_for(n: int) -> list[int]:
    return sorted({1, min(2, n), max(1, n // 3), max(1, n - 1), n})


def test_registry_lists_the_shipped_methods() -> None:
    assert set(list_methods()) >= EXPECTED_METHODS
    assert list_methods() == sorted(list_methods())
    for name in EXPECTED_METHODS:
        doc = get_method(name).__doc__
        assert doc is not None
        assert "arXiv" in doc.splitlines()[0] or "no paper" in doc.splitlines()[0]


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_contract_on_grids(method: str, grid: tuple[int, int, int]) -> None:
    n = math.prod(grid)
    d = 12
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * 3
    scorer = make_scorer(d)
    for k in ks_for(n):
        out = select(method, x, grid, k, scorer=scorer, seed=k)
        check_contract(out, n, k, x.device)
        direct = get_method(method)(x, grid, k, scorer=scorer, seed=k)
        assert torch.equal(out, direct)  # deterministic given the same inputs
        if k == n:
            assert out.tolist() == list(range(n))


@pytest.mark.parametrize("method", list_methods())
@settings(max_examples=25, deadline=None)
@given(
    t=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    d=st.sampled_from([4, 8]),
    data=st.data(),
)
def test_contract_property(method: str, t: int, h: int, w: int, d: int, data) -> None:
    n = t * h * w
    k = data.draw(st.integers(1, n), label="k")
    seed = data.draw(st.integers(0, 2**31), label="seed")
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    if data.draw(st.booleans(), label="duplicates") and n > 1:
        x[n // 2 :] = x[: n - n // 2].clone()  # exact duplicate tokens must not produce duplicate indices
    out = select(method, x, (t, h, w), k, scorer=make_scorer(d), seed=seed)
    check_contract(out, n, k, x.device)


@pytest.mark.parametrize("method", list_methods())
def test_bf16_embeddings(method: str) -> None:
    x = torch.randn(45, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out = select(method, x, (1, 5, 9), 11, scorer=make_scorer(16))
    check_contract(out, 45, 11, x.device)


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize(
    ("grid", "k"), [((1, 3, 4), 13), ((1, 3, 4), 0), ((1, 3, 5), 2), ((1, 0, 12), 2), ((1, 3), 2), ((1, 3, 4), 2.0)]
)
def test_bad_inputs_raise(method: str, grid, k) -> None:
    x = torch.randn(12, 8)
    with pytest.raises(ValueError):
        select(method, x, grid, k, scorer=make_scorer(8))
    with pytest.raises(ValueError):
        get_method(method)(x, grid, k, scorer=make_scorer(8))


def test_unknown_method_lists_names() -> None:
    with pytest.raises(ValueError) as info:
        get_method("fastv-ish")
    msg = str(info.value)
    assert "'fastv-ish'" in msg
    for name in EXPECTED_METHODS:
        assert name in msg
    with pytest.raises(ValueError):
        select("nope", torch.randn(4, 2), (1, 2, 2), 2)
    with pytest.raises(ValueError):
        get_method(None)  # type: ignore[arg-type]


def test_register_method_duplicate_and_custom() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_method("random")(lambda *a, **kw: None)
    name = "_test_first_k"
    try:

        @register_method(name)
        def first_k(embeddings, grid, k, *, scorer=None, seed=None):
            return torch.arange(k, device=embeddings.device)

        assert name in list_methods()
        assert select(name, torch.randn(10, 3), (1, 2, 5), 4).tolist() == [0, 1, 2, 3]
    finally:
        M._REGISTRY.pop(name, None)
    assert name not in list_methods()


@pytest.mark.parametrize(
    ("broken", "match"),
    [
        (lambda x, g, k, **kw: torch.arange(k - 1), "exactly k"),
        (lambda x, g, k, **kw: torch.arange(k).flip(0), "ascending"),
        (lambda x, g, k, **kw: torch.zeros(k, dtype=torch.long), "ascending"),
        (lambda x, g, k, **kw: torch.arange(k) + 100, "outside"),
        (lambda x, g, k, **kw: torch.arange(k, dtype=torch.int32), "int64"),
        (lambda x, g, k, **kw: list(range(k)), "not a tensor"),
    ],
)
def test_select_checks_the_output_contract(broken, match: str) -> None:
    with pytest.raises(RuntimeError, match=match):
        select(broken, torch.randn(20, 4), (1, 4, 5), 5)


# --- visionselector -------------------------------------------------------------------------------------------------


def test_visionselector_needs_a_scorer() -> None:
    x = torch.randn(20, 8)
    with pytest.raises(ValueError, match="scorer"):
        select("visionselector", x, (1, 4, 5), 5)
    # k == N is the unpruned model: no scorer needed.
    assert select("visionselector", x, (1, 4, 5), 20).tolist() == list(range(20))


def test_visionselector_equals_topk_of_scores() -> None:
    d = 16
    scorer = make_scorer(d, seed=3)
    x = torch.randn(63, d, generator=torch.Generator().manual_seed(4))
    want = select_topk(
        importance_scores(x, scorer.q_proj.weight, scorer.q_proj.bias, scorer.k_proj.weight, scorer.k_proj.bias), 12
    )
    assert torch.equal(select("visionselector", x, (1, 7, 9), 12, scorer=scorer), want)


def test_visionselector_width_mismatch() -> None:
    with pytest.raises(ValueError, match="width"):
        select("visionselector", torch.randn(20, 8), (1, 4, 5), 5, scorer=make_scorer(16))


# --- random ---------------------------------------------------------------------------------------------------------


def test_random_is_reproducible_and_seed_dependent() -> None:
    x = torch.randn(100, 8)
    a = select("random", x, (1, 10, 10), 10, seed=1)
    assert torch.equal(a, select("random", torch.randn(100, 8), (1, 10, 10), 10, seed=1))  # content independent
    b = select("random", x, (1, 10, 10), 10, seed=2)
    assert not torch.equal(a, b)
    assert torch.equal(select("random", x, (1, 10, 10), 10), select("random", x, (1, 10, 10), 10, seed=0))
    results = {tuple(select("random", x, (1, 10, 10), 10, seed=s).tolist()) for s in range(20)}
    assert len(results) == 20


def test_random_covers_all_tokens_over_seeds() -> None:
    x = torch.randn(30, 4)
    seen = set()
    for s in range(60):
        seen.update(select("random", x, (1, 5, 6), 5, seed=s).tolist())
    assert seen == set(range(30))


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True, 2**64])
def test_random_bad_seed(bad) -> None:
    with pytest.raises(ValueError, match="seed"):
        select("random", torch.randn(10, 2), (1, 2, 5), 3, seed=bad)


# --- uniform --------------------------------------------------------------------------------------------------------


def quadrant_counts(idx: torch.Tensor, h: int, w: int) -> list[int]:
    counts = [0, 0, 0, 0]
    for i in idx.tolist():
        r, c = divmod(i, w)
        counts[(2 * r >= h) * 2 + (2 * c >= w)] += 1
    return counts


@pytest.mark.parametrize(("h", "w"), [(16, 16), (12, 20), (8, 8), (10, 6), (9, 7)])
def test_uniform_covers_all_quadrants(h: int, w: int) -> None:
    k = h * w // 4
    idx = select("uniform", torch.randn(h * w, 4), (1, h, w), k)
    counts = quadrant_counts(idx, h, w)
    assert min(counts) >= k // 8, counts
    if h % 2 == 0 and w % 2 == 0 and h == w:
        assert counts == [k // 4] * 4


@pytest.mark.parametrize(("h", "w", "k"), [(8, 8, 8), (8, 8, 4), (16, 16, 16), (4, 32, 8), (32, 4, 8)])
def test_uniform_spreads_rows_and_columns(h: int, w: int, k: int) -> None:
    idx = select("uniform", torch.randn(h * w, 4), (1, h, w), k)
    rows = {i // w for i in idx.tolist()}
    cols = {i % w for i in idx.tolist()}
    assert len(rows) >= 2 and len(cols) >= 2  # not a single row or column
    assert min(quadrant_counts(idx, h, w)) >= 1


def test_uniform_spreads_over_frames_and_ignores_content() -> None:
    t, h, w = 4, 4, 4
    idx = select("uniform", torch.randn(t * h * w, 4), (t, h, w), 8)
    per_frame = [sum(1 for i in idx.tolist() if i // (h * w) == f) for f in range(t)]
    assert per_frame == [2, 2, 2, 2]
    assert torch.equal(idx, select("uniform", torch.randn(t * h * w, 4) * 9, (t, h, w), 8))


# --- norm -----------------------------------------------------------------------------------------------------------


def test_norm_picks_the_largest_norms() -> None:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(50, 6, generator=g) * torch.rand(50, 1, generator=g) * 10
    idx = select("norm", x, (1, 5, 10), 7)
    norms = x.double().norm(dim=-1)
    want = sorted(sorted(range(50), key=lambda i: -norms[i].item())[:7])
    assert idx.tolist() == want
    assert norms[idx].min() >= norms[[i for i in range(50) if i not in want]].max()


def test_norm_nan_raises() -> None:
    x = torch.randn(10, 3)
    x[2, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        select("norm", x, (1, 2, 5), 3)


# --- divprune -------------------------------------------------------------------------------------------------------


def clustered(clusters: int, per_cluster: int, d: int, seed: int, noise: float = 1e-3) -> tuple[torch.Tensor, list]:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, d, generator=g), dim=-1)
    labels = torch.randint(0, clusters, (clusters * per_cluster,), generator=g)
    labels[:clusters] = torch.arange(clusters)  # every cluster present
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    scale = 1 + torch.rand(labels.numel(), 1, generator=g) * 4  # norms vary, directions duplicate
    x = (centres[labels] + noise * torch.randn(labels.numel(), d, generator=g)) * scale
    return x, labels.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_divprune_picks_one_per_cluster(seed: int) -> None:
    clusters = 6
    x, labels = clustered(clusters, 9, 32, seed)
    idx = select("divprune", x, (1, 6, 9), clusters)
    assert sorted(labels[i] for i in idx.tolist()) == list(range(clusters))


def divprune_reference(x: torch.Tensor, k: int) -> list[int]:
    """The paper's greedy on the full N x N cosine-distance matrix, in float64."""
    u = F.normalize(x.double(), dim=-1)
    dist = 1 - u @ u.T
    n = x.shape[0]
    off = dist + torch.diag(torch.full((n,), math.inf, dtype=torch.float64))
    chosen = [int(torch.argmax(off.min(dim=1).values))]
    while len(chosen) < k:
        score = dist[chosen].min(dim=0).values
        score[chosen] = -math.inf
        chosen.append(int(torch.argmax(score)))
    return sorted(chosen)


@pytest.mark.parametrize("seed", range(4))
def test_divprune_matches_full_matrix_greedy(seed: int) -> None:
    x = torch.randn(70, 10, generator=torch.Generator().manual_seed(seed))
    k = 5 + 7 * seed
    assert select("divprune", x, (1, 7, 10), k).tolist() == divprune_reference(x, k)
    # Row blocking does not change the first pick.
    assert torch.equal(M.divprune(x, (1, 7, 10), k, block=8), select("divprune", x, (1, 7, 10), k))


def test_divprune_ignores_norm() -> None:
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(5))
    scaled = x * torch.rand(40, 1, generator=torch.Generator().manual_seed(6)).add(0.5)
    assert torch.equal(select("divprune", x, (1, 5, 8), 9), select("divprune", scaled, (1, 5, 8), 9))


# --- dart -----------------------------------------------------------------------------------------------------------


def test_dart_keeps_pivot_and_non_duplicates() -> None:
    g = torch.Generator().manual_seed(21)
    d = 64
    pivot_dir = F.normalize(torch.randn(d, generator=g), dim=0)
    n = 40
    x = torch.empty(n, d)
    dup = list(range(0, n, 2))  # near copies of the pivot direction
    for i in range(n):
        if i in dup:
            x[i] = pivot_dir * 2 + 0.05 * torch.randn(d, generator=g)
        else:
            x[i] = torch.randn(d, generator=g) * 0.3  # unrelated directions, small norms
    x[7] = pivot_dir * 50  # the pivot: largest norm
    k = 10
    idx = select("dart", x, (1, 5, 8), k).tolist()
    assert 7 in idx
    others = [i for i in idx if i != 7]
    assert all(i not in dup for i in others)


def dart_reference(x: torch.Tensor, k: int) -> list[int]:
    norms = x.double().norm(dim=-1).tolist()
    p = max(1, min(k, round(k / 32)))
    pivots = sorted(range(len(norms)), key=lambda i: (-norms[i], i))[:p]
    u = F.normalize(x.double(), dim=-1)
    sim = (u @ u[pivots].T).max(dim=1).values.tolist()
    rest = sorted((i for i in range(len(norms)) if i not in pivots), key=lambda i: (sim[i], i))[: k - p]
    return sorted(pivots + rest)


@pytest.mark.parametrize(("n", "k"), [(60, 5), (60, 40), (128, 64), (200, 100)])
def test_dart_matches_reference(n: int, k: int) -> None:
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(n + k))
    assert select("dart", x, (1, 1, n), k).tolist() == dart_reference(x, k)


@pytest.mark.parametrize("method", ["divprune", "dart"])
def test_non_finite_embeddings_raise(method: str) -> None:
    x = torch.randn(12, 4)
    x[3, 0] = math.inf
    with pytest.raises(ValueError):
        select(method, x, (1, 3, 4), 5)
