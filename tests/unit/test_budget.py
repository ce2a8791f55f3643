"""keep_count / validate_ratio: the one keep-count rule (floor of a float64 product, at least one token)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.selection.budget import keep_count, validate_ratio

RATIOS = st.floats(min_value=1e-9, max_value=1.0, allow_nan=False, allow_infinity=False, exclude_min=False)


@pytest.mark.parametrize(
    ("n", "ratio", "expected"),
    [
        (100, 0.29, 28),  # 100 * 0.29 = 28.999999999999996 in float64: truncation, as the reference's int(N * r)
        (180, 0.35, 62),  # 62.99999999999999
        (90, 0.7, 62),  # 62.99999999999999
        (1196, 0.2, 239),  # floor, not ceil (ceil would give 240)
        (100, 0.3, 30),
        (64, 0.2, 12),
        (2048, 0.1, 204),
        (10, 0.5, 5),
        (7, 1.0, 7),  # identity
        (1, 1.0, 1),
        (1, 0.1, 1),  # tiny N -> 1
        (3, 0.2, 1),  # 0.6 -> 0 -> clamped to 1
        (4, 0.25, 1),
        (9, 0.999, 8),
    ],
)
def test_keep_count_table(n: int, ratio: float, expected: int) -> None:
    assert keep_count(n, ratio) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 1196, 16384])
def test_ratio_one_is_identity(n: int) -> None:
    assert keep_count(n, 1.0) == n
    assert keep_count(n, 1) == n


def test_integral_ratio_types_accepted() -> None:
    assert validate_ratio(1) == 1.0
    assert isinstance(validate_ratio(1), float)
    assert keep_count(50, 0.5) == 25


BAD_RATIOS = [
    math.nan,
    math.inf,
    -math.inf,
    0,
    0.0,
    -0.1,
    1.0000001,
    2,
    True,
    False,
    "0.5",
    None,
    [0.5],
]


@pytest.mark.parametrize("bad", BAD_RATIOS, ids=repr)
def test_bad_ratio_raises_naming_value(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        validate_ratio(bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError) as info:
        keep_count(100, bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad_n", [0, -1, True, 2.0, "10", None])
def test_bad_n_raises(bad_n: object) -> None:
    with pytest.raises(ValueError) as info:
        keep_count(bad_n, 0.5)
    assert repr(bad_n) in str(info.value)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=1, max_value=1_000_000), ratio=RATIOS)
def test_keep_count_bounds_and_reference_expression(n: int, ratio: float) -> None:
    k = keep_count(n, ratio)
    assert 1 <= k <= n
    expected = n if ratio == 1.0 else max(1, int(n * ratio))  # the reference's expression, float64 on the host
    assert k == expected


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=1, max_value=1_000_000), r1=RATIOS, r2=RATIOS)
def test_keep_count_monotone_in_ratio(n: int, r1: float, r2: float) -> None:
    lo, hi = sorted((r1, r2))
    assert keep_count(n, lo) <= keep_count(n, hi)


@settings(max_examples=100, deadline=None)
@given(n1=st.integers(min_value=1, max_value=100_000), n2=st.integers(min_value=1, max_value=100_000), ratio=RATIOS)
def test_keep_count_monotone_in_n(n1: int, n2: int, ratio: float) -> None:
    lo, hi = sorted((n1, n2))
    assert keep_count(lo, ratio) <= keep_count(hi, ratio)
