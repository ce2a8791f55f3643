"""Decode A/B and A/A runs of the decode benchmark's harness with other server pairs, to tell a plugin effect from the
harness's between-session noise (each server of a comparison runs in its own sessions).

    python benchmarks/decode/between_sessions.py VARIANT OUT_DIR [REPEATS]

VARIANT is what the "plugin" slot runs beside stock `vllm serve` (text-only workload, the committed decode
benchmark's settings otherwise):
  vs-vllm          `python -m vs_vllm serve` (as `vs-vllm bench decode`)
  exec-equivalent  plain `vllm serve` with exactly the command line and environment `vs-vllm serve` would exec
  stock-again      stock `vllm serve` again: an A/A run, what the harness reports for identical servers
Results: benchmarks/results/checks/decode_between_sessions/ (see its README.md).
"""
import sys
from pathlib import Path

from vs_vllm.benchmarking.decode import DecodeConfig, run_benchmark
from vs_vllm.benchmarking.prefill import _server_env
from vs_vllm.testing.server import VLLMServer, vllm_command
from vs_vllm.vllm_plugin.serve import build_serve_command

variant = sys.argv[1]  # which "plugin" side to compare with stock
out = Path(sys.argv[2])
cfg = DecodeConfig(workloads=["text"], repeats=int(sys.argv[3]) if len(sys.argv) > 3 else 3)


def factory(cfg, model_dir, scorer, log_dir):
    common = cfg.server_args()
    stock = VLLMServer(model_dir, common, env=_server_env(), command=[*vllm_command(), "serve"],
                       log_path=log_dir / "server_stock.log", startup_timeout=900)
    if variant == "exec-equivalent":  # what vs-vllm serve execs, started as plain vllm serve with its env
        cmd, env = build_serve_command([str(model_dir), "--scorer", str(scorer), "--selection-method", cfg.method,
                                        *common], _server_env())
        other = VLLMServer(model_dir, [], env=env, command=cmd[:2] if cmd[1] == "serve" else cmd,
                           log_path=log_dir / "server_plugin.log", startup_timeout=900)
        other.argv = lambda cmd=cmd, o=other: [*cmd, "--host", o.host, "--port", str(o.port)]
    elif variant == "stock-again":  # stock vs stock: the noise floor of this harness
        other = VLLMServer(model_dir, common, env=_server_env(), command=[*vllm_command(), "serve"],
                           log_path=log_dir / "server_plugin.log", startup_timeout=900)
    elif variant == "vs-vllm":
        other = VLLMServer(model_dir, ["--scorer", str(scorer), "--selection-method", cfg.method, *common],
                           env=_server_env(), command=[sys.executable, "-m", "vs_vllm", "serve"],
                           log_path=log_dir / "server_plugin.log", startup_timeout=900)
    else:
        raise SystemExit(variant)
    for s in (stock, other):
        s.env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return {"stock": stock, "plugin": other}


print(run_benchmark(cfg, Path(".cache/bench-qwen2_5_vl"), out,
                    " ".join(["python benchmarks/decode/between_sessions.py", *sys.argv[1:]]),
                    scorer=Path(".cache/bench-qwen2_5_vl-scorer.safetensors"), server_factory=factory))
