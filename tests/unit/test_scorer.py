"""Importance scorer: the closed form equals the explicit N x N row mean, per image and pooled."""

from __future__ import annotations

import math

import pytest
import torch

from vs_vllm.selection.scorer import TransformerScorer, importance_scores


def random_weights(d: int, h: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    scale = 1.0 / math.sqrt(d)
    return (
        torch.randn(h, d, generator=gen, dtype=torch.float64) * scale,
        torch.randn(h, generator=gen, dtype=torch.float64),
        torch.randn(h, d, generator=gen, dtype=torch.float64) * scale,
        torch.randn(h, generator=gen, dtype=torch.float64),
    )


def explicit_scores(x: torch.Tensor, wq, bq, wk, bk) -> torch.Tensor:
    """The reference formulation in float64: A = q k^T / sqrt(H), s = row mean of A."""
    x = x.double()
    q = x @ wq.T + bq
    k = x @ wk.T + bk
    attn = q @ k.T / math.sqrt(wq.shape[0])
    return attn.mean(dim=1)


def assert_close_scores(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max().item() + 1e-12
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(("n", "d", "h"), [(1, 8, 4), (2, 6, 3), (37, 16, 8), (129, 64, 32), (50, 10, 7)])
def test_closed_form_equals_explicit_single_image(n: int, d: int, h: int) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + d)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    weights = random_weights(d, h, gen)
    got = importance_scores(x, *weights)
    assert got.dtype == torch.float32
    assert got.shape == (n,)
    assert_close_scores(got, explicit_scores(x, *weights))
    # One image: per-image and pooled scope coincide.
    torch.testing.assert_close(importance_scores(x, *weights, scope="pooled"), got)


@pytest.mark.parametrize("lengths", [[5, 17, 1, 33], [64], [3, 3], [1, 1, 1], [100, 7, 49]])
def test_packed_batch_per_image_and_pooled(lengths: list[int]) -> None:
    gen = torch.Generator().manual_seed(sum(lengths))
    d, h = 24, 12
    x = torch.randn(sum(lengths), d, generator=gen, dtype=torch.float64) * 2.0 + 0.5
    weights = random_weights(d, h, gen)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)

    per_image = importance_scores(x, *weights, cu_seqlens=cu, scope="per_image")
    want = torch.cat([explicit_scores(x[a:b], *weights) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    assert_close_scores(per_image, want)

    pooled = importance_scores(x, *weights, cu_seqlens=cu, scope="pooled")
    assert_close_scores(pooled, explicit_scores(x, *weights))
    if len(lengths) > 1:
        # The two scopes genuinely differ: the mean key mixes images in the pooled form.
        assert not torch.allclose(per_image, pooled, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("lengths", [[5, 17, 1, 33], [100, 7, 49]])
def test_inference_and_training_forms_agree(lengths: list[int]) -> None:
    """Inference with host sizes scores image by image over slices; with autograd on, the one-pass form runs. Both
    are the explicit reference, and both give equal rows of an image exactly equal scores (ties stay ties)."""
    gen = torch.Generator().manual_seed(len(lengths))
    d, h = 40, 20
    pool = torch.randn(4, d, generator=gen)
    x = pool[torch.randint(0, 4, (sum(lengths),), generator=gen)].to(torch.bfloat16)  # many duplicate rows
    weights = tuple(w.float() for w in random_weights(d, h, gen))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    with torch.no_grad():
        fast = importance_scores(x, *weights, cu_seqlens=cu)
    trained = tuple(w.clone().requires_grad_(True) for w in weights)
    one_pass = importance_scores(x, *trained, cu_seqlens=cu)
    assert one_pass.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, one_pass.detach(), rtol=1e-5, atol=1e-5)
    want = torch.cat([explicit_scores(x[a:b], *(w.double() for w in weights))
                      for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    assert_close_scores(fast, want)
    for scores in (fast, one_pass.detach()):
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            rows, s = x[a:b], scores[a:b]
            for i in range(b - a):
                same = (rows == rows[i]).all(dim=1)
                assert torch.equal(s[same], s[i].expand(int(same.sum()))), "equal rows, unequal scores"


def test_per_image_scores_do_not_depend_on_other_images() -> None:
    gen = torch.Generator().manual_seed(7)
    d, h = 16, 8
    weights = random_weights(d, h, gen)
    a = torch.randn(9, d, generator=gen)
    b1 = torch.randn(4, d, generator=gen)
    b2 = torch.randn(4, d, generator=gen) * 5
    cu = torch.tensor([0, 9, 13])
    s1 = importance_scores(torch.cat([a, b1]), *weights, cu_seqlens=cu)
    s2 = importance_scores(torch.cat([a, b2]), *weights, cu_seqlens=cu)
    torch.testing.assert_close(s1[:9], s2[:9])
    torch.testing.assert_close(s1[:9], importance_scores(a, *weights))


def test_bf16_input_gives_fp32_scores() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 32, generator=gen).to(torch.bfloat16)
    weights = [w.float().to(torch.bfloat16) for w in random_weights(32, 16, gen)]
    got = importance_scores(x, *weights)
    assert got.dtype == torch.float32
    assert_close_scores(got, explicit_scores(x.double(), *[w.double() for w in weights]))


def test_module_forward_matches_function() -> None:
    torch.manual_seed(0)
    scorer = TransformerScorer(32)
    scorer.reset_parameters(init_std=0.1)
    with torch.no_grad():
        scorer.q_proj.bias.normal_()
        scorer.k_proj.bias.normal_()
    x = torch.randn(21, 32)
    cu = torch.tensor([0, 10, 21])
    ref = importance_scores(
        x, scorer.q_proj.weight, scorer.q_proj.bias, scorer.k_proj.weight, scorer.k_proj.bias, cu, "per_image"
    )
    torch.testing.assert_close(scorer(x, cu), ref)
    params = [p.detach().double() for p in (scorer.q_proj.weight, scorer.q_proj.bias)]
    params += [p.detach().double() for p in (scorer.k_proj.weight, scorer.k_proj.bias)]
    assert_close_scores(scorer(x, scope="pooled"), explicit_scores(x, *params))


def test_init_statistics() -> None:
    torch.manual_seed(1234)
    d = 512
    scorer = TransformerScorer(d)
    assert scorer.hidden_dim == d // 2
    assert scorer.q_proj.weight.shape == (d // 2, d)
    for proj in (scorer.q_proj, scorer.k_proj):
        w = proj.weight.detach()
        assert abs(w.std().item() - 1e-4) < 5e-6  # 131k samples: std estimate within ~0.3%
        assert abs(w.mean().item()) < 2e-6
        assert torch.count_nonzero(proj.bias) == 0
    assert not torch.equal(scorer.q_proj.weight, scorer.k_proj.weight)
    # Near-zero init: all scores start near 0, so the first soft masks are ~K/N everywhere.
    x = torch.randn(64, d)
    assert scorer(x).abs().max().item() < 1e-5


@pytest.mark.parametrize(("d", "params"), [(2048, 4_196_352), (3584, 12_848_640), (4096, 16_781_312)])
def test_parameter_counts_match_the_paper(d: int, params: int) -> None:
    scorer = TransformerScorer(d, init_std=0.0)
    assert sum(p.numel() for p in scorer.parameters()) == params


def test_gradients_flow_and_match_explicit() -> None:
    torch.manual_seed(5)
    d = 16
    scorer = TransformerScorer(d).double()
    scorer.reset_parameters(init_std=0.2)
    with torch.no_grad():
        scorer.q_proj.bias.normal_()
        scorer.k_proj.bias.normal_()
    x = torch.randn(23, d, dtype=torch.float64)
    upstream = torch.randn(23, dtype=torch.float64)
    (scorer(x) * upstream).sum().backward()
    got = {name: p.grad.clone() for name, p in scorer.named_parameters()}

    explicit = {name: p.detach().clone().requires_grad_(True) for name, p in scorer.named_parameters()}
    s = explicit_scores(
        x, explicit["q_proj.weight"], explicit["q_proj.bias"], explicit["k_proj.weight"], explicit["k_proj.bias"]
    )
    (s * upstream).sum().backward()
    for name, grad in got.items():
        assert torch.isfinite(grad).all()
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, explicit[name].grad, rtol=1e-4, atol=1e-6)


def test_input_gradient_flows() -> None:
    scorer = TransformerScorer(8)
    scorer.reset_parameters(init_std=0.3)
    x = torch.randn(5, 8, requires_grad=True)
    scorer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cu_seqlens": torch.tensor([0, 5, 9])},  # does not end at N
        {"cu_seqlens": torch.tensor([1, 10])},  # does not start at 0
        {"scope": "per_batch"},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8, generator=gen)
    with pytest.raises(ValueError):
        importance_scores(x, *random_weights(8, 4, gen), **kwargs)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        importance_scores(torch.randn(2, 3, 8), *random_weights(8, 4, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        TransformerScorer(0)
