"""Where an MRv2 worker's time goes on this CPU's test bed: py-spy samples of the model-runner worker while one
server (Model Runner V2) decodes, split into Triton's interpreter (vLLM's MRv2 kernels and the plugin's), the
plugin's own code, the model forward and the rest.

    python benchmarks/decode/profile_mrv2_worker.py stock|plugin text|image-r1

Needs py-spy (``pip install py-spy``) and the decode benchmark's model (``.cache/bench-qwen2_5_vl``, built by
``vs-vllm bench decode``). Prints one RESULT line (shares of the worker's on-CPU samples) and the kernels the
interpreter spends most samples in.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

SECONDS = 25


def shares(raw: Path) -> tuple[dict[str, float], collections.Counter]:
    total = 0
    parts: collections.Counter = collections.Counter()
    kernels: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        if "triton/runtime/interpreter.py" in stack:
            parts["triton_interpreter"] += count
            callers = [f for f in stack.split(";") if "vllm/" in f or "kernels/" in f]
            kernels[callers[-1] if callers else "?"] += count
        if "vs_vllm/" in stack:
            parts["vs_vllm_code"] += count
        if "recompute_mrope_positions" in stack:
            parts["pruning_hook"] += count
        if "execute_model" in stack and "forward" in stack:
            parts["model_forward"] += count
    return {k: round(v / max(total, 1), 3) for k, v in parts.items()} | {"samples": total}, kernels


def main() -> None:
    import psutil

    from vs_vllm.benchmarking.client import run_closed_loop_sync
    from vs_vllm.benchmarking.decode import DecodeConfig, Payloads, Workload
    from vs_vllm.benchmarking.prefill import _server_env
    from vs_vllm.testing.server import VLLMServer, vllm_command

    kind, workload = sys.argv[1], sys.argv[2]
    cfg = DecodeConfig(workloads=[workload])
    model, scorer = Path(".cache/bench-qwen2_5_vl"), Path(".cache/bench-qwen2_5_vl-scorer.safetensors")
    env = dict(_server_env(), VLLM_USE_V2_MODEL_RUNNER="1")
    log = Path(f"profile_mrv2_{kind}.log")
    if kind == "stock":
        server = VLLMServer(model, cfg.server_args(), env=env, command=[*vllm_command(), "serve"], log_path=log)
    else:
        server = VLLMServer(model, ["--scorer", str(scorer), *cfg.server_args()], env=env,
                            command=[sys.executable, "-m", "vs_vllm", "serve"], log_path=log)
    server.env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # --kv-cache-memory-bytes decides
    payloads = Payloads(cfg)
    server.start()
    try:
        if server.model_runner() != "mrv2":
            raise SystemExit("the server did not start on Model Runner V2 (is the test bed installed? make setup)")
        run_closed_loop_sync(server.base_url, payloads.make(4, Workload(workload), kind), 4, metrics_interval=0)
        children = psutil.Process(server.pid).children(recursive=True)
        worker = next(p for p in children if "Worker" in p.name())
        raw = Path(f"profile_mrv2_{kind}_{workload}.txt")
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(worker.pid), "-d",
                                str(SECONDS), "-r", "200", "-f", "raw", "-o", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.monotonic()
        while time.monotonic() - start < SECONDS + 2:
            run_closed_loop_sync(server.base_url, payloads.make(8, Workload(workload), kind), 4, metrics_interval=0)
        spy.wait(timeout=60)
        result, kernels = shares(raw)
        print("RESULT " + json.dumps({"server": kind, "workload": workload, **result}))
        for where, count in kernels.most_common(8):
            print(f"  {count:6d}  {where}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
