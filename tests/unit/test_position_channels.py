"""The position-channel layout's host pieces and the zero-copy packing of a vision tower's per-item outputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.kernels.position_channels import (
    MAX_COORDINATE,
    PositionChannels,
    check_coordinates,
    decode_position_channels,
    encode_position_channels,
    temporal_offsets,
    temporal_tables,
)
from vs_vllm.selection.positions import scaled_temporal
from vs_vllm.vllm_plugin.pruning.selection import packed_rows


@settings(max_examples=200, deadline=None)
@given(frames=st.integers(1, 300), factor=st.floats(0.0, 200.0, allow_nan=False))
def test_temporal_offsets_are_scaled_temporal(frames, factor):
    """The host table the gather kernel looks up is exactly the tensor rule vLLM and transformers use."""
    t = torch.arange(frames)
    assert temporal_offsets(frames, factor) == scaled_temporal(t, factor).tolist()


def test_temporal_tables_concatenate_per_image():
    t_cu, offsets = temporal_tables([(1, 4, 4), (3, 2, 2), (2, 1, 1)], [1.0, 2.5, 0.5])
    assert t_cu == [0, 1, 4, 6]
    assert offsets == [0, 0, 2, 5, 0, 0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, MAX_COORDINATE), st.integers(0, MAX_COORDINATE),
                          st.integers(0, MAX_COORDINATE)), min_size=1, max_size=20),
       st.sampled_from([torch.bfloat16, torch.float16, torch.float32]))
def test_encode_decode_round_trip(coords, dtype):
    c = torch.tensor(coords)
    channels = encode_position_channels(c, dtype)
    assert channels.dtype == dtype and float(channels.max()) <= 255.0
    assert torch.equal(decode_position_channels(channels), c)


def test_check_coordinates_counts_the_scaled_temporal_offset():
    check_coordinates((1, MAX_COORDINATE + 1, 3))
    check_coordinates((3, 2, 2), t_factor=MAX_COORDINATE / 2)
    with pytest.raises(ValueError, match="too large"):
        check_coordinates((3, 2, 2), t_factor=MAX_COORDINATE / 2 + 1)
    with pytest.raises(ValueError, match="too large"):
        check_coordinates((1, 2, MAX_COORDINATE + 2))


def test_position_channels_factors():
    assert PositionChannels().factors_for(3) == (1.0, 1.0, 1.0)
    assert PositionChannels((2, 0.5)).factors_for(2) == (2.0, 0.5)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite"):
            PositionChannels((bad,)).factors_for(1)


def test_packed_rows_is_a_view_of_split_outputs():
    """A vision tower's output split per item is scored in place: no concatenation, same storage."""
    out = torch.randn(50, 8)
    items = list(out.split([20, 1, 29]))
    joined = packed_rows(items)
    assert joined.data_ptr() == out.data_ptr() and torch.equal(joined, out)
    tail = packed_rows(items[1:])  # a run that starts inside the buffer
    assert tail.data_ptr() == items[1].data_ptr() and torch.equal(tail, out[20:])


@pytest.mark.parametrize("case", ["gap", "order", "other_buffer", "dtype", "strided"])
def test_packed_rows_concatenates_anything_else(case):
    out = torch.randn(50, 8)
    items = {
        "gap": [out[:10], out[11:20]],
        "order": [out[10:20], out[:10]],
        "other_buffer": [out[:10], torch.randn(5, 8)],
        "dtype": [out[:10], out[10:20].double()],
        "strided": [out[:10, :4], out[10:20, :4]],
    }[case]
    joined = packed_rows(items)
    assert torch.equal(joined, torch.cat(items)) and joined.dtype == torch.cat(items).dtype
    assert joined.data_ptr() != out.data_ptr()  # a fresh buffer, never a reinterpretation of out
