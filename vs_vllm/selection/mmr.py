"""Learned + diversity selection by maximal marginal relevance (IDPruner, arXiv 2602.13315) — the plain-torch op.

Given VisionSelector's scores s of one image's N tokens and their embeddings x, choose K tokens greedily:

    s' = (s - min s) / (max s - min s)             (min-max normalised per image; all-equal scores -> 0)
    step 1:  the token maximising  lam * s'         (the top-scored token when lam > 0)
    step t:  the token maximising  lam * s'_i - (1 - lam) * max_{j chosen} cos(x_i, x_j)

ties to the lowest index, chosen tokens never again; the K chosen indices come back ascending. ``lam = 1`` is
VisionSelector's own top-K exactly (it short-cuts to :func:`select_topk` on the raw scores, so no tie that the
normalisation could create changes the choice); ``lam = 0`` is pure diversity (max-min cosine, starting from token 0).

Default: a request (and server) that gives no lambda gets :func:`default_lambda` of the image's budget K: 1 (plain
top-K) for K <= DEFAULT_TOPK_MAX_K (4), DEFAULT_LAMBDA (0.7) above. An explicit lambda, 0.5 included, is used as
given at every K (:func:`effective_lambda`).

Memory is O(N·D) for the unit rows plus O(N) vectors — the N×N similarity matrix is never built. The Triton kernels
(``vs_vllm.kernels.mmr_select``, ``vs_vllm.kernels.mmr_gram``) are checked against this function.

Arithmetic contract (every implementation, torch or Triton): relevance = ``lam * normalized_scores(scores)`` and
gain = ``relevance - (1 - lam) * max_sim`` in fp32 exactly as written here; max_sim is the running maximum (exact) of
fp32 cosine similarities, each an fp32 dot product of two unit rows (``F.normalize`` of the fp32-widened rows) whose
summation order is the implementation's (BLAS mat-vec, GEMM, a kernel's tiles). The argmax takes the first maximum.
Two implementations can therefore disagree only where two gains lie within the rounding of a D-long dot product
(~1e-7 relative); on random and clustered inputs the indices are identical (tests/unit/test_mmr.py).

Two loops implement the greedy steps:

- ``_greedy_stepwise`` (every device but the CPU): one mat-vec of the N unit rows against the token just chosen per
  step, O(K·N·D) in all; every op is fixed-shape (one-element index tensors, no ``.item()``), so on an accelerator the
  loop never waits for the device.
- ``_greedy_deferred`` (CPU): the same choices with far fewer reads of the N x D rows -- a small candidate set is kept
  exact every step and the other tokens are bounded from above, so most steps touch only the candidates; the full
  similarity vector is brought up to date by one GEMM over many picks at once (see the function). 12-13x faster
  than the step-wise loop at N = 4096, K = 409 on 2 CPU cores (benchmarks/results/mmr_select_cpu.md); it decides
  on the host every step, which would stall an accelerator, hence step-wise there.
"""

from __future__ import annotations

import enum
import math
import numbers

import torch
import torch.nn.functional as F

from vs_vllm.selection.topk import select_topk, validate_k

__all__ = [
    "BY_BUDGET",
    "DEFAULT_LAMBDA",
    "DEFAULT_TOPK_MAX_K",
    "LambdaDefault",
    "default_lambda",
    "effective_lambda",
    "mmr_select",
    "mmr_select_stepwise",
    "normalized_scores",
    "validate_lambda",
]

#: The default lambda of budgets above DEFAULT_TOPK_MAX_K tokens. IDPruner uses 0.5; on the synthetic validation sets
#: 0.7 was at or above 0.5 at almost every budget (0.5 lost 1.5 points at K = 6 on Qwen3-VL, 0.7 gained 1.1).
DEFAULT_LAMBDA = 0.7
#: Budgets of at most this many tokens default to lambda 1 (VisionSelector's own top-K): with so few slots, the
#: diversity term spends some on tokens unlike the top-scored one and drops the one that carries the answer (Qwen3-VL
#: validation, K = 3 / 4: -4.7 / -1.0 points at lambda 0.7, -9.6 / -5.7 at 0.5).
DEFAULT_TOPK_MAX_K = 4


class LambdaDefault(enum.Enum):
    """The marker of "no selection_lambda given" (an enum, so it survives pickling between processes)."""

    BY_BUDGET = "by budget"

    def __repr__(self) -> str:
        return "BY_BUDGET"


#: No lambda given: :func:`default_lambda` of each image's budget decides. ``None`` is not this marker -- it is
#: refused like any other non-number, as the HTTP layer refuses ``"selection_lambda": null``.
BY_BUDGET = LambdaDefault.BY_BUDGET


def default_lambda(k: int) -> float:
    """The lambda of an image whose budget is ``k`` tokens when the request gives none: 1 (plain top-K) for
    ``k <= DEFAULT_TOPK_MAX_K``, DEFAULT_LAMBDA above. The one place the default is decided: the torch op, the
    serving path and the Triton kernels (which get the effective lambda per image from the host) all call it.
    Chosen on validation sets only (benchmarks/results/mmr_default_validation.md)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return 1.0 if k <= DEFAULT_TOPK_MAX_K else DEFAULT_LAMBDA


def effective_lambda(selection_lambda: object, k: int, name: str = "selection_lambda") -> float:
    """The lambda an image with budget ``k`` is selected with: an explicit ``selection_lambda`` as given (validated:
    ValueError naming ``name``), :data:`BY_BUDGET` (no lambda in the request or server) :func:`default_lambda` of
    ``k``."""
    if selection_lambda is BY_BUDGET:
        return default_lambda(k)
    return validate_lambda(selection_lambda, name)


def validate_lambda(value: object, name: str = "selection_lambda") -> float:
    """``value`` as a float in [0, 1]; ValueError naming ``name`` otherwise (bools, strings, NaN refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r} ({type(value).__name__})")
    lam = float(value)
    if math.isnan(lam) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return lam


def normalized_scores(scores: torch.Tensor) -> torch.Tensor:
    """Min-max normalised fp32 scores in [0, 1]; all-equal scores give zeros. No host sync."""
    s = scores.float()
    lo, hi = s.min(), s.max()
    span = hi - lo
    return torch.where(span > 0, (s - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(s))


def mmr_select(scores: torch.Tensor, embeddings: torch.Tensor, k: int,
               selection_lambda: float | LambdaDefault = BY_BUDGET) -> torch.Tensor:
    """K ascending int64 indices chosen by maximal marginal relevance (see the module docstring); without a
    ``selection_lambda``, :func:`default_lambda` of ``k``.

    On the CPU the greedy loop runs deferred (:func:`_greedy_deferred`); on other devices step by step
    (:func:`_greedy_stepwise`, no host sync). Both follow the arithmetic contract of the module docstring."""
    return _mmr(scores, embeddings, k, selection_lambda, deferred=scores.device.type == "cpu")


def mmr_select_stepwise(scores: torch.Tensor, embeddings: torch.Tensor, k: int,
                        selection_lambda: float | LambdaDefault = BY_BUDGET) -> torch.Tensor:
    """:func:`mmr_select` with one full mat-vec per step on every device: the plain loop the deferred one must
    reproduce (tests and benchmarks compare both)."""
    return _mmr(scores, embeddings, k, selection_lambda, deferred=False)


def _mmr(scores: torch.Tensor, embeddings: torch.Tensor, k: int, selection_lambda: float | LambdaDefault,
         deferred: bool) -> torch.Tensor:
    if scores.dim() != 1 or embeddings.dim() != 2 or embeddings.shape[0] != scores.shape[0]:
        raise ValueError(f"scores [N] and embeddings [N, D] expected, got {tuple(scores.shape)} and "
                         f"{tuple(embeddings.shape)}")
    n = scores.shape[0]
    k = validate_k(k, n)
    lam = effective_lambda(selection_lambda, k)
    if k == n:
        return torch.arange(n, dtype=torch.long, device=scores.device)
    if lam == 1.0:
        return select_topk(scores, k)
    with torch.no_grad():
        relevance = lam * normalized_scores(scores)
        unit = F.normalize(embeddings.detach().float(), dim=-1, eps=1e-12)
        greedy = _greedy_deferred if deferred else _greedy_stepwise
        return torch.sort(greedy(relevance, unit, k, 1.0 - lam)).values


def _greedy_stepwise(relevance: torch.Tensor, unit: torch.Tensor, k: int, oml: float) -> torch.Tensor:
    """K chosen indices in pick order: every step one full mat-vec against the token just chosen, fixed-shape ops
    only (one-element index tensors, no ``.item()``), so an accelerator never waits for the host."""
    n = relevance.shape[0]
    blocked = torch.zeros(n, dtype=torch.float32, device=relevance.device)
    chosen = torch.empty(k, dtype=torch.long, device=relevance.device)
    max_sim = None
    for step in range(k):
        gain = relevance if max_sim is None else relevance - oml * max_sim
        idx = torch.argmax(gain + blocked).view(1)  # first maximum: ties to the lowest index
        chosen[step : step + 1] = idx
        blocked.index_fill_(0, idx, -math.inf)
        sim = unit @ unit.index_select(0, idx)[0]
        max_sim = sim if max_sim is None else torch.maximum(max_sim, sim)
    return chosen


#: Deferred loop: candidates kept exact per step (at most this many; twice the picks still to make, at least
#: DEFERRED_MIN_CANDIDATES), and at most DEFERRED_MAX_PENDING picks folded into the full similarity vector at once.
DEFERRED_MAX_CANDIDATES = 512
DEFERRED_MIN_CANDIDATES = 64
DEFERRED_MAX_PENDING = 256


def _greedy_deferred(relevance: torch.Tensor, unit: torch.Tensor, k: int, oml: float) -> torch.Tensor:
    """The greedy choices of :func:`_greedy_stepwise`, without a full mat-vec every step (host-driven: CPU).

    After step 1, max_sim only grows, so a token's gain computed from an out-of-date max_sim is an upper bound of its
    gain now. The loop keeps a candidate set C (the tokens with the largest exact gains when C was formed) whose
    max_sim is brought up to date every step by one |C| x D mat-vec; the other tokens keep the max_sim of that moment,
    and T, the largest gain among them then, bounds all of them from above. While the best candidate's exact gain
    beats T strictly, it is the argmax of all exact gains (ties among candidates go to the lowest index: C is kept in
    index order), so it is picked without touching the other N - |C| rows. Otherwise (or after
    DEFERRED_MAX_PENDING picks) the picks made since are folded into max_sim by one N x P GEMM -- P picks at once
    run at GEMM rather than mat-vec speed --, the argmax is taken over every exact gain, and C is formed anew.
    Each (token, pick) similarity is computed once, by the mat-vec while the token is a candidate and by the GEMM
    otherwise, so the choices are exactly the greedy ones for those similarity values."""
    n = relevance.shape[0]
    chosen = [int(torch.argmax(relevance))]
    taken = torch.zeros(n, dtype=torch.bool)
    taken[chosen[0]] = True
    max_sim = unit @ unit[chosen[0]]  # the first pick's row, as the step-by-step loop computes it
    pending: list[int] = []  # picks whose similarities to the non-candidates are not in max_sim yet
    # candidate indices (ascending), with their relevance, unit rows, exact max_sim and taken mask; the bound T
    cand = cand_rel = cand_rows = cand_max = cand_taken = None
    bound = -math.inf
    force_refresh = False
    while len(chosen) < k:
        pick = -1
        if cand is not None and not force_refresh:
            cand_gain = (cand_rel - oml * cand_max).masked_fill_(cand_taken, -math.inf)
            pos = int(torch.argmax(cand_gain))
            if float(cand_gain[pos]) > bound:
                pick = int(cand[pos])
                cand_taken[pos] = True
        if pick < 0:  # no provable winner among the candidates: bring max_sim up to date, pick among all
            if pending:
                sims = unit @ unit[torch.tensor(pending)].T
                torch.maximum(max_sim, sims.amax(dim=1), out=max_sim)
                pending = []
            if cand is not None:
                max_sim[cand] = cand_max  # their similarities to the recent picks came from the mat-vec
            gain = (relevance - oml * max_sim).masked_fill_(taken, -math.inf)
            pick = int(torch.argmax(gain))  # first maximum: ties to the lowest index
            gain[pick] = -math.inf
            remaining = k - len(chosen) - 1
            free = n - len(chosen) - 1
            size = min(free, DEFERRED_MAX_CANDIDATES, max(DEFERRED_MIN_CANDIDATES, 2 * remaining))
            if size <= 0:
                cand = None
            else:
                if size >= free:
                    cand, bound = torch.nonzero(~taken & (torch.arange(n) != pick))[:, 0], -math.inf
                else:
                    top = torch.topk(gain, size + 1)
                    cand, bound = torch.sort(top.indices[:size]).values, float(top.values[size])
                cand_rel = relevance[cand]
                cand_rows = unit[cand]
                cand_max = max_sim[cand]
                cand_taken = torch.zeros(cand.shape[0], dtype=torch.bool)
        taken[pick] = True
        chosen.append(pick)
        pending.append(pick)
        if cand is not None:
            torch.maximum(cand_max, cand_rows @ unit[pick], out=cand_max)
        force_refresh = len(pending) >= DEFERRED_MAX_PENDING  # bounds the N x P block of the next GEMM
    return torch.tensor(chosen, dtype=torch.long)
