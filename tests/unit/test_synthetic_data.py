"""The synthetic "what colour is the striped shape?" generator (benchmarks/synthetic/generate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vs_vllm.demo import load_synthetic_generator


@pytest.fixture(scope="module")
def gen():
    return load_synthetic_generator()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(gen, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    gen.generate_dataset(out, n_train=6, n_test=4, seed=7)
    return out


def test_deterministic_per_seed(gen, dataset, tmp_path):
    gen.generate_dataset(tmp_path, n_train=6, n_test=4, seed=7)
    a, b = _files(dataset), _files(tmp_path)
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.endswith(".png")]) == 10
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs with the same seed"


def test_knobs_change_the_output(gen, dataset, tmp_path):
    base = _files(dataset)
    variants = {
        "seed": dict(seed=8),
        "texture": dict(seed=7, texture_strength=0.0),
        "distractors": dict(seed=7, distractor_count=2),
        "object_size": dict(seed=7, object_size=(44, 50)),
        "decoys": dict(seed=7, coloured_decoys=2),
        "stripes": dict(seed=7, stripe_period=(12, 14)),
    }
    for name, kw in variants.items():
        out = tmp_path / name
        gen.generate_dataset(out, n_train=6, n_test=4, **kw)
        other = _files(out)
        assert other["images/test_00000.png"] != base["images/test_00000.png"], name
    recs = _read_jsonl(tmp_path / "distractors" / "test_eval.jsonl")
    assert all(len(r["meta"]["distractors"]) <= 2 for r in recs)
    recs = _read_jsonl(tmp_path / "decoys" / "test_eval.jsonl")
    assert all(len(r["meta"]["decoys"]) <= 2 for r in recs)
    recs = _read_jsonl(tmp_path / "stripes" / "test_eval.jsonl")
    assert all(12 <= r["meta"]["stripe_period"] <= 14 for r in recs)
    recs = _read_jsonl(tmp_path / "object_size" / "test_eval.jsonl")
    assert all(44 <= r["meta"]["bbox"][2] - r["meta"]["bbox"][0] <= 50 for r in recs)
    gen.generate_dataset(tmp_path / "small", n_train=1, n_test=1, seed=7, image_size=112, object_size=(20, 24))
    assert Image.open(tmp_path / "small" / "images" / "train_00000.png").size == (112, 112)
    with pytest.raises(ValueError, match="unknown generator knobs"):
        gen.generate_dataset(tmp_path / "bad", n_train=1, n_test=1, colour="red")


def _colour_hits(img: np.ndarray, rgb) -> np.ndarray:
    return (img == np.array(rgb)).all(axis=-1)


def test_target_colour_is_where_stated(gen, dataset):
    for rec in _read_jsonl(dataset / "train_eval.jsonl") + _read_jsonl(dataset / "test_eval.jsonl"):
        meta = rec["meta"]
        img = np.asarray(Image.open(dataset / rec["image"]).convert("RGB")).astype(int)
        rgb = np.array(meta["rgb"])
        assert rec["answer"] == meta["colour"] and np.abs(rgb - np.array(gen.PALETTE[meta["colour"]])).max() <= 12
        assert meta["style"] == "striped"
        x0, y0, x1, y1 = meta["bbox"]
        hit = _colour_hits(img, rgb)
        box = hit[y0:y1, x0:x1]
        # Half of a striped shape is colour; a triangle inscribed in its box covers ~32% of it, a square 100%.
        assert box.sum() >= 0.1 * (x1 - x0) * (y1 - y0), rec["id"]
        # Striped: the colour alternates with white inside the target (both present in the same rows/columns).
        white = (img[y0:y1, x0:x1] == 255).all(axis=-1)
        assert white.sum() >= 0.05 * (x1 - x0) * (y1 - y0), rec["id"]
        outside = hit.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any(), f"{rec['id']}: the target's exact colour outside its bbox"
        # Chromatic pixels only on the target and the coloured decoys; each decoy is solid in its own colour.
        chroma = img.max(axis=-1) - img.min(axis=-1)
        chroma[y0:y1, x0:x1] = 0
        if rec["id"].startswith("test"):
            assert len(meta["decoys"]) >= 3
        assert len(meta["decoys"]) <= 6
        for d in meta["decoys"]:
            dx0, dy0, dx1, dy1 = d["bbox"]
            assert d["colour"] in gen.PALETTE and d["shape"] in gen.SHAPES
            assert _colour_hits(img[dy0:dy1, dx0:dx1], d["rgb"]).sum() >= 0.25 * (dx1 - dx0) * (dy1 - dy0)
            chroma[dy0:dy1, dx0:dx1] = 0
        assert chroma.max() == 0, rec["id"]
        # The listed LLM-token cells (28 px) hold target-coloured pixels.
        g = meta["token_grid"][1]
        assert meta["target_tokens"]
        for cell in meta["target_tokens"]:
            r, c = divmod(cell, g)
            assert hit[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28].sum() >= 20


def test_solid_style_is_the_earlier_scene(gen, tmp_path):
    gen.generate_dataset(tmp_path, n_train=2, n_test=2, seed=3, target_style="solid", coloured_decoys=0,
                         train_coloured_decoys=None)
    for rec in _read_jsonl(tmp_path / "test_eval.jsonl"):
        assert rec["question"] == gen.QUESTIONS["solid"] and rec["meta"]["decoys"] == []
        img = np.asarray(Image.open(tmp_path / rec["image"]).convert("RGB")).astype(int)
        x0, y0, x1, y1 = rec["meta"]["bbox"]
        chroma = img.max(axis=-1) - img.min(axis=-1)
        assert chroma[y0:y1, x0:x1].max() > 100
        chroma[y0:y1, x0:x1] = 0
        assert chroma.max() == 0
    with pytest.raises(ValueError, match="coloured_decoys=0"):
        gen.generate_dataset(tmp_path / "bad", n_train=1, n_test=0, target_style="solid")
    with pytest.raises(ValueError, match="coloured_decoys=0"):
        gen.generate_dataset(tmp_path / "bad", n_train=1, n_test=0, target_style="solid", coloured_decoys=0)
    with pytest.raises(ValueError, match="stripe_period"):
        gen.generate_dataset(tmp_path / "bad", n_train=1, n_test=0, stripe_period=(1, 3))


def test_jsonl_fields(gen, dataset):
    train = _read_jsonl(dataset / "train.jsonl")
    assert len(train) == 6
    for r in train:
        assert set(r) == {"id", "image", "conversations"}
        human, gpt = r["conversations"]
        assert human == {"from": "human", "value": "<image>\n" + gen.QUESTIONS["striped"]}
        assert gpt["from"] == "gpt" and gpt["value"] in gen.PALETTE
        assert (dataset / r["image"]).is_file()
    ev = _read_jsonl(dataset / "test_eval.jsonl")
    assert len(ev) == 4
    for r in ev:
        assert {"id", "image", "question", "answer", "meta"} <= set(r)
        assert r["question"] == gen.QUESTIONS["striped"]
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["seed"] == 7 and info["n_train"] == 6 and info["config"]["image_size"] == 224
    assert info["version"] == gen.GENERATOR_VERSION and info["question"] == gen.QUESTIONS["striped"]
    # The eval loader reads both files.
    from vs_vllm.evaluation.data import load_samples

    assert [s.answers for s in load_samples(dataset / "test.jsonl", encode_images=False)] == \
        [[r["answer"]] for r in ev]


def test_colour_words_are_single_tokens(gen):
    from vs_vllm.testing.tokenizer import build_bpe_tokenizer

    tok = build_bpe_tokenizer()
    for word in gen.PALETTE:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_mixed_task_records(gen, dataset, tmp_path):
    """The multi-task files: one record per task per image, answers consistent with the image metadata."""
    mixed = _read_jsonl(dataset / "train_mixed.jsonl")
    assert len(mixed) == 6 * len(gen.DEFAULT_TASKS)
    assert all(set(r) == {"id", "image", "conversations"} for r in mixed)
    gen.generate_dataset(tmp_path, n_train=0, n_test=12, seed=7, tasks=gen.TASKS)
    meta = {r["image"]: r["meta"] for r in _read_jsonl(tmp_path / "test_eval.jsonl")}
    records = _read_jsonl(tmp_path / "test_mixed_eval.jsonl")
    assert len(records) == 12 * len(gen.TASKS)
    answers = {}
    for r in records:
        m = meta[r["image"]]
        answers.setdefault(r["task"], []).append(r["answer"])
        if r["task"] == "colour":
            assert r["answer"] == m["colour"]
        elif r["task"] == "shape":
            assert r["question"] == "What shape is the striped shape?" and r["answer"] == m["shape"]
        elif r["task"] == "decoy":
            _, colour, shape = r["question"].rstrip("?").rsplit(" ", 2)
            present = (colour, shape) == (m["colour"], m["shape"]) or any(
                (d["colour"], d["shape"]) == (colour, shape) for d in m["decoys"])
            assert r["answer"] == ("yes" if present else "no"), r
        else:
            _, word, shape = r["question"].rstrip("?").rsplit(" ", 2)
            present = any(gen.TEXTURE_WORDS.get(d["texture"]) == word and d["shape"] == shape
                          for d in m["distractors"])
            assert r["answer"] == ("yes" if present else "no"), r
    # Existence questions are not all one answer.
    assert {"yes", "no"} <= set(answers["decoy"])
    with pytest.raises(ValueError, match="unknown tasks"):
        gen.generate_dataset(dataset / "x", n_train=1, n_test=0, tasks=("counting",))


def test_train_decoy_count_is_drawn_per_image(gen, tmp_path):
    gen.generate_dataset(tmp_path, n_train=24, n_test=3, seed=4, tasks=(), train_coloured_decoys=(1, 3),
                         coloured_decoys=5)
    train = [len(r["meta"]["decoys"]) for r in _read_jsonl(tmp_path / "train_eval.jsonl")]
    test = [len(r["meta"]["decoys"]) for r in _read_jsonl(tmp_path / "test_eval.jsonl")]
    assert set(train) == {1, 2, 3}
    assert test == [5, 5, 5]
    with pytest.raises(ValueError, match="train_coloured_decoys"):
        gen.generate_dataset(tmp_path / "bad", n_train=1, n_test=0, train_coloured_decoys=(3, 1))


def test_qwen3_vl_preset_keeps_the_token_geometry(gen, tmp_path):
    """Qwen3-VL data (256 px, 32-px LLM tokens): the same 8x8 grid, the target on a few of its tokens, as at 224 px
    with Qwen2.5-VL's 28-px tokens."""
    preset = gen.ARCH_PRESETS["qwen3_vl"]
    assert preset["image_size"] == 256 and preset["token_px"] == 32
    gen.generate_dataset(tmp_path, n_train=4, n_test=24, seed=7, tasks=(), **preset)
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["config"]["image_size"] == 256 and info["config"]["token_px"] == 32
    assert gen.config_from_info(info) == gen.SyntheticConfig(**preset)
    n_tokens = []
    for rec in _read_jsonl(tmp_path / "test_eval.jsonl"):
        meta = rec["meta"]
        img = np.asarray(Image.open(tmp_path / rec["image"]).convert("RGB")).astype(int)
        assert img.shape == (256, 256, 3) and meta["token_grid"] == [8, 8]
        x0, y0, x1, y1 = meta["bbox"]
        assert 39 <= x1 - x0 <= 53
        hit = _colour_hits(img, meta["rgb"])
        assert meta["target_tokens"] and all(0 <= c < 64 for c in meta["target_tokens"])
        for cell in meta["target_tokens"]:
            r, c = divmod(cell, 8)
            # 20 target pixels per 28x28 cell, scaled by area.
            assert hit[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32].sum() >= gen.token_min_pixels(32) == 26
        n_tokens.append(len(meta["target_tokens"]))
    # A median of about 4 tokens, as with Qwen2.5-VL (a box straddling cell borders can touch up to 9).
    assert 2 <= float(np.median(n_tokens)) <= 5 and max(n_tokens) <= 9


def test_generate_cli_arch_preset(gen, tmp_path):
    assert gen.main([str(tmp_path / "q3"), "--arch", "qwen3_vl", "--train", "1", "--test", "1", "--tasks", ""]) == 0
    cfg = json.loads((tmp_path / "q3" / "dataset.json").read_text())["config"]
    assert (cfg["image_size"], cfg["token_px"], cfg["object_size"]) == (256, 32, [39, 53])
    # An explicit option overrides the preset; without --arch the Qwen2.5-VL geometry is unchanged.
    assert gen.main([str(tmp_path / "q3b"), "--arch", "qwen3_vl", "--object-size", "40,44", "--train", "1",
                     "--test", "1", "--tasks", ""]) == 0
    cfg = json.loads((tmp_path / "q3b" / "dataset.json").read_text())["config"]
    assert (cfg["image_size"], cfg["object_size"]) == (256, [40, 44])
    assert gen.main([str(tmp_path / "q25"), "--train", "1", "--test", "1", "--tasks", ""]) == 0
    cfg = json.loads((tmp_path / "q25" / "dataset.json").read_text())["config"]
    assert (cfg["image_size"], cfg["token_px"], cfg["object_size"]) == (224, 28, [34, 46])


def _train_base_module():
    from vs_vllm.demo import SYNTHETIC_DIR
    from vs_vllm.testing.scripts import load_script

    return load_script(SYNTHETIC_DIR / "train_base.py", "vs_vllm_synthetic_train_base")


@pytest.mark.parametrize("arch,size", [("qwen2_5_vl", 224), ("qwen3_vl", 256)])
def test_train_base_patchify_matches_the_processor(arch, size, tmp_path):
    """train_base.py's torch patchify reproduces each arch's image processor (Qwen3-VL: 16-px patches, mean/std 0.5,
    pixel bounds only in ``size``), so the base model trains on what vLLM serves."""
    from vs_vllm.testing.tiny_models import build_tiny_model

    tb = _train_base_module()
    build_tiny_model(tmp_path, arch=arch, seed=0, sizes=tb.ARCHS[arch][0])
    patchify = tb.Patchifier(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    patchify.check_size(size, size)
    u8 = np.random.default_rng(0).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    tb._check_patchify_against_processor(tmp_path, patchify, u8)
    pv, thw = patchify(u8)
    assert thw.tolist() == [[1, size // patchify.patch, size // patchify.patch]] * 2
    assert pv.shape[0] // 4 // 2 == 64  # 8x8 LLM tokens per image
    assert tb.arch_of(tmp_path) == arch and tb.model_class(arch).__name__ == tb.ARCHS[arch][1]
    with pytest.raises(ValueError, match="would be resized"):
        patchify.check_size(size + 8, size)


def test_scene_without_the_target_differs_only_where_the_target_was(gen):
    """The video task's decoy-only frames: the same scene (same draws) minus the striped target."""
    cfg = gen.SyntheticConfig()
    with_target, meta = gen.render_sample(gen.sample_rng(3, "test", 0), cfg)
    without, meta_none = gen.render_sample(gen.sample_rng(3, "test", 0), cfg, target=False)
    a, b = np.asarray(with_target, dtype=np.int16), np.asarray(without, dtype=np.int16)
    x0, y0, x1, y1 = meta["bbox"]
    diff = np.argwhere(np.abs(a - b).sum(axis=2) > 0)
    assert len(diff) > 0 and meta["target_tokens"]
    assert diff[:, 0].min() >= y0 and diff[:, 0].max() < y1 and diff[:, 1].min() >= x0 and diff[:, 1].max() < x1
    assert meta_none["target_tokens"] == [] and meta_none["decoys"] == meta["decoys"]
