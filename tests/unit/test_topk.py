"""select_topk: exactly K ascending unique indices, ties to the lowest index, NaN refused."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.selection.topk import select_topk, validate_k


def brute_force_topk(values: list[float], k: int) -> list[int]:
    """Rank by (-value, index): the K largest, equal values in index order; return ascending indices."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def check_contract(idx: torch.Tensor, n: int, k: int) -> None:
    assert idx.dtype == torch.long
    assert idx.shape == (k,)
    values = idx.tolist()
    assert values == sorted(set(values))  # ascending and unique
    assert all(0 <= v < n for v in values)


# Values from a small pool force many ties (including +-0.0 and infinities); free floats give tie-free data.
TIE_POOL = st.sampled_from([-math.inf, -2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, math.inf])
FREE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@st.composite
def scores_and_k(draw, elements):
    values = draw(st.lists(elements, min_size=1, max_size=300))
    k = draw(st.integers(min_value=1, max_value=len(values)))
    return values, k


@settings(max_examples=150, deadline=None)
@given(case=scores_and_k(st.one_of(TIE_POOL, FREE)))
def test_matches_brute_force_fp32(case) -> None:
    values, k = case
    scores = torch.tensor(values, dtype=torch.float32)
    idx = select_topk(scores, k)
    check_contract(idx, len(values), k)
    assert idx.tolist() == brute_force_topk(scores.tolist(), k)


@settings(max_examples=60, deadline=None)
@given(case=scores_and_k(TIE_POOL))
def test_forced_ties_lowest_index_wins(case) -> None:
    values, k = case
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        scores = torch.tensor(values, dtype=dtype)
        idx = select_topk(scores, k)
        check_contract(idx, len(values), k)
        assert idx.tolist() == brute_force_topk(scores.double().tolist(), k)


@pytest.mark.parametrize("seed", range(5))
def test_random_fresh_inputs_with_ties(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 500, (1,), generator=gen))
    scores = torch.randint(0, 4, (n,), generator=gen).float()  # heavy ties
    for k in {1, n // 3 or 1, n - 1, n}:
        idx = select_topk(scores, k)
        check_contract(idx, n, k)
        assert idx.tolist() == brute_force_topk(scores.tolist(), k)


def test_all_equal_scores_keep_the_first_k() -> None:
    scores = torch.full((10,), 0.25)
    assert select_topk(scores, 4).tolist() == [0, 1, 2, 3]


def test_ties_at_the_boundary() -> None:
    scores = torch.tensor([1.0, 5.0, 3.0, 5.0, 3.0, 3.0])
    # 5 (idx 1), 5 (idx 3), then the 3s in index order: 2, 4.
    assert select_topk(scores, 4).tolist() == [1, 2, 3, 4]


def test_k_equals_n_is_identity() -> None:
    scores = torch.randn(13)
    assert select_topk(scores, 13).tolist() == list(range(13))


def test_keeps_device() -> None:
    scores = torch.randn(20)
    assert select_topk(scores, 5).device == scores.device


@pytest.mark.parametrize("position", [0, 3, 9])
def test_nan_raises(position: int) -> None:
    scores = torch.randn(10)
    scores[position] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        select_topk(scores, 3)


@pytest.mark.parametrize("bad_k", [0, -1, 11, 100, 1.5, 2.0, True, "3", None])
def test_bad_k_raises(bad_k: object) -> None:
    with pytest.raises(ValueError, match="k"):
        select_topk(torch.randn(10), bad_k)


def test_validate_k_messages_name_values() -> None:
    with pytest.raises(ValueError, match=r"k=11, n=10"):
        validate_k(11, 10)
    with pytest.raises(ValueError, match="True"):
        validate_k(True, 10)
    assert validate_k(10, 10) == 10


def test_non_1d_raises() -> None:
    with pytest.raises(ValueError, match="1-D"):
        select_topk(torch.randn(2, 5), 2)
