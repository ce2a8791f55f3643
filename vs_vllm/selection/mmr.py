"""Learned + diversity selection by maximal marginal relevance (IDPruner, arXiv 2602.13315) — the plain-torch op.

Given VisionSelector's scores s of one image's N tokens and their embeddings x, choose K tokens greedily:

    s' = (s - min s) / (max s - min s)             (min-max normalised per image; all-equal scores -> 0)
    step 1:  the token maximising  lam * s'         (the top-scored token when lam > 0)
    step t:  the token maximising  lam * s'_i - (1 - lam) * max_{j chosen} cos(x_i, x_j)

ties to the lowest index, chosen tokens never again; the K chosen indices come back ascending. ``lam = 1`` is
VisionSelector's own top-K exactly (it short-cuts to :func:`select_topk` on the raw scores, so no tie that the
normalisation could create changes the choice); ``lam = 0`` is pure diversity (max-min cosine, starting from token 0).

Memory is O(N·D) for the unit rows plus O(N) vectors — the N×N similarity matrix is never built: each step costs one
mat-vec against the token just chosen (O(K·N·D) in all). Every op is fixed-shape (one-element index tensors, no
``.item()``), so on an accelerator the loop never waits for the device. The Triton kernel
(``vs_vllm.kernels.mmr_select``) is checked against this function.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from vs_vllm.selection.topk import select_topk, validate_k

__all__ = ["DEFAULT_LAMBDA", "mmr_select", "normalized_scores", "validate_lambda"]

#: IDPruner's default trade-off between the learned score and diversity.
DEFAULT_LAMBDA = 0.5


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


def mmr_select(scores: torch.Tensor, embeddings: torch.Tensor, k: int, selection_lambda: float = DEFAULT_LAMBDA
               ) -> torch.Tensor:
    """K ascending int64 indices chosen by maximal marginal relevance (see the module docstring)."""
    if scores.dim() != 1 or embeddings.dim() != 2 or embeddings.shape[0] != scores.shape[0]:
        raise ValueError(f"scores [N] and embeddings [N, D] expected, got {tuple(scores.shape)} and "
                         f"{tuple(embeddings.shape)}")
    n = scores.shape[0]
    k = validate_k(k, n)
    lam = validate_lambda(selection_lambda)
    if k == n:
        return torch.arange(n, dtype=torch.long, device=scores.device)
    if lam == 1.0:
        return select_topk(scores, k)
    with torch.no_grad():
        relevance = lam * normalized_scores(scores)
        unit = F.normalize(embeddings.detach().float(), dim=-1, eps=1e-12)
        blocked = torch.zeros(n, dtype=torch.float32, device=scores.device)
        chosen = torch.empty(k, dtype=torch.long, device=scores.device)
        max_sim = None
        for step in range(k):
            gain = relevance if max_sim is None else relevance - (1.0 - lam) * max_sim
            idx = torch.argmax(gain + blocked).view(1)  # first maximum: ties to the lowest index
            chosen[step : step + 1] = idx
            blocked.index_fill_(0, idx, -math.inf)
            sim = unit @ unit.index_select(0, idx)[0]
            max_sim = sim if max_sim is None else torch.maximum(max_sim, sim)
        return torch.sort(chosen).values
