"""The serving path never synchronises host and device (checked on CPU with vs_vllm.testing.sync_guard).

Selection (every method, packed visionselector batches, DeepStack-style wider rows), the position channels and the
pruning hook under the V2 runner's convention run with their tensors as "device" tensors; the host-side sizes (K_i,
N_i, grids, method ids) stay plain. The only sync allowed is the decode delta's one scalar read, inside vLLM's
``gpu_sync_allowed()``.
"""

from __future__ import annotations

import pytest
import torch

from vs_vllm.selection.methods import list_methods
from vs_vllm.selection.positions import (
    MediaSpan,
    fill_media_positions,
    grid_coordinates,
    mrope_positions,
    mrope_positions_for_spans,
)
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.testing.sync_guard import as_device, sync_guard, to_host
from vs_vllm.vllm_plugin.pruning.channels import strip_channels, unpositioned, with_channels
from vs_vllm.vllm_plugin.pruning.hook import recompute_positions
from vs_vllm.vllm_plugin.pruning.selection import ItemSelection, select_items

GRIDS = [(1, 5, 7), (1, 4, 4), (3, 3, 3)]
HIDDEN = 24


def _inputs(extra_columns: int = 0):
    gen = torch.Generator().manual_seed(11)
    embeds = [torch.randn(t * h * w, HIDDEN + extra_columns, generator=gen) for t, h, w in GRIDS]
    torch.manual_seed(5)
    scorer = TransformerScorer(HIDDEN)
    scorer.reset_parameters(init_std=0.2)
    return embeds, scorer


def _device_scorer(scorer: TransformerScorer) -> TransformerScorer:
    on_device = TransformerScorer(scorer.in_features, scorer.q_proj.out_features)
    for module in ("q_proj", "k_proj"):
        for name in ("weight", "bias"):
            param = getattr(getattr(scorer, module), name).detach()
            setattr(getattr(on_device, module), name, torch.nn.Parameter(as_device(param), requires_grad=False))
    return on_device


@pytest.mark.parametrize("extra_columns", [0, 40])
@pytest.mark.parametrize("method", list_methods())
def test_selection_path_has_no_sync(method, extra_columns) -> None:
    embeds, scorer = _inputs(extra_columns)
    choices = [ItemSelection(keep=k, method=method, seed=3, selection_lambda=lam)  # 16 == N: the unpruned path
               for k, lam in ((7, 0.5), (16, 0.0), (2, 0.2))]
    factors = [1.0, 1.0, 2.5]
    reference = select_items(embeds, GRIDS, choices, scorer, HIDDEN, factors)
    device_embeds = [as_device(e) for e in embeds]
    with sync_guard():
        out = select_items(device_embeds, GRIDS, choices, _device_scorer(scorer), HIDDEN, factors)
    for item, ref in zip(out, reference):
        assert torch.equal(to_host(item), ref)
        assert ref.shape[1] == HIDDEN + extra_columns + 6
    # the unpruned item (keep 16 == N) goes out whole and marked as already positioned
    assert torch.equal(reference[1], unpositioned(embeds[1]))
    assert [r.shape[0] for r in reference] == [7, 16, 2]
    for item, grid, factor, emb in ((reference[0], GRIDS[0], 1.0, embeds[0]), (reference[2], GRIDS[2], 2.5, embeds[2])):
        # each kept row is one of the item's rows, followed by the channels of its own (t offset, h, w)
        hidden, coords = strip_channels([item])
        idx = [next(j for j in range(emb.shape[0]) if torch.equal(emb[j], row)) for row in hidden[0]]
        assert idx == sorted(idx)
        expect = grid_coordinates(torch.tensor(idx), grid).T.clone()
        expect[:, 0] = (expect[:, 0].double() * factor).long()
        assert torch.equal(coords, expect)
        assert torch.equal(item, with_channels(hidden[0], coords))


def test_hook_on_device_tensors_syncs_only_for_the_guarded_delta() -> None:
    kept = [torch.tensor([0, 4, 9, 30]), torch.tensor([1, 2, 3, 15])]
    grids = GRIDS[:2]
    ids = [5, 5] + [9] + [100] * 4 + [9, 9] + [100] * 4 + [9, 5, 5, 5]
    exact, delta = mrope_positions(ids, 100, grids, kept=kept)
    spans = [MediaSpan(offset=3, length=4, grid=grids[0]), MediaSpan(offset=9, length=4, grid=grids[1])]
    provisional, _ = mrope_positions_for_spans(len(ids), spans)
    rows = [with_channels(torch.randn(4, HIDDEN), grid_coordinates(k, g).T) for k, g in zip(kept, grids)]
    device_ids = as_device(torch.tensor(ids, dtype=torch.int32))
    device_positions = as_device(provisional.to(torch.int32))
    device_rows = [as_device(r) for r in rows]
    with sync_guard() as log:
        hidden, positions, new_delta = recompute_positions(device_ids, device_rows, device_positions.long(), 0,
                                                           (100, 101), fill_media_positions)
    assert torch.equal(to_host(positions), exact) and new_delta == delta
    assert list(log) == [] and len(log.allowed) == 1  # the decode delta, inside gpu_sync_allowed()
    assert torch.equal(to_host(hidden[0]), strip_channels(rows)[0][0])


def test_frame_hook_on_device_tensors_syncs_only_for_the_guarded_delta() -> None:
    """Qwen3-VL's scheme: a pruned video's kept tokens sit in its first frame's run and pick their own frame's anchor
    (``fill_frame_positions``, searchsorted over anchor counts) without a host sync."""
    from functools import partial

    from vs_vllm.selection.positions import fill_frame_positions

    anchor, video, stamp = 7, 101, 9
    # text, frame 0 run holding 3 kept tokens (frames 0, 1, 2 of a 3-frame 2 x 2 video), two empty frames, text
    ids = [5, 5, stamp, anchor, video, video, video, 8, stamp, anchor, 8, stamp, anchor, 8, 5, 5]
    spans = [MediaSpan(offset=4, length=3, grid=(1, 2, 2), lumped=True),
             MediaSpan(offset=10, length=0, grid=(1, 2, 2), lumped=True),
             MediaSpan(offset=13, length=0, grid=(1, 2, 2), lumped=True)]
    provisional, delta = mrope_positions_for_spans(len(ids), spans)
    coords = torch.tensor([[0, 1, 0], [1, 0, 1], [2, 1, 1]])  # (frame, h, w)
    rows = [with_channels(torch.randn(3, HIDDEN), coords)]
    fill = partial(fill_frame_positions, frame_anchor_id=anchor)
    _, expected, expected_delta = recompute_positions(ids, rows, provisional.clone(), 0, (100, video), fill)
    # each kept token sits one past its own frame's anchor: frame f's anchor is the f-th anchor of the video
    bases = [int(expected_row) for expected_row in provisional[0, [3, 9, 12]] + 1]
    assert expected[:, 4:7].T.tolist() == [[bases[0], bases[0] + 1, bases[0]], [bases[1], bases[1], bases[1] + 1],
                                           [bases[2], bases[2] + 1, bases[2] + 1]]
    with sync_guard() as log:
        _, positions, new_delta = recompute_positions(
            as_device(torch.tensor(ids, dtype=torch.int32)), [as_device(r) for r in rows],
            as_device(provisional.to(torch.int32)).long(), 0, (100, video), fill)
    assert torch.equal(to_host(positions), expected) and new_delta == expected_delta == delta
    assert list(log) == [] and len(log.allowed) == 1
