"""The tiny Qwen3.5 builder: deterministic, a hybrid LLM config vLLM's CPU backend accepts, loadable in transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vs_vllm.testing.tiny_models import build_tiny_model, list_archs


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def qwen3_5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3_5"), arch="qwen3_5", seed=0)


def test_registered_and_byte_identical_per_seed(qwen3_5_dir: Path, tmp_path: Path) -> None:
    assert "qwen3_5" in list_archs()
    first = _files(qwen3_5_dir)
    second = _files(build_tiny_model(tmp_path / "again", arch="qwen3_5", seed=0))
    assert sorted(first) == sorted(second)
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "video_preprocessor_config.json", "chat_template.jinja", "generation_config.json",
            "vs_vllm_tiny_model.json"} <= set(first)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two qwen3_5 builds with seed 0"
    other = _files(build_tiny_model(tmp_path / "seed1", arch="qwen3_5", seed=1))
    assert other["model.safetensors"] != first["model.safetensors"]
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        assert other[name] == first[name]


def test_config_is_a_hybrid_qwen3_5_that_fits_vllm_cpu(qwen3_5_dir: Path) -> None:
    cfg = json.loads((qwen3_5_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    assert cfg["model_type"] == "qwen3_5"
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert text["model_type"] == "qwen3_5_text" and vision["model_type"] == "qwen3_5_vision"
    # Both kinds of layer, in the released order (three gated-delta-net layers, then full attention).
    assert text["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert len(text["layer_types"]) == text["num_hidden_layers"]
    # Full attention: a head_dim vLLM's CPU attention supports, partial rotary, interleaved sections that fill it.
    assert text["head_dim"] in (32, 64, 80, 96, 112, 128)
    rope = text["rope_parameters"]
    rotary_dim = int(text["head_dim"] * rope["partial_rotary_factor"])
    assert rope["partial_rotary_factor"] == 0.25 and rope["mrope_interleaved"] is True
    assert sum(rope["mrope_section"]) * 2 == rotary_dim
    for key in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
                "linear_conv_kernel_dim"):
        assert text[key] > 0
    # No DeepStack: the vision row is the merger output only, the LLM hidden size wide.
    assert "deepstack_visual_indexes" not in vision
    assert vision["out_hidden_size"] == text["hidden_size"] == 256
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (16, 2, 2)
    assert text["vocab_size"] % 64 == 0
    card = json.loads((qwen3_5_dir / "vs_vllm_tiny_model.json").read_text())
    assert card["arch"] == "qwen3_5" and card["seed"] == 0
    pre = json.loads((qwen3_5_dir / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "Qwen3VLProcessor" and pre["patch_size"] == 16


def test_token_ids_are_the_tokenizers(qwen3_5_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_5_dir)
    cfg = json.loads((qwen3_5_dir / "config.json").read_text())
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
                       ("eos_token_id", "<|im_end|>")):
        assert cfg[key] == tok.convert_tokens_to_ids(token), key


@pytest.mark.parametrize("overrides,match", [
    ({"mrope_section": (8, 12, 12)}, "mrope_section"),
    ({"layer_types": ("linear_attention", "full_attention")}, "layer_types"),
    ({"layer_types": ("linear_attention",) * 3 + ("sliding_attention",)}, "layer_types"),
    ({"layer_types": ("linear_attention",) * 4}, "full_attention"),
    ({"deepstack_visual_indexes": (0,)}, "DeepStack"),
    ({"nope": 1}, "unknown size fields"),
])
def test_bad_sizes_are_refused(tmp_path: Path, overrides, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_tiny_model(tmp_path, arch="qwen3_5", sizes=overrides)


def test_two_layer_variant_builds(tmp_path: Path) -> None:
    """The smallest hybrid (one linear, one full layer) with a 128 head_dim and other sections."""
    out = build_tiny_model(tmp_path, arch="qwen3_5", sizes={
        "text_layers": 2, "layer_types": ("linear_attention", "full_attention"), "text_head_dim": 128,
        "text_heads": 2, "text_kv_heads": 1, "mrope_section": (6, 5, 5)})
    text = json.loads((out / "config.json").read_text())["text_config"]
    assert text["layer_types"] == ["linear_attention", "full_attention"] and text["head_dim"] == 128


@pytest.mark.slow  # loads a transformers model
def test_loads_in_transformers_and_generates(qwen3_5_dir: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen3_5ForConditionalGeneration

    from vs_vllm.testing.images import noise_image

    model = AutoModelForImageTextToText.from_pretrained(qwen3_5_dir, dtype=torch.float32).eval()
    assert isinstance(model, Qwen3_5ForConditionalGeneration)
    proc = AutoProcessor.from_pretrained(qwen3_5_dir)
    assert type(proc).__name__ == "Qwen3VLProcessor"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[prompt], images=[noise_image(256, 256)], return_tensors="pt")
    # 256x256 -> 16x16 patches of 16 px -> 8x8 = 64 LLM tokens after the 2x2 merge (max_pixels allows 64).
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 64
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
