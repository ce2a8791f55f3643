"""`vs-vllm eval` end to end against a real `vs-vllm serve` (the tiny random model with a scorer)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vs_vllm.demo import load_synthetic_generator

pytestmark = pytest.mark.slow


def _generate(out: Path) -> Path:
    return load_synthetic_generator().generate_dataset(out, n_train=0, n_test=4, seed=3, tasks=())["test_eval"]


def test_eval_against_plugin_server(plugin_server, tmp_path):
    data = _generate(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "vs_vllm", "eval", "--base-url", plugin_server.base_url, "--model", "tiny",
         "--data", str(data), "--ratios", "1.0,0.5", "--methods", "visionselector,random", "--concurrency", "3",
         "--max-tokens", "4", "--out-dir", str(out), "--name", "smoke", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for suffix in ("accuracy.csv", "accuracy.md", "accuracy.png", "predictions.jsonl"):
        assert (out / f"smoke_{suffix}").stat().st_size > 0, suffix

    rows = list(csv.DictReader(open(out / "smoke_accuracy.csv")))
    assert [(r["method"], float(r["ratio"])) for r in rows] == [
        ("visionselector", 1.0), ("visionselector", 0.5), ("random", 1.0), ("random", 0.5)]
    for r in rows:
        assert int(r["n"]) == 4 and int(r["errors"]) == 0
        assert float(r["visual_tokens_total"]) == 64
        assert float(r["visual_tokens_kept"]) == (64 if float(r["ratio"]) == 1.0 else 32)
        assert 0.0 <= float(r["em"]) <= 1.0
    assert rows[2]["shared_baseline"] == "1"  # ratio 1.0 is requested once and shared

    preds = [json.loads(line) for line in (out / "smoke_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 * 3  # (vs, 1.0), (vs, 0.5), (random, 0.5)
    assert {(p["method"], p["ratio"]) for p in preds} == {("visionselector", 1.0), ("visionselector", 0.5),
                                                          ("random", 0.5)}
    assert all(p["error"] is None and isinstance(p["prediction"], str) for p in preds)
    md = (out / "smoke_accuracy.md").read_text()
    assert "| visionselector |" in md and "| random |" in md


def test_eval_unknown_method_is_a_one_line_error(plugin_server, tmp_path):
    data = _generate(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, "-m", "vs_vllm", "eval", "--base-url", plugin_server.base_url, "--model", "tiny",
         "--data", str(data), "--ratios", "0.5", "--methods", "no-such-method", "--no-progress",
         "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("vs-vllm eval: error: server refused") and "Traceback" not in proc.stderr


def test_eval_unknown_model_is_a_one_line_error(plugin_server, tmp_path):
    data = _generate(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, "-m", "vs_vllm", "eval", "--base-url", plugin_server.base_url + "/v1", "--model", "nope",
         "--data", str(data), "--no-progress", "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"vs-vllm eval: error: model 'nope' is not served at {plugin_server.base_url}/v1; "
                                   "served: tiny")


def test_run_benchmark_quick(tmp_path):
    """The whole synthetic pipeline (data, base model, scorer, target-kept, serve, eval) on a few images."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic" / "run_benchmark.py"
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--artifacts", str(tmp_path / "artifacts"), "--results-dir",
         str(results), "--ratios", "1.0,0.2", "--methods", "visionselector,norm"],
        capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        (tmp_path / "run_benchmark.out").write_text(proc.stdout + "\n---- stderr ----\n" + proc.stderr)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error" in ln.lower()]
        pytest.fail(f"run_benchmark --quick exited {proc.returncode}; see {tmp_path / 'run_benchmark.out'}; "
                    + "\n".join(errors[-10:]))
    rows = list(csv.DictReader(open(results / "synthetic_accuracy.csv")))
    assert [(r["method"], float(r["ratio"])) for r in rows] == [
        ("visionselector", 1.0), ("visionselector", 0.2), ("norm", 1.0), ("norm", 0.2)]
    assert all(int(r["n"]) == 8 for r in rows)
    md = (results / "synthetic_accuracy.md").read_text()
    assert "## Pipeline" in md and "-m vs_vllm train" in md and "## Target kept" in md
    # The base model is trained with the decoy curriculum.
    assert "train base, stage 1" in md and "--curriculum 0.25,0.75" in md
    assert (results / "synthetic_accuracy.png").stat().st_size > 0
    kept = list(csv.DictReader(open(results / "synthetic_target_kept.csv")))
    assert {(r["method"], r["ratio"]) for r in kept} >= {("visionselector", "0.2"), ("norm", "0.2")}
