#!/usr/bin/env python
"""Host time of the model runner's multimodal work per engine step: stock vLLM vs the plugin, with and without the
media-steps patch (``vs_vllm/vllm_plugin/patches/media_steps.py``). Deterministic where the server benchmark is not.

One offline ``LLM`` per configuration (in-process engine core, eager, the tiny test model, KV cache 64 MiB), a batch
of requests decoding a fixed number of tokens; the runner's ``_gather_mm_embeddings`` (which the V1 runner calls on
every step of a multimodal model, and which calls the pruning hook) and ``_calc_mrope_positions`` (which the hook's
``should_sync_mrope_positions`` makes run twice per step) are timed per call with ``perf_counter_ns``, together with
the whole ``execute_model`` step. Configurations:

- ``stock``: the plugin not enabled (vLLM's own Qwen2.5-VL);
- ``plugin, hook every step``: the plugin enabled, media-steps patch undone (the behaviour before it);
- ``plugin``: the plugin as shipped.

Workloads: text-only requests and image requests at ratio 1.0 (the decode steps dominate: 96 tokens per request).
Writes ``benchmarks/results/decode_runner_steps_cpu.{csv,md}``::

    python benchmarks/decode/profile_runner_steps.py [--requests 8] [--tokens 96] [--repeats 3]

Needs the tiny model and its scorer (``vs-vllm bench decode --model-kind tiny`` builds them under .cache/, or pass
--model-dir / --scorer). One child process per (configuration, repeat), so every engine starts fresh.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("stock", "plugin, hook every step", "plugin")
PROMPT_TEXT = ("<|im_start|>user\nRequest {i}. Write a detailed description of a busy harbour at dawn.<|im_end|>\n"
               "<|im_start|>assistant\n")
PROMPT_IMAGE = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Request {i}. Describe the picture."
                "<|im_end|>\n<|im_start|>assistant\n")


def child(args: argparse.Namespace) -> int:
    """Runs inside the child process: one engine, both workloads, prints one JSON line per workload."""
    import torch  # noqa: F401  (vLLM imports it anyway; first here so import time is not in any timing)
    from vllm import LLM, SamplingParams
    from vllm.plugins import load_general_plugins
    from vllm.v1.worker import gpu_model_runner

    load_general_plugins()  # the plugin's patches first, so the timers below wrap them (their cost is counted)

    from vs_vllm.testing.images import noise_image

    runner_cls = gpu_model_runner.GPUModelRunner
    if args.config == "plugin, hook every step":
        patched = runner_cls._gather_mm_embeddings
        if not getattr(patched, "__vs_vllm_patched__", False):
            raise SystemExit("the media-steps patch is not installed: nothing to undo")
        runner_cls._gather_mm_embeddings = patched.__wrapped__
    elif args.config == "plugin" and not getattr(runner_cls._gather_mm_embeddings, "__vs_vllm_patched__", False):
        raise SystemExit("the media-steps patch is not installed")

    timings: dict[str, list[int]] = {"gather": [], "mrope": [], "step": []}

    def timed(name: str, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter_ns()
            try:
                return fn(*a, **kw)
            finally:
                timings[name].append(time.perf_counter_ns() - t0)
        return wrapper

    runner_cls._gather_mm_embeddings = timed("gather", runner_cls._gather_mm_embeddings)
    runner_cls._calc_mrope_positions = timed("mrope", runner_cls._calc_mrope_positions)
    runner_cls.execute_model = timed("step", runner_cls.execute_model)

    llm = LLM(model=args.model_dir, max_model_len=2048, max_num_seqs=args.requests, enforce_eager=True,
              dtype="float32", limit_mm_per_prompt={"image": 1, "video": 0}, distributed_executor_backend="uni",
              kv_cache_memory_bytes=64 * 1024 * 1024, enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, min_tokens=args.tokens, ignore_eos=True)
    workloads = {
        "text": [{"prompt": PROMPT_TEXT.format(i=i)} for i in range(args.requests)],
        "image-r1": [{"prompt": PROMPT_IMAGE.format(i=i), "multi_modal_data": {"image": noise_image(224, 224, seed=i)},
                      **({"mm_processor_kwargs": {"retention_ratio": 1.0}} if args.config != "stock" else {})}
                     for i in range(args.requests)],
    }
    llm.generate(workloads["text"][:2], SamplingParams(max_tokens=4))  # warm-up
    llm.generate(workloads["image-r1"][:2], SamplingParams(max_tokens=4))
    for name, requests in workloads.items():
        for v in timings.values():
            v.clear()
        t0 = time.perf_counter()
        llm.generate(requests, params, use_tqdm=False)
        wall = time.perf_counter() - t0
        print("RESULT " + json.dumps({"workload": name, "wall_s": wall, **{k: v for k, v in timings.items()}}),
              flush=True)
    return 0


def _us(ns: list[int]) -> float:
    return statistics.median(ns) / 1e3 if ns else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=str(REPO / ".cache" / "tiny-qwen2_5_vl"))
    p.add_argument("--scorer", default=str(REPO / ".cache" / "tiny-qwen2_5_vl-scorer.safetensors"))
    p.add_argument("--requests", type=int, default=8, help="requests per batch (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=96, help="tokens each request decodes (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="engines per configuration (default: %(default)s)")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    for path in (args.model_dir, args.scorer):
        if not Path(path).exists():
            raise SystemExit(f"{path} does not exist: run `vs-vllm bench decode --model-kind tiny --quick` first "
                             "(it builds the tiny model and its scorer), or pass --model-dir / --scorer")
    rows = []
    for repeat in range(args.repeats):
        order = CONFIGS if repeat % 2 == 0 else tuple(reversed(CONFIGS))
        for config in order:
            env = {k: v for k, v in os.environ.items() if not k.startswith("VS_VLLM_")}
            env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)
            if config != "stock":
                env.update(VS_VLLM_ENABLE="1", VS_VLLM_SCORER=args.scorer)
            print(f"[runner-steps] repeat {repeat + 1}/{args.repeats}: {config} ...", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--child", "1", "--config", config,
                                   "--model-dir", args.model_dir, "--requests", str(args.requests),
                                   "--tokens", str(args.tokens)], capture_output=True, text=True, env=env,
                                  timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"{config}: child failed:\n{proc.stderr[-3000:]}")
            for line in proc.stdout.splitlines():
                if not line.startswith("RESULT "):
                    continue
                r = json.loads(line[len("RESULT "):])
                steps = len(r["step"])
                row = {"repeat": repeat, "config": config, "workload": r["workload"], "steps": steps,
                       "step_us_p50": _us(r["step"]), "gather_us_p50": _us(r["gather"]),
                       "gather_us_total_per_step": sum(r["gather"]) / 1e3 / max(steps, 1),
                       "mrope_calls_per_step": len(r["mrope"]) / max(steps, 1),
                       "mrope_us_total_per_step": sum(r["mrope"]) / 1e3 / max(steps, 1),
                       "wall_s": r["wall_s"]}
                rows.append(row)
                print(f"[runner-steps]   {r['workload']:<9} {steps} steps, step p50 {row['step_us_p50']:.0f} us, "
                      f"mm gather {row['gather_us_total_per_step']:.1f} us/step, M-RoPE "
                      f"{row['mrope_calls_per_step']:.2f} calls / {row['mrope_us_total_per_step']:.1f} us per step",
                      flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "decode_runner_steps_cpu.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Model-runner host time per engine step: stock vLLM vs vs-vllm (tiny model, CPU)", "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"`{' '.join(['python benchmarks/decode/profile_runner_steps.py', *sys.argv[1:]])}`.", "",
        f"Offline `LLM`, in-process engine core, eager, fp32, {args.requests} requests per batch decoding "
        f"{args.tokens} tokens each (text-only prompts; one fresh 224x224 image per request at ratio 1.0), "
        f"{args.repeats} fresh engines per configuration in alternating order. Per step: the runner's "
        "`_gather_mm_embeddings` (called on every step of a multimodal model; it calls the pruning hook) and "
        "`_calc_mrope_positions` (run a second time on steps where the hook was called), summed per step and "
        "averaged over the batch's steps; step = `execute_model`, p50. Medians over repeats [min-max].", "",
        "| workload | configuration | steps | step p50 us | mm gather us/step | M-RoPE calls/step | "
        "M-RoPE us/step |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(vals, fmt):
        return f"{statistics.median(vals):{fmt}} [{min(vals):{fmt}}-{max(vals):{fmt}}]"

    for workload in ("text", "image-r1"):
        for config in CONFIGS:
            sel = [r for r in rows if r["workload"] == workload and r["config"] == config]
            if not sel:
                continue
            lines.append(
                f"| {workload} | {config} | {statistics.median(r['steps'] for r in sel):.0f} | "
                f"{cell([r['step_us_p50'] for r in sel], '.0f')} | "
                f"{cell([r['gather_us_total_per_step'] for r in sel], '.1f')} | "
                f"{cell([r['mrope_calls_per_step'] for r in sel], '.2f')} | "
                f"{cell([r['mrope_us_total_per_step'] for r in sel], '.1f')} |")
    (out / "decode_runner_steps_cpu.md").write_text("\n".join(lines) + "\n")
    print(f"[runner-steps] wrote {out / 'decode_runner_steps_cpu.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
