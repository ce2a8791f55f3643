"""The tiny-model builder: deterministic, loadable offline, with the Qwen token layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vs_vllm.testing.tiny_models import build_tiny_model, list_archs
from vs_vllm.testing.tokenizer import QWEN_SPECIAL_TOKENS


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    first, second = _files(tiny_model_dir), _files(again)
    assert sorted(first) == sorted(second)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "chat_template.jinja", "generation_config.json"} <= set(first)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two builds with seed 0"


def test_different_seed_changes_only_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = build_tiny_model(tmp_path / "seed1", seed=1)
    a, b = _files(tiny_model_dir), _files(other)
    assert a["model.safetensors"] != b["model.safetensors"]
    for name in ("tokenizer.json", "config.json", "preprocessor_config.json"):
        assert a[name] == b[name]


def test_config_fits_vllm_cpu_constraints(tiny_model_dir: Path) -> None:
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    text = cfg["text_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert head_dim in (32, 64, 80, 96, 112, 128)
    assert sum(text["rope_parameters"]["mrope_section"]) * 2 == head_dim
    assert cfg["vision_config"]["out_hidden_size"] == text["hidden_size"]
    assert text["vocab_size"] % 64 == 0
    assert cfg["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]


def test_tokenizer_has_qwen_special_tokens_in_order(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(QWEN_SPECIAL_TOKENS)))
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    text = "<|im_start|>user\nWhat colour is the shape?<|im_end|>"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_processor_counts_image_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor

    from vs_vllm.testing.images import noise_image

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    inputs = proc(text=[prompt], images=[noise_image(224, 224)], return_tensors="pt")
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 224x224 -> 16x16 patches -> 8x8 = 64 LLM tokens after the 2x2 merge (max_pixels caps at 64).
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert int((inputs["input_ids"] == image_id).sum()) == 64


def test_unknown_arch_and_bad_seed_are_refused(tmp_path: Path) -> None:
    assert "qwen2_5_vl" in list_archs()
    with pytest.raises(ValueError, match="unknown arch 'nope'"):
        build_tiny_model(tmp_path, arch="nope")
    with pytest.raises(ValueError, match="seed"):
        build_tiny_model(tmp_path, seed=-1)


@pytest.mark.slow  # a subprocess
def test_cli_writes_model(tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    proc = subprocess.run(
        [sys.executable, "-m", "vs_vllm", "tiny-model", str(out), "--seed", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "vs_vllm_tiny_model.json").read_text())["seed"] == 3


def test_qwen2_vl_same_seed_gives_byte_identical_files(tiny_qwen2_vl_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", arch="qwen2_vl", seed=0)
    first, second = _files(tiny_qwen2_vl_dir), _files(again)
    assert sorted(first) == sorted(second)
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "chat_template.jinja", "generation_config.json", "vs_vllm_tiny_model.json"} <= set(first)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two qwen2_vl builds with seed 0"
    other = _files(build_tiny_model(tmp_path / "seed1", arch="qwen2_vl", seed=1))
    assert other["model.safetensors"] != first["model.safetensors"]
    assert other["config.json"] == first["config.json"]


def test_qwen2_vl_config_and_card(tiny_qwen2_vl_dir: Path, tiny_model_dir: Path) -> None:
    cfg = json.loads((tiny_qwen2_vl_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert cfg["model_type"] == "qwen2_vl"
    text, vision = cfg["text_config"], cfg["vision_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert head_dim in (32, 64, 80, 96, 112, 128)
    assert sum(text["rope_parameters"]["mrope_section"]) * 2 == head_dim
    # Qwen2-VL's vision hidden_size is the merger output (= LLM hidden); embed_dim is the tower width.
    assert vision["hidden_size"] == text["hidden_size"]
    assert vision["embed_dim"] // vision["num_heads"] == 64
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (14, 2, 2)
    assert "fullatt_block_indexes" not in vision and "window_size" not in vision
    # Same tokenizer and token ids as the Qwen2.5-VL build.
    other = json.loads((tiny_model_dir / "config.json").read_text())
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert cfg[key] == other[key]
    assert (tiny_qwen2_vl_dir / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    card = json.loads((tiny_qwen2_vl_dir / "vs_vllm_tiny_model.json").read_text())
    assert card["arch"] == "qwen2_vl" and card["seed"] == 0
    pre = json.loads((tiny_qwen2_vl_dir / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "Qwen2VLProcessor" and pre["image_processor_type"] == "Qwen2VLImageProcessor"


@pytest.mark.slow  # loads a transformers model
def test_qwen2_vl_loads_in_transformers(tiny_qwen2_vl_dir: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLForConditionalGeneration

    from vs_vllm.testing.images import noise_image

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl_dir, dtype=torch.float32).eval()
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    proc = AutoProcessor.from_pretrained(tiny_qwen2_vl_dir)
    assert type(proc).__name__ == "Qwen2VLProcessor"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[prompt], images=[noise_image(224, 224)], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 64
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_qwen2_vl_refuses_fractional_mlp_ratio(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of vision_hidden"):
        build_tiny_model(tmp_path, arch="qwen2_vl", sizes={"vision_intermediate": 200})


def test_cli_offers_every_arch() -> None:
    from vs_vllm.cli import build_parser

    parser = build_parser()
    for arch in list_archs():
        args = parser.parse_args(["tiny-model", "out", "--arch", arch])
        assert args.arch == arch
    assert "qwen2_vl" in list_archs()
    with pytest.raises(SystemExit):
        parser.parse_args(["tiny-model", "out", "--arch", "nope"])


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen3_vl_moe"])
def test_qwen3_vl_same_seed_gives_byte_identical_files(tiny_arch_dir, tmp_path: Path, arch: str) -> None:
    first = _files(tiny_arch_dir(arch))
    second = _files(build_tiny_model(tmp_path / "again", arch=arch, seed=0))
    assert sorted(first) == sorted(second)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "video_preprocessor_config.json",
            "tokenizer.json", "chat_template.jinja", "vs_vllm_tiny_model.json"} <= set(first)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two {arch} builds with seed 0"
    other = _files(build_tiny_model(tmp_path / "seed1", arch=arch, seed=1))
    assert other["model.safetensors"] != first["model.safetensors"]
    assert other["config.json"] == first["config.json"]


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen3_vl_moe"])
def test_qwen3_vl_config_is_the_released_layout(tiny_arch_dir, arch: str) -> None:
    model_dir = tiny_arch_dir(arch)
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == arch
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert text["head_dim"] in (32, 64, 80, 96, 112, 128)
    rope = text["rope_parameters"]
    assert rope["mrope_interleaved"] is True and sum(rope["mrope_section"]) * 2 == text["head_dim"]
    # DeepStack on: at least one level, each feeding one LLM layer; the merger output is the LLM width.
    levels = vision["deepstack_visual_indexes"]
    assert 1 <= len(levels) <= text["num_hidden_layers"] and max(levels) < vision["depth"]
    assert vision["out_hidden_size"] == text["hidden_size"]
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (16, 2, 2)
    assert vision["hidden_size"] // vision["num_heads"] == 64
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "Qwen3VLProcessor" and pre["patch_size"] == 16
    if arch == "qwen3_vl_moe":
        # transformers 5 writes num_experts under its attribute-map name
        assert text.get("num_experts", text.get("num_local_experts")) >= 2 and text["norm_topk_prob"] is True
        assert 2 * text["moe_intermediate_size"] != text["hidden_size"]


@pytest.mark.slow  # loads a transformers model
def test_qwen3_vl_moe_experts_are_stored_as_released_and_load_back(tiny_arch_dir) -> None:
    """The fused expert tensors are [E, H, 2I] / [E, I, H] on disk (vLLM's loader expects that), and transformers
    loads them back into exactly the seeded model's weights."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    model_dir = tiny_arch_dir("qwen3_vl_moe")
    text = json.loads((model_dir / "config.json").read_text())["text_config"]
    experts, hidden, inter = text.get("num_experts", text.get("num_local_experts")), text["hidden_size"], text["moe_intermediate_size"]
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if "layers.0.mlp.experts" in k}
    assert shapes == {"model.language_model.layers.0.mlp.experts.gate_up_proj": (experts, hidden, 2 * inter),
                      "model.language_model.layers.0.mlp.experts.down_proj": (experts, inter, hidden)}
    loaded = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)  # the builder's seed: the same init, in memory
    fresh = Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig.from_pretrained(model_dir)).to(torch.float32)
    for (name, a), (_, b) in zip(sorted(loaded.state_dict().items()), sorted(fresh.state_dict().items())):
        assert torch.equal(a, b), name
