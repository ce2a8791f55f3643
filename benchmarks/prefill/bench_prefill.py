#!/usr/bin/env python
"""Prefill benchmark through vLLM's OpenAI server: stock vLLM vs vs-vllm across retention ratios (CPU).

The same as ``vs-vllm bench prefill``; the logic lives in ``vs_vllm.benchmarking.prefill``. Results go to
benchmarks/results/prefill_cpu.{csv,md}, prefill_cpu_requests.csv, prefill_cpu_meta.json and two PNG plots::

    python benchmarks/prefill/bench_prefill.py            # full sweep (quiet machine, ~35-45 min on 2 cores)
    python benchmarks/prefill/bench_prefill.py --quick    # < 5 min smoke run (to .cache/bench-prefill-quick)
    python benchmarks/prefill/bench_prefill.py --report-only benchmarks/results   # re-render from the CSVs
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vs_vllm.benchmarking.prefill import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/prefill/bench_prefill.py"))
