"""The one test-set run of ``visionselector_mmr``'s default lambda, through ``vs-vllm serve`` (the committed tables'
path), after the default was chosen on validation sets (``mmr_default_validation.py``,
``benchmarks/results/mmr_default_validation.md``).

Tasks, each on its committed test set: the Qwen2.5-VL and the Qwen3-VL image models (generator seed 0, the first 500
test images: ``generate.py --train 0 --test 500 --seed 0``, byte-identical to the committed runs' test split) and the
video task (``video_quality.py``: 300 videos of seed 7, the video model). Per task one server with no lambda set,
so every ``visionselector_mmr`` request gets the default rule, compared with ``visionselector`` at the committed
ratios; for the image tasks also a server started with ``--selection-lambda 0.5`` (an explicit lambda: the previous
default, which must reproduce the committed ``visionselector_mmr`` row). Writes
``benchmarks/results/mmr_default_test.{md,csv}``; nothing here chooses anything.

Usage:
    python benchmarks/synthetic/mmr_default_test.py                # ~15 min on 2 cores
    python benchmarks/synthetic/mmr_default_test.py --limit 20 --videos 12 --video-seed 23 --data-root DIR \\
        --work-dir /tmp/t --out-dir /tmp/t   # smoke run on validation data (DIR/<arch>/test_eval.jsonl, seed 13)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IMAGE_RATIOS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)
VIDEO_RATIOS = (1.0, 0.5, 0.3, 0.1, 0.05)
SERVED = "tiny"
#: task -> (label, model dir, generator arch, committed results file of the earlier default (lambda 0.5))
IMAGE_TASKS = {
    "qwen2_5_vl_images": ("Qwen2.5-VL, images", HERE / "model", "qwen2_5_vl", "synthetic_accuracy.csv"),
    "qwen3_vl_images": ("Qwen3-VL, images", HERE / "model_qwen3_vl", "qwen3_vl", "synthetic_qwen3_vl_accuracy.csv"),
}
VIDEO_TASK = ("video", "Qwen2.5-VL video model, videos", HERE / "model_video",
              "synthetic_video_model_video_accuracy.csv")


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def test_data(arch: str, data_root: Path) -> Path:
    """The committed test split (seed 0) of ``arch``'s geometry: its test_eval.jsonl, generated when absent."""
    out = data_root / arch
    if not (out / "test_eval.jsonl").is_file():
        cmd = [sys.executable, str(HERE / "generate.py"), str(out), "--train", "0", "--test", "500", "--seed", "0",
               "--tasks", ""]
        if arch != "qwen2_5_vl":
            cmd += ["--arch", arch]
        subprocess.run(cmd, check=True, env=_env())
    return out / "test_eval.jsonl"


def eval_images(model_dir: Path, data: Path, out_dir: Path, name: str, methods: Sequence[str],
                ratios: Sequence[float], limit: int | None, serve_extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``vs-vllm eval`` against one ``vs-vllm serve`` of ``model_dir`` (stopped by its PID afterwards); its CSV rows."""
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    args = ["--scorer", str(model_dir / "scorer.safetensors"), *serve_extra,
            *tiny_serve_args(max_images=1, served_model_name=SERVED)]
    with VLLMServer(model_dir, args, command=[sys.executable, "-m", "vs_vllm", "serve"],
                    env={"OMP_NUM_THREADS": "1"}) as server:
        cmd = [sys.executable, "-m", "vs_vllm", "eval", "--base-url", server.base_url, "--model", SERVED, "--data",
               str(data), "--ratios", ",".join(f"{r:g}" for r in ratios), "--methods", ",".join(methods),
               "--concurrency", "4", "--out-dir", str(out_dir), "--name", name, "--max-tokens", "8"]
        if limit:
            cmd += ["--limit", str(limit)]
        print(f"[mmr-test] {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, env=_env(), cwd=REPO)
    with open(out_dir / f"{name}_accuracy.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def committed(name: str) -> dict[tuple[str, float], float]:
    """(method, ratio) -> accuracy of a committed results CSV (image eval CSVs: column em; video: per video)."""
    rows = list(csv.DictReader(open(REPO / "benchmarks" / "results" / name, encoding="utf-8")))
    if rows and "em" in rows[0]:
        return {(r["method"], float(r["ratio"])): float(r["em"]) for r in rows}
    from vs_vllm.testing.scripts import load_script

    vq = load_script(HERE / "video_quality.py", "video_quality")
    table = vq.accuracy_table([{**r, "ratio": float(r["ratio"]), "correct": int(r["correct"])} for r in rows])
    return {(m, r): a for m, by in table.items() for r, a in by.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="first N test images per image model (default: all 500)")
    p.add_argument("--videos", type=int, default=300, help="videos (default: %(default)s, as committed)")
    p.add_argument("--video-seed", type=int, default=7, help="video generator seed (default: %(default)s, the test "
                   "set; another seed only to smoke-test this script)")
    p.add_argument("--data-root", type=Path, default=HERE / "artifacts" / "mmr_default_test")
    p.add_argument("--work-dir", type=Path, default=HERE / "artifacts" / "mmr_default_test" / "runs")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--tasks", default="qwen2_5_vl_images,qwen3_vl_images,video")
    p.add_argument("--reuse", action="store_true",
                   help="read an image run's results from --work-dir when they are there instead of running it again "
                   "(to finish a run that stopped part-way without repeating the finished parts)")
    args = p.parse_args(argv)
    from vs_vllm.benchmarking.paths import portable_text
    from vs_vllm.evaluation.cli import machine_info
    from vs_vllm.selection.mmr import DEFAULT_LAMBDA, DEFAULT_TOPK_MAX_K
    from vs_vllm.testing.scripts import load_script

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    tasks = args.tasks.split(",")
    rows: list[dict[str, Any]] = []  # task, method, ratio, n, accuracy, tokens
    for task, (_, model_dir, arch, _) in IMAGE_TASKS.items():
        if task not in tasks:
            continue
        data = test_data(arch, args.data_root)
        runs = [("default", ["visionselector", "visionselector_mmr"], IMAGE_RATIOS, ()),
                ("explicit_0.5", ["visionselector_mmr"], IMAGE_RATIOS[1:], ("--selection-lambda", "0.5"))]
        for variant, methods, ratios, extra in runs:
            done = args.work_dir / f"{task}_{variant}_accuracy.csv"
            if args.reuse and done.is_file():
                with open(done, encoding="utf-8") as f:
                    results = list(csv.DictReader(f))
            else:
                results = eval_images(model_dir, data, args.work_dir, f"{task}_{variant}", methods, ratios,
                                      args.limit, extra)
            for r in results:
                method = r["method"] if variant == "default" else "visionselector_mmr (explicit 0.5)"
                rows.append({"task": task, "method": method, "ratio": float(r["ratio"]), "n": int(r["n"]),
                             "accuracy": float(r["em"]), "tokens": float(r["visual_tokens_kept"] or "nan")})
    if VIDEO_TASK[0] in tasks:
        vq = load_script(HERE / "video_quality.py", "video_quality")
        stem = "video_default"
        vq.run(["--videos", str(args.videos), "--seed", str(args.video_seed), "--model-dir", str(VIDEO_TASK[2]), "--methods",
                "visionselector,visionselector_mmr", "--ratios", ",".join(f"{r:g}" for r in VIDEO_RATIOS),
                "--out-dir", str(args.work_dir), "--stem", stem])
        with open(args.work_dir / f"{stem}_accuracy.csv", encoding="utf-8") as f:
            vrows = [{**r, "ratio": float(r["ratio"]), "correct": int(r["correct"])} for r in csv.DictReader(f)]
        table = vq.accuracy_table(vrows)
        tokens = {r["ratio"]: float(r["kept"]) for r in vrows}
        for method, by in table.items():
            for ratio, acc in by.items():
                rows.append({"task": "video", "method": method, "ratio": ratio, "n": args.videos, "accuracy": acc,
                             "tokens": tokens.get(ratio, float("nan"))})
    meta = {"started": started, "machine": machine_info(),
            "command": portable_text(shlex.join(["python", "benchmarks/synthetic/mmr_default_test.py",
                                                 *(argv if argv is not None else sys.argv[1:])])),
            "rule": f"lambda 1 for K <= {DEFAULT_TOPK_MAX_K}, else {DEFAULT_LAMBDA}"}
    path = write_report(args.out_dir, rows, meta)
    print(path.read_text())
    return 0


def write_report(out_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "mmr_default_test.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["task", "method", "ratio", "n", "accuracy", "tokens"], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "accuracy": f"{r['accuracy']:.4f}", "tokens": f"{r['tokens']:.1f}"})
    labels = {t: v[0] for t, v in IMAGE_TASKS.items()} | {VIDEO_TASK[0]: VIDEO_TASK[1]}
    files = {t: v[3] for t, v in IMAGE_TASKS.items()} | {VIDEO_TASK[0]: VIDEO_TASK[3]}
    lines = [
        "# `visionselector_mmr` default lambda: the test run",
        "",
        f"- default under test: {meta['rule']} (K = the image's or video's token budget; "
        "`vs_vllm.selection.mmr.default_lambda`), chosen on validation sets only "
        "([`mmr_default_validation.md`](mmr_default_validation.md)) before this run; run once, nothing re-tuned "
        "after it.",
        f"- run {meta['started']}, {meta['machine']}; command `{meta['command']}`",
        "- path: `vs-vllm serve` (CPU, `--kv-cache-memory-bytes` 256 MiB, fp32, eager) + `vs-vllm eval` for the "
        "images, `video_quality.py` for the videos, as the committed tables; requests carry no `selection_lambda`, "
        "so `visionselector_mmr` gets the default rule. `mmr (explicit 0.5)`: a server started with "
        "`--selection-lambda 0.5`, i.e. the earlier default given explicitly (it must reproduce the committed row).",
        "- test sets: images generator seed 0, the 500 test images of each model (`synthetic_accuracy.md`, "
        "`synthetic_qwen3_vl_accuracy.md`); videos seed 7, 300 videos, the video model "
        "(`synthetic_video_model_video_accuracy.md`).",
        "",
    ]
    verdict: list[str] = []
    for task in dict.fromkeys(r["task"] for r in rows):
        cell = {(r["method"], r["ratio"]): r for r in rows if r["task"] == task}
        ratios = sorted({ratio for (m, ratio) in cell if m == "visionselector"}, reverse=True)
        old = committed(files[task])
        n = cell[("visionselector", ratios[-1])]["n"]
        lines += [f"## {labels[task]} ({n} test samples)", "",
                  "| method | " + " | ".join(f"r={r:g} (~{cell[('visionselector', r)]['tokens']:.0f} tok)"
                                             for r in ratios) + " |",
                  "|---|" + "---:|" * len(ratios)]
        for method in dict.fromkeys(m for (m, _) in cell):
            label = "visionselector_mmr (default)" if method == "visionselector_mmr" else method
            values = []
            for r in ratios:
                row = cell.get((method, r)) or (cell.get(("visionselector", r)) if r == 1.0 else None)
                if row is None:
                    values.append("")
                    continue
                gap = row["accuracy"] - cell[("visionselector", r)]["accuracy"]
                values.append(f"{row['accuracy']:.3f}" + ("" if method == "visionselector" or r == 1.0
                                                           else f" ({gap * 100:+.1f})"))
            lines.append(f"| {label} | " + " | ".join(values) + " |")
        lines.append("| *committed: visionselector / mmr at lambda 0.5* | " + " | ".join(
            f"{old.get(('visionselector', r), float('nan')):.3f} / {old.get(('visionselector_mmr', r), float('nan')):.3f}"
            for r in ratios) + " |")
        lines.append("")
        gaps = {r: cell[("visionselector_mmr", r)]["accuracy"] - cell[("visionselector", r)]["accuracy"]
                for r in ratios if r < 1.0 and ("visionselector_mmr", r) in cell}
        worst = min(gaps, key=lambda r: gaps[r])
        verdict.append(f"{labels[task]}: worst gap {gaps[worst] * 100:+.1f} points (r={worst:g}); at r=0.1 "
                       f"{gaps.get(0.1, float('nan')) * 100:+.1f}")
    lines += ["Cells: accuracy (exact match), in brackets points against `visionselector` at the same ratio.", "",
              "## Goal", "", *(f"- {v}" for v in verdict), ""]
    path = out_dir / "mmr_default_test.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
