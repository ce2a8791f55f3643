"""``vs-vllm eval`` implementation (the arguments are declared in :mod:`vs_vllm.cli`)."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import sys
from typing import Any

from vs_vllm.benchmarking.paths import portable_text
from vs_vllm.evaluation.data import dedupe, load_samples, parse_list, parse_ratios
from vs_vllm.evaluation.errors import EvalError
from vs_vllm.evaluation.report import write_outputs
from vs_vllm.evaluation.runner import SweepConfig, run_sweep

__all__ = ["machine_info", "run_eval"]


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def run_eval(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise EvalError("--concurrency must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise EvalError("--limit must be >= 1")
    ratios = parse_ratios(args.ratios)
    methods = dedupe(parse_list(args.methods, "methods"))
    samples = load_samples(args.data, image_root=args.image_root, limit=args.limit)
    cfg = SweepConfig(
        base_url=args.base_url, model=args.model, ratios=ratios, methods=methods, concurrency=args.concurrency,
        max_tokens=args.max_tokens, prompt_suffix=args.prompt_suffix, seed=args.seed, timeout=args.timeout,
        progress=not args.no_progress, api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
    )
    started = _dt.datetime.now().astimezone()
    predictions = run_sweep(samples, cfg, add_baseline=not args.no_baseline)
    context: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "server": args.base_url,
        "model": args.model,
        "data": f"{portable_text(args.data)} ({len(samples)} samples)",
        "methods": ", ".join(methods),
        "machine (client)": machine_info(),
        "command": "`vs-vllm eval " + portable_text(shlex.join(sys.argv[2:] if _invoked_as_eval() else [])) + "`",
    }
    title = args.title or f"{args.model}: {args.metric} vs retention ratio ({len(samples)} samples)"
    paths = write_outputs(predictions, methods, args.out_dir, name=args.name, metric=args.metric, title=title,
                          context=context)
    n_err = sum(p.get("error") is not None for p in predictions)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if n_err:
        print(f"warning: {n_err} of {len(predictions)} requests failed (scored 0; see the predictions file)",
              file=sys.stderr)
    return 0


def _invoked_as_eval() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "eval"
