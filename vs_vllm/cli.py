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
    p.add_argument("--arch", default="qwen2_5_vl", help="architecture to build (default: %(default)s)")
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
        help="serve the tiny model with `vs-vllm serve` on 127.0.0.1 and sweep the per-request retention ratio",
        description="Build the tiny model (if needed), start `vs-vllm serve` on a free loopback port, send the same "
        "image and question at several retention ratios through the openai client, print ratio, visual tokens "
        "kept/total, prompt tokens, time to first token and answer, then stop the server.",
    )
    p.add_argument("--model-dir", default=None, help="tiny model directory (default: .cache/tiny-qwen2_5_vl)")
    p.add_argument("--question", default="What colour is the shape?")
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--ratios", default="1.0,0.5,0.3,0.1,0.05", help="comma-separated ratios (default: %(default)s)")
    p.add_argument("--method", default="uniform",
                   help="selection method (default: %(default)s; visionselector needs a trained scorer)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from vs_vllm.demo import DEFAULT_MODEL_DIR, run_demo
        from vs_vllm.selection.budget import validate_ratio

        ratios = [validate_ratio(float(r)) for r in args.ratios.split(",") if r.strip()]
        model_dir = Path(args.model_dir) if args.model_dir else DEFAULT_MODEL_DIR
        return run_demo(model_dir, args.question, args.max_tokens, ratios=ratios, method=args.method)

    p.set_defaults(handler=run)


_SERVE_EPILOG = """\
per-request fields (top level of a /v1/chat/completions, /v1/completions or /v1/responses body, or inside
mm_processor_kwargs; each overrides the server default for that request only):
  retention_ratio    fraction of each image's visual tokens kept, 0 < r <= 1 (1.0 = unpruned)
  selection_method   visionselector, uniform, random, ...
  selection_seed     integer seed for the random method
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
        usage="%(prog)s MODEL [--retention-ratio R] [--selection-method M] [--scorer PATH] [--print-command]\n"
        "                     [vllm serve args ...]",
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
        "--selection-method",
        metavar="M",
        help="server-wide default selection method (default: visionselector, unless VS_VLLM_SELECTION_METHOD is set)",
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
            ("--selection-method", args.selection_method),
            ("--scorer", args.scorer),
        ):
            if value is not None:
                argv += [flag, value]
        if args.print_command:
            argv.append("--print-command")
        return serve_main([*argv, *args.vllm_args])

    p.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs-vllm",
        description="VisionSelector visual-token compression for vLLM: serve, convert, build test models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_serve, _add_demo, _add_tiny_model, _add_convert):
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
