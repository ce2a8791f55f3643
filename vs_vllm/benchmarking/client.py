"""The benchmark's load generator: a closed-loop asyncio client for vLLM's OpenAI chat endpoint (aiohttp).

Each request is a streamed ``/v1/chat/completions`` call with one image or video, ``max_tokens=1`` and
``ignore_eos``, so the time to the first streamed chunk is the prefill (vLLM sends nothing before the first token
exists). ``concurrency`` workers take prebuilt payloads from a queue until it is empty. While a run is in flight a
side task polls ``/metrics`` for the peak ``vllm:kv_cache_usage_perc``; the server's own histograms (queue, prefill,
TTFT) are read before and after the run and their deltas give the server-side means over the run.

For the decode benchmark (:mod:`vs_vllm.benchmarking.decode`, requests with ``max_tokens`` = ``min_tokens`` = N) each
:class:`RequestResult` also holds the completion token count (final usage chunk) and the gaps between the streamed
chunks that carry tokens (``itl_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RequestResult",
    "RunResult",
    "build_payload",
    "histogram_means",
    "parse_metrics",
    "run_closed_loop",
    "run_closed_loop_sync",
]

#: Server histograms whose per-run means are recorded (``<name>_sum`` / ``<name>_count`` deltas).
SERVER_HISTOGRAMS = {
    "srv_queue": "vllm:request_queue_time_seconds",
    "srv_prefill": "vllm:request_prefill_time_seconds",
    "srv_ttft": "vllm:time_to_first_token_seconds",
}
KV_GAUGE = "vllm:kv_cache_usage_perc"


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    visual_kept: int | None = None
    visual_total: int | None = None
    status: int = 0
    error: str = ""
    # Decode timing (vs_vllm.benchmarking.decode): completion tokens from the final usage chunk, the number of streamed
    # chunks that carried generated tokens (every chunk with choices but the first, role-only one), and the gaps
    # between consecutive such chunks (inter-token latency; one token per chunk unless the API server merged outputs).
    output_tokens: int | None = None
    token_chunks: int = 0
    itl_s: list[float] = field(default_factory=list)


@dataclass
class RunResult:
    results: list[RequestResult]
    wall_s: float
    kv_usage_max: float | None = None
    kv_samples: int = 0
    server: dict[str, float] = field(default_factory=dict)  # srv_* means in seconds over the run

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]


def build_payload(model: str, media_url: str, question: str, *, extra: Mapping[str, Any] | None = None,
                  max_tokens: int = 1, kind: str = "image") -> dict[str, Any]:
    """A streamed chat request with one image (``kind="image"``) or one video (``kind="video"``: a
    ``data:video/jpeg;base64,<frame>,...`` URL) before the question, that stops after ``max_tokens`` tokens whatever
    they are."""
    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    part = f"{kind}_url"  # OpenAI content part types: image_url, video_url (vLLM's extension)
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": part, part: {"url": media_url}},
            {"type": "text", "text": question},
        ]}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    payload.update(extra or {})
    return payload


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([^\s]+)")


def parse_metrics(text: str) -> dict[str, list[float]]:
    """Prometheus text exposition -> {metric name: values of every label set}."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append(value)
    return out


def histogram_means(before: Mapping[str, list[float]], after: Mapping[str, list[float]]) -> dict[str, float]:
    """Mean of each :data:`SERVER_HISTOGRAMS` entry over the observations made between two scrapes."""
    means: dict[str, float] = {}
    for key, name in SERVER_HISTOGRAMS.items():
        d_sum = sum(after.get(f"{name}_sum", [])) - sum(before.get(f"{name}_sum", []))
        d_count = sum(after.get(f"{name}_count", [])) - sum(before.get(f"{name}_count", []))
        if d_count > 0:
            means[key] = d_sum / d_count
    return means


async def _scrape(session, base_url: str) -> dict[str, list[float]]:
    async with session.get(f"{base_url}/metrics") as resp:
        return parse_metrics(await resp.text())


async def _one_request(session, url: str, payload: Mapping[str, Any]) -> RequestResult:
    body = json.dumps(payload).encode()
    start = time.perf_counter()
    ttft = None
    usage = None
    token_times: list[float] = []
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            kept = resp.headers.get("x-vs-visual-tokens-kept")
            total = resp.headers.get("x-vs-visual-tokens-total")
            if resp.status != 200:
                text = await resp.text()
                return RequestResult(False, status=resp.status, error=text[:300])
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            continue
                        obj = json.loads(data)
                        if "error" in obj:
                            return RequestResult(False, status=resp.status, error=str(obj["error"])[:300])
                        choices = obj.get("choices")
                        if choices:
                            now = time.perf_counter()
                            if ttft is None:
                                ttft = now - start
                            if not any("role" in (c.get("delta") or {}) for c in choices):
                                token_times.append(now)
                        if obj.get("usage"):
                            usage = obj["usage"]
            latency = time.perf_counter() - start
    except Exception as exc:
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}"[:300])
    if ttft is None:
        return RequestResult(False, latency_s=latency, status=200, error="no streamed chunk with choices")
    return RequestResult(
        True,
        ttft_s=ttft,
        latency_s=latency,
        prompt_tokens=int(usage["prompt_tokens"]) if usage else None,
        visual_kept=int(kept) if kept is not None else None,
        visual_total=int(total) if total is not None else None,
        status=200,
        output_tokens=int(usage["completion_tokens"]) if usage and "completion_tokens" in usage else None,
        token_chunks=len(token_times),
        itl_s=[b - a for a, b in zip(token_times, token_times[1:])],
    )


async def run_closed_loop(
    base_url: str,
    payloads: Sequence[Mapping[str, Any]],
    concurrency: int,
    *,
    metrics_interval: float = 0.2,
    timeout: float = 600.0,
) -> RunResult:
    """Send every payload with ``concurrency`` requests in flight (closed loop); return per-request results, the
    wall time from the first send to the last completion, peak KV-cache usage and server-side means."""
    import aiohttp

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    url = f"{base_url}/v1/chat/completions"
    queue: asyncio.Queue = asyncio.Queue()
    for i, p in enumerate(payloads):
        queue.put_nowait((i, p))
    results: list[RequestResult | None] = [None] * len(payloads)
    kv_values: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency + 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        before = await _scrape(session, base_url)
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    kv_values.extend((await _scrape(session, base_url)).get(KV_GAUGE, []))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), metrics_interval)

        async def worker() -> None:
            while True:
                try:
                    i, p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results[i] = await _one_request(session, url, p)

        poller = asyncio.create_task(poll()) if metrics_interval > 0 else None
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(payloads)))))
        wall = time.perf_counter() - t0
        stop.set()
        if poller is not None:
            await poller
        after = await _scrape(session, base_url)
    kv_values.extend(after.get(KV_GAUGE, []))
    return RunResult(
        results=[r for r in results if r is not None],
        wall_s=wall,
        kv_usage_max=max(kv_values) if kv_values else None,
        kv_samples=len(kv_values),
        server=histogram_means(before, after),
    )


def run_closed_loop_sync(base_url: str, payloads: Sequence[Mapping[str, Any]], concurrency: int, **kw) -> RunResult:
    return asyncio.run(run_closed_loop(base_url, payloads, concurrency, **kw))
