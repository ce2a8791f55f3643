"""Plain-torch MMR selection over a packed batch: the oracle of ``mmr_select.py`` and the production path on CPU.

Built only from the shared core: :func:`vs_vllm.selection.mmr.mmr_select` per image (learned + diversity selection
by maximal marginal relevance; ``lam == 1`` is VisionSelector's exact top-K), ``scores_with_plan_ref`` for the scores
(the same call as ``reference.py``), and ``gather_with_plan_ref`` for the rows and (t, h, w) positions. Nothing here
imports triton.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from vs_vllm.selection.mmr import BY_BUDGET, LambdaDefault, effective_lambda, mmr_select

from .common import Plan, Selection, check_scorer_weights, empty_selection, make_plan
from .position_channels import PositionChannels
from .reference import gather_with_plan_ref, scores_with_plan_ref

__all__ = [
    "lambdas_for",
    "mmr_select_ref",
    "mmr_with_plan_ref",
    "select_mmr_with_plan_ref",
    "select_tokens_mmr_ref",
]

Lambdas = float | LambdaDefault | Sequence[float | LambdaDefault] | torch.Tensor


def lambdas_for(lambdas: Lambdas, num_images: int, keep: Sequence[int] | None = None) -> list[float]:
    """One validated lambda in [0, 1] per image, from one number (every image) or a list / 1-D CPU tensor.
    ``BY_BUDGET`` (for every image, or one image's entry) is the default rule's lambda for that image's budget ``keep[i]``
    (``vs_vllm.selection.mmr.default_lambda``), decided here on the host: the kernels only ever see numbers."""
    one_for_all = lambdas is BY_BUDGET or (isinstance(lambdas, numbers.Real) and not isinstance(lambdas, bool))
    if one_for_all:
        values: list = [lambdas] * num_images
    elif isinstance(lambdas, torch.Tensor):
        if lambdas.dim() != 1:
            raise ValueError(f"lambdas must be 1-D, got shape {tuple(lambdas.shape)}")
        values = [float(v) for v in lambdas.tolist()]  # a device tensor costs one sync: pass host floats
    elif isinstance(lambdas, Sequence) and not isinstance(lambdas, (str, bytes)):
        values = list(lambdas)
    else:
        raise ValueError(f"lambdas must be a number in [0, 1] or one per image, got {type(lambdas).__name__}")
    if len(values) != num_images:
        raise ValueError(f"lambdas has {len(values)} entries for {num_images} images")
    if any(v is BY_BUDGET for v in values) and (keep is None or len(keep) != num_images):
        raise ValueError("lambdas: BY_BUDGET (the default rule) needs the images' budgets")
    return [effective_lambda(v, int(keep[i]) if v is BY_BUDGET else 1, "lambdas" if one_for_all else f"lambdas[{i}]")
            for i, v in enumerate(values)]


def mmr_with_plan_ref(scores: torch.Tensor, x: torch.Tensor, plan: Plan, lambdas: Sequence[float]) -> torch.Tensor:
    """Per image, ``mmr_select`` of its scores and rows: [sum K_i] ascending local indices, image after image."""
    cs = plan.cu_seqlens
    picked = [
        mmr_select(scores[cs[i] : cs[i + 1]], x[cs[i] : cs[i + 1]], k, lam)
        for i, (k, lam) in enumerate(zip(plan.keep, lambdas))
    ]
    return torch.cat(picked) if picked else torch.empty(0, dtype=torch.long, device=x.device)


def mmr_select_ref(scores: torch.Tensor, x: torch.Tensor, cu_seqlens, keep, lambdas: Lambdas) -> torch.Tensor:
    """MMR selection of K_i tokens per image of a packed batch, given fp32 ``scores`` [sum N_i] (same contract as
    ``vs_vllm.kernels.mmr_select.mmr_select_triton``)."""
    plan = make_plan(x, cu_seqlens, keep)
    if scores.dim() != 1 or scores.shape[0] != x.shape[0]:
        raise ValueError(f"scores must be [{x.shape[0]}], got {tuple(scores.shape)}")
    return mmr_with_plan_ref(scores, x, plan, lambdas_for(lambdas, plan.num_images, plan.keep))


def select_mmr_with_plan_ref(
    x: torch.Tensor,
    plan: Plan,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    lambdas: Sequence[float],
    *,
    source: torch.Tensor | None = None,
    channels: PositionChannels | None = None,
) -> tuple[Selection, torch.Tensor]:
    """Scores, MMR and the shared gather (``source`` and ``channels`` as for ``gather_with_plan_ref``) for a
    validated plan; also returns the fp32 scores [sum N]."""
    if plan.num_images == 0:
        return (empty_selection(x if source is None else source, plan, channels),
                torch.empty(0, dtype=torch.float32, device=x.device))
    scores = scores_with_plan_ref(x, plan, q_weight, q_bias, k_weight, k_bias)
    indices = mmr_with_plan_ref(scores, x, plan, lambdas)
    return gather_with_plan_ref(x, plan, indices, source=source, channels=channels), scores


def select_tokens_mmr_ref(
    x: torch.Tensor,
    cu_seqlens,
    keep_k,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    lambdas: Lambdas,
    grids=None,
) -> Selection:
    """VisionSelector + MMR selection in plain torch (same contract as ``vs_vllm.kernels.select_tokens_mmr``)."""
    plan = make_plan(x, cu_seqlens, keep_k, grids)
    check_scorer_weights(x, q_weight, q_bias, k_weight, k_bias)
    lams = lambdas_for(lambdas, plan.num_images, plan.keep)
    return select_mmr_with_plan_ref(x, plan, q_weight, q_bias, k_weight, k_bias, lams)[0]
