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
from vs_vllm.testing.sync_guard import DeviceSyncError, as_device, count_syncs, is_device, sync_guard, to_host

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


# ---- fill_media_positions: sync-free implementation against a loop reference ----------------------------------------


def _fill_reference(positions, ids, media, coords, start):
    """Obviously-correct fill: walk the slots from ``start``, one coords row per media slot, in order."""
    out = positions.clone()
    ids, rows = ids.tolist(), coords.tolist()
    r = 0
    for i in range(start, len(ids)):
        if r == len(rows):
            break
        if ids[i] not in media:
            continue
        span_start = i
        while span_start > 0 and ids[span_start - 1] in media:
            span_start -= 1
        base = int(positions[0, span_start - 1]) + 1 if span_start > 0 else 0
        t, h, w = rows[r]
        r += 1
        if t >= 0:
            out[:, i] = torch.tensor([base + t, base + h, base + w])
    return out


@st.composite
def fill_cases(draw, allow_excess_rows=False):
    """Random prompt of text / image / video runs, arbitrary positions, a window start and coords for its slots."""
    runs = draw(st.lists(st.tuples(st.sampled_from([TEXT, IMG, VID]), st.integers(1, 6)), min_size=0, max_size=8))
    ids = [tok for tok, n in runs for _ in range(n)]
    length = len(ids)
    positions = torch.tensor(draw(st.lists(st.integers(0, 50), min_size=3 * length, max_size=3 * length)),
                             dtype=torch.long).reshape(3, length)
    start = draw(st.integers(0, length + 1))
    slots = sum(1 for tok in ids[start:] if tok in (IMG, VID))
    num_rows = draw(st.integers(0, slots + (2 if allow_excess_rows else 0)))
    row = st.tuples(st.integers(-1, 4), st.integers(0, 4), st.integers(0, 4))
    coords = torch.tensor(draw(st.lists(row, min_size=num_rows, max_size=num_rows)), dtype=torch.long).reshape(-1, 3)
    return positions, torch.tensor(ids, dtype=torch.long), coords, start, slots


@settings(max_examples=100, deadline=None)
@given(fill_cases(allow_excess_rows=True))
def test_fill_media_positions_matches_loop_reference(case) -> None:
    positions, ids, coords, start, slots = case
    expected = _fill_reference(positions, ids, (IMG, VID), coords, start)
    if coords.shape[0] > slots:
        with pytest.raises(ValueError, match="media slots"):
            fill_media_positions(positions, ids, (IMG, VID), coords, start)  # CPU: validated by default
        got = fill_media_positions(positions, ids, (IMG, VID), coords, start, validate=False)
    else:
        got = fill_media_positions(positions, ids, (IMG, VID), coords, start)
    assert torch.equal(got, expected)
    # int32 positions keep their dtype; the values are the same.
    got32 = fill_media_positions(positions.int(), ids, (IMG, VID), coords, start, validate=False)
    assert got32.dtype == torch.int32 and torch.equal(got32.long(), expected)


@settings(max_examples=50, deadline=None)
@given(fill_cases(allow_excess_rows=True))
def test_fill_media_positions_on_device_never_syncs(case) -> None:
    positions, ids, coords, start, _ = case
    expected = _fill_reference(positions, ids, (IMG, VID), coords, start)
    dev_positions, dev_ids, dev_coords = as_device((positions, ids, coords))
    with sync_guard() as log:  # raises DeviceSyncError on any host<->device sync
        got = fill_media_positions(dev_positions, dev_ids, (IMG, VID), dev_coords, start)
    assert not log and not log.allowed
    assert is_device(got) or coords.numel() == 0
    assert torch.equal(to_host(got), expected)


def test_positions_validation_is_the_only_sync() -> None:
    ids = torch.tensor([TEXT, IMG, IMG, TEXT])
    positions = torch.arange(4).expand(3, 4).clone()
    coords = torch.tensor([[0, 0, 1], [0, 1, 0]])
    with sync_guard(), pytest.raises(DeviceSyncError, match="_local_scalar_dense"):
        fill_media_positions(*as_device((positions, ids)), (IMG,), as_device(coords), validate=True)
    with count_syncs() as log:
        fill_media_positions(*as_device((positions, ids)), (IMG,), as_device(coords), validate=True)
    assert log == ["aten._local_scalar_dense"]

    kept = torch.tensor([0, 3, 5])
    with sync_guard(), pytest.raises(DeviceSyncError):
        grid_coordinates(as_device(kept), (1, 2, 3))  # default: range-checked, which reads min/max on the host
    with sync_guard():
        coords = grid_coordinates(as_device(kept), (1, 2, 3), validate=False)
    assert torch.equal(to_host(coords), grid_coordinates(kept, (1, 2, 3)))
    assert torch.equal(grid_coordinates(torch.tensor([7]), (1, 2, 3), validate=False), torch.tensor([[1], [0], [1]]))
