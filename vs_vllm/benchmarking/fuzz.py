"""Fuzz: property-based requests against one vs-vllm server (``vs-vllm bench fuzz``): no body may get a 5xx.

Hypothesis draws request bodies from the shared strategies (``vs_vllm.testing.fuzz``): any JSON value in
``retention_ratio``, ``video_retention_ratio``, ``selection_method``, ``selection_seed``, ``selection_lambda`` and
``mm_processor_kwargs`` (top level and nested, foreign keys included) and ``media_io_kwargs``, plus raw non-object
bodies, on every POST path the middleware guards and on others. Every answer must be below 500, carry no traceback, and
every JSON refusal must be an error body; the server must answer a fixed pruned request identically before and after,
and be healthy at the end. Reports answers per path and status, RSS at start and end, in fuzz_cpu.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vs_vllm.benchmarking.paths import portable_text

__all__ = ["add_arguments", "answer_problem", "post_json", "pruned_answer", "run_fuzz", "run_from_args"]

MIB = 2**20


def post_json(base_url: str, path: str, data: bytes) -> tuple[int, str]:
    """POST ``data`` as JSON; (status, body text), error statuses included."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base_url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def answer_problem(status: int, text: str) -> str | None:
    """Why an answer breaks the contract (a 5xx, a traceback, a JSON refusal without an error body), else None."""
    if status >= 500:
        return f"status {status}"
    if "Traceback" in text:
        return "traceback in the body"
    if status >= 400 and text.lstrip().startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            return "refusal with a malformed JSON body"
        if not isinstance(body, dict) or not ({"error", "detail"} & set(body)):
            return "refusal without an error body"
    return None


def refusal_reason(status: int, text: str) -> str | None:
    """What a 4xx answer blames: the error's ``param`` (the field the plugin names), else its message's start."""
    if status < 400:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return text[:60]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("param") or str(error.get("message", ""))[:60])
    return str(body.get("detail", ""))[:60] if isinstance(body, dict) else text[:60]


def pruned_answer(base_url: str, model: str) -> tuple[int, Any, str] | str:
    """(prompt tokens, usage.visual_tokens, text) of one fixed image request at ratio 0.3, else why it failed."""
    from vs_vllm.testing.client import chat_messages
    from vs_vllm.testing.images import noise_image

    body = {"model": model, "max_tokens": 4, "temperature": 0, "retention_ratio": 0.3,
            "messages": chat_messages([noise_image(180, 140, seed=3)], "What is in the picture?")}
    status, text = post_json(base_url, "/v1/chat/completions", json.dumps(body).encode())
    if status != 200:
        return f"status {status}: {text[:200]}"
    data = json.loads(text)
    return data["usage"]["prompt_tokens"], data["usage"].get("visual_tokens"), data["choices"][0]["message"]["content"]


def _run_examples(base_url: str, model: str, examples: int, seed: int, log) -> list[dict[str, Any]]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from vs_vllm.testing.client import chat_messages
    from vs_vllm.testing.fuzz import GUARDED_PATHS, PATHS, bodies, for_path, raw_bodies
    from vs_vllm.testing.images import noise_image

    outcomes: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def record(path: str, kind: str, data: bytes) -> None:
        status, text = post_json(base_url, path, data)
        outcomes.append({"path": path, "kind": kind, "status": status, "problem": answer_problem(status, text),
                         "refused": refusal_reason(status, text), "body": data[:300].decode(errors="replace"),
                         "answer": text[:300]})
        if len(outcomes) % 200 == 0:
            bad = sum(o["problem"] is not None for o in outcomes)
            log(f"[fuzz] {len(outcomes)} requests in {time.monotonic() - t0:.0f} s, contract broken {bad}")

    common = settings(max_examples=examples, deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))

    image_chat = chat_messages([noise_image(84, 56, seed=1)], "What is in the picture?")

    @common
    @given(path=st.sampled_from(PATHS), body=bodies(model, image_chat))
    def option_bodies(path, body) -> None:
        record(path, "options", json.dumps(for_path(path, body), allow_nan=True).encode())

    @settings(common, max_examples=max(1, examples // 5))
    @given(path=st.sampled_from(GUARDED_PATHS), raw=raw_bodies)
    def raw(path, raw) -> None:
        record(path, "raw bytes", raw)

    hypothesis_seed(seed)(option_bodies)()
    hypothesis_seed(seed + 1)(raw)()
    return outcomes


def write_report(out_dir: Path, outcomes: Sequence[dict[str, Any]], summary: dict[str, Any],
                 meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = Counter((o["path"], o["kind"], o["status"]) for o in outcomes)
    lines = [
        "# Fuzz: property-based requests against vs-vllm serve (CPU)", "",
        f"- started {meta['started']}, command `{meta['command']}`",
        f"- server: {meta['server']}; model: {meta['model']}",
        f"- machine: {meta['machine']}", "",
        "| requests | contract broken (5xx, traceback, refusal without error body) | 5xx | pruned answer same before "
        "and after | /health at end | server RSS start / end (MiB) | wall (s) |",
        "|---:|---:|---:|:---:|---:|---:|---:|",
        f"| {summary['requests']} | {summary['broken']} | {summary['status_5xx']} | "
        f"{'yes' if summary['same_answer'] else 'NO'} | {summary['health_end']} | "
        f"{summary['rss_start_mib'] or '–'} / {summary['rss_end_mib'] or '–'} | {summary['wall_s']:.0f} |", "",
        "## Answers per path and status", "",
        "| path | body | status | answers |", "|---|---|---:|---:|",
        *(f"| `{p}` | {k} | {s} | {n} |" for (p, k, s), n in sorted(table.items())), "",
    ]
    reasons = Counter((o["path"], o["refused"].split(".")[0].split("[")[0]) for o in outcomes if o["refused"])
    lines += ["## What the refusals blame (the error's field, else its message)", "",
              "| path | field or message | answers |", "|---|---|---:|",
              *(f"| `{p}` | {r.replace('|', '/')} | {n} |" for (p, r), n in sorted(reasons.items(), key=lambda x: -x[1])
                [:30]), ""]
    broken = [o for o in outcomes if o["problem"]]
    if broken:
        lines += ["## Broken answers (first 20)", "", "| path | problem | body | answer |", "|---|---|---|---|"]
        for o in broken[:20]:
            cells = [o["path"], o["problem"], o["body"][:120], o["answer"][:120]]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        lines.append("")
    path = out_dir / "fuzz_cpu.md"
    path.write_text("\n".join(lines))
    return path


def run_fuzz(out_dir: Path, *, examples: int, seed: int, model_dir: Path, scorer: Path | None, base_url: str | None,
             command: str, log=print) -> dict[str, Any]:
    from vs_vllm.benchmarking.decode import ensure_model
    from vs_vllm.benchmarking.prefill import machine_info
    from vs_vllm.benchmarking.stress import RssSampler, _health, _served_model

    server = None
    server_desc = f"an existing server at {base_url}"
    if base_url is None:
        from vs_vllm.testing.server import VLLMServer, tiny_serve_args

        model_dir, scorer = ensure_model("tiny", model_dir, scorer, log=log)
        log_path = Path(tempfile.mkdtemp(prefix="vs-fuzz-")) / "server.log"
        server = VLLMServer(model_dir, ["--scorer", str(scorer), *tiny_serve_args(max_images=4, max_videos=2)],
                            command=[sys.executable, "-m", "vs_vllm", "serve"], log_path=log_path)
        log(f"[fuzz] starting vs-vllm serve on {server.base_url} (log {log_path}) ...")
        server.start()
        base_url = server.base_url
        server_desc = "the tiny test model, eager, fp32, prefix caching on, KV cache 256 MiB, with a scorer"
    try:
        model = "tiny" if server is not None else _served_model(base_url)
        sampler = RssSampler(server.proc.pid if server is not None and server.proc else None)
        rss_start = sampler.sample()
        started = _dt.datetime.now().isoformat(timespec="seconds")
        before = pruned_answer(base_url, model)
        t0 = time.monotonic()
        outcomes = _run_examples(base_url, model, examples, seed, log)
        wall = time.monotonic() - t0
        after = pruned_answer(base_url, model)
        rss_end = sampler.sample()
        health = _health(base_url)
    finally:
        if server is not None:
            server.stop()
    summary = {"requests": len(outcomes), "broken": sum(o["problem"] is not None for o in outcomes),
               "status_5xx": sum(o["status"] >= 500 for o in outcomes),
               "same_answer": isinstance(before, tuple) and before == after, "health_end": health,
               "rss_start_mib": rss_start and round(rss_start / MIB), "rss_end_mib": rss_end and round(rss_end / MIB),
               "wall_s": wall}
    m = machine_info()
    meta = {"started": started, "command": command, "server": server_desc,
            "model": "the tiny test model" if server is not None else model,
            "machine": f"{m.get('cpu')}, {m.get('logical_cpus')} logical CPUs, {m.get('mem_gib')} GiB"}
    path = write_report(out_dir, outcomes, summary, meta)
    log(f"[fuzz] {summary['requests']} requests, contract broken {summary['broken']}, 5xx {summary['status_5xx']}, "
        f"same pruned answer after: {summary['same_answer']}, /health {health}; wrote {path}")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--examples", type=int, default=2000,
                   help="option bodies to draw (plus a fifth as many raw bodies; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed (default: %(default)s)")
    from vs_vllm.benchmarking.stress import add_server_arguments

    add_server_arguments(p, "fuzz", "fuzz_cpu.md goes", "fuzz-quick")
    p.add_argument("--quick", action="store_true", help="a smoke run: 100 option bodies")


def run_from_args(args: argparse.Namespace, prog: str, argv: Sequence[str]) -> int:
    if args.quick:
        args.examples = min(args.examples, 100)
    if args.examples < 1:
        print(f"{prog}: error: --examples must be positive", file=sys.stderr)
        return 2
    out = args.out_dir or (Path(".cache/fuzz-quick") if args.quick else Path("benchmarks/results"))
    summary = run_fuzz(out, examples=args.examples, seed=args.seed, model_dir=args.model_dir, scorer=args.scorer,
                       base_url=args.base_url, command=portable_text(" ".join([prog, *argv])))
    ok = summary["broken"] == 0 and summary["same_answer"] and summary["health_end"] == 200
    return 0 if ok else 1
