"""The transformers reference with selection, for every Qwen-family architecture: identity at ratio 1.0, exact
positions against transformers' own get_rope_index, pruned prompt sizes, every method, and (Qwen3-VL / MoE) DeepStack
features pruned together with their tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vs_vllm.selection.budget import keep_count
from vs_vllm.selection.methods import list_methods, select
from vs_vllm.selection.positions import mrope_positions
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.testing.images import noise_image

# transformers models (loaded or run): make test, not make test-fast.
pytestmark = pytest.mark.slow

QUESTION = "What colour is the shape?"
TINY_HIDDEN = 256  # text hidden size (= vision out_hidden_size) of every tiny model


@pytest.fixture(scope="module")
def tiny_qwen3_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vs_vllm.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3_vl"), arch="qwen3_vl", seed=0)


@pytest.fixture(scope="module")
def tiny_qwen3_vl_moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vs_vllm.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3_vl_moe"), arch="qwen3_vl_moe", seed=0)


ARCH_MODEL_DIRS = {
    "qwen2_5_vl": "tiny_model_dir",
    "qwen2_vl": "tiny_qwen2_vl_dir",
    "qwen3_vl": "tiny_qwen3_vl_dir",
    "qwen3_vl_moe": "tiny_qwen3_vl_moe_dir",
}
DEEPSTACK_ARCHS = ("qwen3_vl", "qwen3_vl_moe")


@pytest.fixture(scope="module")
def load_arch(request):
    """``load_arch(arch)`` -> (processor, fp32 model), loaded once per module whichever fixture asks first."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cache: dict[str, tuple] = {}

    def load(arch: str):
        if arch not in cache:
            model_dir = request.getfixturevalue(ARCH_MODEL_DIRS[arch])
            proc = AutoProcessor.from_pretrained(model_dir)
            model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
            assert model.config.model_type == arch
            cache[arch] = (proc, model)
        return cache[arch]

    return load


@pytest.fixture(scope="module", params=list(ARCH_MODEL_DIRS))
def hf(request, load_arch):
    return load_arch(request.param)


@pytest.fixture(scope="module", params=DEEPSTACK_ARCHS)
def hf_deepstack(request, load_arch):
    return load_arch(request.param)


def test_one_reference_for_every_architecture(hf) -> None:
    from vs_vllm.hf import qwen2_5_vl, qwen2_vl, qwen_vl

    assert type(hf[1]).__name__ in ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                                    "Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")
    assert qwen2_vl.QwenVLSelector is qwen_vl.QwenVLSelector is qwen2_5_vl.QwenVLSelector
    assert hf[1].config.model_type in qwen_vl.MODEL_TYPES
    assert hf[1].config.text_config.hidden_size == TINY_HIDDEN
    sel = qwen_vl.QwenVLSelector(hf[1])
    assert sel.has_deepstack == (hf[1].config.model_type in DEEPSTACK_ARCHS)


def test_unknown_model_type_is_refused() -> None:
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    with pytest.raises(ValueError, match="model_type"):
        QwenVLSelector(SimpleNamespace(config=SimpleNamespace(model_type="llava")))


@pytest.fixture(scope="module")
def scorer():
    """One scorer for every architecture (all tiny models share the text hidden size); independent of ``hf`` so that
    tests of a subset of the architectures are not parametrized over all of them."""
    torch.manual_seed(1234)
    s = TransformerScorer(TINY_HIDDEN)
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
    merge = model.config.vision_config.spatial_merge_size
    grids = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in inputs["image_grid_thw"].tolist()]
    ids = inputs["input_ids"][0]
    exact, delta = mrope_positions(ids, model.config.image_token_id, grids)
    full, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                         image_grid_thw=inputs["image_grid_thw"])
    text = ids != model.config.image_token_id
    assert torch.equal(exact[:, text], full[:, 0, text])
    assert exact.shape[1] == ids.numel()
    # Unpruned, every position (image tokens too) is transformers' own, for Qwen3-VL's get_rope_index as well.
    assert torch.equal(exact, full[:, 0])


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


def _kept_mask(sel, inputs, prompt) -> torch.Tensor:
    """[L] bool over the UNPRUNED prompt: text and the kept image tokens."""
    ids = inputs["input_ids"][0]
    is_image = ids == sel.image_token_id
    keep = ~is_image
    slots = is_image.nonzero().flatten()
    offset = 0
    for grid, kept in zip(sel.llm_grids(inputs["image_grid_thw"]), prompt.kept):
        keep[slots[offset + kept.cpu()]] = True
        offset += grid[0] * grid[1] * grid[2]
    return keep


def _pruned_hidden(model, prompt) -> torch.Tensor:
    with torch.no_grad():
        return model.model.language_model(**prompt.prefill_kwargs(), use_cache=False).last_hidden_state[0]


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_pruned_prefill_equals_unpruned_forward_with_dropped_tokens_hidden(hf, scorer, ratio) -> None:
    """An independent oracle: transformers' own full forward (its own vision tower, DeepStack injection and
    get_rope_index positions) over the UNPRUNED prompt, with the dropped image tokens removed from attention as keys,
    must give the kept rows exactly the hidden states of the reference's pruned prefill. A dropped token can then
    influence nothing, and every kept token sees the same keys, positions and (DeepStack) per-layer features."""
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf
    inputs = _inputs(proc, [noise_image(140, 420, seed=21), noise_image(252, 196, seed=22)])
    sel = QwenVLSelector(model, scorer)
    prompt = sel.prepare(inputs, ratio=ratio)
    keep = _kept_mask(sel, inputs, prompt)
    assert prompt.visual_kept < prompt.visual_total

    positions, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"])
    with torch.no_grad():
        full = model.model(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=inputs["mm_token_type_ids"],
            attention_mask=keep[None].long(), position_ids=positions, use_cache=False,
        ).last_hidden_state[0]
    torch.testing.assert_close(_pruned_hidden(model, prompt), full[keep], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.1])
@pytest.mark.parametrize("sizes", [SIZES["odd-landscape"], SIZES["two-images"]], ids=["one-image", "two-images"])
def test_deepstack_features_are_gathered_with_the_tokens(hf_deepstack, scorer, sizes, ratio) -> None:
    """Each DeepStack level of the pruned prompt is that level's full features at the kept indices, image by image,
    aligned with the main features in the image slots; the kept indices come from the main features only."""
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf_deepstack
    inputs = _inputs(proc, [noise_image(w, h, seed=30 + i) for i, (w, h) in enumerate(sizes)])
    sel = QwenVLSelector(model, scorer)
    prompt = sel.prepare(inputs, ratio=ratio)
    with torch.no_grad():
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    hidden = model.config.text_config.hidden_size
    grids = sel.llm_grids(inputs["image_grid_thw"])
    levels = len(model.config.vision_config.deepstack_visual_indexes)
    assert levels == len(out.deepstack_features) >= 1

    for main, grid, kept in zip(out.pooler_output, grids, prompt.kept):
        assert main.shape[1] == hidden  # the scorer's input: D columns, no DeepStack levels appended
        assert torch.equal(kept, select("visionselector", main, grid, keep_count(main.shape[0], ratio),
                                        scorer=scorer))
    assert prompt.visual_pos_mask is not None and prompt.deepstack_embeds is not None
    assert torch.equal(prompt.visual_pos_mask, prompt.input_ids == model.config.image_token_id)
    assert int(prompt.visual_pos_mask.sum()) == prompt.visual_kept
    main_kept = torch.cat([f[k] for f, k in zip(out.pooler_output, prompt.kept)])
    torch.testing.assert_close(prompt.inputs_embeds[0][prompt.visual_pos_mask[0]], main_kept, rtol=0, atol=0)
    assert len(prompt.deepstack_embeds) == levels
    for level, got in zip(out.deepstack_features, prompt.deepstack_embeds):
        want = torch.cat([f[k] for f, k in zip(level, prompt.kept)])
        assert got.shape == (prompt.visual_kept, hidden)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_inconsistent_deepstack_pruning_changes_the_output(hf_deepstack, scorer) -> None:
    """The DeepStack features matter, so the oracle test above would catch a reference that pruned them differently
    from the tokens (the first K rows of each level, or none at all) — and text-only prompts carry none."""
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    proc, model = hf_deepstack
    inputs = _inputs(proc, [noise_image(300, 200, seed=41)])
    sel = QwenVLSelector(model, scorer)
    prompt = sel.prepare(inputs, ratio=0.25)
    k = prompt.visual_kept
    assert not torch.equal(prompt.kept[0].cpu(), torch.arange(k))
    with torch.no_grad():
        levels = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"],
                                                return_dict=True).deepstack_features
    reference = _pruned_hidden(model, prompt)
    first_k = dataclasses.replace(prompt, deepstack_embeds=[lvl[0][:k] for lvl in levels])
    without = dataclasses.replace(prompt, deepstack_embeds=None, visual_pos_mask=None)
    for wrong in (first_k, without):
        assert (_pruned_hidden(model, wrong) - reference).abs().max() > 1e-2

    text_only = proc(text=[QUESTION], return_tensors="pt")
    text_prompt = sel.prepare(text_only, ratio=0.5)
    assert text_prompt.deepstack_embeds is None and text_prompt.visual_pos_mask is None
    assert text_prompt.kept == [] and text_prompt.prompt_tokens == text_only["input_ids"].shape[1]


def test_qwen2_family_prompts_carry_no_deepstack(load_arch, scorer) -> None:
    from vs_vllm.hf.qwen_vl import QwenVLSelector

    for arch in ("qwen2_5_vl", "qwen2_vl"):
        proc, model = load_arch(arch)
        prompt = QwenVLSelector(model, scorer).prepare(_inputs(proc, [noise_image(224, 224)]), ratio=0.5)
        assert prompt.deepstack_embeds is None and prompt.visual_pos_mask is None
        assert set(prompt.prefill_kwargs()) == {"inputs_embeds", "position_ids"}
