"""The synthetic pruning benchmark, end to end, through the vLLM plugin server.

1. generate the data (``generate.py``; reused when ``dataset.json`` matches);
2. train the base Qwen2.5-VL (or Qwen3-VL) from scratch (``train_base.py``; reused when the model directory exists);
3. train the VisionSelector scorer with ``vs-vllm train`` on the benchmark question (reused when present);
4. measure, offline in transformers, how often each method keeps at least one target token ("target kept");
5. serve the base model with ``vs-vllm serve --scorer`` and run ``vs-vllm eval`` over every registered method at
   ratios {1.0, 0.5, 0.3, 0.2, 0.1, 0.05};
6. write ``synthetic_accuracy.{csv,md,png}``, ``synthetic_predictions.jsonl`` and ``synthetic_target_kept.csv`` to the
   results directory, with the machine and every command line.

``--quick`` runs the same pipeline on a few images with a few training steps (a smoke test, about a minute): its
artefacts and results go to ``artifacts/quick/``, so it never overwrites the real ones.

``--arch qwen3_vl`` builds the base model as Qwen3-VL instead (16-px patches, so the data is drawn at 256x256 for the
same 8x8 LLM tokens, see generate.py's ARCH_PRESETS): artefacts under ``artifacts/qwen3_vl/`` (``--quick``:
``artifacts/qwen3_vl/quick/``), results ``synthetic_qwen3_vl_*`` next to the Qwen2.5-VL ones.

Usage:
    python benchmarks/synthetic/run_benchmark.py                  # full (reuses artefacts that exist)
    python benchmarks/synthetic/run_benchmark.py --quick          # smoke test
    python benchmarks/synthetic/run_benchmark.py --arch qwen3_vl  # the same with a Qwen3-VL base model
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vs_vllm.benchmarking.paths import portable_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RATIOS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)
#: The base model learns the benchmark question. (Adding the decoy questions of train_mixed.jsonl kept both at chance
#: for 1750 steps from scratch: a 1.4M-parameter model has to learn to read the target before it can learn more.)
BASE_TRAIN_FILE = "train.jsonl"
#: train_base.py arguments per stage (stage i > 0 would start from stage i - 1), 22 min at most on 2 cores: images
#: without coloured decoys for the first quarter of the steps, all decoy counts from 75% on (uniform sampling stays at
#: chance for thousands of steps), lr 1e-3 (2e-3 stalled near chance on the decoy-free images), stop at 0.99 held-out
#: accuracy.
BASE_STAGES = (
    ("--curriculum", "0.25,0.75", "--steps", "4000", "--lr", "1e-3", "--time-budget-min", "22"),
)
#: `vs-vllm train` arguments of the Qwen2.5-VL scorer. Picked on a separate validation set (generator seed 2, 300
#: images) by how often the target is kept, among ratio 0.2 / 0.1 / 0.05, lr 1e-4 / 3e-4 and lambda 0.1->2.0 / 0->0.5
#: (see the report): the training ratio 0.05 teaches the ranking that matters at small budgets.
SCORER_ARGS = ("--ratio", "0.05", "--max-steps", "1200", "--batch-size", "8", "--lr", "3e-4", "--lambda-start", "0.1",
               "--lambda-end", "2.0")
#: The Qwen3-VL scorer: the same objective, twice the steps, on the train images holding >= 4 coloured decoys (the
#: test images hold 6). Picked the same way (seed-2 validation set, target kept at ratio 0.1 / 0.05): the Qwen2.5-VL
#: recipe 0.92 / 0.72; 2400 steps 0.94 / 0.78; >= 4 decoys 0.93 / 0.76; both 0.95 / 0.84. lr 1e-3 collapsed in 2 of 4
#: runs (the BCE term locks in an early wrong ranking: 0.60 / 0.59), training ratio 0.1 or 0.03 was worse
#: (benchmarks/results/synthetic_qwen3_vl_accuracy.md). The decoy-free images teach "coloured", not "striped".
QWEN3_VL_SCORER_ARGS = ("--ratio", "0.05", "--max-steps", "2400", "--batch-size", "8", "--lr", "3e-4",
                        "--lambda-start", "0.1", "--lambda-end", "2.0")
#: Per base-model architecture: the base-model stages, the scorer's arguments and training images (min coloured
#: decoys; None = every train image), the artefact sub-directory, the results' name and a label. Qwen3-VL's base model
#: uses the Qwen2.5-VL recipe unchanged (same curriculum, lr and budget).
ARCHS: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {"stages": BASE_STAGES, "scorer_args": SCORER_ARGS, "scorer_min_decoys": None, "subdir": "",
                   "name": "synthetic", "label": "Qwen2.5-VL"},
    "qwen3_vl": {"stages": BASE_STAGES, "scorer_args": QWEN3_VL_SCORER_ARGS, "scorer_min_decoys": 4,
                 "subdir": "qwen3_vl", "name": "synthetic_qwen3_vl", "label": "Qwen3-VL"},
}
SERVED_NAME = "tiny"


class PipelineError(RuntimeError):
    """A step failed; the message says which and what to do."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per process: on a small, shared CPU, multi-threaded torch ops stall waiting for descheduled threads.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _run(cmd: list[str], log: list[dict[str, Any]], what: str, *, cwd: Path = REPO) -> float:
    """Run ``cmd`` (output streams through), record it, raise PipelineError on failure; returns seconds."""
    print(f"\n[benchmark] {what}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=cwd, env=_env())
    seconds = time.perf_counter() - t0
    log.append({"step": what, "command": portable_text(shlex.join(cmd)), "seconds": round(seconds, 1), "rc": rc})
    if rc != 0:
        raise PipelineError(f"{what} failed (exit code {rc}): {shlex.join(cmd)}")
    return seconds


# --------------------------------------------------------------------------------------------------------------------
# Steps


def _generator():
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import generate

    return generate


def _geometry(arch: str) -> dict[str, Any]:
    """The generator's image geometry for ``arch``: image size, token size and object sizes (JSON-style lists)."""
    gen = _generator()
    geo = {k: getattr(gen.SyntheticConfig, k) for k in ("image_size", "token_px", "object_size", "stripe_period",
                                                        "decoy_size", "distractor_size")}
    geo.update(gen.ARCH_PRESETS[arch])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in geo.items()}


def step_data(data_dir: Path, n_train: int, n_test: int, seed: int, log: list,
              arch: str = "qwen2_5_vl") -> tuple[Path, bool]:
    """(data directory, whether it was (re)generated now)."""
    info_path = data_dir / "dataset.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        # Files from before token_px existed were drawn with 28-px tokens.
        have = {"token_px": _generator().TOKEN_PX, **info.get("config", {})}
        same_geometry = all(have.get(k) == v for k, v in _geometry(arch).items())
        if same_geometry and (info.get("version"), info.get("seed"), info.get("n_train"), info.get("n_test")) == (
                _generator().GENERATOR_VERSION, seed, n_train, n_test):
            print(f"[benchmark] reusing data in {data_dir}", flush=True)
            log.append({"step": "data", "command": f"(reused {portable_text(data_dir)})", "seconds": 0, "rc": 0})
            return data_dir, False
        print(f"[benchmark] {data_dir} holds other data (generator version {info.get('version', 1)}, seed "
              f"{info.get('seed')}, {info.get('n_train')}/{info.get('n_test')} images, "
              f"{info.get('config', {}).get('image_size')} px): regenerating", flush=True)
        shutil.rmtree(data_dir)
    # The default arch keeps its original command line (no --arch) so its recorded commands do not change.
    arch_args = ["--arch", arch] if arch != "qwen2_5_vl" else []
    _run([sys.executable, str(HERE / "generate.py"), str(data_dir), "--train", str(n_train), "--test", str(n_test),
          "--seed", str(seed), *arch_args], log, "generate data")
    return data_dir, True


def _stage_dir(model_dir: Path, i: int, n_stages: int) -> Path:
    """Where stage ``i`` of ``n_stages`` writes: the last one is the base model itself."""
    return model_dir if i == n_stages - 1 else model_dir.with_name(f"{model_dir.name}-stage{i + 1}")


def _model_arch(model_dir: Path) -> str | None:
    try:
        return json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def step_base(model_dir: Path, data_dir: Path, log: list, *, retrain: bool,
              stages: Sequence[Sequence[str]], arch: str = "qwen2_5_vl") -> dict:
    """Train the base model in ``stages`` (train_base.py arguments each; stage i > 0 starts from stage i - 1)."""
    info_path = model_dir / "training_info.json"
    have = info_path.is_file() and (model_dir / "model.safetensors").is_file()
    if have and not retrain and _model_arch(model_dir) != arch:
        print(f"[benchmark] {model_dir} holds a {_model_arch(model_dir)} model, not {arch}: retraining", flush=True)
        retrain = True
    if have and not retrain:
        print(f"[benchmark] reusing the base model in {model_dir}", flush=True)
        # Say how the reused model was made: each stage's own command line and time, from its training_info.json.
        for i in range(len(stages)):
            d = _stage_dir(model_dir, i, len(stages))
            info = json.loads((d / "training_info.json").read_text())
            log.append({"step": f"train base, stage {i + 1} (reused {d.name})",
                        "command": "python benchmarks/synthetic/" + info.get("command", "?"),
                        "seconds": round(info.get("train_time_s", 0), 1), "rc": 0})
        return json.loads(info_path.read_text())
    previous: Path | None = None
    seconds = 0.0
    for i, extra in enumerate(stages):
        out = _stage_dir(model_dir, i, len(stages))
        init = ["--init-model", str(previous)] if previous is not None else []
        arch_args = ["--arch", arch] if arch != "qwen2_5_vl" else []
        seconds += _run([sys.executable, str(HERE / "train_base.py"), "--data", str(data_dir), "--out", str(out),
                         "--train-file", BASE_TRAIN_FILE, *arch_args, *init, *extra], log,
                        f"train base, stage {i + 1}")
        previous = out
    info = json.loads(info_path.read_text())
    info["all_stages_s"] = round(seconds, 1)
    return info


def scorer_data(data_dir: Path, min_decoys: int | None) -> Path:
    """The scorer's training file: ``train.jsonl``, or (``min_decoys``) ``train_decoys{N}.jsonl`` with the LLaVA
    records of the train images holding at least ``min_decoys`` coloured decoys (from ``train_eval.jsonl``'s
    metadata; rewritten each run, deterministic)."""
    if min_decoys is None:
        return data_dir / "train.jsonl"
    out = data_dir / f"train_decoys{min_decoys}.jsonl"
    lines = []
    for line in (data_dir / "train_eval.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if len(rec["meta"].get("decoys", [])) >= min_decoys:
            conv = [{"from": "human", "value": "<image>\n" + rec["question"]}, {"from": "gpt", "value": rec["answer"]}]
            lines.append(json.dumps({"id": rec["id"], "image": rec["image"], "conversations": conv}))
    if not lines:
        raise PipelineError(f"no train image in {data_dir} holds >= {min_decoys} coloured decoys")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def train_cli_available() -> bool:
    proc = subprocess.run([sys.executable, "-m", "vs_vllm", "train", "--help"], capture_output=True, text=True,
                          env=_env(), cwd=REPO)
    return proc.returncode == 0


def step_scorer(scorer_dir: Path, model_dir: Path, data_file: Path, log: list, *, retrain: bool,
                extra: Sequence[str]) -> Path:
    scorer = scorer_dir / "scorer.safetensors"
    if scorer.is_file() and not retrain:
        print(f"[benchmark] reusing the scorer {scorer}", flush=True)
        log.append({"step": "train scorer", "command": f"(reused {portable_text(scorer)})", "seconds": 0, "rc": 0})
        return scorer
    if not train_cli_available():
        raise PipelineError("`vs-vllm train` is not available in this environment (vs_vllm.training missing?); "
                            "train a scorer elsewhere and pass --scorer PATH, or install the training extra")
    if scorer_dir.exists() and retrain:
        shutil.rmtree(scorer_dir)
    _run([sys.executable, "-m", "vs_vllm", "train", "--model", str(model_dir), "--data", str(data_file),
          "--output-dir", str(scorer_dir), *extra], log, "train scorer")
    if not scorer.is_file():
        raise PipelineError(f"`vs-vllm train` finished but wrote no {scorer}")
    return scorer


def target_kept(model_dir: Path, data_file: Path, scorer: Path | None, methods: Sequence[str],
                ratios: Sequence[float], limit: int | None) -> list[dict[str, Any]]:
    """Share of images where each method keeps >= 1 of the tokens covering the target (merger outputs from the HF
    model, the methods from vs_vllm.selection), plus the target's mean rank by embedding norm."""
    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from train_base import Patchifier, arch_of, load_images, model_class

    from vs_vllm.selection.budget import keep_count
    from vs_vllm.selection.checkpoint import load_scorer
    from vs_vllm.selection.methods import needs_scorer, select

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    recs = [json.loads(line) for line in data_file.read_text().splitlines() if line.strip()][:limit]
    # The class of the saved model (Qwen2.5-VL or Qwen3-VL); both vision towers return the merged LLM-token
    # embeddings (what the selection methods see) as pooler_output, Qwen3-VL's DeepStack features beside them.
    model = model_class(arch_of(model_dir)).from_pretrained(str(model_dir), dtype=torch.float32).eval()
    patchify = Patchifier(json.loads((model_dir / "preprocessor_config.json").read_text()))
    images, index = load_images(recs, data_file.parent)
    sc = load_scorer(scorer) if scorer is not None else None
    embs = []
    with torch.inference_mode():
        for s in range(0, len(recs), 32):
            pv, thw = patchify(images[index[s : s + 32]])
            out = model.model.visual(pv, grid_thw=thw)
            e = getattr(out, "pooler_output", None)
            e = out if e is None else e
            n_tok = int(thw[0].prod()) // 4
            embs += list(e.float().reshape(-1, n_tok, e.shape[-1]))
    grid = (1, *(g // 2 for g in thw[0, 1:].tolist()))
    rows = []
    norm_rank = []
    for r, e in zip(recs, embs):
        order = e.norm(dim=-1).argsort(descending=True).tolist()
        norm_rank.append(min(order.index(t) for t in r["meta"]["target_tokens"]))
    for method in methods:
        if needs_scorer(method) and sc is None:
            continue
        for ratio in ratios:
            hits = 0
            for r, e in zip(recs, embs):
                k = keep_count(e.shape[0], ratio)
                kept = set(select(method, e, grid, k, scorer=sc).tolist())
                hits += bool(kept & set(r["meta"]["target_tokens"]))
            rows.append({"method": method, "ratio": ratio, "n": len(recs), "target_kept": hits / len(recs)})
    rows.append({"method": "(target norm rank, mean)", "ratio": "", "n": len(recs),
                 "target_kept": float(np.mean(norm_rank))})
    return rows


def write_target_kept(rows: list[dict[str, Any]], path: Path) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["method", "ratio", "n", "target_kept"], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "target_kept": f"{r['target_kept']:.4f}"})
    ratios = sorted({r["ratio"] for r in rows if r["ratio"] != ""}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["ratio"] != ""))
    cell = {(r["method"], r["ratio"]): r["target_kept"] for r in rows}
    lines = ["| method | " + " | ".join(f"r={x:g}" for x in ratios) + " |", "|---|" + "---:|" * len(ratios)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{cell[(m, x)]:.3f}" if (m, x) in cell else "" for x in ratios) + " |")
    extra = [r for r in rows if r["ratio"] == ""]
    if extra:
        lines.append("")
        lines.append(f"Mean rank of the best target token by embedding L2 norm (0 = the largest-norm token): "
                     f"{extra[0]['target_kept']:.2f} over {extra[0]['n']} images.")
    return "\n".join(lines)


def _data_description(data_dir: Path) -> str:
    info = json.loads((data_dir / "dataset.json").read_text())
    cfg = info["config"]
    if cfg.get("target_style", "solid") == "striped":
        scene = (f"one colour/white striped target among {cfg['coloured_decoys']} solid coloured decoys and "
                 f"{cfg['distractor_count']} grey/white distractors")
    else:
        scene = "one solid coloured target among grey/white distractors"
    return f"{scene}, question \"{info.get('question', '?')}\" (generator version {info.get('version', 1)})"


def machine_info() -> str:
    from vs_vllm.evaluation.cli import machine_info as mi

    try:
        import torch

        dev = "CUDA: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # pragma: no cover
        dev = "?"
    return f"{mi()}, {dev}"


def step_eval(model_dir: Path, scorer: Path, data_file: Path, results: Path, log: list, *, methods: Sequence[str],
              ratios: Sequence[float], limit: int | None, concurrency: int, name: str,
              server_log: Path, label: str = "Qwen2.5-VL") -> dict[str, Path]:
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    args = ["--scorer", str(scorer), *tiny_serve_args(max_images=1, served_model_name=SERVED_NAME)]
    server = VLLMServer(model_dir, args, command=[sys.executable, "-m", "vs_vllm", "serve"],
                        log_path=server_log, env={"OMP_NUM_THREADS": "1"})
    serve_cmd = portable_text(shlex.join([*server.command, str(model_dir), *args]))
    print(f"\n[benchmark] serve: {serve_cmd}", flush=True)
    t0 = time.perf_counter()
    with server:
        log.append({"step": "serve", "command": serve_cmd, "seconds": round(time.perf_counter() - t0, 1), "rc": 0})
        cmd = [sys.executable, "-m", "vs_vllm", "eval", "--base-url", server.base_url, "--model", SERVED_NAME,
               "--data", str(data_file), "--ratios", ",".join(f"{r:g}" for r in ratios), "--methods",
               ",".join(methods), "--concurrency", str(concurrency), "--out-dir", str(results), "--name", name,
               "--max-tokens", "8", "--title", "Synthetic colour task: accuracy vs retention ratio"
               + ("" if label == "Qwen2.5-VL" else f" ({label})")]
        if limit:
            cmd += ["--limit", str(limit)]
        _run(cmd, log, "eval")
    return {k: results / f"{name}_{k}" for k in ("accuracy.csv", "accuracy.md", "accuracy.png", "predictions.jsonl")}


# --------------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[-1])
    p.add_argument("--quick", action="store_true", help="smoke test: few images, few steps, separate directories")
    p.add_argument("--arch", choices=sorted(ARCHS), default="qwen2_5_vl",
                   help="base-model architecture (default: %(default)s; qwen3_vl: 256 px images, artefacts under "
                   "artifacts/qwen3_vl, results synthetic_qwen3_vl_*)")
    p.add_argument("--artifacts", default=None, help="artefact directory (default: benchmarks/synthetic/artifacts, "
                   "or artifacts/quick with --quick; under artifacts/qwen3_vl with --arch qwen3_vl)")
    p.add_argument("--results-dir", default=None,
                   help="default: benchmarks/results (--quick: benchmarks/synthetic/artifacts/quick/results)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=None, help="train images (default: 4000; quick: 48)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default: 500; quick: 8)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--scorer", default=None, help="use this scorer file instead of training one")
    p.add_argument("--retrain-base", action="store_true")
    p.add_argument("--retrain-scorer", action="store_true")
    p.add_argument("--base-args", default="",
                   help="train_base.py arguments (one string) for a single-stage base model instead of BASE_STAGES")
    p.add_argument("--scorer-args", default=None,
                   help="vs-vllm train arguments after --model/--data/--output-dir (default: a CPU recipe; quick: 4 "
                   "steps)")
    args = p.parse_args(argv)

    from vs_vllm.selection.methods import list_methods

    quick = args.quick
    arch = ARCHS[args.arch]
    name = arch["name"]
    artifacts = Path(args.artifacts) if args.artifacts else (
        HERE / "artifacts" / arch["subdir"] / ("quick" if quick else ""))
    results = Path(args.results_dir) if args.results_dir else (
        artifacts / "results" if quick else REPO / "benchmarks" / "results")
    results.mkdir(parents=True, exist_ok=True)
    n_train = args.n_train or (48 if quick else 4000)
    n_test = args.n_test or (8 if quick else 500)
    methods = [m.strip() for m in (args.methods or ",".join(list_methods())).split(",") if m.strip()]
    if "visionselector" in methods:  # first: its ratio-1.0 request is the shared baseline
        methods = ["visionselector", *[m for m in methods if m != "visionselector"]]
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    if args.base_args:
        base_stages = [shlex.split(args.base_args)]
    elif quick:
        base_stages = [["--steps", "20", "--eval-every", "10", "--val-size", "16", "--curriculum", "0.25,0.75"]]
    else:
        base_stages = arch["stages"]
    scorer_extra = shlex.split(args.scorer_args) if args.scorer_args is not None else (
        ["--ratio", "0.2", "--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--no-progress"] if quick else
        list(arch["scorer_args"]))

    log: list[dict[str, Any]] = []
    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    try:
        data_dir, fresh_data = step_data(artifacts / "data", n_train, n_test, args.seed, log, arch=args.arch)
        base_dir = artifacts / "base-model"
        # New data invalidates the models trained on the old data.
        base_info = step_base(base_dir, data_dir, log, retrain=args.retrain_base or fresh_data, stages=base_stages,
                              arch=args.arch)
        if args.scorer:
            scorer = Path(args.scorer)
            log.append({"step": "train scorer", "command": f"(given {scorer})", "seconds": 0, "rc": 0})
        else:
            scorer = step_scorer(artifacts / "scorer", base_dir, scorer_data(data_dir, arch["scorer_min_decoys"]), log,
                                 retrain=args.retrain_scorer or args.retrain_base or fresh_data, extra=scorer_extra)
        print("\n[benchmark] target-kept analysis (transformers, offline)", flush=True)
        tk0 = time.perf_counter()
        tk_rows = target_kept(base_dir, data_dir / "test_eval.jsonl", scorer, methods,
                              [r for r in ratios if r < 1.0], args.limit)
        log.append({"step": "target-kept analysis", "command": "(in process)",
                    "seconds": round(time.perf_counter() - tk0, 1), "rc": 0})
        tk_md = write_target_kept(tk_rows, results / f"{name}_target_kept.csv")
        paths = step_eval(base_dir, scorer, data_dir / "test_eval.jsonl", results, log, methods=methods,
                          ratios=ratios, limit=args.limit, concurrency=args.concurrency, name=name,
                          server_log=artifacts / "server.log", label=arch["label"])
    except PipelineError as exc:
        print(f"run_benchmark: error: {exc}", file=sys.stderr)
        return 2

    total = time.perf_counter() - t0
    size_mb = (sum(f.stat().st_size for f in base_dir.iterdir() if f.is_file()) + scorer.stat().st_size) / 1e6
    by_split = base_info.get("test_acc_by_split", {})
    # Per-task accuracy only for a base model trained on the mixed tasks (a colour-only model never saw the others).
    mixed = by_split.get("test_mixed", {}) if "mixed" in str(base_info.get("train_file")) else {}
    notes = [
        "## Pipeline",
        "",
        f"- **run**: {started.isoformat(timespec='seconds')}, {total / 60:.1f} min in all"
        + (" (**--quick smoke test: tiny data and training, numbers meaningless**)" if quick else ""),
        f"- **machine**: {machine_info()}",
        f"- **data**: `{portable_text(data_dir)}` ({n_train} train / {n_test} test images, seed {args.seed}); "
        f"{_data_description(data_dir)}",
        f"- **base model**: {arch['label']} from scratch, {base_info['parameters'] / 1e6:.2f}M parameters, "
        f"trained on `{base_info.get('train_file')}` "
        + (f"in {base_info['all_stages_s'] / 60:.1f} min (all stages, commands below; " if "all_stages_s" in base_info
           else "(reused; ")
        + f"last stage stopped on: {base_info['stop_reason']}); test accuracy with all visual tokens (transformers): "
        f"{base_info['test_acc']:.3f}" + (
            "; per task: " + ", ".join(f"{k} {v:.3f}" for k, v in mixed.items()) if mixed else ""),
        f"- **scorer**: `{portable_text(scorer)}`; model + scorer {size_mb:.1f} MB",
        "",
        "Commands (from the repository root):",
        "",
        "```",
        *[f"# {e['step']} ({e['seconds']} s)\n{e['command']}" for e in log],
        "```",
        "",
        "## Target kept (offline, transformers)",
        "",
        "Share of test images where the method keeps at least one of the LLM tokens covering the coloured target "
        "(the answer is unrecoverable otherwise, up to leakage through the vision tower's attention).",
        "",
        tk_md,
    ]
    md = paths["accuracy.md"]
    md.write_text(md.read_text() + "\n" + "\n".join(notes) + "\n", encoding="utf-8")
    print(f"\n[benchmark] done in {total / 60:.1f} min:")
    for k, v in paths.items():
        print(f"  {k}: {v}")
    print(f"  target kept: {results / f'{name}_target_kept.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
