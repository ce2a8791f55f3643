"""Decode benchmark: stock vLLM vs vs-vllm per decode step (ITL, TPOT) and TTFT, through the real OpenAI server.

What one run does (``vs-vllm bench decode``; ``--quick`` for a ~2 minute smoke run on the tiny model):

1. builds (once) the model: ``--model-kind bench`` the benchmark-size random-weight Qwen2.5-VL of the prefill benchmark
   (:mod:`vs_vllm.benchmarking.model`), ``--model-kind tiny`` the ~2.5M-parameter tiny Qwen2.5-VL of the tests (where
   per-step Python overhead shows most), each with a random-weight scorer of its hidden size beside it;
2. runs ONE server at a time, with identical vLLM arguments (fp32, prefix caching off, explicit KV-cache size): stock
   ``vllm serve`` (no ``VS_VLLM_*`` variable, so the plugin is inert) and ``vs-vllm serve --scorer ...``; every repeat
   starts, measures and stops each of them, in ABBA order (repeat 0: stock then plugin, repeat 1: plugin then stock,
   ...), so slow drifts of the machine cancel out of the plugin/stock ratios;
3. in every server session, after a warm-up of a few requests per workload, runs each workload once as a closed loop
   of streamed chat requests at a fixed concurrency (default 4): (a) ``text``: text-only prompts of fixed length and
   unique content; (b) ``image-r1``: one fresh random 224x224 JPEG per request, plugin at ``retention_ratio`` 1.0;
   (c) ``image-r0.3``: the same at ratio 0.3. The stock server gets the same images without plugin fields, so its
   ``image-r1`` and ``image-r0.3`` runs are identical requests: their difference is the noise floor. Every request
   asks for exactly N tokens (``max_tokens`` = ``min_tokens`` = N, ``ignore_eos``; default 96);
4. per request: TTFT (first streamed chunk), ITL (the gaps between streamed chunks carrying tokens: vLLM streams one
   token per chunk unless the API server falls behind and merges outputs, reported as tokens/chunk) and TPOT =
   (latency - TTFT) / (output tokens - 1); per run: ITL p50 / p90 / p99 over every gap of every request, TPOT and
   TTFT p50 over requests, the server's own histogram means (``vllm:inter_token_latency_seconds``, ...);
5. writes ``decode_cpu[_tiny].csv`` (one row per run), ``..._requests.csv`` (one row per request), ``..._meta.json``,
   ``....md`` (per cell the median over repeats with its min-max spread, the plugin/stock ratio of the medians with the
   spread of the per-repeat ratios, the zero-overhead goals (:data:`GOALS`) met or not) and ``..._itl.png`` (with
   matplotlib).

``--report-only DIR`` rebuilds the markdown and the plot from those files.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shlex
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vs_vllm.benchmarking.paths import portable_text
from vs_vllm.benchmarking.report import _num  # stdlib-only module: cheap at CLI start-up

__all__ = ["DecodeConfig", "Workload", "add_arguments", "config_from_args", "main", "run_benchmark",
           "run_from_args"]

MIB = 1024 * 1024
MODEL_KINDS = ("bench", "tiny")
DEFAULT_WORKLOADS = ("text", "image-r1", "image-r0.3")
#: The text-only workload's prompt after a unique request number (the image workloads ask BENCH_QUESTION).
TEXT_QUESTION = ("Write a detailed description of a busy harbour at dawn: the boats, their colours, the people on "
                 "the quays and the weather.")
DEFAULT_MODEL_DIRS = {"bench": ".cache/bench-qwen2_5_vl", "tiny": ".cache/tiny-qwen2_5_vl"}
QUICK_OUT = ".cache/bench-decode-quick"
#: What "zero cost when nothing is pruned" means, measured: (workload, metric column, label). Each is met when
#: plugin / stock <= 1 + GOAL_TOLERANCE.
GOALS = (
    ("text", "ttft_p50_ms", "text-only TTFT p50"),
    ("text", "itl_p50_ms", "text-only ITL p50"),
    ("image-r1", "itl_p50_ms", "ratio-1.0 image ITL p50"),
    ("image-r1", "ttft_p50_ms", "ratio-1.0 image TTFT p50"),
)
#: Reported beside the goals, not goals themselves: TPOT, and the server's ITL mean (engine-core timestamps of
#: consecutive tokens: the per-step time with the plugin's model-runner work, whatever the API server and the client do
#: with the stream; the one per-step measure a burst, see BURST_GAP_MS, cannot distort).
SUPPLEMENTARY_GOALS = (
    ("text", "tpot_p50_ms", "text-only TPOT p50 (supplementary)"),
    ("text", "srv_itl_ms", "text-only server ITL mean (supplementary)"),
    ("image-r1", "tpot_p50_ms", "ratio-1.0 image TPOT p50 (supplementary)"),
    ("image-r1", "srv_itl_ms", "ratio-1.0 image server ITL mean (supplementary)"),
)
GOAL_TOLERANCE = 0.01
#: A gap shorter than this is no decode step (the tiny model's step takes > 1 ms on a CPU): the chunks were sent or
#: read together (a CPU-starved API server or client). Their share of all gaps says how far ITL percentiles are
#: per-step times.
BURST_GAP_MS = 0.2
BURST_WARN_SHARE = 0.10
#: Per-run metrics summarised over repeats (column, table label).
METRICS = (
    ("itl_p50_ms", "ITL p50"),
    ("itl_p99_ms", "ITL p99"),
    ("tpot_p50_ms", "TPOT p50"),
    ("ttft_p50_ms", "TTFT p50"),
)
#: Server histograms whose means over a run are recorded: (row column, metric name).
SERVER_HISTOGRAMS = (
    ("srv_itl_ms", "vllm:inter_token_latency_seconds"),
    ("srv_tpot_ms", "vllm:request_time_per_output_token_seconds"),
    ("srv_ttft_ms", "vllm:time_to_first_token_seconds"),
)


@dataclass(frozen=True)
class Workload:
    """``text`` (text-only prompts) or ``image-r<ratio>`` (one image per request, the plugin at that ratio)."""

    name: str

    def __post_init__(self) -> None:
        if self.name != "text":
            if not self.name.startswith("image-r"):
                raise ValueError(f"a workload is 'text' or 'image-r<ratio>' (e.g. image-r0.3), got {self.name!r}")
            from vs_vllm.selection.budget import validate_ratio

            try:
                validate_ratio(float(self.name[len("image-r"):]))
            except ValueError as exc:
                raise ValueError(f"bad workload {self.name!r}: {exc}") from None

    @property
    def is_image(self) -> bool:
        return self.name != "text"

    @property
    def ratio(self) -> float | None:
        return float(self.name[len("image-r"):]) if self.is_image else None

    @property
    def title(self) -> str:
        if not self.is_image:
            return "text-only"
        r = self.ratio
        return f"image, ratio {r:.1f}" if round(r * 10) == r * 10 else f"image, ratio {r:g}"


@dataclass
class DecodeConfig:
    model_kind: str = "bench"
    workloads: list[str] = field(default_factory=lambda: list(DEFAULT_WORKLOADS))
    image_size: tuple[int, int] = (224, 224)
    concurrency: int = 4
    output_tokens: int = 96
    requests: int = 48  # timed requests per run
    warmup_requests: int = 4  # per workload and server session, excluded
    repeats: int = 3
    method: str = "visionselector"
    eager: bool = False
    dtype: str = "float32"
    max_model_len: int = 2048
    max_num_seqs: int = 8
    max_num_batched_tokens: int = 2048
    kv_cache_bytes: int = 64 * MIB
    image_format: str = "JPEG"
    served_model_name: str = "bench"
    startup_timeout: float = 900.0
    quick: bool = False

    def __post_init__(self) -> None:
        if self.model_kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.model_kind!r}")
        if not self.workloads:
            raise ValueError("no workload")
        for w in self.workloads:
            Workload(w)  # validates
        if len(set(self.workloads)) != len(self.workloads):
            raise ValueError(f"workloads repeat: {self.workloads}")
        if self.output_tokens < 2:
            raise ValueError("--output-tokens must be >= 2 (ITL needs two tokens)")
        for name in ("concurrency", "requests", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        if self.warmup_requests < 0:
            raise ValueError("--warmup-requests must be >= 0")
        if min(self.image_size) < 1:
            raise ValueError(f"bad image size {self.image_size}")
        self.max_num_seqs = max(self.max_num_seqs, self.concurrency)

    @property
    def stem(self) -> str:
        return "decode_cpu" if self.model_kind == "bench" else "decode_cpu_tiny"

    def workload_objs(self) -> list[Workload]:
        return [Workload(w) for w in self.workloads]

    def server_args(self) -> list[str]:
        """The vLLM arguments both servers get (after MODEL); the same flags as the prefill benchmark."""
        from vs_vllm.benchmarking.prefill import bench_server_args

        return bench_server_args(self, '{"image": 1, "video": 0}')


# ------------------------------------------------------------------------------------------------------------ model


def ensure_model(kind: str, model_dir: Path, scorer: Path | None = None, log=print) -> tuple[Path, Path]:
    """The model of ``kind`` in ``model_dir`` (built if missing) and its scorer (``scorer``, or
    ``<model_dir>-scorer.safetensors`` written with random weights if missing)."""
    if kind == "bench":
        if scorer is None:
            from vs_vllm.benchmarking.model import ensure_bench_model

            return ensure_bench_model(model_dir, log=log)
        if not (model_dir / "model.safetensors").exists():
            from vs_vllm.benchmarking.model import ensure_bench_model

            model_dir, _ = ensure_bench_model(model_dir, log=log)
    elif not ((model_dir / "model.safetensors").exists() and (model_dir / "config.json").exists()):
        from vs_vllm.testing.tiny_models import build_tiny_model

        log(f"[decode] building the tiny model in {model_dir} ...")
        build_tiny_model(model_dir, arch="qwen2_5_vl", seed=0)
    if scorer is None:
        # Beside the directory, not in it: vLLM loads every *.safetensors file of a model directory as weights.
        scorer = model_dir.with_name(model_dir.name + "-scorer.safetensors")
        if not scorer.exists():
            from vs_vllm.benchmarking.model import _write_scorer

            log(f"[decode] writing a random scorer for {model_dir} to {scorer} ...")
            _write_scorer(model_dir, scorer, 0)
    if not Path(scorer).exists():
        raise FileNotFoundError(f"scorer {scorer} not found")
    return model_dir, Path(scorer)


# ---------------------------------------------------------------------------------------------------------- payloads


class Payloads:
    """Request bodies: every text prompt and every image is new (a running seed), so no prefix, multimodal or encoder
    cache can hit; text prompts have a fixed token count (the Qwen pre-tokenizer splits digits one by one)."""

    def __init__(self, cfg: DecodeConfig, base_seed: int = 2_000_000) -> None:
        self.cfg = cfg
        self.next_seed = base_seed

    def _common(self) -> dict[str, Any]:
        n = self.cfg.output_tokens
        return {"max_tokens": n, "min_tokens": n, "ignore_eos": True, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True}}

    def text_prompt(self, seed: int) -> str:
        return f"Request {seed:09d}. {TEXT_QUESTION}"

    def make(self, n: int, workload: Workload, server: str) -> list[dict[str, Any]]:
        from vs_vllm.benchmarking.client import build_payload
        from vs_vllm.benchmarking.model import BENCH_QUESTION
        from vs_vllm.testing.images import noise_image, to_data_url

        out = []
        for _ in range(n):
            self.next_seed += 1
            if not workload.is_image:
                payload = {"model": self.cfg.served_model_name,
                           "messages": [{"role": "user", "content": self.text_prompt(self.next_seed)}]}
                payload.update(self._common())
            else:
                extra = None
                if server == "plugin":
                    extra = {"retention_ratio": workload.ratio, "selection_method": self.cfg.method}
                url = to_data_url(noise_image(*self.cfg.image_size, seed=self.next_seed), self.cfg.image_format)
                payload = build_payload(self.cfg.served_model_name, url, BENCH_QUESTION, extra=extra,
                                        max_tokens=self.cfg.output_tokens)
                payload.update(self._common())
            out.append(payload)
        return out


# ------------------------------------------------------------------------------------------------------------- runs


def _scrape(base_url: str) -> dict[str, list[float]]:
    from vs_vllm.benchmarking.client import parse_metrics

    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as resp:
            return parse_metrics(resp.read().decode("utf-8", "replace"))
    except OSError:
        return {}


def _histogram_means_ms(before: Mapping[str, list[float]], after: Mapping[str, list[float]]) -> dict[str, float]:
    out = {}
    for col, name in SERVER_HISTOGRAMS:
        d_sum = sum(after.get(f"{name}_sum", [])) - sum(before.get(f"{name}_sum", []))
        d_count = sum(after.get(f"{name}_count", [])) - sum(before.get(f"{name}_count", []))
        out[col] = d_sum / d_count * 1e3 if d_count > 0 else math.nan
    return out


def tpot_s(r: Any) -> float | None:
    """(latency - TTFT) / (output tokens - 1) of one request result, or None."""
    if not r.ok or r.output_tokens is None or r.output_tokens < 2 or r.ttft_s is None or r.latency_s is None:
        return None
    return (r.latency_s - r.ttft_s) / (r.output_tokens - 1)


def run_row(cfg: DecodeConfig, workload: Workload, server: str, result: Any, *, n_visual: int) -> dict[str, Any]:
    """The per-run statistics of one closed-loop run (see the module doc)."""
    from vs_vllm.benchmarking.prefill import _expected_keep
    from vs_vllm.benchmarking.stats import percentile, summarize

    ok = result.ok
    gaps_ms = [g * 1e3 for r in ok for g in r.itl_s]
    tpots = [t * 1e3 for t in (tpot_s(r) for r in ok) if t is not None]
    ttft = summarize(r.ttft_s * 1e3 for r in ok)
    out_tokens = [r.output_tokens for r in ok if r.output_tokens is not None]
    chunks = sum(r.token_chunks for r in ok)
    prompt = summarize(r.prompt_tokens for r in ok if r.prompt_tokens is not None)
    kept = summarize(r.visual_kept for r in ok if r.visual_kept is not None)
    ratio = workload.ratio if server == "plugin" else None
    k = 0
    if workload.is_image:
        k = int(kept["p50"]) if kept["n"] else (n_visual if ratio is None else _expected_keep(n_visual, ratio))
    nan = math.nan
    return {
        "server": server,
        "workload": workload.name,
        "image": "x".join(map(str, cfg.image_size)) if workload.is_image else "",
        "ratio": "" if ratio is None else ratio,
        "method": cfg.method if server == "plugin" and workload.is_image else "",
        "concurrency": cfg.concurrency,
        "requests": len(result.results),
        "ok": len(ok),
        "failed": len(result.results) - len(ok),
        "output_tokens": summarize(out_tokens)["p50"] if out_tokens else nan,
        "wrong_length": sum(1 for t in out_tokens if t != cfg.output_tokens) + (len(ok) - len(out_tokens)),
        "tokens_per_chunk": sum(out_tokens) / chunks if chunks else nan,
        "prompt_tokens": prompt["p50"],
        "visual_tokens": n_visual if workload.is_image else 0,
        "visual_kept": k,
        "itl_n": len(gaps_ms),
        "itl_p50_ms": percentile(gaps_ms, 50),
        "itl_p90_ms": percentile(gaps_ms, 90),
        "itl_p99_ms": percentile(gaps_ms, 99),
        "itl_mean_ms": sum(gaps_ms) / len(gaps_ms) if gaps_ms else nan,
        "itl_burst_share": sum(1 for g in gaps_ms if g < BURST_GAP_MS) / len(gaps_ms) if gaps_ms else nan,
        "tpot_p50_ms": percentile(tpots, 50),
        "tpot_mean_ms": sum(tpots) / len(tpots) if tpots else nan,
        "ttft_p50_ms": ttft["p50"],
        "ttft_p90_ms": ttft["p90"],
        "ttft_mean_ms": ttft["mean"],
        "latency_p50_ms": summarize(r.latency_s * 1e3 for r in ok)["p50"],
        "wall_s": result.wall_s,
        "output_tok_per_s": sum(out_tokens) / result.wall_s if result.wall_s > 0 else nan,
    }


def request_rows(run_id: int, row: Mapping[str, Any], result: Any) -> list[dict[str, Any]]:
    from vs_vllm.benchmarking.stats import percentile

    out = []
    for i, r in enumerate(result.results):
        t = tpot_s(r)
        out.append({
            "run_id": run_id, "request": i, "repeat": row["repeat"], "server": row["server"],
            "workload": row["workload"], "ok": int(r.ok),
            "ttft_ms": r.ttft_s * 1e3 if r.ttft_s is not None else "",
            "latency_ms": r.latency_s * 1e3 if r.latency_s is not None else "",
            "tpot_ms": t * 1e3 if t is not None else "",
            "output_tokens": r.output_tokens if r.output_tokens is not None else "",
            "token_chunks": r.token_chunks,
            "itl_p50_ms": percentile(r.itl_s, 50) * 1e3 if r.itl_s else "",
            "itl_max_ms": max(r.itl_s) * 1e3 if r.itl_s else "",
            "prompt_tokens": r.prompt_tokens if r.prompt_tokens is not None else "",
            "visual_kept": r.visual_kept if r.visual_kept is not None else "",
            "error": r.error,
        })
    return out


def session_order(repeats: int) -> list[tuple[int, str]]:
    """(repeat, server) in ABBA order: stock, plugin | plugin, stock | stock, plugin | ..."""
    out = []
    for rep in range(repeats):
        pair = ("stock", "plugin") if rep % 2 == 0 else ("plugin", "stock")
        out += [(rep, name) for name in pair]
    return out


def run_session(cfg: DecodeConfig, server: Any, name: str, rep: int, payloads: Payloads, n_visual: int,
                log=print) -> tuple[list[dict[str, Any]], list[Any]]:
    """Warm-up and one timed run per workload on a running server. Returns (rows without ids, results)."""
    from vs_vllm.benchmarking.client import run_closed_loop_sync

    workloads = cfg.workload_objs()
    k = rep % len(workloads)
    order = workloads[k:] + workloads[:k]  # rotated per repeat; both servers of a repeat run the same order
    for w in workloads:
        if cfg.warmup_requests == 0:
            continue
        warm = run_closed_loop_sync(server.base_url, payloads.make(cfg.warmup_requests, w, name),
                                    min(cfg.concurrency, cfg.warmup_requests), metrics_interval=0)
        if not warm.ok:
            errors = sorted({r.error for r in warm.results})
            raise RuntimeError(f"warm-up of {name} / {w.name} failed: {errors[:2]}")
        lengths = {r.output_tokens for r in warm.ok}
        if lengths != {cfg.output_tokens}:
            log(f"[decode] WARNING: {name} / {w.name}: asked for {cfg.output_tokens} tokens, got {sorted(lengths)}")
        prompts = {r.prompt_tokens for r in warm.ok}
        if len(prompts) > 1:
            log(f"[decode] WARNING: {name} / {w.name}: prompt lengths vary: {sorted(prompts)}")
    rows, results = [], []
    for w in order:
        load = os.getloadavg()[0]
        before = _scrape(server.base_url)
        result = run_closed_loop_sync(server.base_url, payloads.make(cfg.requests, w, name), cfg.concurrency,
                                      metrics_interval=0)
        after = _scrape(server.base_url)
        row = {"time": _dt.datetime.now().isoformat(timespec="seconds"), "repeat": rep,
               **run_row(cfg, w, name, result, n_visual=n_visual), **_histogram_means_ms(before, after),
               "loadavg_1m": round(load, 2)}
        rows.append(row)
        results.append(result)
        failed = [r.error for r in result.results if not r.ok]
        log(f"[decode]   {name:>6} {w.name:<11} ITL p50 {row['itl_p50_ms']:.2f} ms, p99 {row['itl_p99_ms']:.2f}, "
            f"TPOT {row['tpot_p50_ms']:.2f}, TTFT p50 {row['ttft_p50_ms']:.0f} ms, "
            f"{row['tokens_per_chunk']:.2f} tok/chunk, {row['itl_burst_share']:.0%} gaps < {BURST_GAP_MS} ms, "
            f"load {load:.1f}"
            + (f"  FAILED {len(failed)}: {failed[0]}" if failed else "")
            + (f"  WRONG LENGTH {row['wrong_length']}" if row["wrong_length"] else ""))
    return rows, results


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_benchmark(cfg: DecodeConfig, model_dir: Path, out_dir: Path, command_line: str, *,
                  scorer: Path | None = None, log=_log, server_factory: Callable[..., dict[str, Any]] | None = None
                  ) -> Path:
    """The whole benchmark; returns the markdown report's path. ``server_factory(cfg, model_dir, scorer, log_dir)``
    (default: the prefill benchmark's ``make_servers``) returns ``{"stock": VLLMServer, "plugin": VLLMServer}``, not
    started; a new pair is made for every server session (fresh ports and logs) and only one of them is started."""
    from vs_vllm.benchmarking.flops import Media
    from vs_vllm.benchmarking.prefill import (
        _server_command_line,
        _visual_tokens,
        machine_info,
        make_servers,
        read_csv,
        versions,
        worker_threads_from_log,
        write_csv,
    )

    server_factory = server_factory or make_servers
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir, scorer = ensure_model(cfg.model_kind, Path(model_dir), scorer, log=log)
    n_visual = _visual_tokens(model_dir, Media(*cfg.image_size))
    card = model_dir / "vs_vllm_tiny_model.json"
    meta: dict[str, Any] = {
        "benchmark": "decode",
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command_line,
        "config": asdict(cfg),
        "stem": cfg.stem,
        "machine": machine_info(),
        "versions": versions(),
        "model_dir": str(model_dir),
        "scorer": str(scorer),
        "model_config": json.loads(card.read_text()).get("sizes") if card.exists() else None,
        "visual_tokens": n_visual,
        "text_prompt_example": Payloads(cfg).text_prompt(1),
    }
    log_root = Path(tempfile.mkdtemp(prefix="vs-bench-decode-"))
    log(f"[decode] {cfg.model_kind} model {model_dir}, scorer {scorer}; server logs in {log_root}")
    sessions = session_order(cfg.repeats)
    runs: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    payloads = Payloads(cfg)
    t0 = time.monotonic()
    meta["sessions"] = []
    stem = cfg.stem
    for i, (rep, name) in enumerate(sessions):
        (log_root / f"{i:02d}_{name}").mkdir(parents=True, exist_ok=True)
        servers = server_factory(cfg, model_dir, scorer, log_root / f"{i:02d}_{name}")
        server = servers[name]
        meta.setdefault("server_commands", {n: _server_command_line(s, n == "plugin") for n, s in servers.items()})
        elapsed = time.monotonic() - t0
        eta = f", ETA {elapsed / i * (len(sessions) - i) / 60:.1f} min" if i else ""
        log(f"[decode] session {i + 1}/{len(sessions)} (repeat {rep}): starting {name} server on {server.base_url}"
            f"{eta} ...")
        t_start = time.monotonic()
        server.start()
        try:
            startup = time.monotonic() - t_start
            log(f"[decode]   {name} up after {startup:.0f} s; warm-up ({cfg.warmup_requests} requests per workload), "
                f"then {len(cfg.workloads)} runs of {cfg.requests} requests x {cfg.output_tokens} tokens ...")
            rows, results = run_session(cfg, server, name, rep, payloads, n_visual, log=log)
        finally:
            server.stop()
        threads = worker_threads_from_log(server.log_path)
        runner = server.model_runner()
        meta["sessions"].append({"session": i, "repeat": rep, "server": name, "startup_s": round(startup, 1),
                                 "worker_threads": threads, "runner": runner, "log": portable_text(server.log_path)})
        meta.setdefault("runners", {})[f"{name} (session {i})"] = runner
        meta["worker_threads"] = meta.get("worker_threads") or threads
        for row, result in zip(rows, results):
            run_id = len(runs)
            runs.append({"run_id": run_id, "session": i, **row, "startup_s": round(startup, 1)})
            requests.extend(request_rows(run_id, runs[-1], result))
        # Written after every session, so an interrupted run keeps what it measured.
        write_csv(out_dir / f"{stem}.csv", runs)
        write_csv(out_dir / f"{stem}_requests.csv", requests)
    meta["sweep_s"] = round(time.monotonic() - t0, 1)
    meta["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    meta["loadavg_end"] = os.getloadavg()
    (out_dir / f"{stem}_meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    # From the CSV, as --report-only renders it, so the committed report is reproducible from the committed files.
    return write_report(out_dir, read_csv(out_dir / f"{stem}.csv"), meta)


# ------------------------------------------------------------------------------------------------------- summaries


def _median(xs: Sequence[float]) -> float:
    from vs_vllm.benchmarking.stats import percentile

    xs = [x for x in xs if not math.isnan(x)]
    return percentile(xs, 50) if xs else math.nan


class DecodeSummary:
    """Per (workload, server): every metric's median over repeats with min-max; per workload and metric: the
    plugin/stock ratio of the medians and the min-max of the per-repeat ratios."""

    def __init__(self, runs: Sequence[Mapping[str, Any]]) -> None:
        seen = list(dict.fromkeys(r["workload"] for r in runs))
        self.workloads = [w for w in DEFAULT_WORKLOADS if w in seen] + [w for w in seen if w not in DEFAULT_WORKLOADS]
        self.servers = [s for s in ("stock", "plugin") if any(r["server"] == s for r in runs)]
        self.rows: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
        for r in runs:
            self.rows[(r["workload"], r["server"])].append(r)

    def values(self, workload: str, server: str, col: str) -> list[float]:
        return [_num(r.get(col)) for r in self.rows.get((workload, server), [])]

    def cell(self, workload: str, server: str, col: str) -> tuple[float, float, float]:
        """(median, min, max) over repeats."""
        xs = [x for x in self.values(workload, server, col) if not math.isnan(x)]
        if not xs:
            return math.nan, math.nan, math.nan
        return _median(xs), min(xs), max(xs)

    def ratio(self, workload: str, col: str) -> tuple[float, float, float]:
        """(plugin median / stock median, min and max of the per-repeat plugin/stock ratios)."""
        p, s = self.cell(workload, "plugin", col)[0], self.cell(workload, "stock", col)[0]
        ratio = p / s if s and not math.isnan(s) else math.nan
        by_rep: dict[int, dict[str, float]] = defaultdict(dict)
        for server in ("stock", "plugin"):
            for r in self.rows.get((workload, server), []):
                by_rep[int(r["repeat"])][server] = _num(r.get(col))
        per = [d["plugin"] / d["stock"] for d in by_rep.values()
               if "plugin" in d and "stock" in d and d["stock"] and not math.isnan(d["plugin"] / d["stock"])]
        return ratio, (min(per) if per else math.nan), (max(per) if per else math.nan)

    def first(self, workload: str, server: str, col: str) -> Any:
        rows = self.rows.get((workload, server), [])
        return rows[0].get(col) if rows else None

    def total(self, workload: str, server: str, col: str) -> int:
        return int(sum(_num(r.get(col)) for r in self.rows.get((workload, server), []) if r.get(col) != ""))

    def noise_floor(self, col: str) -> float:
        """|stock image-r<x> / stock image-r1 - 1| over the other image workloads (identical stock requests)."""
        base = self.cell("image-r1", "stock", col)[0]
        others = [self.cell(w, "stock", col)[0] for w in self.workloads if w.startswith("image-r") and w != "image-r1"]
        devs = [abs(o / base - 1) for o in others if base and not math.isnan(o) and not math.isnan(base)]
        return max(devs) if devs else math.nan


    def session_spread(self, workload: str, col: str) -> float:
        """How much one server's sessions differ from each other on ``workload``: (max - min) / median over its
        repeats, the larger of the two servers'. Every stock and plugin value comes from its own server session, so
        a plugin/stock ratio is subject to this between-session spread (an A/A run of two identical stock servers
        shows ratios as far from 1; benchmarks/results/checks/decode_between_sessions/), which the within-session
        noise floor does not see."""
        spreads = []
        for server in ("stock", "plugin"):
            xs = [x for x in self.values(workload, server, col) if not math.isnan(x)]
            if len(xs) >= 2:
                spreads.append((max(xs) - min(xs)) / _median(xs))
        return max(spreads) if spreads else math.nan


def goal_rows(summary: DecodeSummary) -> list[dict[str, Any]]:
    out = []
    for workload, col, label in (*GOALS, *SUPPLEMENTARY_GOALS):
        if workload not in summary.workloads:
            continue
        ratio, lo, hi = summary.ratio(workload, col)
        spread = summary.session_spread(workload, col)
        if math.isnan(ratio):
            verdict = "not measured"
        elif not math.isnan(spread) and spread > GOAL_TOLERANCE and abs(ratio - 1) <= spread:
            # One server's own sessions differ this much: a +1% goal cannot be judged either way.
            verdict = (f"not resolved: {ratio - 1:+.1%} vs stock, within the {spread:.1%} that one server's own "
                       "sessions differ by")
        elif ratio <= 1 + GOAL_TOLERANCE:
            verdict = "met" + (f" (but the per-repeat spread reaches {hi - 1:+.1%})" if hi > 1 + GOAL_TOLERANCE
                               else "")
        else:
            verdict = (f"NOT met: {ratio - 1:+.1%} vs stock, {(ratio - 1 - GOAL_TOLERANCE) * 100:.1f} points over the "
                       f"+{GOAL_TOLERANCE:.0%} goal") + (
                " (the per-repeat spread reaches the goal)" if lo <= 1 + GOAL_TOLERANCE else "")
        out.append({"goal": label, "workload": workload, "metric": col, "ratio": ratio, "lo": lo, "hi": hi,
                    "session_spread": spread, "met": verdict.startswith("met"), "verdict": verdict})
    return out


# -------------------------------------------------------------------------------------------------------- markdown


def _f(x: Any, fmt: str = ".2f", empty: str = "–") -> str:
    v = _num(x)
    return empty if math.isnan(v) else format(v, fmt)


def _cell_text(c: tuple[float, float, float], fmt: str) -> str:
    med, lo, hi = c
    if math.isnan(med):
        return "–"
    return f"{med:{fmt}} [{lo:{fmt}}–{hi:{fmt}}]" if hi > lo else f"{med:{fmt}}"


def _ratio_text(r: tuple[float, float, float]) -> str:
    ratio, lo, hi = r
    if math.isnan(ratio):
        return "–"
    return f"{ratio:.3f} [{lo:.3f}–{hi:.3f}]" if not math.isnan(lo) and hi > lo else f"{ratio:.3f}"


def _header(meta: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    from vs_vllm.benchmarking.report import _fmt_load, commands_block, runner_text

    cfg, m, v = meta["config"], meta["machine"], meta.get("versions", {})
    loads = [_num(r.get("loadavg_1m")) for r in runs]
    loads = [x for x in loads if not math.isnan(x)]
    load_txt = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "?"
    cpus = m.get("cpus_available") or m.get("logical_cpus") or 1
    start_load = float((m.get("loadavg_start") or [0.0])[0])
    peak = max([*loads, start_load, float((meta.get("loadavg_end") or [0.0])[0])])
    # One server (API server, engine core, worker) plus the client keep a 2-CPU machine's load at ~2-3: more, or a
    # high load before the first server starts, means other work shared the cores.
    warning = ([f"**Loaded machine:** the 1-minute load average was {start_load:.1f} at the start and peaked at "
                f"{peak:.1f} on {cpus} CPUs, so absolute times are inflated and noisier than on a quiet machine; "
                "stock and plugin sessions alternate (ABBA), so the ratios are the more robust result.", ""]
               if start_load >= cpus + 1 or peak > 2 * cpus + 1 else [])
    bursts = [_num(r.get("itl_burst_share")) for r in runs]
    bursts = [b for b in bursts if not math.isnan(b)]
    if bursts and max(bursts) > BURST_WARN_SHARE:
        warning += [f"**Bursty streams:** up to {max(bursts):.0%} of a run's token gaps were shorter than "
                    f"{BURST_GAP_MS} ms (median over runs {_median(bursts):.0%}): chunks reached the client in bursts "
                    "(a CPU-starved API server or client), so ITL percentiles there are not per-step times, and when "
                    "a whole stream arrives at once TTFT absorbs the decode and TPOT drops towards 0. The server's "
                    "ITL mean (engine-core timestamps) is the per-step measure to read there.",
                    ""]
    quick = " (QUICK MODE: smoke test, not for conclusions)" if cfg.get("quick") else ""
    model = ("the benchmark-size random-weight Qwen2.5-VL of the prefill benchmark" if cfg["model_kind"] == "bench"
             else "the tiny random-weight Qwen2.5-VL of the tests (per-step Python overhead shows most)")
    sizes = meta.get("model_config") or {}
    size_txt = (f" (LLM hidden {sizes.get('text_hidden')}, {sizes.get('text_layers')} layers; ViT depth "
                f"{sizes.get('vision_depth')}, hidden {sizes.get('vision_hidden')})") if sizes else ""
    sessions = meta.get("sessions") or []
    startup = [s["startup_s"] for s in sessions]
    workloads = ", ".join(f"`{w}` ({Workload(w).title})" for w in cfg["workloads"])
    lines = [
        f"# Decode on CPU: stock vLLM vs vs-vllm, {cfg['model_kind']} model{quick}",
        "",
        f"Run {meta.get('started')} → {meta.get('finished')} (total {meta.get('sweep_s')} s).",
        "",
        *warning,
        f"- Machine: {m.get('cpu')}, {m.get('logical_cpus')} logical CPUs ({m.get('cpus_available')} available), "
        f"{m.get('mem_gib')} GiB, {m.get('os')}; SIMD: {m.get('simd_flags')}. 1-min load average during runs: "
        f"{load_txt} (start {_fmt_load(m.get('loadavg_start'))}, end {_fmt_load(meta.get('loadavg_end'))}).",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f", Python {m.get('python')}.",
        f"- vLLM model runner: {runner_text(meta.get('runners'))}.",
        f"- Model: {model}{size_txt}; scorer: random weights of its hidden size. vLLM worker: "
        f"{meta.get('worker_threads')} OpenMP thread(s).",
        f"- Servers: one at a time, started, measured and stopped per session; {cfg['repeats']} "
        f"repeat{'s' if cfg['repeats'] != 1 else ''} in ABBA "
        f"order (stock, plugin | plugin, stock | ...), {len(sessions)} sessions"
        + (f", start-up {min(startup):.0f}–{max(startup):.0f} s" if startup else "")
        + f". Both: {cfg['dtype']}, {'eager (--enforce-eager)' if cfg['eager'] else 'torch.compile'}, no prefix "
        f"caching, KV cache {cfg['kv_cache_bytes'] // MIB} MiB (`--kv-cache-memory-bytes`), max-num-seqs "
        f"{cfg['max_num_seqs']}. The stock server runs without any `VS_VLLM_*` variable (plugin inert).",
        f"- Workloads: {workloads}; per session, after {cfg['warmup_requests']} warm-up requests per workload, one "
        f"closed-loop run per workload (order rotated per repeat, the same for both servers of a repeat) of "
        f"{cfg['requests']} streamed chat requests at concurrency {cfg['concurrency']}, each decoding exactly "
        f"{cfg['output_tokens']} tokens (`max_tokens` = `min_tokens`, `ignore_eos`, temperature 0). Text prompts: "
        f"fixed length, unique content (`{meta.get('text_prompt_example', '')}` with a running number). Images: "
        f"a fresh random {cfg['image_size'][0]}×{cfg['image_size'][1]} {cfg['image_format']} per request "
        f"({meta.get('visual_tokens')} visual tokens); the plugin gets `retention_ratio` and `selection_method` "
        f"{cfg['method']}, stock the same images without them (so its image workloads are identical requests).",
        "- Metrics: TTFT = first streamed chunk; ITL = gaps between the streamed chunks that carry tokens (p50/p99 over "
        "all gaps of a run); TPOT = (latency − TTFT) / (tokens − 1), p50 over a run's requests. Cells: median over "
        "repeats [min–max]; ratios: plugin median / stock median [min–max of the per-repeat plugin/stock ratios].",
        "",
        *commands_block(meta.get("command", ""), meta.get("server_commands") or {}),
    ]
    return lines


def render_markdown(runs: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    from vs_vllm.benchmarking.report import _table

    summary = DecodeSummary(runs)
    lines = _header(meta, runs)
    goals = goal_rows(summary)
    noise_metrics = (*METRICS, ("srv_itl_ms", "server ITL mean"))
    noise = {col: summary.noise_floor(col) for col, _ in noise_metrics}
    lines += ["## Goals", "",
              "Plugin / stock ratio of the medians over repeats; a goal is met when it is at most 1.01.", ""]
    lines += _table(["goal", "plugin / stock [per-repeat min–max]", "verdict"],
                    [[g["goal"], _ratio_text((g["ratio"], g["lo"], g["hi"])), g["verdict"]] for g in goals],
                    align="lrl")
    if not all(math.isnan(x) for x in noise.values()):
        lines += ["", "Noise floor: the stock server's image workloads are identical requests; their medians differ "
                  "by " + ", ".join(f"{label} {noise[col]:.1%}" for col, label in noise_metrics
                                   if not math.isnan(noise[col]))
                  + ". A ratio within that of 1.0 is not resolved by this run."]
    spreads = {label: summary.session_spread(w, col) for w, col, label in GOALS if w in summary.workloads}
    spreads = {k: v for k, v in spreads.items() if not math.isnan(v)}
    if spreads:
        lines += ["", "Between sessions: each server runs in its own sessions, so every ratio also carries how much "
                  "identical servers differ from one start to the next. One server's own sessions (max − min over "
                  "repeats, relative to the median; the larger of the two servers) differ by " + ", ".join(f"{k} {v:.1%}" for k, v in
                                                                                 spreads.items())
                  + "; a goal whose ratio lies within that of 1.0 is reported as not resolved."]
    lines += [""]

    rows = []
    for w in summary.workloads:
        for s in summary.servers:
            if not summary.rows.get((w, s)):
                continue
            rows.append([
                Workload(w).title, s,
                _f(summary.first(w, s, "prompt_tokens"), ".0f"),
                "–" if not Workload(w).is_image else _f(summary.first(w, s, "visual_kept"), ".0f"),
                *(_cell_text(summary.cell(w, s, col), ".2f" if "ttft" not in col else ".1f") for col, _ in METRICS),
                _f(summary.cell(w, s, "srv_itl_ms")[0]),
                _f(summary.cell(w, s, "tokens_per_chunk")[0]),
                _f(summary.cell(w, s, "itl_burst_share")[0] * 100, ".0f"),
                _f(summary.cell(w, s, "output_tok_per_s")[0], ".0f"),
                str(summary.total(w, s, "ok")) + (f" ({summary.total(w, s, 'failed')} failed)"
                                                   if summary.total(w, s, "failed") else "")
                + (f", {summary.total(w, s, 'wrong_length')} wrong length"
                   if summary.total(w, s, "wrong_length") else ""),
            ])
    lines += ["## Results", "",
              "Milliseconds, median over repeats [min–max]. Server ITL: mean of vLLM's own "
              "`vllm:inter_token_latency_seconds` over the run (the engine core's timestamps of consecutive tokens: "
              "the per-step time including the plugin's model-runner work, but not the API server's streaming nor the "
              "client). tok/chunk: "
              "generated tokens per streamed chunk (1.00: no merged outputs). % gaps < "
              f"{BURST_GAP_MS} ms: chunks that reached the client together (no decode step is that short); "
              "a large share means the API server or the client was starved of CPU and sent or read the stream in "
              "bursts, so the client-side ITL percentiles (and TPOT, when whole streams arrive at once) are not "
              "per-step times there; the server ITL still is.", ""]
    lines += _table(["workload", "server", "prompt tok", "K", *(f"{label} ms" for _, label in METRICS),
                     "server ITL mean ms", "tok/chunk", f"% gaps < {BURST_GAP_MS} ms", "output tok/s", "requests"],
                    rows, align="ll" + "r" * 11)
    lines += ["", "### Plugin / stock", "",
              "Ratio of the medians over repeats [min–max of the per-repeat ratios]; > 1 means the plugin is slower.",
              ""]
    ratio_rows = []
    for w in summary.workloads:
        if len(summary.servers) < 2:
            break
        ratio_rows.append([Workload(w).title, *(_ratio_text(summary.ratio(w, col)) for col, _ in METRICS),
                           _ratio_text(summary.ratio(w, "srv_itl_ms"))])
    lines += _table(["workload", *(label for _, label in METRICS), "server ITL mean"], ratio_rows)
    lines += ["", "## Every run", ""]
    lines += _table(
        ["run", "repeat", "session", "server", "workload", "ITL p50", "ITL p99", "TPOT p50", "TTFT p50",
         "server ITL", "tok/chunk", f"% gaps < {BURST_GAP_MS} ms", "ok", "load"],
        [[str(r["run_id"]), str(r["repeat"]), str(r["session"]), r["server"], r["workload"],
          _f(r["itl_p50_ms"]), _f(r["itl_p99_ms"]), _f(r["tpot_p50_ms"]), _f(r["ttft_p50_ms"], ".1f"),
          _f(r.get("srv_itl_ms")), _f(r["tokens_per_chunk"]), _f(_num(r.get("itl_burst_share")) * 100, ".0f"),
          f"{r['ok']}/{r['requests']}", _f(r.get("loadavg_1m"), ".1f")] for r in runs], align="rrrll" + "r" * 9)
    lines += ["", "## Plot", "", f"![ITL, TPOT and TTFT]({meta.get('stem', 'decode_cpu')}_itl.png)", ""]
    return "\n".join(lines)


def plot(runs: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """ITL p50, server ITL mean, TPOT p50 and TTFT p50 per workload, stock vs plugin, median over repeats with min-max bars. False
    without matplotlib."""
    try:
        from vs_vllm.benchmarking.report import _plt

        plt = _plt()
    except ImportError:
        return False
    summary = DecodeSummary(runs)
    panels = [("itl_p50_ms", "ITL p50 [ms]"), ("srv_itl_ms", "server ITL mean [ms]"), ("tpot_p50_ms", "TPOT p50 [ms]"),
              ("ttft_p50_ms", "TTFT p50 [ms]")]
    fig, axes = plt.subplots(2, 2, figsize=(max(9.0, 3.0 * len(summary.workloads)), 7.6), squeeze=False)
    width = 0.38
    for ax, (col, label) in zip(axes.flat, panels):
        for j, server in enumerate(summary.servers):
            xs, ys, lo, hi = [], [], [], []
            for i, w in enumerate(summary.workloads):
                med, mn, mx = summary.cell(w, server, col)
                if math.isnan(med):
                    continue
                xs.append(i + (j - 0.5) * width)
                ys.append(med)
                lo.append(med - mn)
                hi.append(mx - med)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label="stock vLLM" if server == "stock" else "vs-vllm",
                   color="0.35" if server == "stock" else "C0")
        for i, w in enumerate(summary.workloads):
            r = summary.ratio(w, col)[0]
            if not math.isnan(r):
                top = max(summary.cell(w, s, col)[2] for s in summary.servers)
                ax.annotate(f"{r:.3f}×", (i, top), textcoords="offset points", xytext=(0, 4), ha="center",
                            fontsize=8)
        ax.set_xticks(range(len(summary.workloads)))
        ax.set_xticklabels([Workload(w).title.replace(", ", "\n") for w in summary.workloads], fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(label.split(" [")[0] + "\n(median over repeats, bars: min–max)", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Decode: stock vLLM vs vs-vllm (plugin/stock ratio above the bars)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(out_dir: Path, runs: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    out_dir = Path(out_dir)
    stem = meta.get("stem") or "decode_cpu"
    path = out_dir / f"{stem}.md"
    text = render_markdown(runs, meta)
    if not plot(runs, out_dir / f"{stem}_itl.png"):
        text = text.replace(f"![ITL, TPOT and TTFT]({stem}_itl.png)", "(matplotlib not installed: no plot)")
    path.write_text(text)
    return path


def report_only(out_dir: Path, stems: Sequence[str]) -> list[Path]:
    from vs_vllm.benchmarking.prefill import read_csv

    paths = []
    for stem in stems:
        meta = json.loads((out_dir / f"{stem}_meta.json").read_text())
        meta.setdefault("stem", stem)
        paths.append(write_report(out_dir, read_csv(out_dir / f"{stem}.csv"), meta))
    return paths


# ------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="~2 min smoke run: tiny model, 1 repeat (one stock and one plugin session), 8 requests of 16 "
                   "tokens per workload, 2 warm-up requests, eager servers; results go to " + QUICK_OUT +
                   " unless --out-dir is given, never into benchmarks/results itself")
    p.add_argument("--model-kind", choices=MODEL_KINDS, default=None,
                   help="bench: the benchmark-size Qwen2.5-VL of `bench prefill` (results decode_cpu.*); tiny: the "
                   "tiny test model (results decode_cpu_tiny.*) (default: bench; --quick: tiny)")
    p.add_argument("--model-dir", default=None,
                   help="model directory, built on first use (default: .cache/bench-qwen2_5_vl or "
                   ".cache/tiny-qwen2_5_vl)")
    p.add_argument("--scorer", default=None,
                   help="scorer file of the plugin server (default: MODEL_DIR-scorer.safetensors, random weights, "
                   "written if missing)")
    p.add_argument("--out-dir", default=None, help="results directory (default: benchmarks/results)")
    p.add_argument("--workloads", default=None,
                   help="comma-separated, from text, image-r<ratio> (default: " + ",".join(DEFAULT_WORKLOADS) + ")")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeats; each starts and measures the stock and the plugin server once, ABBA order "
                   "(default: 3; quick: 1)")
    p.add_argument("--requests", type=int, default=None, help="timed requests per run (default: 48; quick: 8)")
    p.add_argument("--warmup-requests", type=int, default=None,
                   help="warm-up requests per workload and session, excluded (default: 4; quick: 2)")
    p.add_argument("--output-tokens", type=int, default=None,
                   help="tokens every request decodes (max_tokens = min_tokens, ignore_eos) (default: 96; quick: 16)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    p.add_argument("--image-size", default="224x224", help="image size WxH (default: %(default)s)")
    p.add_argument("--kv-cache-mib", type=int, default=64,
                   help="KV cache of each server in MiB (--kv-cache-memory-bytes) (default: %(default)s)")
    p.add_argument("--method", default="visionselector", help="selection method of the plugin (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--eager", dest="eager", action="store_true", default=None,
                      help="servers with --enforce-eager (default for --quick: starts faster)")
    mode.add_argument("--compiled", dest="eager", action="store_false",
                      help="servers with torch.compile, as in production (default for the full run)")
    p.add_argument("--report-only", metavar="DIR", default=None,
                   help="only rebuild the markdown and plot from decode_cpu*.csv / _meta.json in DIR (those of "
                   "--model-kind, else every one present)")


def config_from_args(args: argparse.Namespace) -> tuple[DecodeConfig, Path, Path, Path | None]:
    """(config, model dir, out dir, scorer or None)."""
    from vs_vllm.benchmarking.prefill import _parse_sizes

    quick = bool(args.quick)
    kind = args.model_kind or ("tiny" if quick else "bench")
    cfg = DecodeConfig(
        model_kind=kind,
        workloads=[w.strip() for w in args.workloads.split(",") if w.strip()] if args.workloads else
        list(DEFAULT_WORKLOADS),
        image_size=_parse_sizes(args.image_size)[0],
        concurrency=args.concurrency,
        output_tokens=args.output_tokens or (16 if quick else 96),
        requests=args.requests or (8 if quick else 48),
        warmup_requests=(2 if quick else 4) if args.warmup_requests is None else args.warmup_requests,
        repeats=args.repeats or (1 if quick else 3),
        method=args.method,
        eager=quick if args.eager is None else args.eager,
        kv_cache_bytes=args.kv_cache_mib * MIB,
        served_model_name=kind,
        quick=quick,
    )
    if args.kv_cache_mib < 1:
        raise ValueError("--kv-cache-mib must be >= 1")
    model_dir = Path(args.model_dir or DEFAULT_MODEL_DIRS[kind])
    out = Path(args.out_dir) if args.out_dir else Path(QUICK_OUT if quick else "benchmarks/results")
    if quick and out.resolve() == (Path(__file__).resolve().parents[2] / "benchmarks" / "results").resolve():
        out = out / "quick"  # a smoke run never replaces the committed results
    return cfg, model_dir, out, Path(args.scorer) if args.scorer else None


def main(argv: Sequence[str] | None = None, prog: str = "vs-vllm bench decode") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args, prog, list(sys.argv[1:] if argv is None else argv))


def run_from_args(args: argparse.Namespace, prog: str, argv: Sequence[str]) -> int:
    if args.report_only:
        d = Path(args.report_only)
        stems = ([("decode_cpu" if args.model_kind == "bench" else "decode_cpu_tiny")] if args.model_kind else
                 [s for s in ("decode_cpu", "decode_cpu_tiny") if (d / f"{s}.csv").exists()])
        if not stems:
            raise FileNotFoundError(f"no decode_cpu*.csv in {d}")
        for path in report_only(d, stems):
            print(path)
        return 0
    cfg, model_dir, out, scorer = config_from_args(args)
    command = portable_text(" ".join([prog, *map(shlex.quote, argv)]))
    path = run_benchmark(cfg, model_dir, out, command, scorer=scorer)
    print(f"[decode] wrote {path}")
    return 0
