"""`make gpu-check DRY_RUN=1`: the GPU check rehearsed end to end on the CPU (toy sizes, Triton interpreter).

The GPU window is short and starts cold, so the script it runs there must already work: every stage runs here through
the same code (children, result files, summary against the goals, the $OUT bundle), as on a plain checkout without
the editable install (VS_GPU_CHECK_OVERLAY=1). A kernel broken on purpose must fail its stage: strict kernels turn the
automatic dispatch's failure into an error instead of a silent torch fallback.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu" / "gpu_check.py"
TAG = "dry_run_cpu"
STAGES = ["env", "pytest", "sweep", "bench-select", "bench-mmr", "hf-prefill", "summary"]

pytest.importorskip("triton")
pytest.importorskip("transformers")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "DRY_RUN", "VS_GPU_CHECK_INJECT_FAULT")}
    env.update(extra)
    return env


def _state(out_dir: Path) -> dict:
    return json.loads((out_dir / f"gpu_check_{TAG}.json").read_text())


def test_make_gpu_check_dry_run_runs_every_stage(tmp_path):
    results, out = tmp_path / "results", tmp_path / "OUT"
    env = _env(OUT=str(out), VS_GPU_CHECK_OVERLAY="1")
    if shutil.which("make"):
        cmd = ["make", "--no-print-directory", "gpu-check", "DRY_RUN=1", f"GPU_CHECK_ARGS=--out-dir {results}"]
    else:  # pragma: no cover - the same command without make
        cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out-dir", str(results)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]

    state = _state(results)
    assert state["dry_run"] and state["final"]
    status = {s["name"]: s["status"] for s in state["stages"]}
    assert status == dict.fromkeys(STAGES, "passed"), state["stages"]
    assert "overlay" in state["env"]["kernels_import"]  # as on a plain checkout: vs_vllm.kernels from the overlay

    # every stage's results, named with the slug
    for name in ("bench_select_{}.csv", "mmr_select_{}.csv", "hf_gpu_prefill_{}.csv", "gpu_check_{}_sweep.csv",
                 "gpu_check_{}_select.csv", "gpu_check_{}_pytest.xml", "gpu_check_{}.log"):
        assert (results / name.format(TAG)).is_file(), name
    with open(results / f"gpu_check_{TAG}_select.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["copy_same_bytes_ms"]) > 0 and r["pct_of_copy_same_bytes"] for r in rows)
    with open(results / f"gpu_check_{TAG}_sweep.csv") as f:
        assert {r["op"] for r in csv.DictReader(f)} >= {"select", "gather", "mmr", "select_strided"}

    md = (results / f"gpu_check_{TAG}.md").read_text()
    assert "DRY RUN" in md and "## Goals" in md
    for goal in ("selection chain (select_tokens) vs torch reference", ">= 3x", "device copy of the same bytes",
                 ">= 50%", "prefill speedup at ratio 0.2", ">= 2x"):
        assert goal in md, goal
    assert [g["verdict"] for g in state["goals"]] and all(g["measured"] for g in state["goals"])

    # $OUT: few files with plain names; the tarball unpacks into benchmarks/results/
    sent = sorted(p.name for p in out.iterdir())
    assert len(sent) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in sent), sent
    assert f"gpu_check_{TAG}.md" in sent
    with tarfile.open(out / f"gpu_check_{TAG}.tar.gz") as tar:
        names = tar.getnames()
    assert f"benchmarks/results/gpu_check_{TAG}.md" in names
    assert f"benchmarks/results/hf_gpu_prefill_{TAG}.csv" in names
    assert all(n.startswith("benchmarks/results/") for n in names)

    # a dry run never writes next to the committed results
    assert not list((REPO / "benchmarks" / "results").glob(f"*{TAG}*"))


def test_injected_kernel_fault_fails_the_stage(tmp_path):
    """VS_GPU_CHECK_INJECT_FAULT=select breaks the Triton score pass: the sweep's automatic select_tokens calls must
    raise (strict kernels) rather than pass on the torch fallback, and the stage is reported as failed."""
    results = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--stages", "sweep", "--out-dir", str(results)],
        cwd=REPO, env=_env(VS_GPU_CHECK_INJECT_FAULT="select"), capture_output=True, text=True, timeout=180,
        check=False,
    )
    assert r.returncode == 1, r.stdout[-4000:] + r.stderr[-2000:]
    stages = {s["name"]: s for s in _state(results)["stages"]}
    assert stages["sweep"]["status"] == "failed"
    assert "injected kernel fault" in stages["sweep"]["detail"]
    assert stages["env"]["status"] == "passed" and stages["bench-select"]["status"] == "not run"
    with open(results / f"gpu_check_{TAG}_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    auto_select = [row for row in rows if row["op"] == "select"]
    assert auto_select and all(row["ok"] == "False" and "injected" in row["detail"] for row in auto_select)
    assert all(row["ok"] == "True" for row in rows if row["op"] == "gather")  # the harness itself still works
    md = (results / f"gpu_check_{TAG}.md").read_text()
    assert re.search(r"\| b2 \| sweep \| \*\*failed\*\* \|", md), md
