"""`make gpu-check DRY_RUN=1`: the GPU check rehearsed end to end on the CPU (toy sizes, Triton interpreter).

The GPU window is short and starts cold, so the script it runs there must already work: every stage runs here through
the same code (children, result files, summary against the goals, the $OUT bundle), as on a plain checkout without
the editable install (VS_GPU_CHECK_OVERLAY=1). A kernel broken on purpose must fail its stage: strict kernels turn the
automatic dispatch's failure into an error instead of a silent torch fallback.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vs_vllm.benchmarking.paths import ABSOLUTE_PATH
from vs_vllm.testing.scripts import load_script

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


@pytest.mark.slow  # the whole gpu-check in subprocesses (Triton interpreter, HF model)
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
    # b1 runs bench_select's graph-timer tests beside the kernel tests (their real-GPU case skips on the CPU)
    cases = list(ET.parse(results / f"gpu_check_{TAG}_pytest.xml").getroot().iter("testcase"))
    graph_cases = {c.get("name") for c in cases if c.get("classname", "").endswith("test_bench_select_graph")}
    assert "test_cuda_graph_timer_on_a_gpu" in graph_cases and len(graph_cases) > 1, graph_cases
    assert any(c.get("classname", "").endswith("test_kernels_gather") for c in cases)
    with open(results / f"gpu_check_{TAG}_select.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["copy_same_bytes_ms"]) > 0 and r["pct_of_copy_same_bytes"] for r in rows)
    # GPU time through the (faked) CUDA-graph path: captured, replayed, checked against the eager indices
    for col in ("triton_graph_ms", "torch_graph_ms", "copy_same_bytes_graph_ms", "pct_of_copy_same_bytes_graph"):
        assert all(float(r[col]) > 0 for r in rows), (col, rows)
    assert all(r["graph_same_idx"] == "True" and r["speedup_graph"] for r in rows), rows
    assert all(not r[c] for r in rows for c in ("triton_graph_note", "torch_graph_note", "copy_graph_note")), rows
    # the serving chain before / after the fusion: both timed (eager and graph), the fused buffer bit-identical
    for col in ("serving_unfused_ms", "serving_fused_ms", "serving_unfused_graph_ms", "serving_fused_graph_ms"):
        assert all(float(r[col]) > 0 for r in rows), (col, rows)
    assert all(r["serving_same"] == "True" and r["fusion_speedup"] and not r["serving_graph_note"] for r in rows)
    # where the GPU time goes: every pass timed alone from a graph in the r = 0.2 cases
    split = [r for r in rows if float(r["r"]) == 0.2]
    assert split and all(float(r[f"{p}_graph_ms"]) > 0 and not r["breakdown_note"]
                         for r in split for p in ("meta", "scores", "select", "gather")), split
    with open(results / f"bench_select_{TAG}.csv") as f:
        assert {"triton_graph_ms", "speedup_graph", "pct_of_copy_bw_graph", "graph_same_idx"} <= set(
            csv.DictReader(f).fieldnames)
    with open(results / f"gpu_check_{TAG}_sweep.csv") as f:
        assert {r["op"] for r in csv.DictReader(f)} >= {"select", "gather", "mmr", "select_strided", "select_packed"}

    md = (results / f"gpu_check_{TAG}.md").read_text()
    assert "DRY RUN" in md and "## Goals" in md
    for goal in ("selection chain (select_tokens) vs torch reference", ">= 3x", "device copy of the same bytes",
                 ">= 50%", "prefill speedup at ratio 0.2", ">= 2x", "Triton graph ms", "% copy (graph)",
                 "graph same idx", "Serving chain", "fusion speedup (graph)", "% copy (fused, graph)",
                 "Where the chain's GPU time goes"):
        assert goal in md, goal
    goals = {g["goal"]: g for g in state["goals"]}
    n = 96  # the dry profile's goal_min_n
    for what in (f"selection chain (select_tokens) vs torch reference, N >= {n}",
                 f"selection chain vs device copy of the same bytes, N >= {n}"):
        for how in ("(eager call, host launch overhead included)", "(GPU time, CUDA-graph replay)"):
            g = goals[f"{what} {how}"]
            assert g["measured"] and g["verdict"] in ("met", "NOT met"), g
            assert f"| {what} {how} |" in md
    assert goals["HF Qwen2.5-VL-7B prefill speedup at ratio 0.2"]["measured"]
    graph_prefill = goals["HF Qwen2.5-VL-7B prefill speedup at ratio 0.2 (LLM in CUDA graphs)"]
    with open(results / f"hf_gpu_prefill_{TAG}.csv") as f:
        at = [r for r in csv.DictReader(f) if float(r["ratio"]) == 0.2]
    has_graph = bool(at) and _finite(at[0].get("speedup_graph"))  # optional in hf_gpu_prefill.py; nan on a CPU
    assert bool(graph_prefill["measured"]) == has_graph, graph_prefill
    assert graph_prefill["verdict"] in (("met", "NOT met") if has_graph else ("not measured",)), graph_prefill
    assert len(state["goals"]) == 6

    # $OUT: few files with plain names; the tarball unpacks into benchmarks/results/
    sent = sorted(p.name for p in out.iterdir())
    assert len(sent) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in sent), sent
    assert f"gpu_check_{TAG}.md" in sent
    with tarfile.open(out / f"gpu_check_{TAG}.tar.gz") as tar:
        names = tar.getnames()
    assert f"benchmarks/results/gpu_check_{TAG}.md" in names
    assert f"benchmarks/results/hf_gpu_prefill_{TAG}.csv" in names
    assert all(n.startswith("benchmarks/results/") for n in names)

    # what gets committed names no absolute path of the machine (the scratch folder, the checkout, the interpreter)
    for name in (f"gpu_check_{TAG}.md", f"gpu_check_{TAG}.json", f"gpu_check_{TAG}.log"):
        assert not ABSOLUTE_PATH.findall((results / name).read_text()), (name, ABSOLUTE_PATH.findall(
            (results / name).read_text())[:5])

    # a dry run never writes next to the committed results
    assert not list((REPO / "benchmarks" / "results").glob(f"*{TAG}*"))


@pytest.mark.slow  # gpu-check's sweep in a subprocess
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


def _gpu_check_module():
    return load_script(SCRIPT, "gpu_check_under_test")


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _select_row(n, **kw):
    row = {"images": "1", "n": str(n), "d": "64", "r": "0.2", "speedup": "4.0", "pct_of_copy_same_bytes": "60.0",
           "triton_graph_ms": "0.01", "speedup_graph": "5.0", "pct_of_copy_same_bytes_graph": "70.0",
           "graph_same_idx": "True", "triton_graph_note": "", "torch_graph_note": "", "copy_graph_note": ""}
    row.update(kw)
    return row


def test_missing_graph_measurement_is_not_measured():
    """The graph goals say "not measured" (never "met") when a case has no valid graph time: no column (results of
    the older script), an empty cell with the capture's reason, or a replay that did not reproduce the eager indices.
    The eager goals are unaffected; the prefill graph goal needs hf_gpu_prefill.py's optional speedup_graph."""
    gc = _gpu_check_module()
    graph_goals = [f"selection chain (select_tokens) vs torch reference, N >= 100 {gc.GRAPH_LABEL}",
                   f"selection chain vs device copy of the same bytes, N >= 100 {gc.GRAPH_LABEL}"]
    hf = [{"ratio": "0.2", "N": "1196", "K": "239", "prefill_ms_p50": "100", "speedup": "1.5"}]

    def verdicts(select_rows, hf_rows=hf):
        return {g["goal"]: g for g in gc.evaluate_goals(select_rows, hf_rows, 100)}

    old = [{k: v for k, v in _select_row(200).items() if "graph" not in k}]
    goals = verdicts(old)
    assert [goals[g]["verdict"] for g in graph_goals] == ["not measured"] * 2
    assert goals[f"selection chain (select_tokens) vs torch reference, N >= 100 {gc.EAGER_LABEL}"]["verdict"] == "met"
    prefill = goals["HF Qwen2.5-VL-7B prefill speedup at ratio 0.2 (LLM in CUDA graphs)"]
    assert prefill["verdict"] == "not measured" and not prefill["measured"]
    assert goals["HF Qwen2.5-VL-7B prefill speedup at ratio 0.2"]["verdict"] == "NOT met"

    failed = [_select_row(200, triton_graph_ms="", speedup_graph="", pct_of_copy_same_bytes_graph="",
                          graph_same_idx="", triton_graph_note="global capture failed: RuntimeError: x")]
    goals = verdicts(failed)
    assert all(goals[g]["verdict"] == "not measured" and "capture failed" in goals[g]["where"] for g in graph_goals)

    # one case measured and meeting the goals, one not measured: not "met"; a replay with other indices is invalid
    assert {verdicts([_select_row(200), failed[0]])[g]["verdict"] for g in graph_goals} == {"not measured"}
    assert {verdicts([_select_row(200, graph_same_idx="False")])[g]["verdict"] for g in graph_goals} == {
        "not measured"}
    assert {verdicts([_select_row(200), _select_row(50, speedup_graph="")])[g]["verdict"] for g in graph_goals} == {
        "met"}  # cases below min_n do not count
    # a measured case that misses the threshold is "NOT met" even when another case is missing
    assert verdicts([_select_row(200, speedup_graph="2.0"), failed[0]])[graph_goals[0]]["verdict"] == "NOT met"

    goals = verdicts(old, [dict(hf[0], speedup_graph="2.5", prefill_graph_ms_p50="60")])
    prefill = goals["HF Qwen2.5-VL-7B prefill speedup at ratio 0.2 (LLM in CUDA graphs)"]
    assert prefill["verdict"] == "met" and prefill["measured"] == "2.50x" and "60.0 ms" in prefill["where"]
    goals = verdicts(old, [dict(hf[0], speedup_graph="nan")])
    assert goals["HF Qwen2.5-VL-7B prefill speedup at ratio 0.2 (LLM in CUDA graphs)"]["verdict"] == "not measured"
