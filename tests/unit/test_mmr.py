"""visionselector_mmr's op (vs_vllm.selection.mmr): against an obviously-right N×N implementation, lambda edges,
validation, and the registry method."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.selection.methods import select
from vs_vllm.selection.mmr import mmr_select, mmr_select_stepwise, normalized_scores, validate_lambda
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.selection.topk import select_topk


def naive_mmr(scores: torch.Tensor, x: torch.Tensor, k: int, lam: float) -> list[int]:
    """Textbook MMR with the full cosine matrix and Python loops (small N only)."""
    n = scores.shape[0]
    s = scores.double()
    span = float(s.max() - s.min())
    rel = [(float(v) - float(s.min())) / span if span > 0 else 0.0 for v in s]
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    cos = (unit @ unit.T).tolist()
    chosen: list[int] = []
    for _ in range(k):
        best, best_gain = -1, -math.inf
        for i in range(n):
            if i in chosen:
                continue
            penalty = max(cos[i][j] for j in chosen) if chosen else 0.0
            gain = lam * rel[i] - (1 - lam) * penalty
            if gain > best_gain + 1e-9:  # strictly better (beyond rounding): ties keep the lowest index
                best, best_gain = i, gain
        chosen.append(best)
    return sorted(chosen)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 12), frac=st.floats(0.01, 1.0), lam=st.sampled_from([0.0, 0.2, 0.5, 0.9]),
       seed=st.integers(0, 10_000))
def test_matches_the_naive_implementation(n, d, frac, lam, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=g)
    x = torch.randn(n, d, generator=g)
    k = max(1, int(n * frac))
    got = mmr_select(scores, x, k, lam)
    assert got.tolist() == (list(range(n)) if k == n else naive_mmr(scores, x, k, lam))
    assert got.dtype == torch.long and got.tolist() == sorted(set(got.tolist()))


@pytest.mark.parametrize("ties", [False, True])
def test_lambda_one_is_exactly_visionselectors_top_k(ties) -> None:
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(200, generator=g)
    if ties:  # many exact ties, and values min-max normalisation would merge
        scores = torch.round(scores * 4) / 4 + torch.tensor([0.0, 1e-9]).repeat(100)
    x = torch.randn(200, 16, generator=g)
    for k in (1, 17, 100, 199):
        assert torch.equal(mmr_select(scores, x, k, 1.0), select_topk(scores, k))


def test_lambda_zero_is_max_min_diversity_from_token_zero() -> None:
    x = torch.tensor([[1.0, 0.0], [0.99, 0.1], [-1.0, 0.05], [0.0, 1.0]])
    scores = torch.tensor([0.0, 5.0, 1.0, 2.0])
    assert mmr_select(scores, x, 2, 0.0).tolist() == [0, 2]  # token 0, then the one least similar to it
    assert mmr_select(scores, x, 1, 0.5).tolist() == [1]  # any lam > 0 starts from the top score


def test_all_equal_scores_normalise_to_zero() -> None:
    assert torch.equal(normalized_scores(torch.full((5,), 3.0)), torch.zeros(5))
    out = normalized_scores(torch.tensor([1.0, 3.0, 2.0]))
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.5]))


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, True, "0.5", None])
def test_bad_lambda_is_refused_naming_it(bad) -> None:
    with pytest.raises(ValueError, match="selection_lambda"):
        validate_lambda(bad)
    with pytest.raises(ValueError, match="selection_lambda"):
        mmr_select(torch.randn(4), torch.randn(4, 3), 2, bad)


def test_registry_method_and_lambda_reach_only_methods_that_take_it() -> None:
    torch.manual_seed(0)
    x = torch.randn(48, 32)
    scorer = TransformerScorer(32)
    scorer.reset_parameters(init_std=0.2)
    vs = select("visionselector", x, (1, 6, 8), 9, scorer=scorer, selection_lambda=0.2)  # ignored by this method
    assert torch.equal(select("visionselector_mmr", x, (1, 6, 8), 9, scorer=scorer, selection_lambda=1.0), vs)
    other = select("visionselector_mmr", x, (1, 6, 8), 9, scorer=scorer, selection_lambda=0.2)
    assert other.shape == (9,) and not torch.equal(other, vs)
    with pytest.raises(ValueError, match="needs a trained scorer"):
        select("visionselector_mmr", x, (1, 6, 8), 9)
    assert select("visionselector_mmr", x, (1, 6, 8), 48).tolist() == list(range(48))  # k == N: no scorer needed


# --------------------------------------------------------------------------------------------------------------------
# The deferred CPU loop against the step-by-step loop (one full mat-vec per step)
# --------------------------------------------------------------------------------------------------------------------


def clustered_rows(n: int, d: int, g: torch.Generator, clusters: int = 8) -> torch.Tensor:
    """Rows like a vision tower's: a shared direction, a few clusters, small noise -- cosines 0.3-0.99, so the
    diversity term reorders the scores' ranking strongly (random rows are nearly orthogonal)."""
    centres = torch.randn(clusters, d, generator=g)
    pick = torch.randint(0, clusters, (n,), generator=g)
    return 2 * torch.randn(1, d, generator=g) + centres[pick] + 0.3 * torch.randn(n, d, generator=g)


@pytest.fixture(params=["default", "tight"])
def deferred_limits(request, monkeypatch):
    """The production limits, and tiny ones: few candidates and few pending picks force many refreshes, candidate
    sets that run dry and the full-set case (every free token a candidate) on small N."""
    import vs_vllm.selection.mmr as mmr_mod

    if request.param == "tight":
        monkeypatch.setattr(mmr_mod, "DEFERRED_MAX_CANDIDATES", 5)
        monkeypatch.setattr(mmr_mod, "DEFERRED_MIN_CANDIDATES", 3)
        monkeypatch.setattr(mmr_mod, "DEFERRED_MAX_PENDING", 4)
    return request.param


@pytest.mark.parametrize("rows", ["random", "clustered"])
def test_deferred_loop_equals_the_stepwise_loop(rows, deferred_limits) -> None:
    """Identical indices on random problems (odd N and D, K from 1 to N - 1, lambda 0 to 0.9): 120 per setting at the
    production limits, 30 smaller ones at the tight limits (a refresh almost every step is slow in Python)."""
    g = torch.Generator().manual_seed(11 if rows == "random" else 12)
    cases, max_n = (120, 300) if deferred_limits == "default" else (30, 120)
    for case in range(cases):
        n = int(torch.randint(2, max_n, (1,), generator=g))
        d = int(torch.randint(1, 80, (1,), generator=g))
        k = max(1, min(n - 1, int(n * float(torch.rand(1, generator=g)))))
        lam = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)[case % 6]
        x = torch.randn(n, d, generator=g) if rows == "random" else clustered_rows(n, d, g)
        scores = torch.randn(n, generator=g)
        got, want = mmr_select(scores, x, k, lam), mmr_select_stepwise(scores, x, k, lam)
        assert torch.equal(got, want), (case, n, d, k, lam)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_deferred_loop_on_large_rows(dtype) -> None:
    """Vision-tower sized rows (D = 1280, bf16 / fp16 widened to fp32 on both sides), N large enough for several
    GEMM refreshes at the production limits."""
    g = torch.Generator().manual_seed(5)
    for n, k, lam in ((700, 140, 0.5), (513, 51, 0.3)):
        x = clustered_rows(n, 1280, g, clusters=32).to(dtype)
        scores = torch.randn(n, generator=g)
        assert torch.equal(mmr_select(scores, x, k, lam), mmr_select_stepwise(scores, x, k, lam))


def test_exact_ties_go_to_the_lowest_index(deferred_limits) -> None:
    """One-hot rows (every cosine exactly 0 or 1, whatever the summation order) and scores on a coarse grid: gains
    tie exactly, and both loops must match the textbook implementation, which keeps the lowest index."""
    g = torch.Generator().manual_seed(9)
    for case in range(40):
        n, d = int(torch.randint(5, 90, (1,), generator=g)), int(torch.randint(2, 9, (1,), generator=g))
        x = torch.nn.functional.one_hot(torch.randint(0, d, (n,), generator=g), d).float()
        scores = torch.randint(0, 4, (n,), generator=g).float()
        k = max(1, int(n * float(torch.rand(1, generator=g))))
        lam = (0.0, 0.25, 0.5, 0.75)[case % 4]
        want = list(range(n)) if k == n else naive_mmr(scores, x, k, lam)
        assert mmr_select(scores, x, k, lam).tolist() == want, (case, n, d, k, lam)
        assert mmr_select_stepwise(scores, x, k, lam).tolist() == want, (case, n, d, k, lam)
