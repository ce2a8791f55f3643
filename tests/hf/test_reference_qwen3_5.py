"""The transformers reference with selection on Qwen3.5 (a Qwen3-VL vision tower without DeepStack in front of a hybrid
gated-delta-net + full-attention LLM): identity at ratio 1.0, exact positions against transformers' own
``get_rope_index``, and a greedy loop whose hybrid cache (recurrent + KV state) agrees with an uncached forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vs_vllm.selection.budget import keep_count
from vs_vllm.selection.positions import mrope_positions
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.testing.images import noise_image

# transformers models (loaded or run): make test, not make test-fast.
pytestmark = pytest.mark.slow

QUESTION = "What colour is the shape?"

SIZES = {
    "square": [(224, 224)],
    "odd-landscape": [(300, 200)],
    "tall": [(140, 420)],
    "two-images": [(140, 420), (252, 196)],
}


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory):
    """(processor, fp32 model) of the tiny Qwen3.5 (seed 0)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vs_vllm.testing.tiny_models import build_tiny_model

    model_dir: Path = build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3_5"), arch="qwen3_5", seed=0)
    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert model.config.model_type == "qwen3_5"
    return proc, model


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(1234)
    s = TransformerScorer(256)
    s.reset_parameters(init_std=0.05)  # non-trivial ranking (the 1e-4 init scores everything ~0)
    return s


def _inputs(proc, images):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": QUESTION}]
    prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=False)
    return proc(text=[prompt], images=list(images), return_tensors="pt")


def test_supported_without_deepstack(hf, scorer) -> None:
    from vs_vllm.hf.qwen_vl import DEEPSTACK_MODEL_TYPES, MODEL_TYPES, QwenVLSelector

    proc, model = hf
    assert "qwen3_5" in MODEL_TYPES and "qwen3_5" not in DEEPSTACK_MODEL_TYPES
    sel = QwenVLSelector(model, scorer)
    assert not sel.has_deepstack
    prompt = sel.prepare(_inputs(proc, [noise_image(224, 224)]), ratio=0.5)
    assert prompt.deepstack_embeds is None and prompt.visual_pos_mask is None
    assert set(prompt.prefill_kwargs()) == {"inputs_embeds", "position_ids"}


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_ratio_one_is_token_identical_to_generate(hf, scorer, sizes) -> None:
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf
    inputs = _inputs(proc, [noise_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)])
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    ours, prompt = QwenVLSelector(model, scorer).generate(inputs, ratio=1.0, max_new_tokens=10)
    assert ours == ref[0, inputs["input_ids"].shape[1]:].tolist()
    assert prompt.visual_kept == prompt.visual_total
    assert prompt.prompt_tokens == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.1])
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_pruned_prompt_keeps_original_positions(hf, scorer, sizes, ratio) -> None:
    """Pruned positions == transformers' Qwen3.5 get_rope_index on the unpruned prompt, gathered at the kept
    columns; decoding continues at P_max + 1 of the unpruned prompt."""
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf
    inputs = _inputs(proc, [noise_image(w, h, seed=7 + i) for i, (w, h) in enumerate(sizes)])
    sel = QwenVLSelector(model, scorer)
    prompt = sel.prepare(inputs, ratio=ratio)
    full_pos, full_delta = model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    ids = inputs["input_ids"][0]
    image_id = model.config.image_token_id
    keep = ids != image_id
    slots = (ids == image_id).nonzero().flatten()
    offset = 0
    for grid, kept in zip(sel.llm_grids(inputs["image_grid_thw"]), prompt.kept):
        n = grid[0] * grid[1] * grid[2]
        assert kept.numel() == keep_count(n, ratio)
        keep[slots[offset + kept]] = True
        offset += n
    assert prompt.visual_kept < prompt.visual_total
    assert torch.equal(prompt.input_ids[0], ids[keep])
    assert torch.equal(prompt.position_ids[:, 0], full_pos[:, 0, keep])
    assert prompt.prompt_tokens + prompt.rope_delta == int(full_pos.max()) + 1
    assert prompt.rope_delta == int(full_delta) + (ids.numel() - prompt.prompt_tokens)


def test_unpruned_positions_are_transformers_own(hf) -> None:
    proc, model = hf
    inputs = _inputs(proc, [noise_image(140, 420), noise_image(252, 196, seed=3)])
    merge = model.config.vision_config.spatial_merge_size
    grids = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in inputs["image_grid_thw"].tolist()]
    exact, _ = mrope_positions(inputs["input_ids"][0], model.config.image_token_id, grids)
    full, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                         image_grid_thw=inputs["image_grid_thw"])
    assert torch.equal(exact, full[:, 0])


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_cached_greedy_loop_equals_uncached_forward(hf, scorer, ratio) -> None:
    """The reference's decode loop carries a hybrid cache (conv + recurrent state for the gated-delta-net layers, KV
    for full attention). Re-running the whole pruned prompt plus the generated tokens without any cache, at the same
    positions, must give the same next-token logits at every step; the pruned prompt is also not the unpruned one."""
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf
    inputs = _inputs(proc, [noise_image(140, 420, seed=21), noise_image(252, 196, seed=22)])
    sel = QwenVLSelector(model, scorer)
    tokens, prompt = sel.generate(inputs, ratio=ratio, max_new_tokens=8)
    assert len(tokens) == 8 and prompt.visual_kept < prompt.visual_total
    gen = torch.tensor([tokens[:-1]])
    embeds = torch.cat([prompt.inputs_embeds, model.get_input_embeddings()(gen)], dim=1)
    start = prompt.prompt_tokens + prompt.rope_delta  # P_max + 1
    decode_pos = (start + torch.arange(gen.shape[1])).view(1, 1, -1).expand(3, 1, -1)
    positions = torch.cat([prompt.position_ids, decode_pos], dim=2)
    with torch.no_grad():
        hidden = model.model.language_model(inputs_embeds=embeds, position_ids=positions,
                                            use_cache=False).last_hidden_state
        logits = model.lm_head(hidden[0, prompt.prompt_tokens - 1:])
    assert logits.argmax(-1).tolist() == tokens
