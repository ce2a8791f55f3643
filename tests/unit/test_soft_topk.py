"""Differentiable top-K: bisection forward (sum = K), implicit-function backward, hard target mask."""

from __future__ import annotations

import math

import pytest
import torch

from vs_vllm.selection.soft_topk import hard_topk_mask, soft_topk
from vs_vllm.selection.topk import select_topk


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("n", "k", "scale"), [(2, 1, 1.0), (5, 2, 0.5), (20, 7, 2.0), (33, 1, 3.0), (33, 32, 1.0)])
def test_gradcheck_single_row(n: int, k: int, scale: float) -> None:
    s = (torch.randn(n, generator=gen(n * 10 + k), dtype=torch.float64) * scale).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: soft_topk(x, k), (s,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_batched_rows_int_k() -> None:
    s = torch.randn(2, 3, 11, generator=gen(1), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: soft_topk(x, 4), (s,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_batched_rows_per_row_k() -> None:
    s = (torch.randn(4, 13, generator=gen(2), dtype=torch.float64) * 1.5).requires_grad_(True)
    k = torch.tensor([1, 5, 9, 12])
    assert torch.autograd.gradcheck(lambda x: soft_topk(x, k), (s,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_backward_equals_closed_form_jacobian() -> None:
    s = torch.randn(17, generator=gen(3), dtype=torch.float64) * 2
    jac = torch.autograd.functional.jacobian(lambda x: soft_topk(x, 6), s)
    p = soft_topk(s, 6)
    v = p * (1 - p)
    want = torch.diag(v) - torch.outer(v, v) / v.sum()
    torch.testing.assert_close(jac, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jac, jac.T)  # symmetric


def test_gradient_sums_to_zero_and_is_finite_in_fp32() -> None:
    # A shift of every score leaves p unchanged, so the gradient w.r.t. s sums to zero per row.
    s = (torch.randn(3, 200, generator=gen(4)) * 3).requires_grad_(True)
    g = torch.randn(3, 200, generator=gen(5))
    (soft_topk(s, 40) * g).sum().backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad.abs().max() > 0
    torch.testing.assert_close(s.grad.sum(dim=-1), torch.zeros(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [1e3, 1e5])
def test_degenerate_separated_scores_give_finite_gradients(scale: float) -> None:
    # Well separated scores: sigmoid'(s + t) underflows for every token; the guarded backward must not divide 0 by 0.
    s = (torch.randn(64, generator=gen(6)) * scale).requires_grad_(True)
    p = soft_topk(s, 16)
    (p * torch.randn(64, generator=gen(7))).sum().backward()
    assert torch.isfinite(s.grad).all()
    assert abs(p.sum().item() - 16) < 1e-3


@pytest.mark.parametrize("scale", [1e-3, 0.1, 1.0, 10.0, 100.0])
@pytest.mark.parametrize("n", [2, 17, 64, 257, 1000])
def test_sum_equals_k_in_fp32(scale: float, n: int) -> None:
    g = gen(int(scale * 1000) + n)
    rows = 4
    s = torch.randn(rows, n, generator=g) * scale + torch.randn(rows, 1, generator=g) * scale
    k = torch.randint(1, n, (rows,), generator=g)
    p = soft_topk(s, k)
    assert p.dtype == torch.float32
    assert ((p > 0) & (p < 1)).all() or scale >= 10  # large scales saturate to exactly 0/1 in fp32
    err = (p.double().sum(dim=-1) - k.double()).abs().max().item()
    assert err < 1e-4, err


def test_fp64_sum_is_tight() -> None:
    s = torch.randn(5, 300, generator=gen(8), dtype=torch.float64) * 4
    p = soft_topk(s, 60)
    assert p.dtype == torch.float64
    torch.testing.assert_close(p.sum(dim=-1), torch.full((5,), 60.0, dtype=torch.float64), rtol=0, atol=1e-10)


def test_mask_is_monotone_in_scores() -> None:
    s = torch.randn(100, generator=gen(9), dtype=torch.float64)
    p = soft_topk(s, 20)
    order = torch.argsort(s)
    assert (p[order].diff() >= 0).all()


def test_near_zero_init_gives_uniform_ratio() -> None:
    # The scorer's near-zero init makes every score ~0: the first soft mask is ~K/N for every token.
    s = torch.randn(500, generator=gen(10)) * 1e-8
    p = soft_topk(s, 100)
    torch.testing.assert_close(p, torch.full((500,), 0.2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_and_grad_dtype_follow_input(dtype: torch.dtype) -> None:
    s = torch.randn(2, 50, generator=gen(11)).to(dtype).requires_grad_(True)
    p = soft_topk(s, 10)
    assert p.dtype == dtype and p.shape == s.shape
    p.sum().backward()
    assert s.grad.dtype == dtype
    assert abs(p.float().sum(dim=-1) - 10).max().item() < 0.2  # low-precision output rounding only


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (-1, 10), (11, 10), (1, 1)])
def test_bad_k_raises_naming_values(k: int, n: int) -> None:
    with pytest.raises(ValueError) as info:
        soft_topk(torch.randn(n), k)
    msg = str(info.value)
    assert f"k=[{k}]" in msg and f"N={n}" in msg


def test_bad_per_row_k_names_the_bad_values() -> None:
    with pytest.raises(ValueError) as info:
        soft_topk(torch.randn(3, 8), torch.tensor([3, 8, 0]))
    msg = str(info.value)
    assert "0" in msg and "8" in msg and "N=8" in msg


@pytest.mark.parametrize("bad", [True, 2.5, "3", None, torch.tensor([2.5, 3.0])])
def test_non_integer_k_raises(bad: object) -> None:
    with pytest.raises(ValueError):
        soft_topk(torch.randn(2, 8), bad)


def test_per_row_k_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        soft_topk(torch.randn(3, 8), torch.tensor([1, 2]))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_raise(bad: float) -> None:
    s = torch.randn(10)
    s[4] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        soft_topk(s, 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        hard_topk_mask(s, 3)


@pytest.mark.parametrize("seed", range(4))
def test_hard_mask_agrees_with_select_topk(seed: int) -> None:
    g = gen(100 + seed)
    rows, n = 6, int(torch.randint(2, 80, (1,), generator=g))
    s = torch.randint(0, 5, (rows, n), generator=g).float() + (torch.randn(rows, n, generator=g) if seed % 2 else 0)
    k = torch.randint(1, n + 1, (rows,), generator=g)
    mask = hard_topk_mask(s, k)
    assert mask.dtype == s.dtype and mask.shape == s.shape
    for r in range(rows):
        want = torch.zeros(n)
        want[select_topk(s[r], int(k[r]))] = 1.0
        torch.testing.assert_close(mask[r], want)
    int_k = int(k[0])
    for r in range(rows):
        want = torch.zeros(n)
        want[select_topk(s[r], int_k)] = 1.0
        torch.testing.assert_close(hard_topk_mask(s, int_k)[r], want)


def test_hard_mask_has_no_grad_and_pairs_with_soft_mask() -> None:
    s = (torch.randn(4, 30, generator=gen(12)) * 3).requires_grad_(True)
    m = hard_topk_mask(s, 6)
    assert not m.requires_grad
    assert (m.sum(dim=-1) == 6).all()
    p = soft_topk(s, 6)
    loss = torch.nn.functional.binary_cross_entropy(p, m)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    # The soft mask's largest entries are the hard-selected ones.
    top = torch.topk(p.detach(), 6, dim=-1).indices
    assert torch.equal(m.gather(-1, top), torch.ones(4, 6))


def test_hard_mask_bad_k() -> None:
    with pytest.raises(ValueError, match="N=5"):
        hard_topk_mask(torch.randn(5), 6)
    with pytest.raises(ValueError):
        hard_topk_mask(torch.randn(5), 0)
    assert hard_topk_mask(torch.randn(5), 5).sum().item() == 5
