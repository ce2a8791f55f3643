"""M-RoPE positions of pruned prompts: the provisional-then-fill path (vLLM) equals the direct path (HF)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.selection.positions import (
    MediaSpan,
    fill_media_positions,
    grid_coordinates,
    mrope_positions,
    mrope_positions_for_spans,
)

IMG, VID, TEXT = 900, 901, 5


@st.composite
def pruned_prompts(draw):
    """A prompt of text and pruned images: (token ids, grids, kept indices per image)."""
    ids: list[int] = []
    grids, kept = [], []
    for _ in range(draw(st.integers(1, 4))):
        ids += [TEXT] * draw(st.integers(1, 5))
        grid = (1, draw(st.integers(1, 9)), draw(st.integers(1, 9)))
        n = grid[1] * grid[2]
        k = draw(st.integers(1, n))
        idx = torch.tensor(sorted(draw(st.permutations(range(n)))[:k]))
        ids += [IMG] * k
        grids.append(grid)
        kept.append(idx)
    ids += [TEXT] * draw(st.integers(1, 5))
    return ids, grids, kept


def _reference(ids, grids, kept):
    """Brute force: positions of the unpruned prompt, then keep the columns of the kept tokens."""
    full_ids, keep_cols = [], []
    image = 0
    i = 0
    while i < len(ids):
        if ids[i] != IMG:
            full_ids.append(ids[i])
            keep_cols.append(True)
            i += 1
            continue
        _, h, w = grids[image]
        chosen = set(kept[image].tolist())
        for j in range(h * w):
            full_ids.append(IMG)
            keep_cols.append(j in chosen)
        i += len(chosen)
        image += 1
    pos, p = [], 0
    image = 0
    i = 0
    while i < len(full_ids):
        if full_ids[i] != IMG:
            pos.append((p, p, p))
            p += 1
            i += 1
            continue
        _, h, w = grids[image]
        for j in range(h * w):
            pos.append((p, p + j // w, p + j % w))
        p += max(h, w)
        i += h * w
        image += 1
    full = torch.tensor(pos).T
    return full[:, torch.tensor(keep_cols)], int(full.max()) + 1


@settings(max_examples=150, deadline=None)
@given(pruned_prompts())
def test_direct_positions_equal_brute_force(prompt) -> None:
    ids, grids, kept = prompt
    positions, delta = mrope_positions(ids, IMG, grids, kept)
    expected, next_pos = _reference(ids, grids, kept)
    assert torch.equal(positions, expected)
    assert len(ids) + delta == next_pos  # decoding continues at P_max + 1 of the unpruned prompt


@settings(max_examples=150, deadline=None)
@given(pruned_prompts(), st.data())
def test_provisional_then_fill_in_chunks_equals_direct(prompt, data) -> None:
    ids, grids, kept = prompt
    direct, direct_delta = mrope_positions(ids, IMG, grids, kept)
    provisional, delta = mrope_positions(ids, IMG, grids, kept=None)
    text = torch.tensor(ids) != IMG
    assert torch.equal(provisional[:, text], direct[:, text])  # text is exact before the encoder runs
    assert delta == direct_delta
    # The encoder rows arrive chunk by chunk, as under chunked prefill: each chunk fills the slots from its start.
    coords = torch.cat([grid_coordinates(k, g).T for k, g in zip(kept, grids)])
    slots = (~text).nonzero().flatten().tolist()
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(slots)), max_size=3)) + [0, len(slots)]))
    positions = provisional
    for a, b in zip(cuts, cuts[1:]):
        start = slots[a]  # the chunk boundary (num_computed_tokens) sits at this slot
        positions = fill_media_positions(positions, torch.tensor(ids), (IMG, VID), coords[a:b], start)
    assert torch.equal(positions, direct)


def test_unpruned_video_span_uses_temporal_factor_and_negative_rows_are_left_alone() -> None:
    ids = [TEXT] * 2 + [VID] * 8 + [TEXT] * 3
    span = MediaSpan(offset=2, length=8, grid=(2, 2, 2), t_factor=3.0)
    positions, delta = mrope_positions_for_spans(len(ids), [span])
    assert positions[:, 2].tolist() == [2, 2, 2]
    assert positions[:, 6].tolist() == [5, 2, 2]  # second frame: t = 1 * 3.0
    assert positions[:, 10].tolist() == [6, 6, 6]  # text resumes after the largest video position (5) + 1
    filled = fill_media_positions(positions, torch.tensor(ids), (IMG, VID), torch.full((8, 3), -1), 0)
    assert torch.equal(filled, positions)
    assert delta == int(positions.max()) + 1 - len(ids)


def test_bad_spans_are_refused() -> None:
    with pytest.raises(ValueError, match="kept indices"):
        mrope_positions([TEXT, IMG, IMG, TEXT], IMG, [(1, 2, 2)], [torch.tensor([0, 1, 2])])
    with pytest.raises(ValueError, match="grids"):
        mrope_positions([TEXT, IMG, TEXT], IMG, [(1, 2, 2), (1, 1, 1)])
    with pytest.raises(ValueError, match="out of range"):
        grid_coordinates(torch.tensor([4]), (1, 2, 2))
    with pytest.raises(ValueError, match="media slots"):
        fill_media_positions(torch.zeros(3, 3, dtype=torch.long), torch.tensor([TEXT, IMG, TEXT]), (IMG,),
                             torch.zeros(2, 3, dtype=torch.long))
