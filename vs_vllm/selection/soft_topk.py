"""Differentiable top-K for training the scorer (VisionSelector, arXiv 2510.16598, section 3 of the method spec).

Forward: find a per-row shift ``t`` with ``sum_i sigmoid(s_i + t) = K`` by bisection (64 halvings of the bracket
``[-max(s) - 10, -min(s) + 10]``, no gradient) and return the soft mask ``p = sigmoid(s + t)``. There is no temperature
and no Gumbel noise: sharpness comes from the learned score scale only.

Backward: implicit-function gradient of the constraint. With ``v = p (1 - p)``::

    dL/ds = v * g - v * (v . g) / sum(v)

No gradient flows to K. ``sum(v)`` is clamped to the smallest normal float so that very well separated scores (every
``v`` underflowing) give a zero gradient instead of NaN; the ratio ``v_i * (v . g) / sum(v)`` is bounded by
``v_i * max|g|`` so the clamp never inflates it.

All arithmetic runs in float32 (float64 when the scores are float64); the returned mask has the scores' dtype.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["hard_topk_mask", "soft_topk"]

_BISECTION_STEPS = 64
_BRACKET_MARGIN = 10.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_scores(scores: object, fn: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"{fn}: scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() < 1:
        raise ValueError(f"{fn}: scores must have shape [..., N], got a 0-d tensor")
    if not scores.is_floating_point():
        raise ValueError(f"{fn}: scores must be a floating tensor, got dtype {scores.dtype}")
    if scores.numel() and not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).sum())
        raise ValueError(f"{fn}: scores contain NaN or infinite values ({bad} of {scores.numel()})")
    return scores


def _k_per_row(k: object, scores: torch.Tensor, fn: str, *, allow_n: bool) -> torch.Tensor:
    """K as an int64 tensor of shape ``scores.shape[:-1]`` after checking its range.

    ``allow_n=False`` is the training rule ``0 < K < N``; ``allow_n=True`` is the hard top-K rule ``1 <= K <= N``.
    """
    n = scores.shape[-1]
    batch_shape = scores.shape[:-1]
    upper = "<=" if allow_n else "<"
    if isinstance(k, torch.Tensor):
        if k.is_floating_point():
            if not bool(torch.isfinite(k).all()) or not bool((k == k.round()).all()):
                raise ValueError(f"{fn}: k must hold integers, got {k.tolist()}")
        elif k.dtype == torch.bool or k.is_complex():
            raise ValueError(f"{fn}: k must hold integers, got dtype {k.dtype}")
        try:
            kt = torch.broadcast_to(k.to(device=scores.device, dtype=torch.long), batch_shape)
        except RuntimeError as exc:
            raise ValueError(
                f"{fn}: per-row k of shape {tuple(k.shape)} does not match scores rows {tuple(batch_shape)}"
            ) from exc
    else:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"{fn}: k must be an integer or a per-row integer tensor, got {k!r}")
        kt = torch.full(batch_shape, int(k), dtype=torch.long, device=scores.device)
    if kt.numel():
        bad = (kt < 1) | ((kt > n) if allow_n else (kt >= n))
        if bool(bad.any()):
            shown = kt[bad].unique()[:8].tolist()
            raise ValueError(f"{fn}: k must satisfy 0 < k {upper} N, got k={shown} with N={n}")
    return kt


def _bisect_shift(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-row t with sum(sigmoid(z + t)) = k, shape [..., 1]. ``z`` and ``k`` are in the compute dtype."""
    lo = -z.amax(dim=-1, keepdim=True) - _BRACKET_MARGIN
    hi = -z.amin(dim=-1, keepdim=True) + _BRACKET_MARGIN
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) * 0.5
        below = torch.sigmoid(z + mid).sum(dim=-1, keepdim=True) < k
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return (lo + hi) * 0.5


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        cdtype = _compute_dtype(scores.dtype)
        z = scores.detach().to(cdtype)
        kk = k.to(cdtype).unsqueeze(-1)
        with torch.no_grad():
            z = z + _bisect_shift(z, kk)
        ctx.save_for_backward(z)
        ctx.in_dtype = scores.dtype
        return torch.sigmoid(z).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        # p (1 - p) as sigmoid(z) * sigmoid(-z): no cancellation in 1 - p when p is close to 1.
        v = torch.sigmoid(z) * torch.sigmoid(-z)
        g = grad_out.to(z.dtype)
        vsum = v.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        vg = (v * g).sum(dim=-1, keepdim=True)
        grad = v * g - v * (vg / vsum)
        return grad.to(ctx.in_dtype), None


def soft_topk(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Soft top-K mask ``p = sigmoid(s + t)`` with ``sum(p) = K`` per row, differentiable w.r.t. ``scores``.

    ``scores`` has shape ``[..., N]``; ``k`` is one int for every row or an integer tensor broadcastable to
    ``scores.shape[:-1]``. Requires ``0 < K < N`` (the reference asserts it), else ValueError naming the values.
    The output has the scores' dtype and shape.
    """
    scores = _check_scores(scores, "soft_topk")
    kt = _k_per_row(k, scores, "soft_topk", allow_n=False)
    return _SoftTopK.apply(scores, kt)


def hard_topk_mask(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """0/1 mask of each row's K largest scores (ties to the lower index, as :func:`select_topk`), no gradient.

    The BCE target for training. ``k`` is an int or a per-row integer tensor with ``1 <= K <= N``. The mask has the
    scores' dtype and shape.
    """
    scores = _check_scores(scores, "hard_topk_mask")
    kt = _k_per_row(k, scores, "hard_topk_mask", allow_n=True)
    with torch.no_grad():
        s = scores.detach()
        order = torch.sort(s, dim=-1, descending=True, stable=True).indices
        positions = torch.arange(s.shape[-1], device=s.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)
        return (rank < kt.unsqueeze(-1)).to(scores.dtype)
