"""Selection dispatch for one modality of one encoder call: K_i rows (and their (t, h, w)) per media item.

``visionselector`` and ``visionselector_mmr`` items of the call go through the kernels dispatcher together (one
packed batch per method); every other method goes through the shared registry (``vs_vllm.selection.methods``) and the shared gather. Everything the host already
knows — N_i from the tensors' shapes, K_i, methods and seeds from the processor's CPU fields, grids from the CPU grid
field — stays on the host, so this path never synchronises with the device (tested under
``vs_vllm.testing.sync_guard``).

Rows are gathered whole: an adapter whose vision output carries more than the scored columns (Qwen3-VL's DeepStack
levels) keeps every column of a kept token, while the scorer reads only the first ``scored_width`` columns.

Every pruned item comes out in the engine's final layout — its kept rows followed by their position channels
(``vs_vllm.kernels.position_channels``) — written by the selection's own gather pass (``PositionChannels``): no
gather -> copy -> concat. The items of a packed batch are one buffer (each item a view of it), and a batch whose
items are consecutive slices of one vision-tower output (``split`` views) is scored in place, without a concat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vs_vllm.selection.methods import select
from vs_vllm.selection.mmr import BY_BUDGET, LambdaDefault, effective_lambda
from vs_vllm.vllm_plugin.pruning.channels import unpositioned

__all__ = ["PACKED_METHODS", "ItemSelection", "packed_rows", "select_items"]

#: Learned methods whose items of one encoder call run together through the kernels dispatcher (one score pass for
#: the packed batch); every other method runs per item through the registry.
PACKED_METHODS = ("visionselector", "visionselector_mmr")


@dataclass(frozen=True)
class ItemSelection:
    """What the processor decided for one media item (host values)."""

    keep: int
    method: str
    seed: int | None = None
    selection_lambda: float | LambdaDefault = BY_BUDGET  # BY_BUDGET: default_lambda(keep)


def select_items(
    embeds: Sequence[torch.Tensor],
    grids: Sequence[tuple[int, int, int]],
    choices: Sequence[ItemSelection],
    scorer: torch.nn.Module | None,
    scored_width: int | None = None,
    t_factors: Sequence[float] | None = None,
) -> list[torch.Tensor]:
    """Per item, in the items' order, what ``embed_multimodal`` returns for it: [K_i, D_full + 6], the kept rows and
    their position channels (t offset = int(t * t_factors[i]), h, w). An item kept whole comes back with channels
    that mark it as already positioned (t = -1): the positions computed before the encoder are exact for it."""
    from vs_vllm.kernels import PositionChannels, gather_selected, select_tokens, select_tokens_mmr

    count = len(embeds)
    factors = [1.0] * count if t_factors is None else [float(f) for f in t_factors]
    if not (len(grids) == len(choices) == len(factors) == count):
        raise ValueError(f"{count} items but {len(grids)} grids, {len(choices)} selections and {len(factors)} "
                         "temporal factors")
    lengths = [int(e.shape[0]) for e in embeds]
    out: list[torch.Tensor | None] = [None] * count
    for i in range(count):
        if choices[i].keep >= lengths[i]:
            out[i] = unpositioned(embeds[i])

    def scored(x: torch.Tensor) -> torch.Tensor:
        return x if scored_width is None or scored_width >= x.shape[1] else x[:, :scored_width]

    for method in PACKED_METHODS:
        packed = [i for i in range(count) if out[i] is None and choices[i].method == method]
        if not packed:
            continue
        if scorer is None:
            raise ValueError(f"selection method {method!r} needs a scorer and this model has none")
        x_full = packed_rows([embeds[i] for i in packed])
        cu, cu_keep = [0], [0]
        for i in packed:
            cu.append(cu[-1] + lengths[i])
            cu_keep.append(cu_keep[-1] + choices[i].keep)
        keep = [choices[i].keep for i in packed]
        packed_grids = [grids[i] for i in packed]
        weights = (scorer.q_proj.weight, scorer.q_proj.bias, scorer.k_proj.weight, scorer.k_proj.bias)
        x_scored = scored(x_full)
        layout = {
            "grids": packed_grids,
            "source": None if x_scored is x_full else x_full,  # gather the rows whole (DeepStack levels)
            "channels": PositionChannels(tuple(factors[i] for i in packed)),
        }
        if method == "visionselector":
            sel = select_tokens(x_scored, cu, keep, *weights, **layout)
        else:
            lambdas = [effective_lambda(choices[i].selection_lambda, choices[i].keep) for i in packed]
            sel = select_tokens_mmr(x_scored, cu, keep, *weights, lambdas, **layout)
        for j, i in enumerate(packed):
            out[i] = sel.packed[cu_keep[j] : cu_keep[j + 1]]

    for i in range(count):
        if out[i] is not None:
            continue
        choice, n = choices[i], lengths[i]
        idx = select(choice.method, scored(embeds[i]), grids[i], choice.keep, scorer=scorer, seed=choice.seed,
                     selection_lambda=choice.selection_lambda, check_output=False)
        out[i] = gather_selected(embeds[i], [0, n], idx, [0, choice.keep], grids=[grids[i]],
                                 channels=PositionChannels((factors[i],))).packed
    return out  # type: ignore[return-value]


def packed_rows(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """The items' rows as one [sum N_i, D] tensor: a view when they are consecutive, row-major slices of one
    buffer (how a vision tower's output is split per item), a concatenation otherwise."""
    if len(items) == 1:
        return items[0]
    if not _consecutive_views(items):
        return torch.cat(list(items))
    first = items[0]
    total = sum(int(t.shape[0]) for t in items)
    return first.as_strided((total, first.shape[1]), (first.shape[1], 1))


def _consecutive_views(items: Sequence[torch.Tensor]) -> bool:
    """Whether ``items`` are 2-D row-major tensors of one dtype and width that follow each other in one storage."""
    first = items[0]
    try:
        storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
        for t in items:
            if (t.dtype != first.dtype or t.device != first.device or t.dim() != 2 or t.shape[1] != first.shape[1]
                    or not t.is_contiguous() or t.untyped_storage().data_ptr() != storage
                    or t.storage_offset() != offset):
                return False
            offset += t.numel()
    except (RuntimeError, NotImplementedError):  # a tensor without a storage to look at (e.g. a wrapper subclass)
        return False
    return True
