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
        help="serve the tiny model with vLLM + the plugin on 127.0.0.1 and ask one question about an image",
        description="Build the tiny model (if needed), start vLLM's OpenAI server on a free loopback port, send one "
        "chat request with an image through the openai client, print the answer and usage, stop the server.",
    )
    p.add_argument("--model-dir", default=None, help="tiny model directory (default: .cache/tiny-qwen2_5_vl)")
    p.add_argument("--question", default="What colour is the shape?")
    p.add_argument("--max-tokens", type=int, default=16)

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from vs_vllm.demo import DEFAULT_MODEL_DIR, run_demo

        return run_demo(Path(args.model_dir) if args.model_dir else DEFAULT_MODEL_DIR, args.question, args.max_tokens)

    p.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vs-vllm",
        description="VisionSelector visual-token compression for vLLM: serve, convert, build test models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_demo, _add_tiny_model, _add_convert):
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
