"""The transformers reference with selection, for every Qwen-family architecture: identity at ratio 1.0, exact
positions against transformers' own get_rope_index, pruned prompt sizes, every method."""

from __future__ import annotations

import pytest
import torch

from vs_vllm.selection.budget import keep_count
from vs_vllm.selection.methods import list_methods
from vs_vllm.selection.positions import mrope_positions
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.testing.images import noise_image

QUESTION = "What colour is the shape?"


ARCH_MODEL_DIRS = {"qwen2_5_vl": "tiny_model_dir", "qwen2_vl": "tiny_qwen2_vl_dir"}


@pytest.fixture(scope="module", params=list(ARCH_MODEL_DIRS))
def hf(request):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = request.getfixturevalue(ARCH_MODEL_DIRS[request.param])
    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert model.config.model_type == request.param
    return proc, model


def test_one_reference_for_every_architecture(hf) -> None:
    from vs_vllm.hf import qwen2_5_vl, qwen2_vl, qwen_vl

    assert type(hf[1]).__name__ in ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    assert qwen2_vl.QwenVLSelector is qwen_vl.QwenVLSelector is qwen2_5_vl.QwenVLSelector


@pytest.fixture(scope="module")
def scorer(hf):
    torch.manual_seed(1234)
    s = TransformerScorer(hf[1].config.text_config.hidden_size)
    # Non-trivial weights so the ranking is not degenerate (the 1e-4 init scores everything ~0).
    s.reset_parameters(init_std=0.05)
    return s


def _inputs(proc, images):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": QUESTION}]
    prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=False)
    return proc(text=[prompt], images=list(images), return_tensors="pt")


SIZES = {
    "square": [(224, 224)],
    "odd-landscape": [(300, 200)],
    "tall": [(140, 420)],
    "two-images": [(140, 420), (252, 196)],
}


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


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.1, 0.01])
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_pruned_prompt_keeps_original_positions(hf, scorer, sizes, ratio) -> None:
    """Pruned positions == transformers' get_rope_index on the unpruned prompt, gathered at the kept columns."""
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
    assert torch.equal(prompt.input_ids[0], ids[keep])
    assert torch.equal(prompt.position_ids[:, 0], full_pos[:, 0, keep])
    # Decoding continues at P_max + 1 of the unpruned prompt.
    assert prompt.prompt_tokens + prompt.rope_delta == int(full_pos.max()) + 1
    assert prompt.rope_delta == int(full_delta) + (ids.numel() - prompt.prompt_tokens)
    text_tokens = int((ids != image_id).sum())
    assert prompt.prompt_tokens == text_tokens + sum(keep_count(g[0] * g[1] * g[2], ratio)
                                                     for g in sel.llm_grids(inputs["image_grid_thw"]))


def test_positions_without_kept_indices_fix_text_exactly(hf) -> None:
    """vLLM sizes the prompt before the vision tower runs: text positions must already be exact then."""
    proc, model = hf
    inputs = _inputs(proc, [noise_image(140, 420), noise_image(252, 196, seed=3)])
    grids = [(int(t), int(h) // 2, int(w) // 2) for t, h, w in inputs["image_grid_thw"].tolist()]
    ids = inputs["input_ids"][0]
    exact, delta = mrope_positions(ids, model.config.image_token_id, grids)
    full, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                         image_grid_thw=inputs["image_grid_thw"])
    text = ids != model.config.image_token_id
    assert torch.equal(exact[:, text], full[:, 0, text])
    assert exact.shape[1] == ids.numel()


@pytest.mark.parametrize("method", list_methods())
def test_every_method_generates(hf, scorer, method) -> None:
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf
    inputs = _inputs(proc, [noise_image(300, 200, seed=5)])
    tokens, prompt = QwenVLSelector(model, scorer).generate(inputs, ratio=0.3, method=method, max_new_tokens=4,
                                                           seed=11)
    assert len(tokens) == 4
    assert prompt.visual_kept == keep_count(prompt.visual_total, 0.3)


def test_selection_changes_what_the_llm_sees(hf, scorer) -> None:
    """Different kept sets give different prefill states (guards against selection being silently skipped)."""
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf
    inputs = _inputs(proc, [noise_image(224, 224, seed=9)])
    sel = QwenVLSelector(model, scorer)
    a = sel.prepare(inputs, ratio=0.25, method="visionselector")
    b = sel.prepare(inputs, ratio=0.25, method="random", seed=1)
    assert a.prompt_tokens == b.prompt_tokens
    assert not torch.equal(a.kept[0], b.kept[0])
    assert not torch.equal(a.inputs_embeds, b.inputs_embeds)


def test_bad_ratio_is_refused(hf, scorer) -> None:
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf
    inputs = _inputs(proc, [noise_image(224, 224)])
    for bad in (0.0, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="retention_ratio"):
            QwenVLSelector(model, scorer).prepare(inputs, ratio=bad)
