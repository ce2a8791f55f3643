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
