"""Qwen3-VL adapter: media spans and prompt positions against vLLM's own Qwen3-VL code, without a server.

Qwen3-VL puts timestamp text between the frames of a video, so one video item is several media runs; the adapter
must find them inside the item's placeholder range, and the positions it gives an unpruned prompt must be exactly
vLLM's (``Qwen3VLForConditionalGeneration._get_mrope_input_positions``). A pruned image keeps the text after it at
its unpruned positions.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from transformers import Qwen3VLConfig
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

from vs_vllm.selection.position_schemes import get_position_scheme
from vs_vllm.selection.positions import token_runs
from vs_vllm.vllm_plugin.adapters.qwen3_vl import ADAPTER
from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin

CONFIG = Qwen3VLConfig(vision_config={"spatial_merge_size": 2})
IMAGE, VIDEO = CONFIG.image_token_id, CONFIG.video_token_id
START, END = CONFIG.vision_start_token_id, CONFIG.vision_end_token_id
TEXT, STAMP = 11, 12  # any non-media ids


def _feature(modality: str, offset: int, length: int, grid: tuple[int, int, int]):
    field = "image_grid_thw" if modality == "image" else "video_grid_thw"
    return SimpleNamespace(modality=modality, mm_position=SimpleNamespace(offset=offset, length=length),
                           data={field: SimpleNamespace(data=torch.tensor(grid))})


def _prompt(image_grid, image_kept, video_grid):
    """text, an image of ``image_kept`` tokens, text, a video (timestamps between frames), text."""
    tokens: list[int] = [TEXT] * 5 + [START]
    features = [_feature("image", len(tokens), image_kept, image_grid)]
    tokens += [IMAGE] * image_kept + [END] + [TEXT] * 4
    t, h, w = video_grid
    video_start = len(tokens)
    for _ in range(t):
        tokens += [STAMP] * 3 + [START] + [VIDEO] * (h * w // 4) + [END]
    features.append(_feature("video", video_start, len(tokens) - video_start, video_grid))
    tokens += [TEXT] * 6
    return tokens, features


def _ours(tokens, features):
    model = SimpleNamespace(vs_adapter=ADAPTER, config=CONFIG, vs_positions=get_position_scheme("qwen2_mrope"))
    return PruningModelMixin.get_mrope_input_positions(model, tokens, features)


def test_token_runs_finds_every_run_inside_the_range() -> None:
    tokens = [1, 5, 5, 2, 5, 3, 5, 5, 5, 5]
    assert token_runs(tokens, 5, 0, len(tokens)) == [(1, 2), (4, 1), (6, 4)]
    assert token_runs(tokens, 5, 2, 8) == [(2, 1), (4, 1), (6, 2)]
    assert token_runs(tokens, 9, 0, len(tokens)) == []


@pytest.mark.parametrize("image_grid,video_grid", [((1, 6, 10), (3, 4, 8)), ((1, 14, 4), (2, 6, 6))])
def test_unpruned_positions_equal_vllm_qwen3_vl(image_grid, video_grid) -> None:
    n_image = image_grid[1] * image_grid[2] // 4
    tokens, features = _prompt(image_grid, n_image, video_grid)
    spans = ADAPTER.media_spans(SimpleNamespace(config=CONFIG), tokens, features)
    assert [s.length for s in spans] == [n_image] + [video_grid[1] * video_grid[2] // 4] * video_grid[0]
    assert all(s.grid[0] == 1 for s in spans)  # every image and every frame is one (1, h, w) grid
    ours, delta = _ours(tokens, features)
    theirs, their_delta = Qwen3VLForConditionalGeneration._get_mrope_input_positions(tokens, features, CONFIG)
    assert torch.equal(ours, theirs.long())
    assert delta == their_delta


def test_pruned_image_keeps_the_unpruned_text_positions() -> None:
    image_grid, video_grid = (1, 6, 10), (2, 4, 8)
    full_tokens, full_features = _prompt(image_grid, 15, video_grid)
    kept = 4
    tokens, features = _prompt(image_grid, kept, video_grid)
    full, full_delta = Qwen3VLForConditionalGeneration._get_mrope_input_positions(full_tokens, full_features, CONFIG)
    ours, delta = _ours(tokens, features)
    shift = 15 - kept
    image_end = features[0].mm_position.offset + kept
    # Everything after the image (text, video frames, timestamps) sits where it sat in the unpruned prompt.
    assert torch.equal(ours[:, image_end:], full[:, image_end + shift:].long())
    assert torch.equal(ours[:, : features[0].mm_position.offset], full[:, : features[0].mm_position.offset].long())
    # Decoding continues one past the same largest position.
    assert delta + len(tokens) == full_delta + len(full_tokens)


def _video_prompt(video_grid, runs):
    """text, a video whose frame f has runs[f] tokens (timestamps and frame markers around each), text."""
    tokens: list[int] = [TEXT] * 4
    video_start = len(tokens)
    for n in runs:
        tokens += [STAMP] * 2 + [START] + [VIDEO] * n + [END]
    feature = _feature("video", video_start, len(tokens) - video_start, video_grid)
    tokens += [TEXT] * 5
    return tokens, [feature]


@pytest.mark.parametrize("kept", [[0, 5, 17, 30, 31], [40], list(range(0, 48, 3))])
def test_lumped_pruned_video_gets_the_unpruned_positions_of_its_kept_tokens(kept) -> None:
    """A pruned video's kept tokens all sit in its first frame's run; after the hook each carries the position it had
    in the unpruned prompt (its own frame's base), and every text token (timestamps included) keeps its own."""
    from vs_vllm.vllm_plugin.pruning.hook import recompute_positions

    video_grid = (3, 8, 8)  # 3 frames of 4 x 4 LLM tokens
    per_frame = 16
    full_tokens, full_features = _video_prompt(video_grid, [per_frame] * 3)
    full, full_delta = Qwen3VLForConditionalGeneration._get_mrope_input_positions(full_tokens, full_features, CONFIG)
    tokens, features = _video_prompt(video_grid, [len(kept), 0, 0])
    spans = ADAPTER.media_spans(SimpleNamespace(config=CONFIG), tokens, features)
    assert [s.length for s in spans] == [len(kept), 0, 0] and all(s.lumped for s in spans)
    provisional, _ = _ours(tokens, features)
    # the rows the encoder emits: (frame, h, w) of each kept token, in ascending order
    coords = torch.tensor([[j // per_frame, (j % per_frame) // 4, j % 4] for j in kept])
    rows = torch.cat([torch.zeros(len(kept), 2), torch.stack([coords // 256, coords % 256], 2).reshape(-1, 6)], 1)
    fill = get_position_scheme("qwen3_frames").fill_media_positions
    _, positions, delta = recompute_positions(tokens, [rows], provisional, 0, (IMAGE, VIDEO),
                                              lambda *a, **k: fill(*a, frame_anchor_id=START, **k))
    # unpruned index of every pruned-prompt token: text in order, the kept video tokens where frame 0's run was
    video_slots = [i for i, t in enumerate(full_tokens) if t == VIDEO]
    origin, cursor = [], 0
    for t in tokens:
        if t == VIDEO:
            origin.append(video_slots[kept[cursor]])
            cursor += 1
            continue
        origin.append(None)
    text_full = [i for i, t in enumerate(full_tokens) if t != VIDEO]
    text_iter = iter(text_full)
    origin = [o if o is not None else next(text_iter) for o in origin]
    assert torch.equal(positions, full[:, origin].long())
    assert delta + len(tokens) == full_delta + len(full_tokens)
