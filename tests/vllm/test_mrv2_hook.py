"""Model Runner V2's own pruner (``vllm.v1.worker.gpu.model_states.mm_pruning.MultiModalPruner``, the code GPU users
run, byte-identical in vLLM 0.32 and 0.34) driving our pruning hook with device-style tensors.

- MRv2 calls the hook only for requests with media rows in the step's window: a decode step and a text chunk before
  the media never reach it (why the V1 runner's ``patches/media_steps.py`` is not armed for MRv2);
- with every tensor vLLM hands the hook on the device (token ids, positions, embeddings), the whole call makes no
  host-device sync but the decode delta's one guarded scalar read, and writes back the exact positions and delta.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from vllm.multimodal.inputs import PlaceholderRange
from vllm.v1.worker.gpu.model_states.mm_pruning import MultiModalPruner

from vs_vllm.selection.positions import (
    MediaSpan,
    fill_media_positions,
    grid_coordinates,
    mrope_positions,
    mrope_positions_for_spans,
)
from vs_vllm.testing.sync_guard import as_device, is_device, sync_guard, to_host
from vs_vllm.vllm_plugin.pruning.channels import with_channels
from vs_vllm.vllm_plugin.pruning.hook import recompute_positions

HIDDEN = 24
IMAGE, VIDEO = 100, 101
GRIDS = [(1, 5, 7), (1, 4, 4)]
KEPT = [torch.tensor([0, 4, 9, 30]), torch.tensor([1, 2, 3, 15])]
# text, 4 kept rows of image 1, text, 4 kept rows of image 2, text
PROMPT = [5, 5] + [9] + [IMAGE] * 4 + [9, 9] + [IMAGE] * 4 + [9, 5, 5, 5]
SPANS = [(3, 4), (9, 4)]


class _HookModel:
    """Our hook behind the model method MRv2 calls, counting the calls and what they carried."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        self.calls.append({"ids_on_device": is_device(input_ids), "ids_dtype": input_ids.dtype,
                           "positions_on_device": is_device(mrope_positions), "items": len(multimodal_embeddings),
                           "num_computed": num_computed_tokens})
        return recompute_positions(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens,
                                   (IMAGE, VIDEO), fill_media_positions)


class _RopeState:
    """MRv2's per-request M-RoPE buffer, reduced to the two calls the pruner makes (int32 on the device)."""

    def __init__(self, provisional: dict[int, torch.Tensor]) -> None:
        self.buffers = {idx: as_device(pos.to(torch.int32)) for idx, pos in provisional.items()}
        self.updates: dict[int, tuple[torch.Tensor, int]] = {}

    def read_prefill_positions(self, req_idx: int, prefill_len: int) -> torch.Tensor:
        return self.buffers[req_idx][:, :prefill_len]

    def update_prefill_positions(self, req_idx: int, positions: torch.Tensor, delta: int) -> None:
        self.updates[req_idx] = (positions, delta)


def _feature(offset: int, length: int):
    return SimpleNamespace(mm_position=PlaceholderRange(offset=offset, length=length))


def _step(windows: dict[str, tuple[int, int]]):
    """An MRv2 step over the requests "media", "decode", "text": (num_computed, num_scheduled) each."""
    req_ids = list(windows)
    computed = np.array([windows[r][0] for r in req_ids], dtype=np.int32)
    return SimpleNamespace(
        req_ids=req_ids,
        idx_mapping_np=np.arange(len(req_ids), dtype=np.int32),
        prefill_len_np=np.full(len(req_ids), len(PROMPT), dtype=np.int32),
        num_computed_prefill_tokens_np=computed,
        num_scheduled_tokens=np.array([windows[r][1] for r in req_ids], dtype=np.int32),
    )


def test_mrv2_pruner_calls_the_hook_only_for_media_windows_without_syncs() -> None:
    exact, delta = mrope_positions(PROMPT, IMAGE, GRIDS, kept=KEPT)
    spans = [MediaSpan(offset=o, length=n, grid=g) for (o, n), g in zip(SPANS, GRIDS)]
    provisional, _ = mrope_positions_for_spans(len(PROMPT), spans)
    windows = {"media": (0, len(PROMPT)), "decode": (len(PROMPT), 1), "text": (0, 3)}
    step = _step(windows)
    features = [_feature(o, n) for o, n in SPANS]
    encoder_cache = SimpleNamespace(mm_features={req: features for req in windows})
    rope = _RopeState({i: provisional for i in range(len(windows))})
    token_ids = as_device(torch.tensor([PROMPT] * len(windows), dtype=torch.int32))
    req_states = SimpleNamespace(all_token_ids=SimpleNamespace(gpu=token_ids))
    rows = [with_channels(torch.randn(4, HIDDEN), grid_coordinates(k, g).T) for k, g in zip(KEPT, GRIDS)]
    model = _HookModel()
    pruner = MultiModalPruner(model, rope, encoder_cache, HIDDEN)

    with sync_guard() as log:
        cleaned = pruner.recompute([as_device(r) for r in rows], step, req_states)

    # one call, for the request whose window holds media rows; none for the decode step or the text chunk
    assert [c["num_computed"] for c in model.calls] == [0]
    assert model.calls[0] == {"ids_on_device": True, "ids_dtype": torch.int32, "positions_on_device": True,
                              "items": 2, "num_computed": 0}
    assert list(rope.updates) == [0]
    positions, new_delta = rope.updates[0]
    assert torch.equal(to_host(positions), exact) and new_delta == delta
    assert [tuple(c.shape) for c in cleaned] == [(4, HIDDEN), (4, HIDDEN)]
    assert torch.equal(to_host(cleaned[0]), rows[0][:, :HIDDEN])
    assert list(log) == [] and len(log.allowed) == 1  # the decode delta, inside gpu_sync_allowed()


def test_a_chunk_that_ends_inside_an_image_gets_the_hook_for_that_image_only() -> None:
    """Chunked prefill under MRv2: the window [0, 6) holds rows of image 1 only; the hook sees one item."""
    spans = [MediaSpan(offset=o, length=n, grid=g) for (o, n), g in zip(SPANS, GRIDS)]
    provisional, _ = mrope_positions_for_spans(len(PROMPT), spans)
    step = _step({"media": (0, 6)})
    encoder_cache = SimpleNamespace(mm_features={"media": [_feature(o, n) for o, n in SPANS]})
    rope = _RopeState({0: provisional})
    req_states = SimpleNamespace(all_token_ids=SimpleNamespace(gpu=as_device(torch.tensor([PROMPT], dtype=torch.int32))))
    model = _HookModel()
    rows = [with_channels(torch.randn(3, HIDDEN), grid_coordinates(KEPT[0][:3], GRIDS[0]).T)]
    with sync_guard() as log:
        MultiModalPruner(model, rope, encoder_cache, HIDDEN).recompute([as_device(rows[0])], step, req_states)
    assert [c["items"] for c in model.calls] == [1]
    assert list(log) == []
