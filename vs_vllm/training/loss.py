"""The training objective: soft top-K masks over the visual tokens, the BCE constraint and its curriculum.

    L = CE(answer tokens | frozen LLM sees p * X) + lambda_t * BCE(p, hard top-K mask)
    lambda_t = lambda_start + (lambda_end - lambda_start) * min(step / max_steps, 1)

Everything here is fp32 whatever the frozen model's dtype (pitfall 2 of the method spec): the scorer casts its input to
fp32, the bisection and the BCE run on fp32 scores, and the mask stays fp32 until it multiplies the features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from vs_vllm.selection.budget import keep_count
from vs_vllm.selection.soft_topk import hard_topk_mask, soft_topk

__all__ = ["SCOPES", "SoftSelection", "TopKScope", "lambda_at", "masked_ce", "soft_select"]

TopKScope = Literal["sample", "pooled"]
SCOPES = ("sample", "pooled")


def lambda_at(step: int, max_steps: int, start: float = 0.1, end: float = 2.0) -> float:
    """The BCE weight at optimizer step ``step`` (0-based): a linear ramp from ``start`` to ``end``, flat after."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return float(start) + (float(end) - float(start)) * min(step / max_steps, 1.0)


@dataclass
class SoftSelection:
    """Output of :func:`soft_select` for one micro-batch."""

    mask: torch.Tensor  # [sum N_i] fp32 soft mask p (1.0 for tokens of groups too small to select in)
    hard: torch.Tensor  # [sum N_i] fp32 hard top-K target m (1.0 likewise), no grad
    scores: torch.Tensor  # [sum N_i] fp32 scores
    bce: torch.Tensor  # scalar fp32, mean over the visual tokens of the selected groups (0 if none)
    selected_tokens: int  # visual tokens in groups that went through the soft top-K
    groups: list[tuple[int, int, int]]  # (start, N, K) per group that was selected in

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Monitoring values: score scale (std), mean p over the hard-kept and the dropped tokens (pitfall 4)."""
        if not self.groups:
            return {"score_std": 0.0, "p_kept": float("nan"), "p_dropped": float("nan")}
        idx = torch.cat([torch.arange(s, s + n, device=self.mask.device) for s, n, _ in self.groups])
        p, m, s = self.mask[idx], self.hard[idx], self.scores[idx]
        kept = m > 0.5
        return {
            "score_std": float(s.std()) if s.numel() > 1 else 0.0,
            "p_kept": float(p[kept].mean()) if bool(kept.any()) else float("nan"),
            "p_dropped": float(p[~kept].mean()) if bool((~kept).any()) else float("nan"),
        }


def _group_bounds(
    image_sizes: Sequence[int], images_per_sample: Sequence[int], scope: TopKScope
) -> list[tuple[int, int]]:
    """(start, N) of each top-K group: one per sample with images, or one for the whole micro-batch."""
    total = int(sum(image_sizes))
    if scope == "pooled":
        return [(0, total)] if total else []
    if sum(images_per_sample) != len(image_sizes):
        raise ValueError(
            f"images_per_sample {list(images_per_sample)} does not add up to the {len(image_sizes)} image(s)"
        )
    bounds, start, img = [], 0, 0
    for count in images_per_sample:
        n = int(sum(image_sizes[img : img + count]))
        img += count
        if n:
            bounds.append((start, n))
        start += n
    return bounds


def soft_select(
    scorer: torch.nn.Module,
    features: torch.Tensor,
    image_sizes: Sequence[int],
    images_per_sample: Sequence[int],
    ratio: float,
    scope: TopKScope = "sample",
) -> SoftSelection:
    """Score the micro-batch's visual tokens and build the soft and hard top-K masks.

    ``features`` is the merger output of every image of the micro-batch, concatenated in order ([sum N_i, D]); it is
    detached here (the scorer's input never carries gradient). ``scope="sample"`` takes the mean key and K over each
    sample's images; ``"pooled"`` over all visual tokens of the micro-batch (the original's batch-level top-K). In each
    group K = keep_count(N, ratio), clamped to N - 1 because the soft top-K needs K < N; groups with N < 2 are not
    selected in (mask 1, no BCE). The scorer is called exactly once (so DDP sees every parameter used).
    """
    if scope not in SCOPES:
        raise ValueError(f"topk scope must be one of {SCOPES}, got {scope!r}")
    if not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"training ratio must be in (0, 1), got {ratio!r}")
    if features.dim() != 2 or features.shape[0] != int(sum(image_sizes)):
        raise ValueError(f"features {tuple(features.shape)} do not match image sizes {list(image_sizes)}")
    x = features.detach().float()
    bounds = _group_bounds(image_sizes, images_per_sample, scope)
    device = x.device
    with torch.autocast(device_type=device.type, enabled=False):
        if scope == "pooled":
            scores = scorer(x, None, "pooled")
        else:
            cu = torch.tensor([0] + [s + n for s, n in bounds], dtype=torch.long, device=device)
            # Samples without images add nothing to x, so the bounds tile x exactly.
            scores = scorer(x, cu, "per_image")
        scores = scores.float()
        mask_parts, hard_parts, groups = [], [], []
        bce_sum = scores.new_zeros(())
        selected = 0
        for start, n in bounds:
            s = scores[start : start + n]
            if n < 2:
                mask_parts.append(torch.ones_like(s))
                hard_parts.append(torch.ones_like(s))
                continue
            k = min(keep_count(n, ratio), n - 1)
            p = soft_topk(s, k)
            m = hard_topk_mask(s, k)
            bce_sum = bce_sum + F.binary_cross_entropy(p, m, reduction="sum")
            mask_parts.append(p)
            hard_parts.append(m)
            groups.append((start, n, k))
            selected += n
        mask = torch.cat(mask_parts) if mask_parts else scores.new_zeros(0)
        hard = torch.cat(hard_parts) if hard_parts else scores.new_zeros(0)
        bce = bce_sum / selected if selected else bce_sum
    return SoftSelection(mask=mask, hard=hard.detach(), scores=scores, bce=bce, selected_tokens=selected, groups=groups)


def masked_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean fp32 cross-entropy over the given target tokens (0 with a graph if there are none)."""
    if targets.numel() == 0:
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), targets, reduction="mean")
