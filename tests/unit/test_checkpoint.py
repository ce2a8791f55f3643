"""Scorer checkpoints: bit-exact round trips, key spellings, error messages, extraction from sharded checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vs_vllm.selection import checkpoint as ckpt
from vs_vllm.selection.checkpoint import SCORER_PREFIX, convert_checkpoint, load_scorer, save_scorer
from vs_vllm.selection.scorer import TransformerScorer

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS = [
    "visual.importance_scorer.q_proj.weight",
    "visual.importance_scorer.q_proj.bias",
    "visual.importance_scorer.k_proj.weight",
    "visual.importance_scorer.k_proj.bias",
]


def random_scorer(d: int = 16, h: int | None = None, seed: int = 0) -> TransformerScorer:
    torch.manual_seed(seed)
    scorer = TransformerScorer(d, h)
    scorer.reset_parameters(init_std=0.1)
    with torch.no_grad():
        scorer.q_proj.bias.normal_()
        scorer.k_proj.bias.normal_()
    return scorer


def scorer_tensors(scorer: TransformerScorer, prefix: str = SCORER_PREFIX) -> dict[str, torch.Tensor]:
    return {
        prefix + "q_proj.weight": scorer.q_proj.weight.detach().clone(),
        prefix + "q_proj.bias": scorer.q_proj.bias.detach().clone(),
        prefix + "k_proj.weight": scorer.k_proj.weight.detach().clone(),
        prefix + "k_proj.bias": scorer.k_proj.bias.detach().clone(),
    }


def assert_same_params(a: TransformerScorer, b: TransformerScorer) -> None:
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        assert pa.dtype == pb.dtype, na
        assert torch.equal(pa, pb), na


# --- save / load ----------------------------------------------------------------------------------------------------


def test_round_trip_fp32_bit_exact(tmp_path: Path) -> None:
    scorer = random_scorer(24, seed=1)
    path = save_scorer(scorer, tmp_path / "sub" / "scorer.safetensors")
    assert path == str(tmp_path / "sub" / "scorer.safetensors")
    loaded = load_scorer(path, in_features=24)
    assert (loaded.in_features, loaded.hidden_dim) == (24, 12)
    assert_same_params(loaded, scorer)
    x = torch.randn(10, 24)
    assert torch.equal(loaded(x), scorer(x))


def test_round_trip_bf16_bit_exact(tmp_path: Path) -> None:
    scorer = random_scorer(32, seed=2)
    path = save_scorer(scorer, tmp_path / "s.safetensors", dtype="bfloat16")
    with safe_open(path, framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in KEYS} == {torch.bfloat16}
    loaded = load_scorer(path, dtype=torch.bfloat16)
    assert_same_params(loaded, scorer.to(torch.bfloat16))
    # dtype=None keeps the file's dtype; fp32 loading is an exact upcast.
    assert load_scorer(path, dtype=None).q_proj.weight.dtype == torch.bfloat16
    assert torch.equal(load_scorer(path).q_proj.weight, scorer.q_proj.weight.to(torch.bfloat16).float())


def test_bf16_scorer_saved_with_keep_dtype(tmp_path: Path) -> None:
    scorer = random_scorer(8, seed=3).to(torch.bfloat16)
    path = save_scorer(scorer, tmp_path / "s.safetensors")
    assert_same_params(load_scorer(path, dtype=torch.bfloat16), scorer)


def test_key_names_and_metadata(tmp_path: Path) -> None:
    scorer = random_scorer(20, h=6, seed=4)
    path = save_scorer(scorer, tmp_path / "s.safetensors")
    with safe_open(path, framework="pt") as f:
        assert sorted(f.keys()) == sorted(KEYS)
        assert f.metadata() == {"format": "vs-vllm-scorer", "in_features": "20", "hidden_dim": "6"}
        assert list(f.get_tensor(KEYS[0]).shape) == [6, 20]
        assert list(f.get_tensor(KEYS[1]).shape) == [6]
    loaded = load_scorer(path)
    assert (loaded.in_features, loaded.hidden_dim) == (20, 6)


def test_model_prefix_accepted(tmp_path: Path) -> None:
    scorer = random_scorer(16, seed=5)
    tensors = scorer_tensors(scorer, prefix="model." + SCORER_PREFIX)
    tensors["model.language_model.embed_tokens.weight"] = torch.randn(64, 16)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert_same_params(load_scorer(tmp_path / "model.safetensors"), scorer)


def test_both_prefixes_is_ambiguous(tmp_path: Path) -> None:
    scorer = random_scorer(8, seed=6)
    tensors = {**scorer_tensors(scorer), **scorer_tensors(scorer, prefix="model." + SCORER_PREFIX)}
    save_file(tensors, str(tmp_path / "both.safetensors"))
    with pytest.raises(ValueError, match="both"):
        load_scorer(tmp_path / "both.safetensors")


@pytest.mark.parametrize("missing", KEYS)
def test_missing_key_named(tmp_path: Path, missing: str) -> None:
    tensors = scorer_tensors(random_scorer(8, seed=7))
    del tensors[missing]
    save_file(tensors, str(tmp_path / "s.safetensors"))
    with pytest.raises(KeyError) as info:
        load_scorer(tmp_path / "s.safetensors")
    assert missing in str(info.value)
    assert not str(info.value).startswith("'")  # readable one-line message, not KeyError's repr quoting


@pytest.mark.parametrize(
    ("key", "shape", "expected"),
    [
        ("visual.importance_scorer.k_proj.weight", [4, 9], "[4, 8]"),
        ("visual.importance_scorer.k_proj.weight", [5, 8], "[4, 8]"),
        ("visual.importance_scorer.q_proj.bias", [5], "[4]"),
        ("visual.importance_scorer.k_proj.bias", [4, 1], "[4]"),
        ("visual.importance_scorer.q_proj.weight", [4], "[H, D]"),
    ],
)
def test_wrong_shape_named(tmp_path: Path, key: str, shape: list[int], expected: str) -> None:
    tensors = scorer_tensors(random_scorer(8, seed=8))
    tensors[key] = torch.randn(*shape)
    save_file(tensors, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError) as info:
        load_scorer(tmp_path / "s.safetensors")
    msg = str(info.value)
    assert key in msg and str(shape) in msg and expected in msg


def test_in_features_mismatch_names_both_shapes(tmp_path: Path) -> None:
    path = save_scorer(random_scorer(16, seed=9), tmp_path / "s.safetensors")
    with pytest.raises(ValueError) as info:
        load_scorer(path, in_features=32)
    msg = str(info.value)
    assert "visual.importance_scorer.q_proj.weight" in msg and "[8, 16]" in msg and "[8, 32]" in msg


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_wrong_dtype_named(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = scorer_tensors(random_scorer(8, seed=10))
    key = "visual.importance_scorer.q_proj.bias"
    tensors[key] = torch.ones(4, dtype=dtype)
    save_file(tensors, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError) as info:
        load_scorer(tmp_path / "s.safetensors")
    assert key in str(info.value) and str(dtype) in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_scorer(tmp_path / "nope.safetensors")


def test_bad_dtype_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8"):
        save_scorer(random_scorer(8), tmp_path / "s.safetensors", dtype="int8")


# --- convert --------------------------------------------------------------------------------------------------------


class RecordingSafeOpen:
    """Wraps safetensors.safe_open and records every tensor read."""

    def __init__(self, reads: list[str]):
        self.reads = reads

    def __call__(self, *args, **kwargs):
        inner = safe_open(*args, **kwargs)
        reads = self.reads

        class Handle:
            def __enter__(self):
                self.f = inner.__enter__()
                return self

            def __exit__(self, *exc):
                return inner.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, name):
                reads.append(name)
                return self.f.get_tensor(name)

        return Handle()


def write_sharded(src: Path, scorer: TransformerScorer, prefix: str = SCORER_PREFIX, dtype=torch.bfloat16) -> None:
    """A 3-shard full-model checkpoint; scorer tensors split over shards 1 and 3, big backbone tensors everywhere."""
    src.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    scorer_t = {k: v.to(dtype) for k, v in scorer_tensors(scorer, prefix).items()}
    names = list(scorer_t)
    shards = {
        "model-00001-of-00003.safetensors": {
            "model.language_model.layers.0.mlp.up_proj.weight": torch.randn(512, 512, generator=g).to(dtype),
            names[0]: scorer_t[names[0]],
            names[1]: scorer_t[names[1]],
        },
        "model-00002-of-00003.safetensors": {
            "model.language_model.layers.1.mlp.up_proj.weight": torch.randn(512, 512, generator=g).to(dtype),
            "visual.blocks.0.attn.qkv.weight": torch.randn(384, 128, generator=g).to(dtype),
        },
        "model-00003-of-00003.safetensors": {
            "lm_head.weight": torch.randn(512, 512, generator=g).to(dtype),
            names[2]: scorer_t[names[2]],
            names[3]: scorer_t[names[3]],
        },
    }
    weight_map = {}
    for shard, tensors in shards.items():
        save_file(tensors, str(src / shard), metadata={"format": "pt"})
        weight_map.update({name: shard for name in tensors})
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )


@pytest.mark.parametrize("prefix", [SCORER_PREFIX, "model." + SCORER_PREFIX])
def test_convert_sharded_reads_only_scorer_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    scorer = random_scorer(16, seed=11)
    write_sharded(tmp_path / "src", scorer, prefix)
    reads: list[str] = []
    monkeypatch.setattr(ckpt, "safe_open", RecordingSafeOpen(reads))
    out = convert_checkpoint(tmp_path / "src", tmp_path / "out" / "scorer.safetensors")
    assert out == str(tmp_path / "out" / "scorer.safetensors")
    assert sorted(reads) == sorted(prefix + k.removeprefix(SCORER_PREFIX) for k in KEYS)
    monkeypatch.undo()
    with safe_open(out, framework="pt") as f:
        assert sorted(f.keys()) == sorted(KEYS)
        assert f.metadata()["format"] == "vs-vllm-scorer"
        for key in KEYS:
            want = scorer_tensors(scorer)[key].to(torch.bfloat16)
            got = f.get_tensor(key)
            assert got.dtype == torch.bfloat16  # dtype kept
            assert torch.equal(got, want), key
    assert_same_params(load_scorer(out, dtype=torch.bfloat16), scorer.to(torch.bfloat16))


@pytest.mark.parametrize(
    ("dtype", "want"), [("float32", torch.float32), ("float16", torch.float16), (None, torch.bfloat16)]
)
def test_convert_dtype(tmp_path: Path, dtype, want) -> None:
    scorer = random_scorer(8, seed=12)
    write_sharded(tmp_path / "src", scorer)
    out = convert_checkpoint(tmp_path / "src", tmp_path / "o.safetensors", dtype=dtype)
    loaded = load_scorer(out, dtype=None)
    assert loaded.q_proj.weight.dtype == want
    assert torch.equal(loaded.k_proj.weight, scorer.k_proj.weight.detach().to(torch.bfloat16).to(want))


def test_convert_single_file(tmp_path: Path) -> None:
    scorer = random_scorer(12, seed=13)
    src = tmp_path / "src"
    src.mkdir()
    tensors = scorer_tensors(scorer, "model." + SCORER_PREFIX)
    tensors["model.embed_tokens.weight"] = torch.randn(100, 12)
    save_file(tensors, str(src / "model.safetensors"))
    out = convert_checkpoint(src, tmp_path / "o.safetensors")
    assert_same_params(load_scorer(out), scorer)


def test_convert_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        convert_checkpoint(tmp_path / "missing", tmp_path / "o.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "o.safetensors")

    write_sharded(tmp_path / "src", random_scorer(8))
    os.remove(tmp_path / "src" / "model-00003-of-00003.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00003-of-00003"):
        convert_checkpoint(tmp_path / "src", tmp_path / "o.safetensors")

    index = tmp_path / "src" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"]["visual.importance_scorer.k_proj.bias"]
    index.write_text(json.dumps(data))
    with pytest.raises(KeyError, match="visual.importance_scorer.k_proj.bias"):
        convert_checkpoint(tmp_path / "src", tmp_path / "o.safetensors")

    index.write_text("{not json")
    with pytest.raises(ValueError, match="index"):
        convert_checkpoint(tmp_path / "src", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_convert_validates_shapes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    tensors = scorer_tensors(random_scorer(8))
    tensors["visual.importance_scorer.q_proj.bias"] = torch.randn(3)
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match=r"q_proj\.bias.*\[3\].*\[4\]"):
        convert_checkpoint(src, tmp_path / "o.safetensors")


# --- CLI ------------------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "vs_vllm", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.slow  # a subprocess
def test_cli_convert_end_to_end(tmp_path: Path) -> None:
    scorer = random_scorer(16, seed=14)
    write_sharded(tmp_path / "src", scorer)
    out = tmp_path / "scorer.safetensors"
    proc = run_cli("convert", str(tmp_path / "src"), str(out), "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    loaded = load_scorer(out, dtype=None)
    assert loaded.q_proj.weight.dtype == torch.float32
    assert torch.equal(loaded.q_proj.weight, scorer.q_proj.weight.detach().to(torch.bfloat16).float())


@pytest.mark.slow  # a subprocess
def test_cli_missing_dir_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("convert", str(tmp_path / "does-not-exist"), str(tmp_path / "o.safetensors"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "error" in lines[0] and "does-not-exist" in lines[0]
    assert "Traceback" not in proc.stderr


# --- load_scorer from directories (full models, standalone scorer directories) and bare keys -------------------------

BARE = ""


def write_scorer_dir(
    dst: Path,
    scorer: TransformerScorer,
    prefix: str = BARE,
    config: dict | None = None,
    files: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A standalone scorer directory: config.json (unless ``config`` is None) and the four tensors spread over
    ``files`` safetensors files (no index)."""
    dst.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    tensors = {k: v.to(dtype) for k, v in scorer_tensors(scorer, prefix).items()}
    names = list(tensors)
    for i in range(files):
        part = {name: tensors[name] for name in names[i::files]}
        save_file(part, str(dst / f"scorer-{i}.safetensors"))
    return dst


def angelslim_config(scorer: TransformerScorer) -> dict:
    return {"architecture": "TransformerScorer", "in_features": scorer.in_features, "hidden_dim": scorer.hidden_dim}


def test_single_file_bare_keys(tmp_path: Path) -> None:
    scorer = random_scorer(12, seed=20)
    save_file(scorer_tensors(scorer, BARE), str(tmp_path / "s.safetensors"))
    assert_same_params(load_scorer(tmp_path / "s.safetensors", in_features=12), scorer)


def test_single_file_bare_and_prefixed_is_ambiguous(tmp_path: Path) -> None:
    scorer = random_scorer(8, seed=21)
    save_file({**scorer_tensors(scorer), **scorer_tensors(scorer, BARE)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError, match="both"):
        load_scorer(tmp_path / "s.safetensors")


def test_dir_bare_keys_with_config(tmp_path: Path) -> None:
    scorer = random_scorer(16, h=6, seed=22)
    src = write_scorer_dir(tmp_path / "scorer", scorer, config=angelslim_config(scorer))
    loaded = load_scorer(src, in_features=16)
    assert (loaded.in_features, loaded.hidden_dim) == (16, 6)
    assert_same_params(loaded, scorer)
    assert_same_params(load_scorer(str(src)), scorer)  # str paths too


@pytest.mark.parametrize("prefix", [BARE, SCORER_PREFIX, "model." + SCORER_PREFIX])
def test_dir_tensors_over_several_files(tmp_path: Path, prefix: str) -> None:
    scorer = random_scorer(10, seed=23)
    src = write_scorer_dir(tmp_path / "scorer", scorer, prefix, config={"model_type": "anything"}, files=3)
    assert len(list(src.glob("*.safetensors"))) == 3
    assert_same_params(load_scorer(src), scorer)


def test_dir_without_config_and_keep_dtype(tmp_path: Path) -> None:
    scorer = random_scorer(8, seed=24)
    src = write_scorer_dir(tmp_path / "scorer", scorer, SCORER_PREFIX, dtype=torch.bfloat16)
    loaded = load_scorer(src, dtype=None)
    assert loaded.q_proj.weight.dtype == torch.bfloat16
    assert_same_params(loaded, scorer.to(torch.bfloat16))


@pytest.mark.parametrize("prefix", [BARE, SCORER_PREFIX, "model." + SCORER_PREFIX])
def test_dir_index_and_shards_reads_only_scorer_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    scorer = random_scorer(16, seed=25)
    src = tmp_path / "src"
    write_sharded(src, scorer, prefix)
    (src / "config.json").write_text(json.dumps({"in_features": 16, "hidden_dim": 8}))
    # A stray file the index does not list is ignored, as transformers and vLLM ignore it.
    save_file(scorer_tensors(random_scorer(16, seed=99), prefix), str(src / "stray.safetensors"))
    reads: list[str] = []
    monkeypatch.setattr(ckpt, "safe_open", RecordingSafeOpen(reads))
    loaded = load_scorer(src, dtype=None)
    assert sorted(reads) == sorted(prefix + k.removeprefix(SCORER_PREFIX) for k in KEYS)
    assert_same_params(loaded, scorer.to(torch.bfloat16))


def test_dir_full_model_checkpoint(tmp_path: Path) -> None:
    """An original full-model directory loads directly; its config's backbone sizes are not the scorer's."""
    scorer = random_scorer(12, seed=26)
    src = tmp_path / "src"
    src.mkdir()
    tensors = scorer_tensors(scorer, "model." + SCORER_PREFIX)
    tensors["model.language_model.embed_tokens.weight"] = torch.randn(50, 12)
    save_file(tensors, str(src / "model.safetensors"))
    config = {"model_type": "qwen2_5_vl", "hidden_size": 999, "vision_config": {"hidden_size": 77}}
    (src / "config.json").write_text(json.dumps(config))
    assert_same_params(load_scorer(src, in_features=12), scorer)


def test_dir_index_missing_shard(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_sharded(src, random_scorer(8))
    os.remove(src / "model-00003-of-00003.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00003-of-00003"):
        load_scorer(src)


@pytest.mark.parametrize("prefix", [BARE, SCORER_PREFIX])
@pytest.mark.parametrize("param", ["q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias"])
def test_dir_missing_tensor_named(tmp_path: Path, prefix: str, param: str) -> None:
    scorer = random_scorer(8, seed=27)
    src = write_scorer_dir(tmp_path / "scorer", scorer, prefix, files=2)
    tensors = scorer_tensors(scorer, prefix)
    del tensors[prefix + param]
    for file in src.glob("*.safetensors"):
        file.unlink()
    save_file(tensors, str(src / "scorer.safetensors"))
    with pytest.raises(KeyError) as info:
        load_scorer(src)
    msg = str(info.value)
    assert repr(prefix + param) in msg and str(src) in msg
    assert not msg.startswith("'")


def test_dir_index_missing_tensor_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_sharded(src, random_scorer(8), BARE)
    index = src / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"]["k_proj.bias"]
    index.write_text(json.dumps(data))
    with pytest.raises(KeyError, match=r"'k_proj\.bias'.*model\.safetensors\.index\.json"):
        load_scorer(src)


def test_dir_without_scorer_tensors(tmp_path: Path) -> None:
    src = tmp_path / "backbone"
    src.mkdir()
    save_file({"model.language_model.embed_tokens.weight": torch.randn(4, 4)}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(KeyError) as info:
        load_scorer(src)
    msg = str(info.value)
    assert str(src) in msg
    for spelling in (
        "q_proj.weight",
        "k_proj.bias",
        "'visual.importance_scorer.'",
        "'model.visual.importance_scorer.'",
    ):
        assert spelling in msg, spelling
    assert not msg.startswith("'")


def test_dir_without_weight_files(tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.mkdir()
    (src / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as info:
        load_scorer(src)
    assert str(src) in str(info.value) and "safetensors" in str(info.value)


def test_dir_same_tensor_in_two_files_is_ambiguous(tmp_path: Path) -> None:
    src = write_scorer_dir(tmp_path / "scorer", random_scorer(8, seed=28), BARE)
    save_file(scorer_tensors(random_scorer(8, seed=29), BARE), str(src / "other.safetensors"))
    with pytest.raises(ValueError, match=r"proj\.\w+' is in both other\.safetensors and scorer-0\.safetensors"):
        load_scorer(src)


@pytest.mark.parametrize(
    ("config", "field", "want"),
    [
        ({"in_features": 32, "hidden_dim": 8}, "in_features", 16),
        ({"in_features": 16, "hidden_dim": 12}, "hidden_dim", 8),
        ({"hidden_size": 8}, "hidden_size", 16),  # hidden_size means D when in_features is absent
    ],
)
def test_dir_config_disagrees_with_tensors(tmp_path: Path, config: dict, field: str, want: int) -> None:
    src = write_scorer_dir(tmp_path / "scorer", random_scorer(16, seed=30), config=config)
    with pytest.raises(ValueError) as info:
        load_scorer(src)
    msg = str(info.value)
    assert "config.json" in msg and f"{field}={config[field]}" in msg and f"should be {want}" in msg
    assert "[8, 16]" in msg


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"architecture": "TransformerScorer"},
        {"in_features": 16, "hidden_dim": 8, "hidden_size": 8},  # hidden_size is not D's name here: ignored
        {"hidden_size": 16},
        {"in_features": "16", "hidden_dim": None, "hidden_size": True},  # non-integers are ignored
        {"text_config": {"hidden_size": 16}, "hidden_size": 5},  # a full-model config: backbone sizes
    ],
)
def test_dir_config_lenient(tmp_path: Path, config: dict) -> None:
    scorer = random_scorer(16, seed=31)
    assert_same_params(load_scorer(write_scorer_dir(tmp_path / "scorer", scorer, config=config)), scorer)


def test_dir_config_invalid_json(tmp_path: Path) -> None:
    src = write_scorer_dir(tmp_path / "scorer", random_scorer(8, seed=32), config={})
    (src / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_scorer(src)


def test_dir_in_features_argument_checked(tmp_path: Path) -> None:
    src = write_scorer_dir(tmp_path / "scorer", random_scorer(16, seed=33))
    with pytest.raises(ValueError, match=r"\[8, 32\]"):
        load_scorer(src, in_features=32)


def test_safetensors_keys_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    save_file({"a": torch.zeros(1000), "b.c": torch.ones(2, 3)}, str(path), metadata={"format": "pt"})
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    with open(path, "r+b") as f:
        f.truncate(8 + header_len)  # drop every tensor byte
    assert sorted(ckpt.safetensors_keys(path)) == ["a", "b.c"]
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(ValueError, match="not a safetensors file"):
        ckpt.safetensors_keys(tmp_path / "bad.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="not a safetensors file"):
        ckpt.safetensors_keys(tmp_path / "short.safetensors")
