"""The generic pruning layer's pure-torch parts: method ids, position channels, encoder micro-batches, the hook under
both runners' calling conventions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.selection.methods import list_methods
from vs_vllm.selection.positions import MediaSpan, mrope_positions, mrope_positions_for_spans
from vs_vllm.vllm_plugin.pruning.channels import (
    MAX_COORDINATE,
    NUM_POSITION_CHANNELS,
    check_grid_fits,
    decode_channels,
    strip_channels,
    with_channels,
)
from vs_vllm.vllm_plugin.pruning.encoder_budget import plan_micro_batches
from vs_vllm.vllm_plugin.pruning.fields import UnknownMethodId, field_names, method_id, method_name
from vs_vllm.vllm_plugin.pruning.hook import recompute_positions

# ---- method ids ----------------------------------------------------------------------------------------------------


def test_method_ids_derive_from_names_and_round_trip() -> None:
    ids = {name: method_id(name) for name in list_methods()}
    assert len(set(ids.values())) == len(ids)
    for name, mid in ids.items():
        assert method_name(mid) == name
        assert 0 <= mid < 2**31
    # Independent of registration order or of which other methods exist.
    assert method_id("visionselector") == method_id("visionselector")


def test_unknown_method_id_fails_loudly() -> None:
    unknown = method_id("a-method-nobody-registered")
    with pytest.raises(UnknownMethodId, match=str(unknown)):
        method_name(unknown)
    # Ids are not list positions: a small integer is not silently some method.
    for small in range(len(list_methods())):
        with pytest.raises(UnknownMethodId):
            method_name(small)


def test_field_names_are_per_modality() -> None:
    assert field_names("image") == ("vs_image_keep_k", "vs_image_method_id", "vs_image_seed", "vs_image_lambda")
    assert set(field_names("image")).isdisjoint(field_names("video"))


# ---- position channels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_round_trip_exactly(dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(37, 19, generator=gen).to(dtype)
    coords = torch.randint(0, MAX_COORDINATE + 1, (37, 3), generator=gen)
    coords[0] = torch.tensor([-1, -1, -1])
    coords[1] = torch.tensor([MAX_COORDINATE, 0, 255])
    packed = with_channels(rows, coords)
    assert packed.shape == (37, 19 + NUM_POSITION_CHANNELS) and packed.dtype == dtype
    hidden, back = strip_channels([packed[:10], packed[10:]])
    assert torch.equal(torch.cat(hidden), rows)
    assert torch.equal(back, coords)
    assert torch.equal(decode_channels(packed[:, -NUM_POSITION_CHANNELS:]), coords)


def test_grid_bound_is_checked_on_the_host() -> None:
    check_grid_fits((1, MAX_COORDINATE + 1, 4))
    with pytest.raises(ValueError, match="too large"):
        check_grid_fits((1, MAX_COORDINATE + 2, 4))


# ---- encoder micro-batches -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=12), st.one_of(st.none(), st.integers(-1, 600)))
def test_micro_batches_cover_items_in_order_within_budget(tokens, budget) -> None:
    groups = plan_micro_batches(tokens, budget)
    flat = [i for a, b in groups for i in range(a, b)]
    assert flat == list(range(len(tokens)))
    assert all(b > a for a, b in groups)
    for a, b in groups:
        if budget is not None and budget > 0 and b - a > 1:
            assert sum(tokens[a:b]) <= budget
    if budget is None or budget <= 0:
        assert len(groups) == (1 if tokens else 0)
    elif tokens and budget > 0:
        # greedy: no two neighbouring groups could have been one
        for (a, _), (_, d) in zip(groups, groups[1:]):
            assert sum(tokens[a:d]) > budget


# ---- the hook under both runners' calling conventions ------------------------------------------------------------

IMAGE, VIDEO, TEXT = 151655, 151656, 7


def _prompt(kept_per_image, grids):
    """Token ids of text + images (K_i placeholders each) and the HF-style exact positions for given kept indices."""
    ids: list[int] = [TEXT] * 3
    for kept in kept_per_image:
        ids += [TEXT] + [IMAGE] * len(kept) + [TEXT]
    ids += [TEXT] * 4
    exact, delta = mrope_positions(ids, IMAGE, grids, kept=kept_per_image)
    spans = []
    offset = 3
    for kept, grid in zip(kept_per_image, grids):
        spans.append(MediaSpan(offset=offset + 1, length=len(kept), grid=grid))
        offset += len(kept) + 2
    provisional, provisional_delta = mrope_positions_for_spans(len(ids), spans)
    return ids, provisional, exact, delta, provisional_delta


def _rows(kept_per_image, grids, hidden=8):
    from vs_vllm.selection.positions import grid_coordinates

    out = []
    for kept, grid in zip(kept_per_image, grids):
        rows = torch.randn(len(kept), hidden)
        out.append(with_channels(rows, grid_coordinates(kept, grid).T))
    return out


GRIDS = [(1, 4, 6), (1, 5, 3)]
KEPT = [torch.tensor([0, 3, 7, 8, 20, 23]), torch.tensor([1, 2, 14])]


def test_hook_v1_convention_list_ids_cpu_positions() -> None:
    from vs_vllm.selection.positions import fill_media_positions

    ids, provisional, exact, delta, provisional_delta = _prompt(KEPT, GRIDS)
    assert provisional_delta == delta  # the prompt ends with text: the initial delta is already exact
    rows = _rows(KEPT, GRIDS)
    hidden, positions, new_delta = recompute_positions(ids, rows, provisional.clone(), 0, (IMAGE, VIDEO),
                                                       fill_media_positions)
    assert torch.equal(positions, exact) and new_delta == delta
    assert [h.shape[1] for h in hidden] == [8, 8]
    # decode step: no embeddings, O(1), positions untouched
    same, unchanged, decode = recompute_positions(ids, [], exact, len(ids), (IMAGE, VIDEO), fill_media_positions)
    assert len(same) == 0 and unchanged is exact and decode == delta


def test_hook_v1_convention_chunked_windows() -> None:
    """Chunked prefill: each window hands over only its media rows, from num_computed_tokens on."""
    from vs_vllm.selection.positions import fill_media_positions

    ids, provisional, exact, delta, _ = _prompt(KEPT, GRIDS)
    rows = _rows(KEPT, GRIDS)
    positions = provisional.clone()
    first_image_end = 3 + 1 + len(KEPT[0])
    # window 1 ends inside image 0 after 2 of its rows
    _, positions, _ = recompute_positions(ids, [rows[0][:2]], positions, 0, (IMAGE, VIDEO), fill_media_positions)
    _, positions, _ = recompute_positions(ids, [rows[0][2:], rows[1]], positions, 3 + 1 + 2, (IMAGE, VIDEO),
                                          fill_media_positions)
    assert first_image_end < len(ids)
    assert torch.equal(positions, exact)


def test_hook_v2_convention_int32_ids_long_positions() -> None:
    """MRv2: int32 ids tensor, positions from an int32 buffer converted with .long(), only chunks with media."""
    from vs_vllm.selection.positions import fill_media_positions

    ids, provisional, exact, delta, _ = _prompt(KEPT, GRIDS)
    ids_t = torch.tensor(ids, dtype=torch.int32)
    positions_buffer = provisional.to(torch.int32)
    rows = _rows(KEPT, GRIDS)
    hidden, positions, new_delta = recompute_positions(ids_t, rows, positions_buffer.long(), 0, (IMAGE, VIDEO),
                                                       fill_media_positions)
    assert positions.dtype == torch.long and torch.equal(positions, exact)
    assert isinstance(new_delta, int) and new_delta == delta


def test_hook_prompt_ending_in_an_image_uses_the_true_maximum() -> None:
    from vs_vllm.selection.positions import fill_media_positions

    grid = (1, 6, 6)
    kept = torch.tensor([0, 1, 2])  # the top row only: the unpruned extent (6) must not leak into the delta
    ids = [TEXT] * 2 + [IMAGE] * 3
    exact, delta = mrope_positions(ids, IMAGE, [grid], kept=[kept])
    provisional, _ = mrope_positions_for_spans(len(ids), [MediaSpan(offset=2, length=3, grid=grid)])
    for convention in (ids, torch.tensor(ids, dtype=torch.int32)):
        _, positions, new_delta = recompute_positions(convention, _rows([kept], [grid]), provisional.clone(), 0,
                                                      (IMAGE, VIDEO), fill_media_positions)
        assert torch.equal(positions, exact) and new_delta == delta


# ---- model mixin start-up guards (no vLLM model needed) --------------------------------------------------------------


class _MultiModalConfig:
    def __init__(self, video_pruning_rate=None):
        self.video_pruning_rate = video_pruning_rate

    def is_multimodal_pruning_enabled(self) -> bool:  # vLLM's rule: video pruning only
        return bool(self.video_pruning_rate and self.video_pruning_rate > 0)


def _vllm_config(video_pruning_rate=None):
    from types import SimpleNamespace

    model_config = SimpleNamespace(multimodal_config=_MultiModalConfig(video_pruning_rate), hf_config=None)
    return SimpleNamespace(model_config=model_config,
                           scheduler_config=SimpleNamespace(max_num_encoder_input_tokens=8192))


def _mixed_model_class(seen: dict):
    from vs_vllm.vllm_plugin.pruning.adapter import ArchitectureAdapter
    from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin

    class Base:
        def __init__(self, *, vllm_config, prefix=""):
            # What Qwen2.5-VL's __init__ does: read the switch once, to decide on encoder CUDA graphs.
            seen["pruning_on_in_base_init"] = vllm_config.model_config.multimodal_config.is_multimodal_pruning_enabled()
            raise _Stop

    class Model(PruningModelMixin, Base):
        vs_adapter = ArchitectureAdapter()

    return Model


class _Stop(Exception):
    pass


def test_pruning_is_enabled_before_the_base_init_reads_it() -> None:
    seen: dict = {}
    with pytest.raises(_Stop):
        _mixed_model_class(seen)(vllm_config=_vllm_config())
    assert seen["pruning_on_in_base_init"] is True


@pytest.mark.parametrize("rate", [0.5, 0.01])
def test_vllm_video_pruning_is_refused_before_anything_loads(rate) -> None:
    seen: dict = {}
    with pytest.raises(ValueError, match="--video-pruning-rate") as info:
        _mixed_model_class(seen)(vllm_config=_vllm_config(video_pruning_rate=rate))
    assert "VS_VLLM_ENABLE" in str(info.value) and "video_retention_ratio" in str(info.value)
    assert seen == {}
