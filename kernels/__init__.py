"""Triton selection kernels and their plain-torch references, shipped as ``vs_vllm.kernels``.

``select_tokens`` runs VisionSelector's scorer and exact per-image top-K; ``gather_selected`` gathers rows (and
(t, h, w) positions) for indices chosen by any method. Both dispatch to Triton on CUDA and to torch elsewhere
(see ``vs_vllm.kernels.dispatch``); given ``PositionChannels`` they write the engine's packed layout (kept rows
followed by their position channels) in the same pass. Importing this package does not import triton.
"""

from .common import Selection
from .dispatch import gather_selected, resolve_backend, select_tokens
from .position_channels import PositionChannels

__all__ = ["PositionChannels", "Selection", "gather_selected", "resolve_backend", "select_tokens"]

# Learned + diversity selection (maximal marginal relevance), same contract as select_tokens.
from .dispatch import select_tokens_mmr

__all__ += ["select_tokens_mmr"]
