"""VisionSelector's learnable importance scorer.

score_i = q_i . mean_j(k_j) / sqrt(H) with q = W_q x + b_q, k = W_k x + b_k. The row mean of the N x N attention
matrix has a closed form, so no N x N matrix is built:

    kbar = W_k xbar + b_k,  u = W_q^T kbar,  c = b_q . kbar,  score_i = (x_i . u + c) / sqrt(H)

Cost O(N*D + D*H) per image instead of O(N^2 * H).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import nn

__all__ = ["TransformerScorer", "importance_scores", "Scope"]

Scope = Literal["per_image", "pooled"]


def _segment_ids(cu_seqlens: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device=device, dtype=torch.long)
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths, output_size=total)


def importance_scores(
    x: torch.Tensor,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    scope: Scope = "per_image",
) -> torch.Tensor:
    """fp32 importance scores for a packed batch ``x`` of shape [sum N_i, D].

    ``cu_seqlens`` ([B + 1], cumulative token counts) splits ``x`` into images; ``None`` means one image.
    ``scope="per_image"`` takes the mean key per image (what a serving engine that sizes each image separately
    needs); ``"pooled"`` takes one mean over every token of the batch (what the original does within one call).
    All arithmetic is fp32 whatever the input dtype: bf16 scores create many spurious ties.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [tokens, hidden], got shape {tuple(x.shape)}")
    if scope not in ("per_image", "pooled"):
        raise ValueError(f"scope must be 'per_image' or 'pooled', got {scope!r}")
    hidden = q_weight.shape[0]
    xf = x.float()
    wq, bq, wk, bk = (t.to(device=x.device, dtype=torch.float32) for t in (q_weight, q_bias, k_weight, k_bias))
    total = x.shape[0]
    if cu_seqlens is None or scope == "pooled":
        xbar = xf.mean(dim=0, keepdim=True)  # [1, D]
        seg = None
    else:
        cu = torch.as_tensor(cu_seqlens, dtype=torch.long)
        if cu.dim() != 1 or cu.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu.shape)}")
        # Value checks read cu_seqlens on the host: free for host sizes (what engines pass), skipped for device ones.
        if cu.device.type == "cpu" and (int(cu[0]) != 0 or int(cu[-1]) != total or bool((cu[1:] < cu[:-1]).any())):
            raise ValueError(f"cu_seqlens must be non-decreasing from 0 to {total}, got {cu.tolist()}")
        params = (x, q_weight, q_bias, k_weight, k_bias)
        if cu.device.type == "cpu" and not (torch.is_grad_enabled() and any(t.requires_grad for t in params)):
            # Inference with host sizes (serving, the kernels' reference): image by image over slices, so no
            # [sum N, D] gather of each token's u is materialised (2-4x faster on the CPU for 2-8 images). Rows are
            # still reduced one by one (never a mat-vec, whose rounding depends on a row's position), so equal rows of
            # an image get equal scores. Training keeps the one-pass form below (its gradients are what the training
            # tests pin down, to the last bit of noise).
            spans = list(itertools.pairwise(cu.tolist()))
            xbar = torch.stack([xf[a:b].sum(dim=0) / max(b - a, 1) for a, b in spans])  # [B, D]
            kbar = xbar @ wk.T + bk
            u, c = kbar @ wq, kbar @ bq
            raw = torch.cat([(xf[a:b] * u[i]).sum(dim=-1) + c[i] for i, (a, b) in enumerate(spans)])
            return raw / math.sqrt(hidden)
        cu = (cu.pin_memory() if x.device.type == "cuda" else cu).to(x.device, non_blocking=True)
        seg = _segment_ids(cu, total, x.device)
        counts = (cu[1:] - cu[:-1]).clamp_min(1).to(torch.float32)
        sums = torch.zeros(counts.numel(), x.shape[1], device=x.device, dtype=torch.float32)
        sums.index_add_(0, seg, xf)
        xbar = sums / counts[:, None]  # [B, D]
    kbar = xbar @ wk.T + bk  # [B, H]
    u = kbar @ wq  # [B, D]
    c = kbar @ bq  # [B]
    if seg is None:
        raw = xf @ u[0] + c[0]
    else:
        raw = (xf * u[seg]).sum(dim=-1) + c[seg]
    return raw / math.sqrt(hidden)


class TransformerScorer(nn.Module):
    """Two linear maps (``q_proj``, ``k_proj``, D -> H with bias), laid out like the original checkpoints."""

    def __init__(self, in_features: int, hidden_dim: int | None = None, init_std: float = 1e-4) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        hidden_dim = in_features // 2 if hidden_dim is None else hidden_dim
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim} (in_features={in_features})")
        self.in_features = in_features
        self.hidden_dim = hidden_dim
        self.q_proj = nn.Linear(in_features, hidden_dim, bias=True)
        self.k_proj = nn.Linear(in_features, hidden_dim, bias=True)
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std: float = 1e-4) -> None:
        """Near-zero init (weights N(0, init_std^2), zero bias): every first soft mask is ~K/N per token."""
        for proj in (self.q_proj, self.k_proj):
            nn.init.normal_(proj.weight, mean=0.0, std=init_std)
            nn.init.zeros_(proj.bias)

    def forward(
        self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None, scope: Scope = "per_image"
    ) -> torch.Tensor:
        return importance_scores(
            x, self.q_proj.weight, self.q_proj.bias, self.k_proj.weight, self.k_proj.bias, cu_seqlens, scope
        )
