"""Selection dispatch for one modality of one encoder call: K_i rows (and their (t, h, w)) per media item.

``visionselector`` and ``visionselector_mmr`` items of the call go through the kernels dispatcher together (one
packed batch per method); every other method goes through the shared registry (``vs_vllm.selection.methods``) and the shared gather. Everything the host already
knows — N_i from the tensors' shapes, K_i, methods and seeds from the processor's CPU fields, grids from the CPU grid
field — stays on the host, so this path never synchronises with the device (tested under
``vs_vllm.testing.sync_guard``).

Rows are gathered whole: an adapter whose vision output carries more than the scored columns (Qwen3-VL's DeepStack
levels) keeps every column of a kept token, while the scorer reads only the first ``scored_width`` columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vs_vllm.selection.methods import select
from vs_vllm.selection.mmr import DEFAULT_LAMBDA

__all__ = ["PACKED_METHODS", "ItemSelection", "select_items"]

#: Learned methods whose items of one encoder call run together through the kernels dispatcher (one score pass for
#: the packed batch); every other method runs per item through the registry.
PACKED_METHODS = ("visionselector", "visionselector_mmr")


@dataclass(frozen=True)
class ItemSelection:
    """What the processor decided for one media item (host values)."""

    keep: int
    method: str
    seed: int | None = None
    selection_lambda: float = DEFAULT_LAMBDA


def select_items(
    embeds: Sequence[torch.Tensor],
    grids: Sequence[tuple[int, int, int]],
    choices: Sequence[ItemSelection],
    scorer: torch.nn.Module | None,
    scored_width: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Per item: (rows [K_i, D_full], coords [K_i, 3] int64), in the items' order. An item kept whole gets
    (its embeddings, None): nothing was pruned, so the positions computed before the encoder are already exact."""
    from vs_vllm.kernels import gather_selected, select_tokens, select_tokens_mmr

    count = len(embeds)
    if not (len(grids) == len(choices) == count):
        raise ValueError(f"{count} items but {len(grids)} grids and {len(choices)} selections")
    lengths = [int(e.shape[0]) for e in embeds]
    out: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * count
    for i in range(count):
        if choices[i].keep >= lengths[i]:
            out[i] = (embeds[i], None)

    def scored(x: torch.Tensor) -> torch.Tensor:
        return x if scored_width is None or scored_width >= x.shape[1] else x[:, :scored_width]

    for method in PACKED_METHODS:
        packed = [i for i in range(count) if out[i] is None and choices[i].method == method]
        if not packed:
            continue
        if scorer is None:
            raise ValueError(f"selection method {method!r} needs a scorer and this model has none")
        x_full = torch.cat([embeds[i] for i in packed]) if len(packed) > 1 else embeds[packed[0]]
        cu, cu_keep = [0], [0]
        for i in packed:
            cu.append(cu[-1] + lengths[i])
            cu_keep.append(cu_keep[-1] + choices[i].keep)
        keep = [choices[i].keep for i in packed]
        packed_grids = [grids[i] for i in packed]
        weights = (scorer.q_proj.weight, scorer.q_proj.bias, scorer.k_proj.weight, scorer.k_proj.bias)
        x_scored = scored(x_full)
        if method == "visionselector":
            sel = select_tokens(x_scored, cu, keep, *weights, grids=packed_grids)
        else:
            sel = select_tokens_mmr(x_scored, cu, keep, *weights, [choices[i].selection_lambda for i in packed],
                                    grids=packed_grids)
        rows = sel.rows
        if x_scored is not x_full:  # rows wider than the scored columns: gather them whole
            rows = gather_selected(x_full, cu, sel.indices, cu_keep, grids=packed_grids).rows
        for j, i in enumerate(packed):
            a, b = cu_keep[j], cu_keep[j + 1]
            out[i] = (rows[a:b], sel.positions[a:b])

    for i in range(count):
        if out[i] is not None:
            continue
        choice, n = choices[i], lengths[i]
        idx = select(choice.method, scored(embeds[i]), grids[i], choice.keep, scorer=scorer, seed=choice.seed,
                     selection_lambda=choice.selection_lambda, check_output=False)
        sel = gather_selected(embeds[i], [0, n], idx, [0, choice.keep], grids=[grids[i]])
        out[i] = (sel.rows, sel.positions)
    return out  # type: ignore[return-value]
