"""`make gpu-serve-check DRY_RUN=1`: the vLLM-on-GPU check rehearsed end to end on the CPU.

Its GPU window is a few minutes, so the script must already work when it gets there: every stage runs here as a child
process with its limit (a synthetic pack through the same stash / reassemble / unpack code, the .venv's CPU vLLM for
the imports, the tiny Qwen2.5-VL, the HF reference on the CPU, no vLLM server), and the summary, the bench CSV, the
log and the tarball reach ``$OUT`` as on the GPU, on a plain checkout (``VS_GPU_CHECK_OVERLAY=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "serve_check.py"
TAG = "dry_run_cpu"
STAGES = ["unpack", "env", "models", "serve", "sync", "bench-7b"]

pytest.importorskip("transformers")


@pytest.mark.slow  # six child processes (vLLM's imports, a tiny HF model)
def test_make_gpu_serve_check_dry_run_runs_every_stage(tmp_path) -> None:
    results, out = tmp_path / "results", tmp_path / "OUT"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "DRY_RUN") and not k.startswith("VS_VLLM_")}
    env.update(OUT=str(out), VS_GPU_CHECK_OVERLAY="1")
    args = f"--out-dir {results} --stash {tmp_path / 'stash'}"
    if shutil.which("make"):
        cmd = ["make", "--no-print-directory", "gpu-serve-check", "DRY_RUN=1", f"GPU_SERVE_CHECK_ARGS={args}"]
    else:  # pragma: no cover - the same command without make
        cmd = [sys.executable, str(SCRIPT), "--dry-run", *args.split()]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]

    state = json.loads((results / f"serve_check_{TAG}.json").read_text())
    assert state["dry_run"] and state["final"]
    assert {s["name"]: s["status"] for s in state["stages"]} == dict.fromkeys(STAGES, "passed"), state["stages"]
    stages = {s["name"]: s for s in state["stages"]}
    assert "parts" in stages["unpack"]["detail"]
    assert not stages["env"]["data"]["import_problems"]
    assert stages["bench-7b"]["data"]["rows"] and all(r["ceiling"] >= 1.0 for r in stages["bench-7b"]["data"]["rows"])
    # what the device tool brings back: at most 8 files, every one there after the run
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"serve_check_{TAG}{s}" for s in (".md", ".json", ".log", "_bench.csv", ".tar.gz")), names
    assert len(names) <= 8
    md = (out / f"serve_check_{TAG}.md").read_text()
    assert "DRY RUN" in md and "## Stages" in md and "7B-shaped" in md
    with tarfile.open(out / f"serve_check_{TAG}.tar.gz") as tar:
        members = tar.getnames()
    assert f"benchmarks/results/serve_check_{TAG}_serve_checks.csv" in members, members
    assert "/work/" not in (out / f"serve_check_{TAG}.log").read_text()  # the log names no machine path
