"""Exact hard top-K with one deterministic tie rule.

``select_topk`` is the reference every backend (Triton kernel, vLLM model, HF reference) must agree with:
the K largest scores, ties broken toward the lower index, returned as ascending indices so kept tokens stay in
their original order.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["select_topk", "validate_k"]


def validate_k(k: object, n: int) -> int:
    """Return ``k`` as an int if ``1 <= k <= n``; raise ValueError naming both otherwise."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an integer, got {k!r} ({type(k).__name__})")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n, got k={k}, n={n}")
    return k


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of the 1-D ``scores``, ascending, ties to the lowest index.

    A stable descending sort keeps equal scores in index order, so the first ``k`` sorted positions are the tie-broken
    top-K on every device. NaN scores raise ValueError for CPU tensors (they indicate a broken scorer); on an
    accelerator that check would make the host wait for the device, so there NaN ranks above +inf, as in
    ``torch.topk`` and the Triton kernel.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    k = validate_k(k, n)
    if scores.device.type == "cpu" and scores.is_floating_point() and bool(torch.isnan(scores).any()):
        raise ValueError(f"scores contain NaN ({int(torch.isnan(scores).sum())} of {n})")
    if k == n:
        return torch.arange(n, device=scores.device, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:k]).values
