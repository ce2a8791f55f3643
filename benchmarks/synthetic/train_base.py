"""Train a small Qwen2.5-VL (or, with ``--arch qwen3_vl``, Qwen3-VL) from scratch on the synthetic VQA data of
generate.py (CPU, minutes).

The base model for the synthetic pruning benchmark: a random-init checkpoint from ``build_tiny_model`` (so vLLM's CPU
backend serves it: text head_dim 64, mrope sections summing to 32) trained end to end (vision tower, merger and LLM)
with AdamW on the LLaVA-format train split written by ``generate.py``. Only the answer tokens (the colour word and
``<|im_end|>``) carry loss, the prompt is exactly the chat template vLLM applies at serving time, and the images are
patchified in torch exactly as the Qwen2-VL image processor does (checked against it at start-up).

Accuracy = greedy decoding reproduces the answer: with teacher forcing, the arg-max at every answer position equals
the answer token (identical to greedy decoding whenever the answer is right). A held-out slice of the train split
picks the checkpoint; the test split is scored once at the end (and a few samples with ``generate`` as a check).

Qwen3-VL (``--arch qwen3_vl``) reads 16-px patches (32 px per LLM token), so its data is generated at 256x256
(``generate.py --arch qwen3_vl``) for the same 8x8 LLM tokens; its one vision block also feeds a DeepStack level
(added to the first LLM layer's output at the visual positions).

Writes OUT_DIR/{config.json, model.safetensors, generation_config.json, tokenizer + processor files,
training_info.json}: loadable by transformers and ``vs-vllm serve``.

Usage: python benchmarks/synthetic/train_base.py --data DATA_DIR --out OUT_DIR [--arch qwen3_vl] [--time-budget-min 28]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The model that learns this task fast on 2 CPU cores and still fits vLLM's CPU attention (head_dim 64).
DEFAULT_SIZES: dict[str, Any] = {
    "text_hidden": 256,
    "text_layers": 2,
    "text_heads": 4,
    "text_kv_heads": 2,
    "text_intermediate": 256,
    "mrope_section": (8, 12, 12),
    # A one-block vision tower of width 64 (one 64-wide head): the patch embedding already separates colours, and
    # the vision tower is most of the step time at 256 patches per image.
    "vision_depth": 1,
    "vision_hidden": 64,
    "vision_heads": 1,
    "vision_intermediate": 128,
    # The one block attends globally: a windowed-only tower learned the striped-target task slower from scratch
    # (train accuracy 0.60 vs 0.79 at step 500 with 112 px windows; still at chance at step 600 with 56 px windows
    # and smaller targets). Whether the global block spreads the answer to other tokens is measured: random
    # selection's accuracy against how often it keeps the target.
    "fullatt_block_indexes": (0,),
    "window_size": 112,
}

#: Qwen3-VL at the same scale as DEFAULT_SIZES. The vision tower has no window attention (every block is global),
#: its one block is also the one DeepStack level; the vision head_dim 64 (64 wide, one head) is one vLLM's CPU
#: attention supports; the learned position table is 16x16, exactly the patch grid of a 256x256 image (no
#: interpolation between table entries). mrope_section (12, 10, 10) is the released (24, 20, 20) halved for head_dim
#: 64: with interleaved M-RoPE, height and width take 10 of the 32 frequencies each, time the remaining 12.
QWEN3_VL_SIZES: dict[str, Any] = {
    "text_hidden": 256,
    "text_layers": 2,
    "text_heads": 4,
    "text_kv_heads": 2,
    "text_intermediate": 256,
    "mrope_section": (12, 10, 10),
    "vision_depth": 1,
    "vision_hidden": 64,
    "vision_heads": 1,
    "vision_intermediate": 128,
    "deepstack_visual_indexes": (0,),
    "num_position_embeddings": 256,
}

#: Base-model architectures: default sizes and the transformers class that trains (and loads) them.
ARCHS: dict[str, tuple[dict[str, Any], str]] = {
    "qwen2_5_vl": (DEFAULT_SIZES, "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": (QWEN3_VL_SIZES, "Qwen3VLForConditionalGeneration"),
}


def model_class(arch: str):
    """The transformers class of a base-model ``arch`` (a key of ARCHS)."""
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return getattr(transformers, ARCHS[arch][1])


def arch_of(model_dir: str | os.PathLike[str]) -> str:
    """The base-model arch of a saved model directory (from config.json's model_type)."""
    model_type = json.loads((Path(model_dir) / "config.json").read_text())["model_type"]
    if model_type not in ARCHS:
        raise ValueError(f"{model_dir}: model_type {model_type!r} is none of {', '.join(ARCHS)}")
    return model_type


#: Files copied from the build directory next to the trained weights (those that exist: Qwen3-VL adds the video
#: processor config).
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "vs_vllm_tiny_model.json",
)


# --------------------------------------------------------------------------------------------------------------------
# Data


def read_records(path: Path) -> list[dict[str, Any]]:
    """LLaVA records (conversations) or eval records (question/answer) -> [{"image", "question", "answer", "task"}]."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "conversations" in rec:
                conv = rec["conversations"]
                question = conv[0]["value"].replace("<image>", "").strip()
                answer = conv[1]["value"].strip()
            else:
                question = rec["question"]
                answer = rec["answer"] if "answer" in rec else rec["answers"][0]
            if "image" not in rec:
                raise ValueError(f"{path}:{line_no}: record has no 'image'")
            task = rec.get("task") or str(rec.get("id", "")).rsplit("-", 1)[-1]
            out.append({"image": rec["image"], "question": question, "answer": answer,
                        "task": task if not task.isdigit() else "colour"})
    return out


def load_images(records: Sequence[dict[str, Any]], root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct image once: (uint8 [M, H, W, 3], index [len(records)] of each record's image)."""
    from PIL import Image

    names = list(dict.fromkeys(r["image"] for r in records))
    pos = {n: i for i, n in enumerate(names)}
    arrays = [np.asarray(Image.open(root / n).convert("RGB")) for n in names]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"all images must have one size for the fast path, found {sorted(shapes)}")
    return np.stack(arrays), np.array([pos[r["image"]] for r in records], dtype=np.int64)


class Patchifier:
    """uint8 [B, H, W, 3] -> (pixel_values [B*gh*gw, 3*2*P*P], grid_thw [B, 3]), as Qwen2VLImageProcessor does for
    an image whose size needs no resizing (a multiple of P*merge inside [min_pixels, max_pixels]; P = 14 for
    Qwen2.5-VL, 16 for Qwen3-VL)."""

    def __init__(self, processor_config: dict[str, Any]) -> None:
        self.mean = torch.tensor(processor_config["image_mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(processor_config["image_std"]).view(1, 3, 1, 1)
        self.patch = int(processor_config["patch_size"])
        self.merge = int(processor_config["merge_size"])
        self.temporal = int(processor_config["temporal_patch_size"])
        # Qwen3-VL's processor config states the pixel bounds only as size {shortest_edge, longest_edge}.
        size = processor_config.get("size") or {}
        self.min_pixels = int(processor_config.get("min_pixels", size.get("shortest_edge", 0)))
        self.max_pixels = int(processor_config.get("max_pixels", size.get("longest_edge", 0)))

    def check_size(self, h: int, w: int) -> None:
        f = self.patch * self.merge
        if h % f or w % f or not self.min_pixels <= h * w <= self.max_pixels:
            raise ValueError(f"image size {w}x{h} would be resized by the processor (needs multiples of {f} with "
                             f"{self.min_pixels} <= pixels <= {self.max_pixels}); generate with a fitting --image-size")

    def grid(self, h: int, w: int) -> tuple[int, int, int]:
        return 1, h // self.patch, w // self.patch

    def __call__(self, u8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(u8).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.mean) / self.std
        b, c, h, w = x.shape
        p, m, t = self.patch, self.merge, self.temporal
        gh, gw = h // p, w // p
        x = x.unsqueeze(1).expand(b, t, c, h, w)
        x = x.reshape(b, 1, t, c, gh // m, m, p, gw // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        pv = x.reshape(b * gh * gw, c * t * p * p)
        thw = torch.tensor([[1, gh, gw]] * b, dtype=torch.long)
        return pv, thw


class Encoder:
    """Token ids of the served prompt (the chat template vLLM applies) + answer + <|im_end|>, and their labels."""

    def __init__(self, tokenizer: Any, n_image_tokens: int) -> None:
        self.tok = tokenizer
        self.n_image_tokens = n_image_tokens
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self._prompt_cache: dict[str, list[int]] = {}

    def prompt_ids(self, question: str) -> list[int]:
        if question not in self._prompt_cache:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            text = text.replace("<|image_pad|>", "<|image_pad|>" * self.n_image_tokens, 1)
            self._prompt_cache[question] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._prompt_cache[question]

    def answer_ids(self, answer: str) -> list[int]:
        return self.tok(answer, add_special_tokens=False)["input_ids"] + [self.im_end]

    def batch(self, questions: Sequence[str], answers: Sequence[str]) -> dict[str, torch.Tensor]:
        seqs, labs = [], []
        for q, a in zip(questions, answers):
            p, ans = self.prompt_ids(q), self.answer_ids(a)
            seqs.append(p + ans)
            labs.append([-100] * len(p) + ans)
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad, dtype=torch.long)
        labels = torch.full((len(seqs), n), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labs)):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, : len(s)] = torch.tensor(lab)
            mask[i, : len(s)] = 1
        # mm_token_type_ids marks the image tokens: without it transformers falls back to 1-D text positions instead
        # of M-RoPE, and the model would be served (with M-RoPE) on positions it never saw (generate needs it too).
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "mm_token_type_ids": self.token_types(ids)}

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """``mm_token_type_ids``: 1 at image tokens, 0 elsewhere."""
        return (ids == self.image_token).int()


def answer_forward(model, batch: dict[str, torch.Tensor], pixel_values: torch.Tensor, grid_thw: torch.Tensor):
    """Mean CE over the answer tokens, and per-sample "greedy decoding reproduces the whole answer" flags.

    The LM head runs only at the positions that predict an answer token (the vocabulary projection of every prompt
    position would cost as much as a transformer layer here).
    """
    out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=pixel_values, image_grid_thw=grid_thw)
    hidden = out.last_hidden_state[:, :-1]
    target = batch["labels"][:, 1:]
    valid = target != -100
    logits = model.lm_head(hidden[valid]).float()
    gold = target[valid]
    loss = torch.nn.functional.cross_entropy(logits, gold)
    hit = torch.ones_like(target, dtype=torch.bool)
    hit[valid] = logits.argmax(-1) == gold
    return loss, hit.all(dim=1)


def dihedral(u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image under a random one of the 8 flips/rotations by 90 degrees (the answer does not change)."""
    out = np.empty_like(u8)
    for i, img in enumerate(u8):
        k = int(rng.integers(8))
        t = np.rot90(img, k % 4)
        out[i] = t[:, ::-1] if k >= 4 else t
    return out


# --------------------------------------------------------------------------------------------------------------------
# Training


class Split:
    """Records plus their images (each distinct image stored once)."""

    def __init__(self, records: list[dict[str, Any]], images: np.ndarray, index: np.ndarray) -> None:
        self.records, self.images, self.index = records, images, index

    @classmethod
    def load(cls, path: Path, root: Path) -> Split:
        records = read_records(path)
        images, index = load_images(records, root)
        return cls(records, images, index)

    def subset(self, rows: Sequence[int] | np.ndarray) -> Split:
        rows = np.asarray(rows, dtype=np.int64)
        return Split([self.records[i] for i in rows], self.images, self.index[rows])

    def __len__(self) -> int:
        return len(self.records)


def _decoy_counts(data_dir: Path, split: Split) -> np.ndarray:
    """Coloured decoys in each record's image, from the generator's ``train_eval.jsonl`` metadata."""
    meta_file = data_dir / "train_eval.jsonl"
    if not meta_file.is_file():
        raise ValueError(f"--curriculum needs {meta_file} (written by generate.py) for the decoy counts")
    counts = {}
    with open(meta_file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                counts[rec["image"]] = len(rec["meta"].get("decoys", []))
    missing = [r["image"] for r in split.records if r["image"] not in counts]
    if missing:
        raise ValueError(f"{len(missing)} training images have no metadata in {meta_file}, e.g. {missing[0]}")
    return np.array([counts[r["image"]] for r in split.records], dtype=np.int64)


def evaluate(model, enc: Encoder, patchify: Patchifier, split: Split, batch_size: int) -> dict[str, float]:
    """Accuracy overall ("all") and per task."""
    model.eval()
    hits: list[bool] = []
    with torch.inference_mode():
        for s in range(0, len(split.records), batch_size):
            recs = split.records[s : s + batch_size]
            pv, thw = patchify(split.images[split.index[s : s + batch_size]])
            b = enc.batch([r["question"] for r in recs], [r["answer"] for r in recs])
            hits += answer_forward(model, b, pv, thw)[1].tolist()
    model.train()
    out = {"all": sum(hits) / max(1, len(hits))}
    for task in sorted({r["task"] for r in split.records}):
        h = [x for x, r in zip(hits, split.records) if r["task"] == task]
        out[task] = sum(h) / len(h)
    return out


def generate_check(model, enc: Encoder, patchify: Patchifier, split: Split, n: int) -> float:
    """Greedy ``generate`` on the first ``n`` records, one at a time: share whose decoded text == the answer."""
    model.eval()
    ok = 0
    records = split.records
    with torch.inference_mode():
        for i in range(min(n, len(records))):
            pv, thw = patchify(split.images[split.index[i : i + 1]])
            ids = torch.tensor([enc.prompt_ids(records[i]["question"])])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv,
                                 mm_token_type_ids=enc.token_types(ids), image_grid_thw=thw,
                                 max_new_tokens=6, do_sample=False)
            text = enc.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
            ok += int(text == records[i]["answer"])
    model.train()
    return ok / max(1, min(n, len(records)))


def train_base(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    train_file: str | None = None,
    init_model: str | os.PathLike[str] | None = None,
    sizes: dict[str, Any] | None = None,
    arch: str = "qwen2_5_vl",
    seed: int = 0,
    steps: int = 4000,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 0.01,
    warmup: int = 50,
    val_size: int = 512,
    eval_every: int = 250,
    target_acc: float = 0.99,
    time_budget_min: float = 28.0,
    save_dtype: str = "float32",
    augment: bool = True,
    curriculum: tuple[float, float] | None = None,
    threads: int | None = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Train from scratch; returns the training summary (also written to OUT_DIR/training_info.json).

    ``train_file`` (default ``train.jsonl``, the benchmark question; ``train_mixed.jsonl`` for every task) is read
    from ``data_dir``; the
    last ``val_size`` records (whole images) are held out to pick the checkpoint and stop early at ``target_acc``.
    The saved model is scored on ``test.jsonl`` (the benchmark question) and ``test_mixed_eval.jsonl`` (every task).

    ``curriculum = (a, b)`` samples by difficulty: for the first ``a`` share of the steps only images without coloured
    decoys (the target is the only coloured object), then the number of decoys an image may hold (read from
    ``train_eval.jsonl``) rises linearly to the maximum at ``b``. The model first learns to read the target's colour,
    then to tell it from the decoys; from scratch, uniform sampling of the mixed counts stays at chance for thousands
    of steps.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from tqdm import tqdm
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from vs_vllm.testing.tiny_models import build_tiny_model

    hf_logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    # Subnormal floats (tiny Adam updates, near-zero activations) are ~100x slower on x86 CPUs.
    torch.set_flush_denormal(True)
    t_start = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cls = model_class(arch)
    sizes = {**ARCHS[arch][0], **(sizes or {})}
    if init_model is not None and arch_of(init_model) != arch:
        raise ValueError(f"--init-model {init_model} is a {arch_of(init_model)} model, not {arch}")
    train_file = train_file or "train.jsonl"

    with tempfile.TemporaryDirectory(prefix="vs-base-init-") as init:
        build_tiny_model(init, arch=arch, seed=seed, sizes=sizes)
        for name in PROCESSOR_FILES:
            if (Path(init) / name).is_file():
                shutil.copy2(Path(init) / name, out / name)
        # --init-model continues from a trained checkpoint of the same sizes (e.g. a curriculum), else random init.
        model = model_cls.from_pretrained(str(init_model or init), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(init)
    patchify = Patchifier(json.loads((out / "preprocessor_config.json").read_text()))

    train = Split.load(data_dir / train_file, data_dir)
    tests = {"test": Split.load(data_dir / "test.jsonl", data_dir)}
    if (data_dir / "test_mixed_eval.jsonl").is_file():
        tests["test_mixed"] = Split.load(data_dir / "test_mixed_eval.jsonl", data_dir)
    h, w = train.images.shape[1:3]
    patchify.check_size(h, w)
    n_img_tokens = (h // (patchify.patch * patchify.merge)) * (w // (patchify.patch * patchify.merge))
    enc = Encoder(tok, n_img_tokens)
    _check_patchify_against_processor(out, patchify, train.images[:2])

    # Hold out the records of the last images (no image in both parts).
    val_size = min(val_size, len(train) // 5)
    cut = len(train) - val_size
    while 0 < cut < len(train) and train.index[cut] == train.index[cut - 1]:
        cut -= 1
    fit, val = train.subset(range(cut)), train.subset(range(cut, len(train)))

    difficulty = _decoy_counts(data_dir, fit) if curriculum else None

    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    gen = np.random.default_rng(seed + 1000)
    order = gen.permutation(len(fit))
    pos = 0
    model.train()
    best: dict[str, Any] = {"val_acc": -1.0, "step": 0}
    best_state = None
    history = []
    ema_loss, ema_acc = None, None
    deadline = t_start + time_budget_min * 60
    stop_reason = f"{steps} steps"
    bar = tqdm(range(steps), desc="train base", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if difficulty is not None:
            a, b = curriculum
            progress_frac = min(1.0, max(0.0, (step / steps - a) / max(1e-9, b - a)))
            allowed = max(int(round(difficulty.max() * progress_frac)), int(difficulty.min()))
            eligible = np.flatnonzero(difficulty <= allowed)
            idx = np.sort(gen.choice(eligible, size=min(batch_size, len(eligible)), replace=False))
        else:
            if pos + batch_size > len(order):
                order, pos = gen.permutation(len(fit)), 0
            idx = np.sort(order[pos : pos + batch_size])
            pos += batch_size
        recs = [fit.records[i] for i in idx]
        batch_imgs = fit.images[fit.index[idx]]
        if augment:
            batch_imgs = dihedral(batch_imgs, gen)
        pv, thw = patchify(batch_imgs)
        b = enc.batch([r["question"] for r in recs], [r["answer"] for r in recs])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, correct = answer_forward(model, b, pv, thw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv, av = float(loss), float(correct.float().mean())
        ema_loss = lv if ema_loss is None else 0.95 * ema_loss + 0.05 * lv
        ema_acc = av if ema_acc is None else 0.95 * ema_acc + 0.05 * av
        bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.2f}", val=f"{best['val_acc']:.3f}", refresh=False)
        out_of_time = time.perf_counter() > deadline
        if (step + 1) % eval_every == 0 or step == steps - 1 or out_of_time:
            accs = evaluate(model, enc, patchify, val, 64)
            val_acc = accs["all"]
            elapsed = time.perf_counter() - t_start
            history.append({"step": step + 1, "loss": round(ema_loss, 4), "train_acc": round(ema_acc, 4),
                            "val": {k: round(v, 4) for k, v in accs.items()}, "elapsed_s": round(elapsed, 1)})
            per_task = " ".join(f"{k} {v:.3f}" for k, v in accs.items() if k != "all")
            bar.write(f"step {step + 1}: loss {ema_loss:.4f} train acc {ema_acc:.3f} val acc {val_acc:.3f} "
                      f"[{per_task}] ({elapsed / 60:.1f} min)")
            if val_acc > best["val_acc"]:
                best = {"val_acc": val_acc, "step": step + 1}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if val_acc >= target_acc:
                stop_reason = f"val acc {val_acc:.3f} >= target {target_acc}"
                break
            if out_of_time:
                stop_reason = f"time budget {time_budget_min} min"
                break
    bar.close()
    train_s = time.perf_counter() - t_start
    if best_state is not None:
        model.load_state_dict(best_state)

    test_acc = {name: evaluate(model, enc, patchify, split, 64) for name, split in tests.items()}
    gen_acc = generate_check(model, enc, patchify, tests["test"], 32)
    if save_dtype != "float32":
        model = model.to(getattr(torch, save_dtype))
    model.config.dtype = save_dtype
    model.save_pretrained(str(out), safe_serialization=True)
    info = {
        "data": str(data_dir),
        "arch": arch,
        "train_file": train_file,
        "init_model": str(init_model) if init_model else None,
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "seed": seed,
        "parameters": n_params,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "augment": augment,
        "curriculum": curriculum,
        "max_steps": steps,
        "best_step": best["step"],
        "stop_reason": stop_reason,
        "train_records": len(fit),
        "val_records": len(val),
        "val_acc": best["val_acc"],
        "test_acc": test_acc["test"]["all"],
        "test_records": len(tests["test"]),
        "test_acc_by_split": test_acc,
        "test_generate_acc_first32": gen_acc,
        "train_time_s": round(train_s, 1),
        "torch_threads": torch.get_num_threads(),
        "save_dtype": save_dtype,
        "machine": f"{platform.platform()}; {os.cpu_count()} CPUs; torch {torch.__version__}",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "history": history,
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    size_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    mixed = ""
    if "test_mixed" in test_acc:
        mixed = "; all tasks: " + " ".join(f"{k} {v:.3f}" for k, v in test_acc["test_mixed"].items())
    print(f"test accuracy (benchmark question, all visual tokens): {test_acc['test']['all']:.4f} on "
          f"{len(tests['test'])}{mixed}; generate check {gen_acc:.3f}; best step {best['step']}; "
          f"{train_s / 60:.1f} min; {size_mb:.1f} MB in {out}", flush=True)
    return info


def _check_patchify_against_processor(model_dir: Path, patchify: Patchifier, u8: np.ndarray) -> None:
    """The torch patchify must reproduce the served image processor's pixel values."""
    from PIL import Image
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(str(model_dir))
    ref = ip(images=[Image.fromarray(a) for a in u8], return_tensors="pt")
    mine, thw = patchify(u8)
    if ref["pixel_values"].shape != mine.shape or not torch.equal(ref["image_grid_thw"], thw):
        raise RuntimeError(f"patchify shape {tuple(mine.shape)} != processor {tuple(ref['pixel_values'].shape)}")
    err = float((ref["pixel_values"] - mine).abs().max())
    if err > 1e-4:
        raise RuntimeError(f"patchify differs from the image processor by {err}")


def _fractions(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"train_base.py: error: --curriculum expects A,B (two fractions), got {text!r}") from None
    if not 0.0 <= a < b <= 1.0:
        raise SystemExit(f"train_base.py: error: --curriculum needs 0 <= A < B <= 1, got {text!r}")
    return a, b


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="directory written by generate.py (train.jsonl, test.jsonl, images/)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--arch", choices=sorted(ARCHS), default="qwen2_5_vl",
                   help="base-model architecture (default: %(default)s; qwen3_vl needs data from generate.py --arch "
                   "qwen3_vl, 256x256 images)")
    p.add_argument("--train-file", default=None,
                   help="JSONL in --data to train on (default: train.jsonl; train_mixed.jsonl trains every task)")
    p.add_argument("--init-model", default=None, help="start from this trained model (same sizes) instead of random init")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--val-size", type=int, default=512, help="held-out train records (default: %(default)s)")
    p.add_argument("--target-acc", type=float, default=0.99, help="stop once the held-out records reach it")
    p.add_argument("--time-budget-min", type=float, default=28.0, help="stop after this many minutes (wall clock)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default="{}",
                   help="JSON overrides of the model sizes (QwenVLSizes fields; defaults: DEFAULT_SIZES or "
                   "QWEN3_VL_SIZES)")
    p.add_argument("--save-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--no-augment", action="store_true", help="no random flips / 90-degree rotations")
    p.add_argument("--curriculum", default=None, metavar="A,B",
                   help="sample by difficulty: only images without coloured decoys for the first A share of the "
                   "steps, then up to the maximum number of decoys by B (e.g. 0.2,0.7; default: uniform sampling)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default: %(default)s; more threads stall badly on a shared, busy CPU)")
    args = p.parse_args(argv)
    info = train_base(
        args.data, args.out, train_file=args.train_file, init_model=args.init_model, sizes=json.loads(args.sizes),
        arch=args.arch, seed=args.seed, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, eval_every=args.eval_every,
        val_size=args.val_size, target_acc=args.target_acc, time_budget_min=args.time_budget_min,
        save_dtype=args.save_dtype, augment=not args.no_augment, curriculum=_fractions(args.curriculum), threads=args.threads,
    )
    if info["test_acc"] < 0.9:
        print(f"warning: test accuracy {info['test_acc']:.3f} is below 0.9", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
