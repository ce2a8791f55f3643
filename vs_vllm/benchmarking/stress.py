"""Stress: one vs-vllm server under sustained mixed load, client faults and bad input (``vs-vllm bench stress``).

A bounded run on loopback (default: up to 5,000 requests or 10 minutes, concurrency 16) against ``vs-vllm serve``
of the tiny test model (or ``--model-dir``), prefix caching on, KV cache 256 MiB. Every request is drawn from a seeded
mix:

- ``chat``: 0-4 fresh noise images of assorted sizes, a ratio from {default, 1.0, 0.5, 0.3, 0.1}, any selection
  method, streamed or not, 4-16 tokens; checked: HTTP 200 and the visual tokens the server reports (usage or
  headers) equal sum K_i = keep_count(N_i, r) over the images, N_i from the processor geometry;
- ``oversized``: one 3000x2000 image (resized by the processor to its pixel budget): as ``chat``;
- ``disconnect``: a streamed request the client drops after the first chunk (the server must cancel it cleanly);
- ``bad``: a bad option value, a foreign ``mm_processor_kwargs`` key or a non-JSON body: must be answered 400;
- ``unreachable``: an image URL on a closed port: must be answered 400 (the plugin's media connector; stock: 500).

Reported (``benchmarks/results/stress_cpu.{md,csv}``): requests by kind and status, 5xx count, wrong visual-token
counts, latency p50/p99 of the chat requests, the server's RSS (API server + engine core + workers) at start, peak
and end, and ``/health`` at the end. ``--base-url`` drives an already running server instead (no RSS then).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import datetime as _dt
import io
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vs_vllm.benchmarking.paths import portable_text

__all__ = ["StressConfig", "add_arguments", "run_from_args", "run_stress"]

KINDS = {"chat": 0.80, "oversized": 0.04, "disconnect": 0.07, "bad": 0.08, "unreachable": 0.01}
RATIOS = (None, 1.0, 0.5, 0.3, 0.1)
SIZES = ((64, 64), (224, 224), (300, 200), (448, 252), (120, 360))
BAD_BODIES = (
    {"retention_ratio": 7},
    {"retention_ratio": "half"},
    {"selection_method": "nope"},
    {"selection_seed": 1.5},
    {"mm_processor_kwargs": {"max_pixels": 10**9}},
    {"media_io_kwargs": {"image": {"x": 1}}},
)
QUESTION = "Describe the picture."
MIB = 1024 * 1024


@dataclass
class StressConfig:
    requests: int = 5000
    duration_s: float = 600.0
    concurrency: int = 16
    seed: int = 0
    kv_cache_bytes: int = 256 * MIB
    # vLLM keeps processed items in a cache in the API server and in the engine core (default 4 GiB each): with fresh
    # images on every request it fills to that bound, which would read as growth in a 10-minute run
    mm_processor_cache_gb: float = 1.0
    max_model_len: int = 2048
    methods: tuple[str, ...] = ("visionselector", "visionselector_mmr", "random", "uniform", "norm", "divprune",
                                "dart")


@dataclass
class Outcome:
    index: int
    kind: str
    stream: bool
    images: int
    status: int
    latency_s: float
    expected_kept: int | None = None
    got_kept: int | None = None
    error: str = ""

    @property
    def count_ok(self) -> bool | None:
        if self.expected_kept is None or self.status != 200:
            return None
        return self.got_kept == self.expected_kept


def _jpeg_url(width: int, height: int, seed: int) -> str:
    from vs_vllm.testing.images import noise_image

    buf = io.BytesIO()
    noise_image(width, height, seed=seed).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Mix:
    """The seeded request mix: (kind, body bytes, stream, image sizes, expected kept tokens)."""

    def __init__(self, cfg: StressConfig, model_dir: Path, model: str) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.model_dir = model_dir
        self.model = model
        self._tokens: dict[tuple[int, int], int] = {}

    def visual_tokens(self, size: tuple[int, int]) -> int:
        if size not in self._tokens:
            from vs_vllm.benchmarking.prefill import _visual_tokens

            self._tokens[size] = _visual_tokens(self.model_dir, size)
        return self._tokens[size]

    def draw(self, index: int) -> tuple[str, bytes, bool, int, int | None]:
        from vs_vllm.selection.budget import keep_count

        rng = self.rng
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        stream = kind == "disconnect" or rng.random() < 0.5
        body: dict[str, Any] = {"model": self.model, "max_tokens": rng.randint(4, 16), "temperature": 0.0,
                                "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        sizes: list[tuple[int, int]] = []
        if kind == "oversized":
            sizes = [(3000, 2000)]
        elif kind in ("chat", "disconnect", "bad"):
            sizes = [rng.choice(SIZES) for _ in range(rng.randint(0, 4))]
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": _jpeg_url(w, h, index * 8 + i)}}
                                         for i, (w, h) in enumerate(sizes)]
        if kind == "unreachable":
            content.append({"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/missing.jpg"}})
        content.append({"type": "text", "text": f"Request {index}. {QUESTION}"})
        body["messages"] = [{"role": "user", "content": content}]
        ratio = rng.choice(RATIOS)
        if ratio is not None:
            body["retention_ratio"] = ratio
        body["selection_method"] = rng.choice(self.cfg.methods)
        if body["selection_method"] == "random":
            body["selection_seed"] = rng.randint(0, 1000)
        if kind == "bad":
            if rng.random() < 0.15:
                return kind, b'{"model": "x", "messages": [', stream, len(sizes), None
            body.update(rng.choice(BAD_BODIES))
        expected = None
        if kind in ("chat", "oversized") and sizes:
            r = 1.0 if ratio is None else ratio
            expected = sum(keep_count(self.visual_tokens(s), r) for s in sizes)
        elif kind in ("chat", "oversized"):
            expected = 0
        return kind, json.dumps(body).encode(), stream, len(sizes), expected


async def _one(session, url: str, index: int, item) -> Outcome:
    import aiohttp

    kind, body, stream, images, expected = item
    t0 = time.perf_counter()
    out = Outcome(index, kind, stream, images, 0, 0.0, expected)
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            out.status = resp.status
            if kind == "disconnect" and resp.status == 200:
                await resp.content.readany()
                resp.close()  # drop the connection mid-stream
            elif stream and resp.status == 200:
                kept = resp.headers.get("x-vs-visual-tokens-kept")
                out.got_kept = int(kept) if kept is not None else 0
                async for _ in resp.content.iter_any():
                    pass
            else:
                text = await resp.text()
                if resp.status == 200:
                    usage = json.loads(text).get("usage") or {}
                    out.got_kept = int((usage.get("visual_tokens") or {}).get("kept", 0))
                elif resp.status >= 500 or "Traceback" in text:
                    out.error = text[:300]
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:300]
    out.latency_s = time.perf_counter() - t0
    return out


class RssSampler:
    """RSS of a process and its descendants (the vLLM API server, engine core and workers), sampled periodically."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []

    def sample(self) -> int | None:
        if self.pid is None:
            return None
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        self.samples.append((time.time(), total))
        return total


async def _drive(cfg: StressConfig, base_url: str, mix: Mix, sampler: RssSampler, log) -> tuple[list[Outcome], float]:
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(cfg.requests):
        queue.put_nowait(i)
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + cfg.duration_s
    url = base_url + "/v1/chat/completions"
    t_start = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=300)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcomes.append(await _one(session, url, i, mix.draw(i)))

        async def progress() -> None:
            while True:
                await asyncio.sleep(10)
                rss = sampler.sample()
                done = len(outcomes)
                bad5 = sum(o.status >= 500 for o in outcomes)
                log(f"[stress] {done}/{cfg.requests} requests in {time.perf_counter() - t_start:.0f} s, "
                    f"5xx {bad5}" + (f", server RSS {rss / MIB:.0f} MiB" if rss else ""))

        ticker = asyncio.create_task(progress())
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        ticker.cancel()
    return outcomes, time.perf_counter() - t_start


def _pct(values: Sequence[float], q: float) -> float:
    from vs_vllm.benchmarking.stats import percentile

    return percentile(list(values), q) if values else float("nan")


def summarize(outcomes: Sequence[Outcome], wall_s: float, rss: RssSampler, health: int | None) -> dict[str, Any]:
    chat = [o for o in outcomes if o.kind in ("chat", "oversized") and o.status == 200]
    expected_status = {"chat": 200, "oversized": 200, "disconnect": 200, "bad": 400, "unreachable": 400}
    rss_values = [v for _, v in rss.samples]
    return {
        "requests": len(outcomes),
        "wall_s": wall_s,
        "by_kind_status": {f"{k} {s}": n for (k, s), n in sorted(Counter((o.kind, o.status) for o in outcomes).items())},
        "status_5xx": sum(o.status >= 500 for o in outcomes),
        "client_errors": sum(o.status == 0 for o in outcomes),
        "unexpected_status": sum(o.status != expected_status[o.kind] for o in outcomes),
        "wrong_visual_tokens": sum(o.count_ok is False for o in outcomes),
        "checked_visual_tokens": sum(o.count_ok is not None for o in outcomes),
        "latency_p50_s": _pct([o.latency_s for o in chat], 50),
        "latency_p99_s": _pct([o.latency_s for o in chat], 99),
        "rss_start_mib": rss_values[0] / MIB if rss_values else None,
        "rss_peak_mib": max(rss_values) / MIB if rss_values else None,
        "rss_end_mib": rss_values[-1] / MIB if rss_values else None,
        "health_end": health,
    }


def _health(base_url: str) -> int | None:
    import urllib.request

    try:
        with urllib.request.urlopen(base_url + "/health", timeout=30) as resp:
            return resp.status
    except Exception:
        return None


def write_report(out_dir: Path, stem: str, outcomes: Sequence[Outcome], summary: dict[str, Any],
                 meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*asdict(outcomes[0]), "count_ok"] if outcomes else ["index"])
        w.writeheader()
        for o in sorted(outcomes, key=lambda o: o.index):
            w.writerow({**asdict(o), "count_ok": o.count_ok})
    s = summary

    def mib(v):
        return "–" if v is None else f"{v:.0f}"

    lines = [
        "# Stress: vs-vllm serve under mixed load, client faults and bad input (CPU)", "",
        f"Run {meta['started']} ({s['wall_s']:.0f} s); {meta['machine']}; `{meta['command']}`.", "",
        f"- Server: `vs-vllm serve` of {meta['model']}, {meta['server']}.",
        f"- Load: {s['requests']} requests, concurrency {meta['concurrency']}, seeded mix "
        + ", ".join(f"{k} {v:.0%}" for k, v in KINDS.items())
        + " (see vs_vllm/benchmarking/stress.py: chat = 0-4 images, any ratio and method, streamed or not; "
          "oversized = one 3000x2000 image; disconnect = dropped after the first chunk; bad = invalid option, foreign "
          "mm_processor_kwargs key or broken JSON; unreachable = image URL on a closed port).", "",
        "| measure | value |", "| --- | ---: |",
        f"| requests answered / sent | {s['requests'] - s['client_errors']} / {s['requests']} |",
        f"| 5xx answers | {s['status_5xx']} |",
        f"| answers with an unexpected status (chat/oversized/disconnect 200, bad/unreachable 400) | "
        f"{s['unexpected_status']} |",
        f"| wrong visual-token counts (of {s['checked_visual_tokens']} checked) | {s['wrong_visual_tokens']} |",
        f"| chat latency p50 / p99 | {s['latency_p50_s']:.2f} s / {s['latency_p99_s']:.2f} s |",
        f"| server RSS start / peak / end | {mib(s['rss_start_mib'])} / {mib(s['rss_peak_mib'])} / "
        f"{mib(s['rss_end_mib'])} MiB |",
        f"| /health at the end | {s['health_end']} |", "",
        "Requests by kind and status:", "",
        "| kind | status | requests |", "| --- | ---: | ---: |",
        *[f"| {k.split()[0]} | {k.split()[1]} | {n} |" for k, n in s["by_kind_status"].items()], "",
    ]
    samples = meta.get("rss_samples") or []
    if len(samples) > 2:
        t0 = samples[0][0]
        lines += ["Server RSS over the run (API server + engine core + workers):", "",
                  "| s | MiB |", "| ---: | ---: |", *[f"| {t - t0:.0f} | {v / MIB:.0f} |" for t, v in samples], ""]
    errors = [o for o in outcomes if o.error][:5]
    if errors:
        lines += ["First errors:", "", *[f"- #{o.index} {o.kind} {o.status}: `{o.error}`" for o in errors], ""]
    (out_dir / f"{stem}.md").write_text("\n".join(lines))
    (out_dir / f"{stem}_summary.json").write_text(json.dumps({**s, **meta}, indent=1, default=str))
    return out_dir / f"{stem}.md"


def run_stress(cfg: StressConfig, out_dir: Path, *, model_dir: Path, scorer: Path | None, base_url: str | None,
               stem: str, command: str, log=print) -> dict[str, Any]:
    from vs_vllm.benchmarking.decode import ensure_model
    from vs_vllm.benchmarking.prefill import machine_info

    model_dir, scorer = ensure_model("tiny", model_dir, scorer, log=log)
    server = None
    server_desc = f"an existing server at {base_url}"
    if base_url is None:
        from vs_vllm.testing.server import VLLMServer

        args = ["--served-model-name", "stress", "--dtype", "float32", "--max-model-len", str(cfg.max_model_len),
                "--max-num-seqs", str(cfg.concurrency), "--enforce-eager",
                "--kv-cache-memory-bytes", str(cfg.kv_cache_bytes),
                "--mm-processor-cache-gb", str(cfg.mm_processor_cache_gb),
                "--limit-mm-per-prompt", '{"image": 4, "video": 0}', "--scorer", str(scorer)]
        log_path = Path(tempfile.mkdtemp(prefix="vs-stress-")) / "server.log"
        server = VLLMServer(model_dir, args, command=[sys.executable, "-m", "vs_vllm", "serve"], log_path=log_path)
        log(f"[stress] starting vs-vllm serve on {server.base_url} (log {log_path}) ...")
        server.start()
        base_url = server.base_url
        server_desc = (f"eager, fp32, prefix caching on, KV cache {cfg.kv_cache_bytes // MIB} MiB, multimodal "
                       f"processor cache {cfg.mm_processor_cache_gb:g} GiB per process (API server and engine core), "
                       f"max-num-seqs {cfg.concurrency}, up to 4 images per prompt")
    try:
        model = "stress" if server is not None else _served_model(base_url)
        sampler = RssSampler(server.proc.pid if server is not None and server.proc else None)
        mix = Mix(cfg, model_dir, model)
        sampler.sample()
        log(f"[stress] {cfg.requests} requests (at most {cfg.duration_s:.0f} s) at concurrency {cfg.concurrency} ...")
        started = _dt.datetime.now().isoformat(timespec="seconds")
        outcomes, wall = asyncio.run(_drive(cfg, base_url, mix, sampler, log))
        sampler.sample()
        health = _health(base_url)
    finally:
        if server is not None:
            server.stop()
    summary = summarize(outcomes, wall, sampler, health)
    m = machine_info()
    meta = {"started": started, "command": command, "concurrency": cfg.concurrency, "server": server_desc,
            "model": "the tiny test model" if "tiny" in model_dir.name else str(model_dir),
            "machine": f"{m.get('cpu')}, {m.get('logical_cpus')} logical CPUs, {m.get('mem_gib')} GiB",
            "rss_samples": sampler.samples}
    path = write_report(out_dir, stem, outcomes, summary, meta)
    log(f"[stress] {summary['requests']} requests, 5xx {summary['status_5xx']}, unexpected status "
        f"{summary['unexpected_status']}, wrong counts {summary['wrong_visual_tokens']}, p99 "
        f"{summary['latency_p99_s']:.2f} s; wrote {path}")
    return summary


def _served_model(base_url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(base_url + "/v1/models", timeout=30) as resp:
        return json.loads(resp.read())["data"][0]["id"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=5000, help="requests to send (default: %(default)s)")
    p.add_argument("--duration", type=float, default=600.0, help="stop sending after this many seconds "
                   "(default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix (default: %(default)s)")
    add_server_arguments(p, "drive", "stress_cpu.{md,csv} go", "stress-quick")
    p.add_argument("--quick", action="store_true", help="a smoke run: 150 requests, at most 90 s")


def add_server_arguments(p: argparse.ArgumentParser, verb: str, outputs_go: str, quick_dir: str) -> None:
    """The options of a benchmark that starts one vs-vllm server of the tiny model (or drives a running one)."""
    p.add_argument("--model-dir", type=Path, default=Path(".cache/tiny-qwen2_5_vl"),
                   help="model to serve (built as the tiny test model if missing; default: %(default)s)")
    p.add_argument("--scorer", type=Path, default=None, help="scorer file (default: a random one beside the model)")
    p.add_argument("--base-url", default=None, help=f"{verb} this running vs-vllm server instead of starting one "
                   "(no RSS figures then)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help=f"where {outputs_go} (default: benchmarks/results; --quick: .cache/{quick_dir})")


def run_from_args(args: argparse.Namespace, prog: str, argv: Sequence[str]) -> int:
    if args.quick:
        args.requests, args.duration = min(args.requests, 150), min(args.duration, 90.0)
    if args.requests < 1 or args.concurrency < 1 or args.duration <= 0:
        print(f"{prog}: error: --requests, --concurrency and --duration must be positive", file=sys.stderr)
        return 2
    cfg = StressConfig(requests=args.requests, duration_s=args.duration, concurrency=args.concurrency,
                       seed=args.seed)
    out = args.out_dir or (Path(".cache/stress-quick") if args.quick else Path("benchmarks/results"))
    summary = run_stress(cfg, out, model_dir=args.model_dir, scorer=args.scorer, base_url=args.base_url,
                         stem="stress_cpu", command=portable_text(" ".join([prog, *argv])))
    return 0 if summary["status_5xx"] == 0 and summary["health_end"] == 200 else 1
