"""Summaries, markdown and plots of a prefill sweep (:mod:`vs_vllm.benchmarking.prefill`).

Definitions used throughout:

- TTFT p50 / p90: over every request of every repeat of a configuration (pooled); "runs" gives the range of the
  per-run medians over the repeats (run-to-run spread). Throughput: median of the per-run request rates [min-max].
- Speedup: stock TTFT p50 / plugin TTFT p50 at the same image size and concurrency.
- Ceiling (HF parts), the Amdahl bound when only the LLM prefill shrinks with the kept tokens:
  ``TTFT_full / (T_enc + T_llm * (K + text) / (N + text))`` with ``TTFT_full = T_enc + T_llm`` from transformers.
- Ceiling (+ fixed overhead): the same bound applied to the measured stock TTFT. Its engine part (vLLM's
  ``request_prefill_time``) is split between ViT and LLM in the transformers proportion; the rest (HTTP, image
  decoding and preprocessing, scheduling) is a fixed cost pruning cannot touch.
- FLOP ceiling (video workload, and the FLOP table of both): FLOPs(all N visual tokens) / FLOPs(K kept) from the
  analytic model (:mod:`vs_vllm.benchmarking.flops`), the vision tower counted on both sides (pruning leaves it as is).

The same code reports the image workload (``prefill_cpu.*``, media labels ``WxH``) and the video workload
(``prefill_video_cpu.*``, labels ``<frames>f@WxH``, the CSV column ``video`` instead of ``image``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vs_vllm.benchmarking.stats import summarize

__all__ = ["Summary", "ceilings", "summarize_runs", "write_report"]

STEM = "prefill_cpu"


def _f(x: Any, fmt: str = ".0f", empty: str = "–") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return empty
    if math.isnan(v):
        return empty
    return format(v, fmt)


def _image_key(image: str) -> tuple[int, int, int]:
    """Sort key of a media label: by pixels per frame, then width, then frames."""
    from vs_vllm.benchmarking.flops import Media

    m = Media.parse(image)
    return m.width * m.height, m.width, m.frames


def _media_of(row: Mapping[str, Any]) -> str:
    """The media label of a result row: the ``image`` column, or ``video`` for the video workload."""
    return row["video"] if row.get("video") not in (None, "") else row["image"]


def _is_video(meta: Mapping[str, Any]) -> bool:
    return meta.get("workload") == "video"


def _stem(meta: Mapping[str, Any]) -> str:
    return meta.get("stem") or ("prefill_video_cpu" if _is_video(meta) else STEM)


def _media_grid(meta: Mapping[str, Any], arch: Any, label: str) -> tuple[int, int, int]:
    from vs_vllm.benchmarking.flops import Media

    sizes = meta["model_config"]
    return Media.parse(label).grid(arch, sizes["min_pixels"], sizes["max_pixels"])


def _arch(meta: Mapping[str, Any]):
    from vs_vllm.benchmarking.flops import QwenVLArch

    arch_d = dict(meta["arch"])
    arch_d["fullatt_block_indexes"] = tuple(arch_d["fullatt_block_indexes"])
    return QwenVLArch(**arch_d)


def flop_ceiling_at(meta: Mapping[str, Any], label: str, keep: int, text_tokens: int | None = None) -> float:
    """The FLOP ceiling of one media item of a sweep at ``keep`` kept tokens (text laid out as in the report)."""
    from vs_vllm.benchmarking.flops import prefill_split
    from vs_vllm.benchmarking.model import TEXT_BEFORE, TEXT_TOKENS

    arch = _arch(meta)
    grid = _media_grid(meta, arch, label)
    text = TEXT_TOKENS if text_tokens is None else int(text_tokens)
    before = min(TEXT_BEFORE, text)
    full = prefill_split(arch, grid, text, text_before=before)
    return full.total / prefill_split(arch, grid, text, keep=keep, text_before=before).total


def _config_key(config: str) -> float:
    return 2.0 if config == "stock" else float(config.split("=", 1)[1])


class Summary:
    """Per (image, concurrency, config) statistics of a sweep."""

    def __init__(self, runs: Sequence[Mapping[str, Any]], requests: Sequence[Mapping[str, Any]]) -> None:
        self.images = sorted({_media_of(r) for r in runs}, key=_image_key)
        self.kind = "video" if any("f@" in m for m in self.images) else "image"  # the tables' first column
        self.concurrencies = sorted({int(r["concurrency"]) for r in runs})
        self.configs = sorted({r["config"] for r in runs}, key=_config_key, reverse=True)
        by_run = defaultdict(list)
        for q in requests:
            if int(q["ok"]) and q["ttft_ms"] != "":
                by_run[int(q["run_id"])].append(float(q["ttft_ms"]))
        groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = defaultdict(list)
        for r in runs:
            groups[(_media_of(r), int(r["concurrency"]), r["config"])].append(r)
        self.cells: dict[tuple[str, int, str], dict[str, Any]] = {}
        for key, rows in groups.items():
            ttfts = [t for r in rows for t in by_run.get(int(r["run_id"]), [])]
            pooled = summarize(ttfts)
            run_p50 = summarize(float(r["ttft_p50_ms"]) for r in rows)
            rate = summarize(float(r["req_per_s"]) for r in rows)
            kv = [float(r["kv_usage_max"]) for r in rows if r["kv_usage_max"] not in ("", None)]
            self.cells[key] = {
                "runs": len(rows),
                "requests": sum(int(r["ok"]) for r in rows),
                "failed": sum(int(r["failed"]) for r in rows),
                "N": int(rows[0]["visual_tokens"]),
                "K": int(summarize(float(r["visual_kept"]) for r in rows)["p50"]),
                "prompt_tokens": summarize(float(r["prompt_tokens"]) for r in rows)["p50"],
                "ttft_p50": pooled["p50"],
                "ttft_p90": pooled["p90"],
                "ttft_p10": pooled["p10"],
                "ttft_mean": summarize(float(r["ttft_mean_ms"]) for r in rows)["p50"],
                "run_p50_min": run_p50["min"],
                "run_p50_max": run_p50["max"],
                "rps": rate["p50"],
                "rps_min": rate["min"],
                "rps_max": rate["max"],
                "kv_usage_max": max(kv) if kv else math.nan,
                "kv_mib": summarize(float(r["kv_mib_per_request"]) for r in rows)["p50"],
                "srv_queue": summarize(_num(r.get("srv_queue_ms")) for r in rows)["p50"],
                "srv_prefill": summarize(_num(r.get("srv_prefill_ms")) for r in rows)["p50"],
                "srv_ttft": summarize(_num(r.get("srv_ttft_ms")) for r in rows)["p50"],
                "load": summarize(_num(r.get("loadavg_1m")) for r in rows)["p50"],
            }

    def get(self, image: str, conc: int, config: str) -> dict[str, Any] | None:
        return self.cells.get((image, conc, config))

    def speedup(self, image: str, conc: int, config: str) -> float:
        stock, cell = self.get(image, conc, "stock"), self.get(image, conc, config)
        if not stock or not cell or not cell["ttft_p50"]:
            return math.nan
        return stock["ttft_p50"] / cell["ttft_p50"]


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def summarize_runs(runs, requests) -> Summary:
    return Summary(runs, requests)


def ceilings(comp: Mapping[str, Any], keep: int, stock_cell: Mapping[str, Any] | None) -> dict[str, float]:
    """Both ceilings (see the module doc) for one image size at ``keep`` kept tokens."""
    from vs_vllm.benchmarking.flops import amdahl_ceiling

    n, text = int(comp["visual_tokens"]), int(comp["text_tokens"])
    t_enc, t_llm = float(comp["t_enc"]), float(comp["t_llm"])
    out = {"hf": amdahl_ceiling(t_enc, t_llm, n, keep, text)}
    out["overhead"] = math.nan
    if stock_cell and not math.isnan(stock_cell["srv_prefill"]):
        engine = stock_cell["srv_prefill"]
        queue = 0.0 if math.isnan(stock_cell["srv_queue"]) else stock_cell["srv_queue"]
        fixed = max(0.0, stock_cell["ttft_mean"] - engine - queue)
        enc_part = engine * t_enc / (t_enc + t_llm)
        out["overhead"] = amdahl_ceiling(enc_part, engine - enc_part, n, keep, text, overhead=fixed)
    return out


# ------------------------------------------------------------------------------------------------------- markdown


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _flop_section(meta: Mapping[str, Any], summary: Summary, comps: Mapping[str, Mapping[str, Any]]) -> list[str]:
    from vs_vllm.benchmarking.flops import QwenVLArch, flop_ceiling, prefill_split
    from vs_vllm.benchmarking.model import TEXT_BEFORE, TEXT_TOKENS
    from vs_vllm.selection.budget import keep_count

    video = _is_video(meta)
    arch = _arch(meta)
    # Images: the fixed 0.3/0.2/0.1 of the committed report; videos: the sweep's own ratios, with the kept counts
    # the plugin uses, so the table's ceilings are those of the TTFT tables.
    table_ratios = [r for r in meta["config"]["ratios"] if r < 1] if video else [0.3, 0.2, 0.1]
    rows = []
    for image in summary.images:
        grid = _media_grid(meta, arch, image)
        comp = comps.get(image)
        text = int(comp["text_tokens"]) if comp else TEXT_TOKENS
        before = min(TEXT_BEFORE, text)
        s = prefill_split(arch, grid, text, text_before=before)
        sh = s.shares()
        n = s.visual_tokens
        ceil = [flop_ceiling(arch, grid, text, keep_count(n, r) if video else max(1, int(n * r)))
                for r in table_ratios]
        rows.append([
            image, ("x".join(map(str, grid)) if video else f"{grid[1]}x{grid[2]}") + f" → {n}", str(text),
            f"{s.vision / 1e9:.2f} ({sh['vision']:.1%})", f"{s.llm_visual / 1e9:.2f} ({sh['llm_visual']:.1%})",
            f"{s.llm_text / 1e9:.2f} ({sh['llm_text']:.1%})", f"{s.total / 1e9:.2f}",
            " / ".join(f"{c:.2f}×" for c in ceil),
        ])
    if video:
        ref = QwenVLArch.qwen2_5_vl_7b()
        ref_lines = []
        for image in summary.images:
            grid = _media_grid(meta, arch, image)  # the 7B's processor has the same patch, merge and frame rules
            s7 = prefill_split(ref, grid, 60)
            sh7 = s7.shares()
            c7 = [flop_ceiling(ref, grid, 60, keep_count(s7.visual_tokens, r)) for r in table_ratios]
            ref_lines.append(
                f"- {image}: vision {sh7['vision']:.1%}, LLM on visual {sh7['llm_visual']:.1%}, LLM on text "
                f"{sh7['llm_text']:.1%}; FLOP ceiling {' / '.join(f'{c:.2f}×' for c in c7)}.")
        comparison = [
            "For comparison, Qwen2.5-VL-7B on the same videos (same patch grid, 60 text tokens, the same FLOP "
            "model):", "", *ref_lines]
    else:
        comparison = [
            "For comparison, Qwen2.5-VL-7B at 1280×720 (anchors.md §6): vision 28.5%, LLM on visual 68.0%, LLM on "
            "text 3.5%; ceiling 1.92× / 2.21× / 2.59×."]
    per_token = 2 * arch.text_layers * (
        arch.text_hidden * arch.text_heads * arch.head_dim * 2
        + 2 * arch.text_hidden * arch.text_kv_heads * arch.head_dim
        + 3 * arch.text_hidden * arch.text_intermediate)
    lines = [
        "## Model and FLOP split",
        "",
        "Random-weight Qwen2.5-VL built offline (`vs_vllm.benchmarking.model.BENCH_SIZES`), proportioned like "
        "Qwen2.5-VL-7B:",
        "",
        f"- LLM: hidden {arch.text_hidden}, {arch.text_layers} layers, {arch.text_heads} query / "
        f"{arch.text_kv_heads} KV heads (head_dim {arch.head_dim}), SwiGLU {arch.text_intermediate}, vocab "
        f"{arch.vocab_size}: {per_token / 1e6:.1f} MFLOP per token before attention.",
        f"- ViT: depth {arch.vision_depth}, hidden {arch.vision_hidden}, {arch.vision_heads} heads (head_dim "
        f"{arch.vision_hidden // arch.vision_heads}), SwiGLU {arch.vision_intermediate}, full attention in blocks "
        f"{list(arch.fullatt_block_indexes)}, windows {arch.window_size} px, patch {arch.patch_size}, "
        f"{arch.spatial_merge_size}×{arch.spatial_merge_size} merge.",
        f"- KV cache: {meta.get('kv_bytes_per_token', 0) / 1024:.1f} KiB per token "
        f"({meta['config']['dtype']}).",
        "",
        "Analytic prefill FLOPs (`vs_vllm.benchmarking.flops`: 2·MAC for linear layers and both attention products, "
        "windowed ViT attention with partial edge windows, causal LLM attention charged to the query token, "
        f"LM head on the last token; norms/activations/RoPE ignored), text = {TEXT_BEFORE} tokens before the "
        f"{'video' if video else 'image'} and the rest after it:",
        "",
        *([
            "A video of F frames is a patch grid t×h×w with t = ⌈F/2⌉ (two frames per temporal patch) and "
            "N = t·h·w/4 tokens; every ViT attention group stays within one temporal slice, so the ViT costs t "
            "times one slice, and in the LLM a video token costs what an image token costs. Pruning removes LLM "
            "tokens only: the vision column is paid in full at every ratio (the FLOP ceiling counts it on both "
            "sides).", ""] if video else []),
        *_table([("video" if video else "image"), ("patch grid t×h×w → N" if video else "patch grid → N"), "text",
                 "vision GF", "LLM on visual GF", "LLM on text GF", "total GF",
                 "FLOP ceiling at r = " + " / ".join(f"{r:g}" for r in table_ratios)], rows),
        "",
        *comparison,
        "",
    ]
    return lines


def _components_section(summary: Summary, comps: Mapping[str, Mapping[str, Any]], meta) -> list[str]:
    if not comps:
        return []
    rows = []
    for image in summary.images:
        c = comps.get(image)
        if not c:
            continue
        te, tl = float(c["t_enc"]), float(c["t_llm"])
        at = {int(k): float(v) for k, v in (c.get("t_llm_at") or {}).items()}
        lin = []
        for k in sorted(at)[:3]:
            pred = tl * (k + c["text_tokens"]) / (c["visual_tokens"] + c["text_tokens"])
            lin.append(f"K={k}: {at[k] * 1e3:.0f} (lin. {pred * 1e3:.0f})")
        rows.append([image, str(c["visual_tokens"]), str(c["text_tokens"]), f"{float(c['t_proc']) * 1e3:.0f}",
                     f"{te * 1e3:.0f}", f"{tl * 1e3:.0f}", f"{te / (te + tl):.1%}", "; ".join(lin)])
    threads = next(iter(comps.values())).get("threads")
    video = _is_video(meta)
    return [
        "## Prefill parts timed in transformers",
        "",
        f"Same weights, fp32, {threads} torch thread(s) (the vLLM worker's OpenMP thread count: "
        f"{meta.get('worker_threads')}), median of {next(iter(comps.values())).get('repeats')} after a warm-up. "
        f"T_proc: the HF processor; T_enc: `{'get_video_features' if video else 'get_image_features'}` (ViT + "
        "merger); T_llm: the language model over the N + text prompt embeddings plus the LM head on the last "
        "token. The last column checks the linear model of the ceiling against the LLM prefill measured at a few "
        "kept counts (ms).",
        "",
        *_table(["video" if video else "image", "N", "text", "T_proc ms", "T_enc ms", "T_llm ms",
                 "ViT share of time", "T_llm at K (measured vs linear)"], rows),
        "",
    ]


def _ttft_section(summary: Summary, comps: Mapping[str, Mapping[str, Any]],
                  meta: Mapping[str, Any] | None = None) -> list[str]:
    # The video report also holds each speedup against the analytic FLOP ceiling (the image report predates it and
    # keeps its columns).
    flop = bool(meta) and _is_video(meta)
    lines = [
        "## TTFT",
        "",
        "TTFT p50 / p90 over all requests of all repeats (ms); runs = range of the per-run medians; speedup = stock "
        "p50 / plugin p50. Ceilings (module doc of `vs_vllm.benchmarking.report`) are given at concurrency 1, where "
        "a request runs alone" + ("; the FLOP ceiling is FLOPs(N) / FLOPs(K) with the ViT on both sides." if flop
                                  else "."),
        "",
    ]
    for image in summary.images:
        for conc in summary.concurrencies:
            stock = summary.get(image, conc, "stock")
            rows = []
            for config in summary.configs:
                cell = summary.get(image, conc, config)
                if not cell:
                    continue
                sp = summary.speedup(image, conc, config) if config != "stock" else math.nan
                ceil = {"hf": math.nan, "overhead": math.nan}
                comp = comps.get(image)
                if conc == 1 and comp and config != "stock":
                    ceil = ceilings(comp, cell["K"], summary.get(image, 1, "stock"))
                row = [
                    config, str(cell["K"]), _f(cell["prompt_tokens"]), _f(cell["ttft_p50"]), _f(cell["ttft_p90"]),
                    f"{_f(cell['run_p50_min'])}–{_f(cell['run_p50_max'])}",
                    _f(sp, ".2f") + ("×" if not math.isnan(sp) else ""),
                ]
                if conc == 1:
                    if flop:
                        fc = math.nan
                        if config != "stock":
                            text = int(comp["text_tokens"]) if comp else None
                            fc = flop_ceiling_at(meta, image, cell["K"], text)
                        row += [_f(fc, ".2f"), _f(sp / fc, ".0%")]
                    row += [_f(ceil["hf"], ".2f"), _f(sp / ceil["hf"], ".0%"),
                            _f(ceil["overhead"], ".2f"), _f(sp / ceil["overhead"], ".0%")]
                row.append(str(cell["requests"]) + (f" ({cell['failed']} failed)" if cell["failed"] else ""))
                rows.append(row)
            if not rows:
                continue
            header = ["config", "K", "prompt tok", "TTFT p50", "TTFT p90", "runs p50", "speedup"]
            if conc == 1:
                if flop:
                    header += ["FLOP ceiling", "achieved/FLOP"]
                header += ["ceiling (HF parts)", "achieved/ceiling", "ceiling (+overhead)", "achieved/ceiling"]
            header.append("requests")
            lines += [f"### {image}, concurrency {conc}" + (
                f" (stock {_f(stock['ttft_p50'])} ms)" if stock else ""), "", *_table(header, rows), ""]
    return lines


def _throughput_section(summary: Summary, meta: Mapping[str, Any] | None = None) -> list[str]:
    flop = bool(meta) and _is_video(meta)
    lines = ["## Throughput", "", "Completed requests per second, median of the repeats [min–max] "
             "(closed loop, max_tokens = 1, so this is prefill throughput)"
             + ("; gain = plugin / stock; the FLOP ceiling bounds the gain too (work per request)." if flop else ".")
             , ""]
    for image in summary.images:
        rows = []
        for config in summary.configs:
            row = [config]
            if flop:
                any_cell = next((summary.get(image, c, config) for c in summary.concurrencies
                                 if summary.get(image, c, config)), None)
                row.append("–" if config == "stock" or not any_cell else
                           f"{flop_ceiling_at(meta, image, any_cell['K']):.2f}×")
            for conc in summary.concurrencies:
                cell = summary.get(image, conc, config)
                stock = summary.get(image, conc, "stock")
                if not cell:
                    row.append("–")
                    continue
                gain = f", {cell['rps'] / stock['rps']:.2f}×" if stock and config != "stock" else ""
                row.append(f"{cell['rps']:.2f} [{cell['rps_min']:.2f}–{cell['rps_max']:.2f}]{gain}")
            rows.append(row)
        header = ["config", *(["FLOP ceiling"] if flop else []), *(f"c={c}" for c in summary.concurrencies)]
        lines += [f"### {image}", "", *_table(header, rows), ""]
    return lines


def _kv_section(summary: Summary) -> list[str]:
    rows = []
    for image in summary.images:
        for config in summary.configs:
            cells = [summary.get(image, c, config) for c in summary.concurrencies]
            cells = [c for c in cells if c]
            if not cells:
                continue
            rows.append([image, config, _f(cells[0]["prompt_tokens"]), _f(cells[0]["kv_mib"], ".2f"),
                         *(_f(summary.get(image, c, config)["kv_usage_max"] * 100, ".1f")
                           if summary.get(image, c, config) else "–" for c in summary.concurrencies)])
    return [
        "## KV cache",
        "",
        "KV per request = prompt tokens × KV bytes per token. The `vllm:kv_cache_usage_perc` columns are the peak of "
        "the gauge scraped from `/metrics` every 0.2 s during each run, in % of the KV cache. With max_tokens = 1 a "
        "request's blocks are freed in the same engine step that completes its prefill, before the step's stats are "
        "taken, so the gauge only sees requests still waiting for a later prefill chunk (concurrency > 1, more "
        "prompt tokens than `--max-num-batched-tokens`); the per-request column is the reliable one.",
        "",
        *_table([summary.kind, "config", "prompt tok", "KV MiB / request",
                 *(f"gauge peak % c={c}" for c in summary.concurrencies)], rows),
        "",
    ]


def _time_section(summary: Summary, comps: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for image in summary.images:
        for conc in summary.concurrencies:
            for config in summary.configs:
                cell = summary.get(image, conc, config)
                if not cell:
                    continue
                queue = 0.0 if math.isnan(cell["srv_queue"]) else cell["srv_queue"]
                outside = cell["ttft_mean"] - cell["srv_prefill"] - queue
                rows.append([image, str(conc), config, _f(cell["ttft_p50"]), _f(cell["ttft_mean"]),
                             _f(cell["srv_ttft"]), _f(cell["srv_queue"]), _f(cell["srv_prefill"]), _f(outside),
                             _f(outside / cell["ttft_mean"], ".0%")])
    return [
        "## Where the time goes",
        "",
        "Client TTFT vs the server's own histograms (ms; means over each run, median over the repeats; the client "
        "p50 is for reference): `time_to_first_token` (from the request's arrival in the engine client), "
        "`request_queue_time` (waiting in the scheduler), `request_prefill_time` (first scheduled → first token: "
        "ViT, selection, LLM prefill, including steps shared with other requests). \"outside\" = client TTFT mean "
        "− queue − prefill: HTTP, JSON, base64 and image decoding, the HF processor, tokenization, the plugin's "
        "middleware, and, under load, the wait until the engine core takes the request in: it reads new requests "
        "only between engine steps, and a batched CPU prefill step lasts seconds; the API server also shares its "
        "one core with the engine core.",
        "",
        *_table([summary.kind, "c", "config", "client TTFT p50", "client TTFT mean", "server TTFT", "queue",
                 "engine prefill", "outside", "share"], rows),
        "",
    ]


def _header(meta: Mapping[str, Any], summary: Summary) -> list[str]:
    m, v, cfg = meta["machine"], meta.get("versions", {}), meta["config"]
    loads = [summary.cells[k]["load"] for k in summary.cells]
    load_txt = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "?"
    quick = " (QUICK MODE: smoke test, not for conclusions)" if cfg.get("quick") else ""
    cmds = meta.get("server_commands", {})
    video = _is_video(meta)
    cpus = m.get("cpus_available") or m.get("logical_cpus") or 1
    start_load = (m.get("loadavg_start") or [0.0])[0]
    end_load = (meta.get("loadavg_end") or [0.0])[0]
    # The sweep alone drives the 1-min load to ~2-3.5 on 2 CPUs (API servers, engine cores, the workers' busy-polls);
    # a load above that, or one already high before the servers start, means other work shared the cores: say so
    # where the numbers are read, not only in the load figures.
    peak = max([*loads, float(start_load), float(end_load)])
    loaded = float(start_load) >= cpus + 1 or peak > 2 * cpus + 1
    warning = ([f"**Loaded machine:** the 1-minute load average was {float(start_load):.1f} at the start and "
                f"peaked at {peak:.1f} on {cpus} CPUs (other processes ran during the sweep), so absolute times are "
                "inflated and noisier than on a quiet machine; stock and plugin runs are interleaved, so the ratios "
                "between them are the more robust result.", ""] if loaded else [])
    if video:
        frames = ", ".join(summary.images)
        sweep = (f"- Sweep: videos {frames} (F frames of W×H pixels, uniform noise, JPEG quality "
                 f"{cfg.get('video_quality', 75)}, a fresh random video per request, sent as one "
                 "`data:video/jpeg;base64,<frame>,...` URL; all frames kept, two per temporal patch; request body "
                 + ", ".join(f"{k}: {v} KiB" for k, v in (meta.get("payload_kib") or {}).items())
                 + f"); ratios {cfg['ratios']} (plugin, method {cfg['method']}, sent as "
                 f"`{cfg.get('video_ratio_field', 'video_retention_ratio')}`) and stock; concurrency "
                 f"{cfg['concurrencies']}; {cfg['repeats']} repeats; max({cfg['min_requests']}, "
                 f"{cfg['requests_per_slot']}×concurrency) requests per run; streamed, max_tokens = 1, ignore_eos; "
                 "warm-up excluded; both servers ")
    else:
        sweep = (f"- Sweep: images {', '.join(summary.images)}; ratios {cfg['ratios']} (plugin, method "
                 f"{cfg['method']}) and stock; concurrency {cfg['concurrencies']}; {cfg['repeats']} repeats; "
                 f"max({cfg['min_requests']}, {cfg['requests_per_slot']}×concurrency) requests per run, each with a "
                 f"fresh random {cfg['image_format']} image; streamed, max_tokens = 1, ignore_eos; warm-up excluded; "
                 "both servers ")
    return [
        f"# {'Video prefill' if video else 'Prefill'} on CPU: stock vLLM vs vs-vllm{quick}",
        "",
        f"Run {meta.get('started')} → {meta.get('finished')} (sweep {meta.get('sweep_s')} s).",
        "",
        *warning,
        f"- Machine: {m.get('cpu')}, {m.get('logical_cpus')} logical CPUs ({m.get('cpus_available')} available), "
        f"{m.get('mem_gib')} GiB, {m.get('os')}; SIMD: {m.get('simd_flags')}. "
        f"1-min load average during runs: {load_txt} (start {_fmt_load(m.get('loadavg_start'))}, end "
        f"{_fmt_load(meta.get('loadavg_end'))}).",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f", Python {m.get('python')}.",
        f"- vLLM model runner: {runner_text(meta.get('runners'))}.",
        f"- vLLM worker: {meta.get('worker_threads')} OpenMP thread(s) (vLLM reserves one core for the API server "
        "and engine core).",
        sweep
        + ("up at once, configurations interleaved run by run (order rotated per repeat)." if cfg["together"]
           else "run one after the other."),
        f"- Both servers: {cfg['dtype']}, {'eager (--enforce-eager)' if cfg['eager'] else 'torch.compile'}, "
        "no prefix caching. fp32 because bf16 matmuls run ~5× slower on a CPU without AVX512-BF16/AMX; "
        "compiled was ~3% faster than eager at concurrency 1 on the development machine (within noise at 4), "
        "eager starts ~80 s sooner.",
        "",
        *commands_block(meta.get("command", ""), cmds),
    ]


#: How reports name vLLM's model runners (what ``VLLMServer.model_runner()`` reads from a server's log).
RUNNER_NAMES = {"v1": "V1", "mrv2": "Model Runner V2 (MRv2; on this CPU the test bed: vLLM's and the plugin's Triton "
                "kernels run in Triton's interpreter)"}


def runner_text(runners: Mapping[str, str] | None) -> str:
    """The report line's text for the runners the servers ran (server name -> "v1" / "mrv2")."""
    if not runners:
        return "not recorded"
    kinds = set(runners.values())
    if len(kinds) == 1:
        return f"{RUNNER_NAMES.get(next(iter(kinds)), next(iter(kinds)))}, every server"
    return "MIXED, so the comparison is not like for like: " + ", ".join(
        f"{name} {RUNNER_NAMES.get(r, r)}" for name, r in runners.items())


def commands_block(command: str, server_commands: Mapping[str, str]) -> list[str]:
    """A report's "Commands:" section: the benchmark's command line and each server's, one fenced block."""
    return ["Commands:", "", "```", command, *(f"# {name}:\n{cmd}" for name, cmd in server_commands.items()), "```",
            ""]


def _fmt_load(x: Any) -> str:
    try:
        return "/".join(f"{float(v):.1f}" for v in x)
    except TypeError:
        return "?"


def write_report(out_dir: Path, runs, requests, meta: Mapping[str, Any]) -> Path:
    out_dir = Path(out_dir)
    summary = Summary(runs, requests)
    comps = {c["image"]: c for c in meta.get("components", [])}
    stem = _stem(meta)
    lines = _header(meta, summary)
    lines += _flop_section(meta, summary, comps)
    lines += _components_section(summary, comps, meta)
    lines += _ttft_section(summary, comps, meta)
    lines += _throughput_section(summary, meta)
    lines += _time_section(summary, comps)
    lines += _kv_section(summary)
    lines += ["## Plots", "", f"![TTFT]({stem}_ttft.png)", "", f"![throughput]({stem}_throughput.png)", ""]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines))
    plot_ttft(summary, comps, out_dir / f"{stem}_ttft.png", meta=meta)
    plot_throughput(summary, out_dir / f"{stem}_throughput.png")
    return path


# ---------------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ttft(summary: Summary, comps: Mapping[str, Mapping[str, Any]], path: Path,
              meta: Mapping[str, Any] | None = None) -> None:
    """Top row: TTFT p50 at concurrency 1 vs ratio, stock as a horizontal line, the two ceiling curves (video: and
    the FLOP ceiling). Bottom row: speedup over stock at every concurrency, with the ceilings' speedups."""
    from vs_vllm.selection.budget import keep_count

    plt = _plt()
    images = summary.images
    fig, axes = plt.subplots(2, len(images), figsize=(max(7.0, 5.2 * len(images)), 8.0), squeeze=False)
    ratios_all = sorted({_config_key(c) for c in summary.configs if c != "stock"})
    lo_r = min(ratios_all) if ratios_all else 0.05
    grid = [lo_r + (1.0 - lo_r) * i / 200 for i in range(201)]
    for col, image in enumerate(images):
        top, bottom = axes[0][col], axes[1][col]
        comp, stock1 = comps.get(image), summary.get(image, 1, "stock")
        xs, ys, lo, hi = [], [], [], []
        for r in ratios_all:
            cell = summary.get(image, 1, f"r={r:g}")
            if cell:
                xs.append(r)
                ys.append(cell["ttft_p50"])
                lo.append(cell["ttft_p50"] - cell["ttft_p10"])
                hi.append(cell["ttft_p90"] - cell["ttft_p50"])
        if xs:
            top.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, color="C0", label="vs-vllm p50 (p10–p90)")
        title = image
        if stock1:
            top.axhline(stock1["ttft_p50"], color="k", lw=1.5, label="stock vLLM p50")
            top.axhspan(stock1["ttft_p10"], stock1["ttft_p90"], color="k", alpha=0.08)
        if comp and stock1:
            n = int(comp["visual_tokens"])
            ceil = [ceilings(comp, keep_count(n, r), stock1) for r in grid]
            top.plot(grid, [stock1["ttft_p50"] / c["hf"] for c in ceil], "k:", lw=1.2,
                     label="ceiling (HF parts)")
            bottom.plot(grid, [c["hf"] for c in ceil], "k:", lw=1.2, label="ceiling (HF parts)")
            if not any(math.isnan(c["overhead"]) for c in ceil):
                top.plot(grid, [stock1["ttft_p50"] / c["overhead"] for c in ceil], "k--", lw=1.0, alpha=0.6,
                         label="ceiling (+fixed overhead)")
                bottom.plot(grid, [c["overhead"] for c in ceil], "k--", lw=1.0, alpha=0.6,
                            label="ceiling (+fixed overhead)")
            if meta and _is_video(meta):
                fc = [flop_ceiling_at(meta, image, keep_count(n, r), comp["text_tokens"]) for r in grid]
                top.plot(grid, [stock1["ttft_p50"] / c for c in fc], "-.", color="C3", lw=1.0,
                         label="FLOP ceiling")
                bottom.plot(grid, fc, "-.", color="C3", lw=1.0, label="FLOP ceiling")
            title = f"{image}: N={n} visual + {comp['text_tokens']} text tokens"
        top.set_title(title + ", concurrency 1", fontsize=10)
        top.set_ylabel("TTFT [ms]")
        top.set_ylim(bottom=0)
        for conc, marker in zip(summary.concurrencies, "osd^v<>"):
            pts = [(r, summary.speedup(image, conc, f"r={r:g}")) for r in ratios_all]
            pts = [(r, v) for r, v in pts if not math.isnan(v)]
            if pts:
                bottom.plot(*zip(*pts), marker=marker, ls="-", label=f"achieved, c={conc}")
        bottom.axhline(1.0, color="k", lw=1.0)
        bottom.set_ylabel("speedup over stock (TTFT p50)")
        bottom.set_ylim(bottom=0)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xticks(ratios_all)
            ax.set_xticklabels([f"{r:g}" for r in ratios_all])
            ax.minorticks_off()
            ax.set_xlabel("retention ratio (log scale)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    axes[1][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Video prefill TTFT vs retention ratio: stock vLLM, vs-vllm, the Amdahl and FLOP ceilings"
                 if meta and _is_video(meta) else
                 "Prefill TTFT vs retention ratio: stock vLLM, vs-vllm and the Amdahl ceiling", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_throughput(summary: Summary, path: Path) -> None:
    plt = _plt()
    images = summary.images
    fig, axes = plt.subplots(1, len(images), figsize=(max(7.0, 5.2 * len(images)), 4.4), squeeze=False)
    for ax, image in zip(axes[0], images):
        for config in summary.configs:
            xs, ys, lo, hi = [], [], [], []
            for conc in summary.concurrencies:
                cell = summary.get(image, conc, config)
                if cell:
                    xs.append(conc)
                    ys.append(cell["rps"])
                    lo.append(cell["rps"] - cell["rps_min"])
                    hi.append(cell["rps_max"] - cell["rps"])
            kw = {"color": "k", "lw": 2.2} if config == "stock" else {}
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, label=config if config == "stock" else
                        f"vs-vllm {config}", **kw)
        ax.set_title(image)
        ax.set_xlabel("concurrency")
        ax.set_xticks(summary.concurrencies)
        ax.set_ylabel("requests / s (median, bars: min–max)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Prefill throughput vs concurrency (closed loop, max_tokens = 1)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
