"""visionselector_mmr's default lambda (vs_vllm.selection.mmr.default_lambda): the rule, that it applies only when no
lambda is given (op, registry, kernels dispatcher, serving-path selection, request options), and that an explicit
lambda -- 0.5 included -- behaves exactly as before."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.kernels import select_tokens_mmr
from vs_vllm.kernels.mmr_reference import lambdas_for
from vs_vllm.selection.methods import select
from vs_vllm.selection.mmr import (
    BY_BUDGET,
    DEFAULT_LAMBDA,
    DEFAULT_TOPK_MAX_K,
    default_lambda,
    effective_lambda,
    mmr_select,
    mmr_select_stepwise,
    validate_lambda,
)
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.selection.topk import select_topk
from vs_vllm.vllm_plugin.options import ENV_LAMBDA, OptionError, default_options, parse_options
from vs_vllm.vllm_plugin.pruning.selection import ItemSelection, select_items

LAMBDAS = st.floats(0.0, 1.0, allow_nan=False)


def _inputs(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g), torch.randn(n, d, generator=g)


def test_the_rule_is_top_k_for_a_few_tokens_and_the_hybrid_above() -> None:
    assert 1 <= DEFAULT_TOPK_MAX_K < 6  # 6 tokens (ratio 0.1 of 64) is where the validation saw the hybrid gain
    for k in range(1, DEFAULT_TOPK_MAX_K + 1):
        assert default_lambda(k) == 1.0
    for k in (DEFAULT_TOPK_MAX_K + 1, 6, 12, 25, 1000, 10**6):
        assert default_lambda(k) == DEFAULT_LAMBDA == 0.7


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None, "4"])
def test_the_rule_refuses_a_budget_that_is_not_a_positive_integer(bad) -> None:
    with pytest.raises(ValueError, match="k must be"):
        default_lambda(bad)


@settings(max_examples=100, deadline=None)
@given(lam=LAMBDAS, k=st.integers(1, 10_000))
def test_an_explicit_lambda_is_used_as_given_at_every_budget(lam, k) -> None:
    assert effective_lambda(lam, k) == lam == validate_lambda(lam)
    assert effective_lambda(BY_BUDGET, k) == default_lambda(k)


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, True, "0.5", None, "by budget"])
def test_bad_values_are_still_refused_naming_the_field(bad) -> None:
    with pytest.raises(ValueError, match="selection_lambda"):
        effective_lambda(bad, 3)
    with pytest.raises(ValueError, match="selection_lambda"):
        mmr_select(torch.randn(8), torch.randn(8, 3), 2, bad)  # None is not "no lambda": it is refused


@settings(max_examples=120, deadline=None)
@given(n=st.integers(2, 64), d=st.integers(1, 12), k=st.integers(1, 64), seed=st.integers(0, 10_000))
def test_no_lambda_is_the_rules_lambda_and_top_k_at_small_budgets(n, d, k, seed) -> None:
    k = min(k, n)
    scores, x = _inputs(n, d, seed)
    got = mmr_select(scores, x, k)
    assert torch.equal(got, mmr_select(scores, x, k, default_lambda(k)))
    assert torch.equal(mmr_select_stepwise(scores, x, k), got)
    if k <= DEFAULT_TOPK_MAX_K and k < n:
        assert torch.equal(got, select_topk(scores, k))


def test_explicit_half_keeps_the_hybrid_at_small_budgets() -> None:
    """The default changed, the meaning of an explicit 0.5 did not: at K = 3 it still trades score for diversity."""
    x = torch.tensor([[1.0, 0.0], [0.999, 0.04], [0.998, -0.05], [0.0, 1.0], [-1.0, 0.0]])
    scores = torch.tensor([5.0, 4.9, 4.8, 1.0, 0.0])  # the top three are near-duplicates
    k = 3
    assert k <= DEFAULT_TOPK_MAX_K
    assert mmr_select(scores, x, k).tolist() == [0, 1, 2]  # default: plain top-K
    assert mmr_select(scores, x, k, 0.5).tolist() == [0, 3, 4]  # explicit 0.5: diversity as before
    assert mmr_select(scores, x, k, 1.0).tolist() == [0, 1, 2]


def test_registry_method_without_lambda_and_lambda_one_equal_visionselector() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    scorer = TransformerScorer(32)
    scorer.reset_parameters(init_std=0.2)
    for k in range(1, DEFAULT_TOPK_MAX_K + 1):
        vs = select("visionselector", x, (1, 8, 8), k, scorer=scorer)
        assert torch.equal(select("visionselector_mmr", x, (1, 8, 8), k, scorer=scorer), vs)
    for k in (1, 3, 6, 19, 63):
        vs = select("visionselector", x, (1, 8, 8), k, scorer=scorer)
        assert torch.equal(select("visionselector_mmr", x, (1, 8, 8), k, scorer=scorer, selection_lambda=1.0), vs)
    k = 19
    assert torch.equal(select("visionselector_mmr", x, (1, 8, 8), k, scorer=scorer),
                       select("visionselector_mmr", x, (1, 8, 8), k, scorer=scorer, selection_lambda=DEFAULT_LAMBDA))


def test_kernel_lambdas_are_resolved_per_image_on_the_host() -> None:
    keep = [2, 40, DEFAULT_TOPK_MAX_K]
    assert lambdas_for(BY_BUDGET, 3, keep) == [default_lambda(k) for k in keep]
    assert lambdas_for([0.5, BY_BUDGET, 0.0], 3, keep) == [0.5, DEFAULT_LAMBDA, 0.0]
    assert lambdas_for(0.5, 3, keep) == [0.5, 0.5, 0.5]  # an explicit value is never replaced by the rule
    with pytest.raises(ValueError, match="budgets"):
        lambdas_for(BY_BUDGET, 3)
    with pytest.raises(ValueError, match=r"lambdas\[1\]"):
        lambdas_for([0.5, None, 0.2], 3, keep)
    with pytest.raises(ValueError, match="lambdas"):
        lambdas_for(1.5, 3, keep)


def _scorer(width: int) -> TransformerScorer:
    torch.manual_seed(5)
    scorer = TransformerScorer(width)
    scorer.reset_parameters(init_std=0.2)
    return scorer


def _scores(scorer: TransformerScorer, x: torch.Tensor) -> torch.Tensor:
    from vs_vllm.selection.scorer import importance_scores

    return importance_scores(x, scorer.q_proj.weight, scorer.q_proj.bias, scorer.k_proj.weight, scorer.k_proj.bias)


def test_packed_kernel_entry_applies_the_rule_per_image() -> None:
    """The dispatcher's torch route (the Triton routes take the same host list: kernels/mmr_select.py) chooses with
    the rule's lambda of each image's own K."""
    width = 16
    scorer = _scorer(width)
    gen = torch.Generator().manual_seed(3)
    lengths, keep = [30, 64, 20], [3, 6, 12]
    x = torch.randn(sum(lengths), width, generator=gen)
    cu = [0, 30, 94, 114]
    weights = (scorer.q_proj.weight, scorer.q_proj.bias, scorer.k_proj.weight, scorer.k_proj.bias)
    default = select_tokens_mmr(x, cu, keep, *weights, BY_BUDGET, backend="torch")
    explicit = select_tokens_mmr(x, cu, keep, *weights, [default_lambda(k) for k in keep], backend="torch")
    half = select_tokens_mmr(x, cu, keep, *weights, 0.5, backend="torch")
    above = select_tokens_mmr(x, cu, keep, *weights, DEFAULT_LAMBDA, backend="torch")
    assert torch.equal(default.indices, explicit.indices)
    assert torch.equal(default.indices[:3], select_topk(_scores(scorer, x[:30]), 3))  # K = 3: plain top-K
    assert not torch.equal(default.indices[:3], half.indices[:3])  # where an explicit 0.5 still diversifies
    assert torch.equal(default.indices[3:], above.indices[3:])  # K = 6 and 12: DEFAULT_LAMBDA


def test_serving_selection_without_lambda_uses_the_rule_and_an_explicit_one_unchanged() -> None:
    width = 16
    scorer = _scorer(width)
    gen = torch.Generator().manual_seed(3)
    grids = [(1, 5, 6), (1, 8, 8)]
    embeds = [torch.randn(t * h * w, width, generator=gen) for t, h, w in grids]
    keeps = [3, 6]
    by_rule = select_items(embeds, grids, [ItemSelection(keep=k, method="visionselector_mmr") for k in keeps], scorer)
    as_rule = select_items(embeds, grids, [ItemSelection(keep=k, method="visionselector_mmr",
                                                         selection_lambda=default_lambda(k)) for k in keeps], scorer)
    half = select_items(embeds, grids, [ItemSelection(keep=k, method="visionselector_mmr", selection_lambda=0.5)
                                        for k in keeps], scorer)
    above = select_items(embeds, grids, [ItemSelection(keep=k, method="visionselector_mmr",
                                                       selection_lambda=DEFAULT_LAMBDA) for k in keeps], scorer)
    top = select_items(embeds, grids, [ItemSelection(keep=k, method="visionselector") for k in keeps], scorer)
    for a, b in zip(by_rule, as_rule):
        assert torch.equal(a, b)
    assert torch.equal(by_rule[0], top[0])  # K = 3: plain top-K by default
    assert torch.equal(by_rule[1], above[1])  # K = 6: the hybrid at DEFAULT_LAMBDA
    assert not torch.equal(half[0], top[0])  # an explicit 0.5 at K = 3 still diversifies


def test_request_options_mark_a_missing_lambda_and_keep_an_explicit_one() -> None:
    assert parse_options({}).selection_lambda is BY_BUDGET
    assert default_options({}).selection_lambda is BY_BUDGET
    assert parse_options({"selection_lambda": 0.5}).selection_lambda == 0.5
    assert parse_options({"selection_lambda": 1}).selection_lambda == 1.0
    server = default_options({ENV_LAMBDA: "0.3"})
    assert server.selection_lambda == 0.3  # a server-wide lambda is explicit: used at every budget
    assert parse_options({}, server).selection_lambda == 0.3
    assert parse_options({"selection_lambda": 0.9}, server).selection_lambda == 0.9
    for bad in (None, "0.5", 1.5, math.nan):
        with pytest.raises(OptionError, match="selection_lambda") as info:
            parse_options({"selection_lambda": bad})
        assert info.value.param == "selection_lambda"


def test_the_marker_survives_pickling() -> None:
    """Options travel between the API server and engine processes."""
    assert pickle.loads(pickle.dumps(BY_BUDGET)) is BY_BUDGET
    opts = parse_options({})
    assert pickle.loads(pickle.dumps(opts)).selection_lambda is BY_BUDGET
