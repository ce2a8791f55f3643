"""Scorer training on the tiny Qwen2.5-VL: data and labels, the objective, a short run, resume, CLI; and on the tiny
Qwen3-VL / Qwen3-VL-MoE, whose DeepStack levels must receive the same soft mask as the main features."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vs_vllm.selection.budget import keep_count
from vs_vllm.selection.checkpoint import load_scorer
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.training import ConversationDataset, ScorerTrainer, TrainConfig, collate_batch, lambda_at, soft_select
from vs_vllm.training.trainer import find_checkpoint

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (220, 220, 30)}
HIDDEN = 256  # the tiny model's text hidden size


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four single-image samples (data.json) and a mixed JSONL: two images in one turn, multi-turn, text only."""
    from vs_vllm.testing.images import shape_image

    root = tmp_path_factory.mktemp("train-data")
    (root / "img").mkdir()
    records = []
    for i, (name, colour) in enumerate(COLOURS.items()):
        shape_image(112, 84 + 28 * i, colour=colour).save(root / "img" / f"{name}.png")  # 12..24 visual tokens
        records.append({
            "image": f"img/{name}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the disc?"},
                {"from": "gpt", "value": f"It is {name}."},
            ],
        })
    (root / "data.json").write_text(json.dumps(records))
    mixed = [
        {"images": ["img/red.png", "img/blue.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]},
            {"role": "assistant", "content": "Red and blue."},
            {"role": "user", "content": "Anything else?"},
            {"role": "assistant", "content": "No."},
        ]},
        {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        records[2],
        {"image": "img/yellow.png", "conversations": [  # no <image> tag: the image goes in front of the first turn
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Yellow."}]},
    ]
    (root / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mixed))
    return root


@pytest.fixture(scope="module")
def tiny_qwen3_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vs_vllm.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3_vl"), arch="qwen3_vl", seed=0)


@pytest.fixture(scope="module")
def tiny_qwen3_vl_moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vs_vllm.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3_vl_moe"), arch="qwen3_vl_moe", seed=0)


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path):
    """The tiny model and processor, loaded once (the trainer freezes the model; nothing here unfreezes it)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, processor


def make_config(tiny_model_dir: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(model=str(tiny_model_dir), data=str(data), output_dir=str(out), progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def scorer_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    s = load_scorer(path, in_features=HIDDEN)
    return {k: v.detach().clone() for k, v in s.state_dict().items()}


# ------------------------------------------------------------------------------------------------------ objective
def test_lambda_schedule() -> None:
    assert lambda_at(0, 100) == pytest.approx(0.1)
    assert lambda_at(50, 100) == pytest.approx(1.05)
    assert lambda_at(100, 100) == pytest.approx(2.0)
    assert lambda_at(250, 100) == pytest.approx(2.0)
    assert lambda_at(3, 4, start=0.5, end=0.5) == 0.5
    assert lambda_at(1, 4, start=0.1, end=3.0) == pytest.approx(0.1 + 2.9 / 4)
    with pytest.raises(ValueError):
        lambda_at(0, 0)


def test_soft_select_sample_and_pooled_scopes() -> None:
    torch.manual_seed(0)
    scorer = TransformerScorer(16, init_std=0.3)
    sizes, per_sample = [6, 10, 5], [2, 0, 1]  # sample 0 has two images, sample 1 none, sample 2 one
    x = torch.randn(sum(sizes), 16)

    sample = soft_select(scorer, x, sizes, per_sample, ratio=0.2, scope="sample")
    assert [(s, n) for s, n, _ in sample.groups] == [(0, 16), (16, 5)]
    assert float(sample.mask[:16].detach().sum()) == pytest.approx(keep_count(16, 0.2), abs=1e-4)
    assert float(sample.mask[16:].detach().sum()) == pytest.approx(keep_count(5, 0.2), abs=1e-4)
    assert sample.hard[:16].sum() == keep_count(16, 0.2) and sample.hard[16:].sum() == 1
    # Sample scope: the mean key is the sample's own, so a sample's scores do not depend on the other samples.
    alone = soft_select(scorer, x[16:], [5], [1], ratio=0.2, scope="sample")
    torch.testing.assert_close(alone.scores, sample.scores[16:])

    pooled = soft_select(scorer, x, sizes, per_sample, ratio=0.2, scope="pooled")
    assert pooled.groups == [(0, 21, keep_count(21, 0.2))]
    assert float(pooled.mask.detach().sum()) == pytest.approx(keep_count(21, 0.2), abs=1e-4)
    assert pooled.mask.dtype == torch.float32 and pooled.bce.dtype == torch.float32

    loss = pooled.bce + (pooled.mask * torch.arange(21.0)).sum()
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in scorer.parameters())

    # K = keep_count clamped to N - 1; a single-token image cannot be selected in (mask 1, no BCE).
    two = soft_select(scorer, x[:2], [2], [1], ratio=0.9, scope="sample")
    assert two.groups == [(0, 2, 1)]
    one = soft_select(scorer, x[:1], [1], [1], ratio=0.2, scope="sample")
    assert one.groups == [] and float(one.mask) == 1.0 and float(one.bce) == 0.0
    stats = pooled.stats()
    assert stats["score_std"] > 0 and 0 < stats["p_kept"] < 1


# ----------------------------------------------------------------------------------------------------------- data
@pytest.mark.slow  # loads a transformers model
def test_labels_are_the_answers_and_collate_pads(hf, data_dir: Path) -> None:
    _, processor = hf
    tok = processor.tokenizer
    ds = ConversationDataset(data_dir / "mixed.jsonl", processor)
    two = ds[0]
    assert two["image_grid_thw"].shape == (2, 3)
    n_visual = int((two["image_grid_thw"].prod(-1) // 4).sum())
    assert int((two["input_ids"] == processor.image_token_id).sum()) == n_visual
    assert int(two["mm_token_type_ids"].sum()) == n_visual
    assert tok.decode(two["labels"][two["labels"] != -100]) == "Red and blue.<|im_end|>No.<|im_end|>"
    text_only = ds[1]
    assert text_only["pixel_values"] is None
    assert tok.decode(text_only["labels"][text_only["labels"] != -100]) == "Hi.<|im_end|>"
    untagged = ds[3]
    assert untagged["image_grid_thw"].shape == (1, 3)
    # The image went in front of the first user turn.
    first_pad = int((untagged["input_ids"] == processor.image_token_id).nonzero()[0])
    assert "Colour?" in tok.decode(untagged["input_ids"][first_pad:])

    batch = collate_batch([ds[1], ds[0], ds[2]], pad_token_id=tok.pad_token_id)
    lengths = [int(ds[i]["input_ids"].shape[0]) for i in (1, 0, 2)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["images_per_sample"] == [0, 2, 1]
    assert batch["image_grid_thw"].shape == (3, 3)
    assert bool((batch["labels"][0, lengths[0]:] == -100).all())


@pytest.mark.slow  # loads a transformers model
def test_data_errors_name_record_and_field(hf, data_dir: Path, tmp_path: Path) -> None:
    _, processor = hf
    good = {"image": str(data_dir / "img" / "red.png"),
            "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}

    def dataset(records):
        path = tmp_path / "d.json"
        path.write_text(json.dumps(records))
        return ConversationDataset(path, processor)

    with pytest.raises(ValueError, match=r"record 1: field 'conversations'"):
        dataset([good, {"image": good["image"]}])
    with pytest.raises(ValueError, match=r"record 0: field 'conversations\[1\]\.value': missing"):
        dataset([{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt"}]}])
    with pytest.raises(ValueError, match=r"record 0: field 'conversations\[0\]\.from': unknown role"):
        dataset([{"conversations": [{"from": "bot", "value": "Q"}]}])
    with pytest.raises(ValueError, match=r"record 0: field 'image': 1 image\(s\) given but .* 2 <image> tag"):
        dataset([{**good, "conversations": [{"from": "human", "value": "<image><image>Q"}, {"from": "gpt", "value": "A"}]}])
    with pytest.raises(ValueError, match=r"record 1: field 'image': image 0 not found"):
        dataset([good, {**good, "image": "nope.png"}])

    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    ds = dataset([good, {**good, "image": "broken.png"}])
    ds[0]
    with pytest.raises(ValueError, match=r"record 1: field 'image': cannot read image"):
        ds[1]
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"line 2 \(record 1\)"):
        ConversationDataset(bad_jsonl, processor)


# ------------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def short_run(hf, tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """12 steps at a high learning rate with a constant lambda, so the loss is comparable across steps."""
    model, processor = hf
    out = tmp_path_factory.mktemp("short-run")
    cfg = make_config(tiny_model_dir, data_dir / "data.json", out, max_steps=12, batch_size=1, lr=2e-2,
                      lambda_start=1.0, lambda_end=1.0, warmup_ratio=0.0)
    trainer = ScorerTrainer(cfg, model=model, processor=processor)
    path = trainer.train()
    return trainer, Path(path)


@pytest.mark.slow  # loads a transformers model
def test_loss_decreases(short_run) -> None:
    trainer, path = short_run
    losses = [h["loss"] for h in trainer.history]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1, losses
    # The BCE drives the soft mask toward the hard top-K: kept tokens' p rise toward 1, the score scale grows.
    assert trainer.history[-1]["p_kept"] > trainer.history[0]["p_kept"] + 0.3
    assert trainer.history[-1]["score_std"] > 100 * trainer.history[0]["score_std"]
    log = [json.loads(line) for line in (path.parent / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert trainer.summary["steps_per_second"] > 0


@pytest.mark.slow  # loads a transformers model
def test_only_the_scorer_changes(short_run, tiny_model_dir: Path) -> None:
    from accelerate.utils import set_seed
    from transformers import Qwen2_5_VLForConditionalGeneration

    trainer, path = short_run
    fresh = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    trained = trainer.model.state_dict()
    assert trained.keys() == fresh.keys()
    changed = [k for k in fresh if not torch.equal(fresh[k], trained[k])]
    assert changed == []
    assert all(not p.requires_grad and p.grad is None for p in trainer.model.parameters())
    set_seed(0)
    init = TransformerScorer(HIDDEN).state_dict()
    final = scorer_tensors(path)
    assert all(not torch.equal(init[k], final[k]) for k in init)


@pytest.mark.slow  # loads a transformers model
def test_checkpoint_resume_reproduces_next_steps(hf, tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    model, processor = hf
    # 4 samples, batch 1, grad_accum 2: two steps per epoch. Resuming after step 1 skips into the middle of epoch 0
    # and then crosses into epoch 1 (a new permutation).
    common = dict(max_steps=3, batch_size=1, grad_accum=2, lr=1e-2, save_every=1)
    full = ScorerTrainer(make_config(tiny_model_dir, data_dir / "data.json", tmp_path / "a", **common),
                         model=model, processor=processor)
    full_path = full.train()
    assert sorted(p.name for p in (tmp_path / "a").glob("checkpoint-*")) == [f"checkpoint-{i}" for i in (1, 2, 3)]
    assert find_checkpoint(tmp_path / "a") == tmp_path / "a" / "checkpoint-3"

    resumed = ScorerTrainer(
        make_config(tiny_model_dir, data_dir / "data.json", tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-1"),
                    **common),
        model=model, processor=processor,
    )
    assert resumed.step == 1
    resumed_path = resumed.train()
    assert [h["step"] for h in resumed.history] == [2, 3]
    for got, want in zip(resumed.history, full.history[1:]):
        for key in ("loss", "ce", "bce", "lr", "lambda", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), key
    a, b = scorer_tensors(full_path), scorer_tensors(resumed_path)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)


@pytest.mark.slow  # loads a transformers model
@pytest.mark.parametrize(("scope", "precision"), [("sample", "fp32"), ("pooled", "bf16")])
def test_scopes_run_on_mixed_batches(hf, tiny_model_dir, data_dir, tmp_path, scope, precision) -> None:
    _, processor = hf
    cfg = make_config(tiny_model_dir, data_dir / "mixed.jsonl", tmp_path, max_steps=1, batch_size=4,
                      topk_scope=scope, precision=precision, shuffle=False)
    trainer = ScorerTrainer(cfg, processor=processor)  # its own model: bf16 must not touch the shared one
    assert trainer.model.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    trainer.train()
    h = trainer.history[0]
    assert math.isfinite(h["loss"]) and h["bce"] > 0 and 0 < h["p_kept"] < 1


@pytest.mark.slow  # trains in a subprocess
@pytest.mark.parametrize("model_fixture", ["tiny_model_dir", "tiny_qwen2_vl_dir", "tiny_qwen3_vl_dir",
                                           "tiny_qwen3_vl_moe_dir"])
def test_cli_trains_end_to_end(model_fixture: str, data_dir: Path, tmp_path: Path, request) -> None:
    tiny_model_dir = request.getfixturevalue(model_fixture)
    model_config = json.loads((tiny_model_dir / "config.json").read_text())
    # The scorer reads the merger outputs: its width is the vision tower's output size (Qwen2-VL calls it hidden_size).
    vision_out = model_config["vision_config"].get("out_hidden_size") or model_config["text_config"]["hidden_size"]
    assert vision_out == HIDDEN
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vs_vllm", "train", "--model", str(tiny_model_dir), "--data",
         str(data_dir / "mixed.jsonl"), "--output-dir", str(out), "--max-steps", "2", "--batch-size", "2",
         "--topk-scope", "pooled", "--no-progress", "--save-every", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = Path(proc.stdout.strip().splitlines()[-1])
    assert final == out / "scorer.safetensors"
    scorer = load_scorer(final, in_features=vision_out)
    assert scorer.in_features == vision_out and scorer.hidden_dim == vision_out // 2
    assert (out / "checkpoint-2" / "training_state.pt").is_file()
    config = json.loads((out / "train_config.json").read_text())
    assert config["topk_scope"] == "pooled" and config["derived"]["max_steps"] == 2



# ------------------------------------------------------------------------------------------ Qwen3-VL (DeepStack)
QWEN3_ARCHS = {"qwen3_vl": "tiny_qwen3_vl_dir", "qwen3_vl_moe": "tiny_qwen3_vl_moe_dir"}


@pytest.fixture(scope="module", params=list(QWEN3_ARCHS))
def hf_qwen3(request):
    """(model, processor) of each tiny DeepStack model, fp32, frozen as the trainer would leave it."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = request.getfixturevalue(QWEN3_ARCHS[request.param])
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
    assert model.config.model_type == request.param
    return model, processor


def _scorer_grads(model, scorer, batch, *, unmask_deepstack: bool) -> tuple[list[torch.Tensor], dict]:
    """Scorer gradients of one training forward, and the keyword arguments the language model received.
    ``unmask_deepstack`` swaps the DeepStack features the LLM gets for the unscaled ones: the run the soft mask must
    be distinguishable from."""
    from vs_vllm.training.forward import training_forward

    received: dict = {}

    def intercept(module, args, kwargs):
        if unmask_deepstack:
            with torch.no_grad():
                out = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"], return_dict=True)
            kwargs["deepstack_visual_embeds"] = [torch.cat(list(level)) for level in out.deepstack_features]
        received.update(kwargs)
        return args, kwargs

    scorer.zero_grad(set_to_none=True)
    handle = model.model.language_model.register_forward_pre_hook(intercept, with_kwargs=True)
    try:
        step = training_forward(model, scorer, batch, ratio=0.2, scope="sample", lam=1.0)
    finally:
        handle.remove()
    step.loss.backward()
    return [p.grad.detach().clone() for p in scorer.parameters()], received


@pytest.mark.slow  # loads a transformers model
def test_deepstack_levels_receive_the_soft_mask(hf_qwen3, data_dir: Path) -> None:
    """Every DeepStack level reaches the LLM scaled by the same p as the main features (at the image slots, in the
    same order), so the scorer's gradient flows through DeepStack too: it differs from a run with unmasked levels."""
    model, processor = hf_qwen3
    ds = ConversationDataset(data_dir / "mixed.jsonl", processor)
    tok = processor.tokenizer
    batch = collate_batch([ds[0], ds[1], ds[2]], pad_token_id=tok.pad_token_id)  # two images, text only, one image
    hidden = int(model.config.vision_config.out_hidden_size)
    torch.manual_seed(0)
    scorer = TransformerScorer(hidden, init_std=0.05)

    grads, received = _scorer_grads(model, scorer, batch, unmask_deepstack=False)
    assert all(bool(g.abs().sum() > 0) for g in grads)

    with torch.no_grad():
        out = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"], return_dict=True)
        x = torch.cat(list(out.pooler_output))
        assert x.shape[1] == hidden  # the scorer reads the main columns only
        sel = soft_select(scorer, x, [int(f.shape[0]) for f in out.pooler_output], batch["images_per_sample"],
                          ratio=0.2, scope="sample")
    p = sel.mask.detach()
    assert 0 < float(p.min()) < float(p.max()) < 1  # a real soft mask: neither all ones nor one constant
    image_mask = batch["input_ids"] == model.config.image_token_id
    assert torch.equal(received["visual_pos_masks"], image_mask)
    torch.testing.assert_close(received["inputs_embeds"][image_mask], x * p[:, None])
    levels = received["deepstack_visual_embeds"]
    assert len(levels) == len(model.config.vision_config.deepstack_visual_indexes) == len(out.deepstack_features)
    for got, level in zip(levels, out.deepstack_features):
        torch.testing.assert_close(got, torch.cat(list(level)) * p[:, None])
        assert got.requires_grad  # the mask's gradient reaches the scorer through every level

    unmasked, _ = _scorer_grads(model, scorer, batch, unmask_deepstack=True)
    diff = max(float((a - b).abs().max()) for a, b in zip(grads, unmasked))
    assert diff > 1e-2 * max(float(g.abs().max()) for g in grads), diff


@pytest.mark.slow  # loads a transformers model
def test_qwen3_vl_short_run_trains_the_scorer(tiny_qwen3_vl_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    cfg = make_config(tiny_qwen3_vl_dir, data_dir / "data.json", tmp_path, max_steps=12, batch_size=1, lr=2e-2,
                      lambda_start=1.0, lambda_end=1.0, warmup_ratio=0.0)
    trainer = ScorerTrainer(cfg)
    path = Path(trainer.train())
    losses = [h["loss"] for h in trainer.history]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    assert trainer.history[-1]["p_kept"] > trainer.history[0]["p_kept"] + 0.3
    fresh = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir, dtype=torch.float32).state_dict()
    trained = trainer.model.state_dict()
    assert [k for k in fresh if not torch.equal(fresh[k], trained[k])] == []
    assert load_scorer(path, in_features=HIDDEN).in_features == HIDDEN


def test_cli_reports_user_errors(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vs_vllm import cli

    args = ["train", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path)]
    assert cli.main([*args, "--data", str(tmp_path / "missing.json")]) == 2
    assert "data file not found" in capsys.readouterr().err
    (tmp_path / "d.json").write_text("[]")
    assert cli.main([*args, "--data", str(tmp_path / "d.json"), "--ratio", "1.0"]) == 2
    assert "ratio" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*args, "--data", "x.json", "--epochs", "1", "--max-steps", "3"])  # mutually exclusive
