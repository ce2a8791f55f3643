"""Committed results name no absolute path of the machine they ran on, and the helper every generator uses to write
commands, paths and log lines (vs_vllm.benchmarking.paths.portable_text) rewrites them as it says."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from vs_vllm.benchmarking.paths import ABSOLUTE_PATH as ABSOLUTE
from vs_vllm.benchmarking.paths import REPO, portable_text

RESULTS = REPO / "benchmarks" / "results"


def test_committed_results_name_no_absolute_paths():
    texts = [p for p in RESULTS.rglob("*") if p.is_file() and p.suffix in (".md", ".csv", ".json", ".log", ".xml")]
    assert len(texts) > 20, texts
    found = {str(p.relative_to(REPO)): sorted(set(ABSOLUTE.findall(p.read_text(errors="replace"))))[:3]
             for p in texts}
    found = {k: v for k, v in found.items() if v}
    assert not found, f"result files name absolute paths (write them through portable_text): {found}"


def test_portable_text_rewrites_this_machines_paths():
    tmp = tempfile.gettempdir().rstrip("/")
    assert portable_text(sys.executable) == "python"
    assert portable_text(f"{sys.executable} -m vs_vllm serve") == "python -m vs_vllm serve"
    assert portable_text(Path(sys.prefix) / "bin" / "vllm") == "vllm"
    assert portable_text(REPO / "benchmarks" / "results") == "benchmarks/results"
    line = f"--rootdir={REPO} --out {tmp}/vs-bench-x/a.log"
    assert portable_text(line) == "--rootdir=. --out $TMPDIR/vs-bench-x/a.log"
    assert portable_text(Path.home() / "out") == "~/out"
    assert portable_text("--data train.jsonl") == "--data train.jsonl"  # relative paths stay as they are


def test_portable_text_leaves_longer_paths_and_urls_alone():
    # Not rewritten as inside the repository (a checkout under the temp dir still gets its $TMPDIR/ prefix).
    for sibling in (f"{REPO}2/x", f"{REPO}.bak/x"):
        assert portable_text(sibling).endswith(f"{REPO.name}{sibling[len(str(REPO)):]}"), portable_text(sibling)
    assert portable_text("http://127.0.0.1:8000/tmp/x") == "http://127.0.0.1:8000/tmp/x"
    assert not ABSOLUTE.findall(portable_text(f"{REPO}/a {tempfile.gettempdir()}/b {sys.executable}"))
