"""Teach the committed synthetic image model the video task (video_quality.py): fine-tune its language model on
videos from ``video_quality.py``'s generator, the vision tower and merger frozen.

Frozen vision tower and merger: the visual tokens, and so what the committed scorer reads, stay exactly as they
were; only how the LLM uses 4 scenes' worth of tokens at their video M-RoPE positions is learned. Training videos use
generator seeds the evaluation never draws (``video_quality.py`` evaluates seed 7), half static scenes with moving
decoys and half fresh scenes. Inputs go through the model's own HF processor with the metadata vLLM attaches to
``data:video/jpeg`` URLs (1 fps, frames not re-sampled), so the positions match what the server computes.

Writes a complete model directory (the base model's files, the new weights, the scorer, ``training_info.json``).

Usage:
    python benchmarks/synthetic/finetune_video.py --out benchmarks/synthetic/model_video   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BASE_DIR = HERE / "model"
TRAIN_SEED = 1000  # video_quality.py evaluates seed 7
HELDOUT_SEED = 999  # outside the training seeds (TRAIN_SEED + step, step >= 1)


def _load_video_quality():
    from vs_vllm.testing.scripts import load_script

    return load_script(HERE / "video_quality.py", "video_quality")


def _batch(proc, question: str, videos: Sequence[dict], with_answer: bool):
    prompts = []
    for v in videos:
        content = [{"type": "video"}, {"type": "text", "text": question}]
        prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                          tokenize=False)
        prompts.append(prompt + v["answer"] if with_answer else prompt)
    proc.tokenizer.padding_side = "left"  # the answer (or the next token) sits at the last position of every row
    return proc(text=prompts, videos=[v["video"].frames() for v in videos],
                video_metadata=[v["video"].metadata() for v in videos], do_sample_frames=False, padding=True,
                return_tensors="pt")


def _answer_ids(proc, answers: Sequence[str]) -> torch.Tensor:
    ids = [proc.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"every answer must be one token: {dict(zip(answers, ids))}")
    return torch.tensor([i[0] for i in ids])


@torch.no_grad()
def accuracy(model, proc, question: str, videos: Sequence[dict], batch_size: int = 16) -> float:
    right = 0
    for i in range(0, len(videos), batch_size):
        chunk = videos[i:i + batch_size]
        inputs = _batch(proc, question, chunk, with_answer=False)
        logits = model(**inputs).logits[:, -1]
        right += int((logits.argmax(-1) == _answer_ids(proc, [v["answer"] for v in chunk])).sum())
    return right / len(videos)


def finetune(out: Path, *, steps: int, batch_size: int, lr: float, heldout: int, time_budget_min: float,
             log=print) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    vq = _load_video_quality()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    proc = AutoProcessor.from_pretrained(BASE_DIR)
    model = AutoModelForImageTextToText.from_pretrained(BASE_DIR, dtype=torch.float32)
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    question, held = vq.make_videos(heldout, seed=HELDOUT_SEED, scene="static")
    model.eval()
    history = [{"step": 0, "heldout_accuracy": accuracy(model, proc, question, held)}]
    log(f"[finetune] step 0: held-out accuracy {history[-1]['heldout_accuracy']:.3f}")
    t0 = time.monotonic()
    step = 0
    for step in range(1, steps + 1):
        scene = "static" if step % 2 else "fresh"
        _, videos = vq.make_videos(batch_size, seed=TRAIN_SEED + step, scene=scene)
        inputs = _batch(proc, question, videos, with_answer=True)
        model.train()
        logits = model(**inputs).logits[:, -2]  # the position that predicts the answer token
        loss = torch.nn.functional.cross_entropy(logits, _answer_ids(proc, [v["answer"] for v in videos]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            model.eval()
            acc = accuracy(model, proc, question, held)
            history.append({"step": step, "loss": round(loss.item(), 4), "heldout_accuracy": acc,
                            "minutes": round((time.monotonic() - t0) / 60, 2)})
            log(f"[finetune] step {step}: loss {loss.item():.3f}, held-out accuracy {acc:.3f}, "
                f"{(time.monotonic() - t0) / 60:.1f} min")
        if time.monotonic() - t0 > time_budget_min * 60:
            log(f"[finetune] time budget of {time_budget_min} min reached at step {step}")
            break
    out.mkdir(parents=True, exist_ok=True)
    for f in BASE_DIR.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "training_info.json", "README.md"):
            shutil.copy2(f, out / f.name)
    model.save_pretrained(out)
    info = {"base": str(BASE_DIR.relative_to(HERE.parents[1])), "frozen": "model.visual (vision tower and merger)",
            "steps": step, "batch_size": batch_size, "lr": lr, "train_seeds": f"{TRAIN_SEED + 1}..{TRAIN_SEED + step}",
            "heldout": f"{heldout} static-scene videos, seed {HELDOUT_SEED}", "history": history,
            "command": " ".join(["python", "benchmarks/synthetic/finetune_video.py", *sys.argv[1:]])}
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "model_video", help="model directory to write")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--heldout", type=int, default=96, help="held-out videos scored every 50 steps")
    p.add_argument("--time-budget-min", type=float, default=15.0)
    args = p.parse_args(argv)
    finetune(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, heldout=args.heldout,
             time_budget_min=args.time_budget_min)
    return 0


if __name__ == "__main__":
    sys.exit(main())
