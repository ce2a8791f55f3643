"""Selection dispatch for one modality of one encoder call: K_i rows (and their (t, h, w)) per media item.

``visionselector`` items of the call go through the fused kernels together (one packed batch); every other method
goes through the shared registry (``vs_vllm.selection.methods``) and the shared gather. Everything the host already
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
from vs_vllm.selection.positions import grid_coordinates

__all__ = ["ItemSelection", "select_items"]


@dataclass(frozen=True)
class ItemSelection:
    """What the processor decided for one media item (host values)."""

    keep: int
    method: str
    seed: int | None = None


def _coordinates(n: int, grid: Sequence[int], device: torch.device) -> torch.Tensor:
    """[n, 3] (t, h, w) of every token of an unpruned item."""
    return grid_coordinates(torch.arange(n, device=device), grid, validate=False).T


def select_items(
    embeds: Sequence[torch.Tensor],
    grids: Sequence[tuple[int, int, int]],
    choices: Sequence[ItemSelection],
    scorer: torch.nn.Module | None,
    scored_width: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per item: (rows [K_i, D_full], coords [K_i, 3] int64), in the items' order."""
    from vs_vllm.kernels import gather_selected, select_tokens

    count = len(embeds)
    if not (len(grids) == len(choices) == count):
        raise ValueError(f"{count} items but {len(grids)} grids and {len(choices)} selections")
    lengths = [int(e.shape[0]) for e in embeds]
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * count
    for i in range(count):
        if choices[i].keep >= lengths[i]:
            out[i] = (embeds[i], _coordinates(lengths[i], grids[i], embeds[i].device))

    def scored(x: torch.Tensor) -> torch.Tensor:
        return x if scored_width is None or scored_width >= x.shape[1] else x[:, :scored_width]

    learned = [i for i in range(count) if out[i] is None and choices[i].method == "visionselector"]
    if learned:
        if scorer is None:
            raise ValueError("selection method 'visionselector' needs a scorer and this model has none")
        x_full = torch.cat([embeds[i] for i in learned]) if len(learned) > 1 else embeds[learned[0]]
        cu = [0]
        for i in learned:
            cu.append(cu[-1] + lengths[i])
        keep = [choices[i].keep for i in learned]
        learned_grids = [grids[i] for i in learned]
        sel = select_tokens(scored(x_full), cu, keep, scorer.q_proj.weight, scorer.q_proj.bias,
                            scorer.k_proj.weight, scorer.k_proj.bias, grids=learned_grids)
        cu_keep = [0]
        for k in keep:
            cu_keep.append(cu_keep[-1] + k)
        rows = sel.rows
        if scored(x_full) is not x_full:
            rows = gather_selected(x_full, cu, sel.indices, cu_keep, grids=learned_grids).rows
        for j, i in enumerate(learned):
            a, b = cu_keep[j], cu_keep[j + 1]
            out[i] = (rows[a:b], sel.positions[a:b])

    for i in range(count):
        if out[i] is not None:
            continue
        choice, n = choices[i], lengths[i]
        idx = select(choice.method, scored(embeds[i]), grids[i], choice.keep, scorer=scorer, seed=choice.seed,
                     check_output=False)
        sel = gather_selected(embeds[i], [0, n], idx, [0, choice.keep], grids=[grids[i]])
        out[i] = (sel.rows, sel.positions)
    return out  # type: ignore[return-value]
