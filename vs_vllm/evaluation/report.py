"""Aggregation of predictions into a (method x ratio) table, and the CSV, markdown, PNG and JSONL outputs."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vs_vllm.evaluation.metrics import relative_scores

__all__ = ["aggregate", "write_csv", "write_markdown", "write_outputs", "write_plot", "write_predictions"]

BASELINE_RATIO = 1.0

CSV_FIELDS = (
    "method", "ratio", "n", "score", "relative", "em", "anls", "yesno", "n_yesno", "errors",
    "visual_tokens_kept", "visual_tokens_total", "prompt_tokens", "latency_s", "shared_baseline",
)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def aggregate(predictions: Sequence[Mapping[str, Any]], methods: Sequence[str], *, metric: str = "em") -> list[dict]:
    """One row per (method, ratio). The ratio-1.0 baseline (requested once) is repeated for every method, marked
    ``shared_baseline``; ``score`` is the chosen metric, ``relative`` = score / score at ratio 1.0."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for p in predictions:
        groups.setdefault((p["method"], float(p["ratio"])), []).append(p)
    base_rows = [g for (m, r), g in groups.items() if r == BASELINE_RATIO]
    rows = []
    for method in methods:
        keys = sorted({r for (_, r) in groups}, reverse=True)
        for ratio in keys:
            shared = False
            g = groups.get((method, ratio))
            if g is None and ratio == BASELINE_RATIO and base_rows:
                g, shared = base_rows[0], True
            if g is None:
                continue
            row = {
                "method": method,
                "ratio": ratio,
                "n": len(g),
                "em": _mean(p.get("em") for p in g),
                "anls": _mean(p.get("anls") for p in g),
                "yesno": _mean(p.get("yesno") for p in g),
                "n_yesno": sum(p.get("yesno") is not None for p in g),
                "errors": sum(p.get("error") is not None for p in g),
                "visual_tokens_kept": _mean(p.get("visual_tokens_kept") for p in g),
                "visual_tokens_total": _mean(p.get("visual_tokens_total") for p in g),
                "prompt_tokens": _mean(p.get("prompt_tokens") for p in g),
                "latency_s": _mean(p.get("latency_s") for p in g),
                "shared_baseline": int(shared or (ratio == BASELINE_RATIO and method != g[0]["method"])),
            }
            row["score"] = row.get(metric)
            rows.append(row)
    return relative_scores(rows, metric="score", baseline_ratio=BASELINE_RATIO)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in CSV_FIELDS})
    return path


def markdown_table(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    """Methods x ratios: ``score (relative %)`` per cell, as in lmms-eval style pruning tables."""
    ratios = sorted({float(r["ratio"]) for r in rows}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], float(r["ratio"])): r for r in rows}
    kept = {}
    for r in rows:
        if r.get("visual_tokens_kept") is not None:
            kept.setdefault(float(r["ratio"]), r["visual_tokens_kept"])
    head = "| method | " + " | ".join(
        f"r={x:g}" + (f" (~{kept[x]:.1f} tok)" if x in kept else "") for x in ratios) + " |"
    lines = [head, "|---|" + "---:|" * len(ratios)]
    for m in methods:
        cells = []
        for x in ratios:
            r = cell.get((m, x))
            if r is None or r.get("score") is None:
                cells.append("")
                continue
            rel = r.get("relative")
            cells.append(f"{r['score']:.3f}" + (f" ({100 * rel:.1f}%)" if rel is not None else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(rows: Sequence[Mapping[str, Any]], path: Path, *, metric: str, title: str,
                   context: Mapping[str, Any] | None = None, notes: str = "") -> Path:
    parts = [f"# {title}", ""]
    if context:
        parts += [f"- **{k}**: {v}" for k, v in context.items()]
        parts.append("")
    parts += [
        f"Metric: **{metric}**; each cell is the score and, in brackets, the score relative to the unpruned model "
        "(ratio 1.0 keeps every visual token, so it is requested once and shared by every method). "
        "`tok` = mean visual tokens kept per image.",
        "",
        markdown_table(rows, metric),
        "",
        "## All metrics",
        "",
        "| method | ratio | n | em | anls | yes/no (n) | errors | visual tokens kept/total | mean latency s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        yn = f"{_fmt(r['yesno'], 3)} ({r['n_yesno']})" if r.get("n_yesno") else "-"
        vt = (f"{_fmt(r.get('visual_tokens_kept'), 1)}/{_fmt(r.get('visual_tokens_total'), 1)}"
              if r.get("visual_tokens_kept") is not None else "-")
        parts.append(f"| {r['method']} | {r['ratio']:g} | {r['n']} | {_fmt(r['em'], 3)} | {_fmt(r['anls'], 3)} | "
                     f"{yn} | {r['errors']} | {vt} | {_fmt(r.get('latency_s'), 3)} |")
    if notes:
        parts += ["", notes.rstrip()]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def write_plot(rows: Sequence[Mapping[str, Any]], path: Path, *, metric: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = "osD^v<>px*h"
    for i, m in enumerate(methods):
        pts = sorted((float(r["ratio"]), r["score"]) for r in rows if r["method"] == m and r.get("score") is not None)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], label=m)
    ax.set_xscale("log")
    ratios = sorted({float(r["ratio"]) for r in rows})
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{x:g}" for x in ratios])
    ax.minorticks_off()
    ax.set_xlabel("retention ratio (share of visual tokens kept)")
    ax.set_ylabel(metric)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_predictions(predictions: Iterable[Mapping[str, Any]], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return path


def write_outputs(
    predictions: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str = "eval",
    metric: str = "em",
    title: str = "Accuracy vs retention ratio",
    context: Mapping[str, Any] | None = None,
    notes: str = "",
) -> dict[str, Path]:
    """Write ``{name}_accuracy.csv/.md/.png`` and ``{name}_predictions.jsonl`` to ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(predictions, methods, metric=metric)
    return {
        "csv": write_csv(rows, out / f"{name}_accuracy.csv"),
        "markdown": write_markdown(rows, out / f"{name}_accuracy.md", metric=metric, title=title, context=context,
                                   notes=notes),
        "png": write_plot(rows, out / f"{name}_accuracy.png", metric=metric, title=title),
        "predictions": write_predictions(predictions, out / f"{name}_predictions.jsonl"),
    }
