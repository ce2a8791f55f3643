"""Synthetic video quality task (does video pruning keep the answer?): the answer sits in a few tokens of one frame
pair of a video.

Each video has ``--groups`` temporal groups (two identical frames each: one Qwen2.5-VL temporal patch, so a group is
exactly one synthetic image to the vision tower) of one scene of the image benchmark: the textured background and 4
grey/white distractors stay, the 6 coloured decoys move and change colour every group, and exactly one group, at a
random place, also holds the striped target. Question: "What colour is the striped shape?", one colour word. With 4
groups, a video is 256 visual tokens of which ~4 carry the answer. ``--scene fresh`` re-draws the whole scene every
group instead (no static background: nothing for temporal redundancy to drop).

The model is the committed synthetic model (``benchmarks/synthetic/model``, Qwen2.5-VL, 1.43M parameters) and its
scorer, both trained on single images only: no video-trained base model exists (neither the base trainer nor
``vs-vllm train`` reads videos yet), so the task measures the image model zero-shot on videos, and each selection
method's share of that accuracy as the video is pruned. Every method runs through ``vs-vllm serve`` with
``video_retention_ratio``; ``visionselector`` scores all tokens of the video at once, as the original does.

Usage:
    python benchmarks/synthetic/video_quality.py                   # 200 videos -> benchmarks/results/synthetic_video_*
    python benchmarks/synthetic/video_quality.py --videos 8 --out-dir /tmp/vq   # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODEL_DIR = HERE / "model"
RATIOS = (1.0, 0.5, 0.3, 0.1, 0.05)
#: Generator seed of the videos: not one the model or its scorer were trained or tuned on (those used 0-2).
SEED = 7

__all__ = ["RATIOS", "accuracy_table", "evaluate", "make_videos", "run", "write_report"]


SCENES = ("static", "fresh")


def make_videos(n: int, *, groups: int = 4, seed: int = SEED, model_dir: Path = MODEL_DIR, quality: int = 95,
                scene: str = "static") -> tuple[str, list[dict[str, Any]]]:
    """(question, videos): each video a dict with ``video`` (a ``JpegVideo``), ``answer`` (the target's colour) and
    ``target_group`` (its temporal group), drawn with the generator settings the model was trained on. ``scene``:
    "static" (background, distractors and the target's place fixed, decoys moving) or "fresh" (every group a new
    scene)."""
    if scene not in SCENES:
        raise ValueError(f"scene {scene!r}: expected one of {', '.join(SCENES)}")
    import numpy as np

    from vs_vllm.demo import load_synthetic_generator
    from vs_vllm.testing.images import JpegVideo

    gen = load_synthetic_generator()
    cfg = gen.config_from_info(json.loads((model_dir / "dataset.json").read_text()))
    videos = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        where = int(rng.integers(groups))
        frames, answer = [], None
        for g in range(groups):
            if scene == "static":  # the same scene draws every group, the decoys from their own generator
                image, meta = gen.render_sample(np.random.default_rng([seed, i, 1_000_000]), cfg, target=g == where,
                                                decoy_rng=np.random.default_rng([seed, i, g]))
            else:
                image, meta = gen.render_sample(rng, cfg, target=g == where)
            if g == where:
                answer = meta["colour"]
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality)
            frames += [buf.getvalue()] * 2  # one temporal patch per scene
        videos.append({"video": JpegVideo(frames), "answer": answer, "target_group": where})
    return cfg.prompt, videos


def evaluate(base_url: str, question: str, videos: Sequence[dict[str, Any]], ratios: Sequence[float],
             methods: Sequence[str], *, model: str = "tiny", concurrency: int = 4,
             progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One row per (method, ratio, video): the answer, whether it is right, and the kept / total visual tokens the
    server reported. Ratio 1.0 runs once (method ``visionselector``): every method keeps everything there."""
    from vs_vllm.testing.client import chat_messages

    import urllib.request

    def one(job):
        method, ratio, i = job
        v = videos[i]
        body = {"model": model, "max_tokens": 1, "temperature": 0, "video_retention_ratio": ratio,
                "selection_method": method, "selection_seed": i,
                "messages": chat_messages([], question, videos=[v["video"]])}
        req = urllib.request.Request(base_url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as resp:
            out = json.loads(resp.read())
        text = out["choices"][0]["message"]["content"].strip().lower()
        counts = out["usage"].get("visual_tokens") or {}
        if progress:
            progress(1)
        return {"method": method, "ratio": ratio, "video": i, "target_group": v["target_group"],
                "answer": v["answer"], "output": text, "correct": int(text == v["answer"]),
                "kept": counts.get("kept"), "total": counts.get("total")}

    jobs = [(m, r, i) for r in ratios for m in (["visionselector"] if r == 1.0 else methods)
            for i in range(len(videos))]
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, jobs))


def accuracy_table(rows: Sequence[dict[str, Any]]) -> dict[str, dict[float, float]]:
    """method -> ratio -> accuracy (the ratio-1.0 run is every method's)."""
    acc: dict[str, dict[float, list[int]]] = {}
    for r in rows:
        acc.setdefault(r["method"], {}).setdefault(r["ratio"], []).append(r["correct"])
    full = acc.get("visionselector", {}).get(1.0, [])
    table = {m: {ratio: sum(v) / len(v) for ratio, v in by.items()} for m, by in acc.items()}
    for m in table:
        if full:
            table[m][1.0] = sum(full) / len(full)
    return table


def write_report(out_dir: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any], stem: str = "synthetic_video"):
    """``{stem}_accuracy.{csv,md,png}`` in ``out_dir``; returns the markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{stem}_accuracy.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    table = accuracy_table(rows)
    ratios = sorted({r["ratio"] for r in rows}, reverse=True)
    methods = sorted(table, key=lambda m: -min(table[m].values()))
    tokens = {r["ratio"]: r["kept"] for r in rows}
    total = rows[0]["total"]
    n = len({r["video"] for r in rows})
    by_group: dict[int, list[int]] = {}
    for r in rows:
        if r["ratio"] == 1.0:
            by_group.setdefault(r["target_group"], []).append(r["correct"])
    lines = [
        "# Synthetic video task: accuracy of each selection method through vs-vllm serve", "",
        f"- run {meta['started']}, {meta['machine']}; command `{meta['command']}`",
        f"- {n} videos (generator seed {meta['seed']}), {meta['groups']} temporal groups of 2 identical frames, "
        f"{meta['size']}x{meta['size']} px, JPEG quality {meta['quality']}: {total} visual tokens per video; the striped "
        "target is in one group; " + ("background and distractors are the same in every group, the 6 coloured decoys "
                                      "move and change colour" if meta["scene"] == "static" else
                                      "every group is a new scene (background, distractors, decoys)") + ". Chance: 1/8.",
        f"- model: {meta['model']}; `video_retention_ratio` per request, greedy, one token.", "",
        "| method | " + " | ".join(f"r={r:g} ({tokens[r]} tok)" for r in ratios) + " |",
        "|---|" + "---:|" * len(ratios),
    ]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{table[m].get(r, float('nan')):.3f}" for r in ratios) + " |")
    lines += ["", "Accuracy with every visual token, by the group that holds the target: " + ", ".join(
        f"group {g}: {sum(v) / len(v):.2f} ({len(v)})" for g, v in sorted(by_group.items())), ""]
    (out_dir / f"{stem}_accuracy.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in methods:
            ax.plot(ratios, [table[m].get(r) for r in ratios], marker="o", label=m)
        ax.axhline(1 / 8, color="grey", linestyle=":", label="chance")
        ax.set_xscale("log")
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.set_xlabel("video_retention_ratio")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Synthetic video task ({n} videos, {total} tokens each)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}_accuracy.png", dpi=110)
        plt.close(fig)
    except ImportError:  # matplotlib is the bench extra
        pass
    return out_dir / f"{stem}_accuracy.md"


def model_description(model_dir: Path) -> str:
    """What the report says about the served model: the committed image model, or a video fine-tune of it."""
    info_path = model_dir / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if "frozen" in info:  # finetune_video.py
        return (f"`{model_dir.name}`: the committed synthetic image model with its language model fine-tuned on "
                f"videos ({info['steps']} steps of {info['batch_size']}, {info['frozen']} frozen, so the committed "
                "scorer reads the same visual tokens; benchmarks/synthetic/finetune_video.py), and that scorer")
    return ("the committed synthetic Qwen2.5-VL and its scorer (benchmarks/synthetic/model), trained on single images "
            "only, so this is the image model zero-shot on videos")


def run(argv: Sequence[str] | None = None) -> int:
    from vs_vllm.benchmarking.prefill import machine_info
    from vs_vllm.selection.methods import list_methods
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=200, help="videos to draw (default: %(default)s)")
    p.add_argument("--groups", type=int, default=4, help="temporal groups per video (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="generator seed (default: %(default)s)")
    p.add_argument("--scene", choices=SCENES, default="static",
                   help="static: background and distractors fixed, decoys moving; fresh: a new scene every group "
                   "(results synthetic_video_fresh_*) (default: %(default)s)")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS), help="video retention ratios")
    p.add_argument("--methods", default=",".join(list_methods()), help="selection methods (default: all)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    p.add_argument("--model-dir", type=Path, default=MODEL_DIR,
                   help="model (with its scorer.safetensors) to serve (default: the committed image model)")
    p.add_argument("--stem", default=None, help="results file stem (default: synthetic_video, synthetic_video_fresh "
                   "with --scene fresh, synthetic_video_<model dir name> for another model)")
    p.add_argument("--base-url", default=None, help="a running vs-vllm serve of --model-dir")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    question, videos = make_videos(args.videos, groups=args.groups, seed=args.seed, scene=args.scene,
                                   model_dir=args.model_dir)
    server = None
    base_url = args.base_url
    if base_url is None:
        server = VLLMServer(args.model_dir, ["--scorer", str(args.model_dir / "scorer.safetensors"),
                                        *tiny_serve_args(max_images=1, max_videos=1)],
                            command=[sys.executable, "-m", "vs_vllm", "serve"])
        print(f"[video-quality] starting vs-vllm serve of {args.model_dir} (log {server.log_path}) ...", flush=True)
        server.start()
        base_url = server.base_url
    started = dt.datetime.now().isoformat(timespec="seconds")
    try:
        from tqdm import tqdm

        n_jobs = len(videos) * sum(1 if r == 1.0 else len(methods) for r in ratios)
        with tqdm(total=n_jobs, desc="requests", unit="req") as bar:
            rows = evaluate(base_url, question, videos, ratios, methods, concurrency=args.concurrency,
                            progress=bar.update)
    finally:
        if server is not None:
            server.stop()
    m = machine_info()
    gen_info = json.loads((args.model_dir / "dataset.json").read_text())
    meta = {"started": started, "seed": args.seed, "groups": args.groups, "quality": 95, "scene": args.scene,
            "model": model_description(args.model_dir),
            "size": gen_info.get("config", gen_info).get("image_size", 224),
            "machine": f"{m.get('cpu')}, {m.get('logical_cpus')} logical CPUs, {m.get('mem_gib')} GiB",
            "command": shlex.join(["python", "benchmarks/synthetic/video_quality.py", *(argv or sys.argv[1:])])}
    stem = args.stem or ("synthetic_video" + ("" if args.scene == "static" else "_fresh") +
                         ("" if args.model_dir.resolve() == MODEL_DIR.resolve() else f"_{args.model_dir.name}"))
    path = write_report(args.out_dir, rows, meta, stem)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run())
