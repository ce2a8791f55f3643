"""scorer_probe: finding scorer tensors in a served checkpoint (local directory or cached hub id), headers only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vs_vllm.selection.checkpoint import SCORER_PREFIX
from vs_vllm.vllm_plugin.pruning import scorer_probe
from vs_vllm.vllm_plugin.pruning.scorer_probe import checkpoint_scorer_keys, has_scorer_tensors

PARAMS = ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")
MODEL_PREFIX = "model." + SCORER_PREFIX
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "someorg/VisionSelector-Tiny"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: the probe must work from local files only."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def scorer_tensors(prefix: str = SCORER_PREFIX, d: int = 8, h: int = 4) -> dict[str, torch.Tensor]:
    return {
        prefix + "q_proj.weight": torch.randn(h, d),
        prefix + "q_proj.bias": torch.randn(h),
        prefix + "k_proj.weight": torch.randn(h, d),
        prefix + "k_proj.bias": torch.randn(h),
    }


def backbone_tensors() -> dict[str, torch.Tensor]:
    return {
        "model.language_model.embed_tokens.weight": torch.randn(32, 8),
        "model.visual.blocks.0.attn.qkv.weight": torch.randn(24, 8),
        "lm_head.weight": torch.randn(32, 8),
    }


def write_model_dir(dst: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A single-file checkpoint: config.json + model.safetensors."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def write_sharded_dir(dst: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> Path:
    """config.json + model.safetensors.index.json + ``shards`` shards, tensors dealt round-robin."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[i::shards]}
        save_file(part, str(dst / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def add_to_hub_cache(cache: Path, repo_id: str, src: Path, commit: str = COMMIT, refs: tuple[str, ...] = ("main",)):
    """Lay ``src``'s files out the way huggingface_hub caches a snapshot: content-addressed blobs, a
    ``snapshots/<commit>`` directory of relative symlinks to them, and ``refs/<name>`` files holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(src.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def keys(prefix: str = SCORER_PREFIX) -> set[str]:
    return {prefix + p for p in PARAMS}


# --- has_scorer_tensors ---------------------------------------------------------------------------------------------


def test_has_scorer_tensors() -> None:
    assert has_scorer_tensors(keys())
    assert has_scorer_tensors(keys(MODEL_PREFIX))
    assert has_scorer_tensors([*keys(), "lm_head.weight"])
    assert not has_scorer_tensors([])
    assert not has_scorer_tensors(sorted(keys())[:3])
    # Two from each prefix: four tensors, but no complete scorer under either.
    mixed = {SCORER_PREFIX + "q_proj.weight", SCORER_PREFIX + "q_proj.bias"}
    mixed |= {MODEL_PREFIX + "k_proj.weight", MODEL_PREFIX + "k_proj.bias"}
    assert not has_scorer_tensors(mixed)
    assert not has_scorer_tensors(set(PARAMS))  # bare names are a standalone scorer, not a served checkpoint's


# --- local directories ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [SCORER_PREFIX, MODEL_PREFIX])
def test_local_dir_with_scorer(tmp_path: Path, prefix: str) -> None:
    model = write_model_dir(tmp_path / "model", {**backbone_tensors(), **scorer_tensors(prefix)})
    found = checkpoint_scorer_keys(str(model))
    assert found == keys(prefix)
    assert has_scorer_tensors(found)


def test_local_dir_without_scorer(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "model", backbone_tensors())
    assert checkpoint_scorer_keys(str(model)) == set()
    assert not has_scorer_tensors(checkpoint_scorer_keys(str(model)))


def test_local_dir_partial_scorer(tmp_path: Path) -> None:
    tensors = scorer_tensors()
    del tensors[SCORER_PREFIX + "k_proj.bias"]
    model = write_model_dir(tmp_path / "model", {**backbone_tensors(), **tensors})
    found = checkpoint_scorer_keys(str(model))
    assert found == set(tensors)
    assert not has_scorer_tensors(found)


def test_local_dir_revision_and_download_dir_ignored(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "model", {**backbone_tensors(), **scorer_tensors()})
    assert checkpoint_scorer_keys(str(model), revision="v9", download_dir=str(tmp_path / "nowhere")) == keys()


@pytest.mark.parametrize("prefix", [SCORER_PREFIX, MODEL_PREFIX])
def test_sharded_index_is_read_not_the_shards(tmp_path: Path, prefix: str) -> None:
    model = write_sharded_dir(tmp_path / "model", {**backbone_tensors(), **scorer_tensors(prefix)}, shards=3)
    for shard in model.glob("model-*.safetensors"):
        shard.write_bytes(b"")  # the answer comes from the index alone
    assert checkpoint_scorer_keys(str(model)) == keys(prefix)


def test_sharded_index_without_scorer_ignores_unlisted_files(tmp_path: Path) -> None:
    model = write_sharded_dir(tmp_path / "model", backbone_tensors())
    # vLLM loads only the files the index lists; a scorer file next to them is not part of the served checkpoint.
    save_file(scorer_tensors(), str(model / "scorer.safetensors"))
    assert checkpoint_scorer_keys(str(model)) == set()


def test_unindexed_files_read_from_headers_only(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    save_file(backbone_tensors(), str(model / "a.safetensors"))
    save_file(scorer_tensors(), str(model / "b.safetensors"))
    for file in model.glob("*.safetensors"):
        header_len = int.from_bytes(file.read_bytes()[:8], "little")
        with open(file, "r+b") as f:
            f.truncate(8 + header_len)  # no tensor data left: only the headers can be read
    assert checkpoint_scorer_keys(str(model)) == keys()


def test_local_dir_without_safetensors_is_unknown(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    torch.save(scorer_tensors(), model / "pytorch_model.bin")  # not readable without loading the tensors
    assert checkpoint_scorer_keys(str(model)) is None


def test_unreadable_weights_are_unknown(tmp_path: Path) -> None:
    model = write_sharded_dir(tmp_path / "sharded", {**backbone_tensors(), **scorer_tensors()})
    (model / "model.safetensors.index.json").write_text("{not json")
    assert checkpoint_scorer_keys(str(model)) is None
    model = write_model_dir(tmp_path / "single", backbone_tensors())
    (model / "model.safetensors").write_bytes(b"\xff" * 16)
    assert checkpoint_scorer_keys(str(model)) is None


def test_missing_local_path_is_unknown(tmp_path: Path) -> None:
    assert checkpoint_scorer_keys(str(tmp_path / "does" / "not" / "exist")) is None
    assert checkpoint_scorer_keys(str(tmp_path / "model.gguf")) is None


# --- hub ids in the local HF cache ----------------------------------------------------------------------------------


def test_hub_id_in_download_dir(tmp_path: Path) -> None:
    src = write_sharded_dir(tmp_path / "src", {**backbone_tensors(), **scorer_tensors(MODEL_PREFIX)})
    cache = tmp_path / "download-dir"
    add_to_hub_cache(cache, REPO, src)
    found = checkpoint_scorer_keys(REPO, download_dir=str(cache))
    assert found == keys(MODEL_PREFIX)
    assert has_scorer_tensors(found)
    # The same id without the download dir is looked up in the default cache, where it is not.
    default_cache = tmp_path / "empty-default-cache"
    default_cache.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(default_cache))
        assert checkpoint_scorer_keys(REPO) is None


def test_hub_id_in_default_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_CACHE pointed at tmp_path: huggingface_hub reads it at import, so the constant is patched too."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    add_to_hub_cache(cache, REPO, write_model_dir(tmp_path / "with", {**backbone_tensors(), **scorer_tensors()}))
    add_to_hub_cache(cache, "someorg/plain", write_model_dir(tmp_path / "without", backbone_tensors()))
    assert checkpoint_scorer_keys(REPO) == keys()
    assert checkpoint_scorer_keys("someorg/plain") == set()


def test_hub_revisions(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    old = "fedcba9876543210fedcba9876543210fedcba98"
    add_to_hub_cache(cache, REPO, write_model_dir(tmp_path / "old", backbone_tensors()), commit=old, refs=("v1",))
    add_to_hub_cache(cache, REPO, write_model_dir(tmp_path / "new", {**backbone_tensors(), **scorer_tensors()}))
    assert checkpoint_scorer_keys(REPO, download_dir=str(cache)) == keys()  # main
    assert checkpoint_scorer_keys(REPO, revision="main", download_dir=str(cache)) == keys()
    assert checkpoint_scorer_keys(REPO, revision=COMMIT, download_dir=str(cache)) == keys()
    assert checkpoint_scorer_keys(REPO, revision="v1", download_dir=str(cache)) == set()
    assert checkpoint_scorer_keys(REPO, revision=old, download_dir=str(cache)) == set()
    assert checkpoint_scorer_keys(REPO, revision="v2", download_dir=str(cache)) is None  # ref not cached
    assert checkpoint_scorer_keys(REPO, revision="1" * 40, download_dir=str(cache)) is None  # commit not cached


def test_hub_id_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert checkpoint_scorer_keys("someorg/not-downloaded") is None
    assert checkpoint_scorer_keys("someorg/not-downloaded", download_dir=str(cache)) is None
    assert checkpoint_scorer_keys("someorg/not-downloaded", revision="main", download_dir=str(tmp_path / "x")) is None


def test_hub_snapshot_without_safetensors_is_unknown(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    torch.save(backbone_tensors(), src / "pytorch_model.bin")
    add_to_hub_cache(tmp_path / "hub", REPO, src)
    assert checkpoint_scorer_keys(REPO, download_dir=str(tmp_path / "hub")) is None


def test_incomplete_snapshot_is_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub flags a snapshot missing files its cached repo listing names (vLLM skips some); the files
    there are the ones vLLM loaded, so they are read."""
    from huggingface_hub.errors import IncompleteSnapshotError

    snapshot = add_to_hub_cache(
        tmp_path / "hub", REPO, write_model_dir(tmp_path / "src", {**backbone_tensors(), **scorer_tensors()})
    )
    calls = []

    def incomplete(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        raise IncompleteSnapshotError("1 file(s) are missing", snapshot_path=str(snapshot))

    monkeypatch.setattr("huggingface_hub.snapshot_download", incomplete)
    assert checkpoint_scorer_keys(REPO, revision="main", download_dir="/some/dir") == keys()
    assert calls[0][0] == REPO
    assert calls[0][1]["local_files_only"] is True
    assert calls[0][1]["cache_dir"] == "/some/dir" and calls[0][1]["revision"] == "main"


def test_probe_reuses_checkpoint_prefixes() -> None:
    from vs_vllm.selection import checkpoint

    assert scorer_probe.ACCEPTED_PREFIXES is checkpoint.ACCEPTED_PREFIXES
    assert scorer_probe.SCORER_PARAMS is checkpoint.SCORER_PARAMS
