#!/usr/bin/env python
"""Benchmark VisionSelector selection: Triton kernels vs the plain-torch reference, on a CUDA GPU.

For every (images per batch, N, D, r) case: medians of ``triton.testing.do_bench`` (cold L2 between runs) for
``select_tokens(backend="triton")`` and ``select_tokens(backend="torch")``, and for the shared gather alone
(``gather_selected``). "Effective GB/s" counts the bytes a selection cannot avoid moving: X read once plus the kept
rows written once; it is compared with the device-to-device copy bandwidth measured here (a large ``copy_``, read +
write). The Triton pipeline itself reads X twice (mean, then scores: the mean key must be known before any score)
and reads the scorer weights once, so the effective figure understates its actual memory traffic.

Two measurements of the same call per case:

- eager (``triton_ms``, ``torch_ms``, ``speedup``, ``effective_gbps``, ``pct_of_copy_bw``): ``do_bench`` of the
  Python call itself, so host work (plan validation, the pinned host-to-device copy of the sizes, ~7 Triton launches)
  is included; for small inputs this is launch-bound, not GPU-bound.
- GPU time, CUDA-graph replay (``*_graph``): the same call captured once in a ``torch.cuda.CUDAGraph`` (after warm-up
  calls on a side stream, as the torch docs require; the plan and the pinned copy of the sizes happen inside the
  captured call, which is fine since the inputs are fixed) and ``do_bench`` of ``graph.replay()``. In serving the
  selection is launched asynchronously behind the vision tower's GPU work, so this is the time that costs throughput.

CSV columns added by the graph measurement (empty when not measured; the ``*_note`` column then says why):

- ``triton_graph_ms`` / ``torch_graph_ms``: median ms of replaying the captured ``select_tokens(backend="triton")`` /
  ``backend="torch"`` call. The torch reference may not be capturable (a host sync or an op illegal in capture): then
  ``torch_graph_ms`` is empty; a torch replay whose indices differ from its eager call is dropped the same way.
- ``speedup_graph``: torch_graph_ms / triton_graph_ms.
- ``effective_gbps_graph`` / ``pct_of_copy_bw_graph``: ``effective_gbps`` / ``pct_of_copy_bw`` from triton_graph_ms.
- ``graph_same_idx``: True when the captured Triton graph, after the timed replays, holds exactly the indices of the
  eager call (one check per case); a graph time with False here is not a valid measurement.
- ``triton_graph_note`` / ``torch_graph_note``: empty when captured with the default ``capture_error_mode``
  ("global"); otherwise why the capture failed or which fallback mode ("relaxed") was used.

The serving chain (what ``embed_multimodal`` hands to vLLM: kept rows followed by their position channels), per case:

- ``serving_unfused_ms``: the composition vs-vllm served before the fusion: ``select_tokens`` (rows + int64
  positions), then the channels encoded and concatenated in torch (gather -> copy -> concat);
- ``serving_fused_ms``: ``select_tokens(..., channels=PositionChannels())``: the gather writes rows and channels
  straight into the final buffer; ``fusion_speedup`` = unfused / fused; ``*_graph_ms`` / ``fusion_speedup_graph``:
  the same from CUDA-graph replays (``serving_same``: the fused buffer equals the unfused one, bit for bit).

Where the Triton chain's GPU time goes (graph pass, cases with r = 0.2): each pass launched alone from a CUDA graph
on the case's inputs, ``*_graph_ms`` of ``meta`` (the host sizes' pinned host-to-device copy), ``scores`` (mean,
the two mat-vecs, the partial dot products), ``select`` (one program per image: scores, radix select, compaction)
and ``gather`` (kept rows + position channels into the packed layout).

The graph pass runs after every eager measurement of the run, so the eager columns are measured as without it (only
their inputs stay allocated until then). A failed capture never stops the benchmark: the reason is recorded, the CUDA
state is synchronised, the next capture uses a fresh graph and stream, and a call that failed in every mode is not
captured again in later cases (``GraphTimer``). ``--no-graph`` skips the graph pass.

Writes benchmarks/results/bench_select_<gpu>[_quick].csv and .md (rewritten after every case, so a run cut short
keeps what it measured). Needs torch + triton only (no vLLM):

    PYTHONPATH=. python benchmarks/kernels/bench_select.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib.util
import math
import platform
import re
import sys
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _import_kernels():
    """``vs_vllm.kernels``, also from a plain checkout without the editable install (kernels/ lives at the top level
    and is mapped to vs_vllm.kernels by pyproject's package-dir)."""
    try:
        from vs_vllm import kernels

        return kernels
    except ImportError:
        pass
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import vs_vllm  # the repo's package (vs_vllm/), for vs_vllm.selection

    spec = importlib.util.spec_from_file_location(
        "vs_vllm.kernels", REPO / "kernels" / "__init__.py", submodule_search_locations=[str(REPO / "kernels")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_vllm.kernels"] = module
    spec.loader.exec_module(module)
    vs_vllm.kernels = module
    return module


FULL = {"n": [576, 1196, 2691, 4096, 16384], "d": [2048, 3584], "r": [0.1, 0.2, 0.3], "images": [1, 4]}
QUICK = {"n": [576, 4096, 16384], "d": [3584], "r": [0.2], "images": [1, 4]}


def copy_bandwidth(torch, triton, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * nbytes / (ms * 1e-3) / 1e9


#: capture_error_mode values tried in order: torch's default first; "relaxed" allows the host-side calls some torch
#: versions make inside a capture (the caching host allocator's event queries behind ``pin_memory``).
CAPTURE_MODES = ("global", "relaxed")


def reason(exc: BaseException, limit: int = 300) -> str:
    """One line ``Type: message`` (for a CSV cell)."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}"[:limit].replace("|", "/")


class GraphTimer:
    """GPU time of a call: capture it in a CUDA graph and time ``graph.replay()`` with ``bench``.

    ``measure(fn, key)`` returns ``(ms, out, note)``: ``out`` is what the captured call returned (its tensors hold the
    results of the last replay), ``note`` is empty after a capture in the default mode, else says what went wrong
    or which fallback mode was used; ``ms`` and ``out`` are None when no mode worked. Never raises: after a failed
    attempt the device is synchronised and the next attempt gets a fresh graph and stream; if even that fails, the
    CUDA state is taken as unusable and no further capture is tried (``broken``).

    Calls of one ``key`` (e.g. "triton", "torch", "copy": the same code on other sizes) start from the mode that
    worked for that key before, and are not captured again once every mode failed for it: each failed capture leaves
    an unfinished capture in torch's caching allocator (cheap, but looked at on every allocation), so failures that
    would repeat in every case must not pile up under the eager timings of the later cases.
    """

    def __init__(self, torch, bench, warmup_calls: int = 3, modes=CAPTURE_MODES):
        self.torch, self.bench, self.warmup_calls, self.modes = torch, bench, warmup_calls, tuple(modes)
        self.broken = ""
        self.working: dict = {}  # key -> (index of the mode that worked, its note)
        self.given_up: dict = {}  # key -> why every mode failed

    def capture(self, fn, mode: str):
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream (Triton compiles, allocator, host caches)
            for _ in range(self.warmup_calls):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(), capture_error_mode=mode):
            out = fn()
        return graph, out

    def _recover(self, why: str) -> bool:
        try:
            self.torch.cuda.synchronize()
            return True
        except Exception as exc:
            self.broken = f"CUDA unusable after a failed capture ({why}; then {reason(exc, 150)})"
            return False

    def measure(self, fn, key=None):
        if self.broken:
            return None, None, f"not captured: {self.broken}"
        if key is not None and key in self.given_up:
            return None, None, f"not captured: {self.given_up[key]} (in an earlier case; not tried again)"
        first, prior = self.working.get(key, (0, ""))
        notes = [prior] if prior else []
        for i in range(first, len(self.modes)):
            mode = self.modes[i]
            graph = out = None
            try:
                graph, out = self.capture(fn, mode)
                graph.replay()
                self.torch.cuda.synchronize()
                ms = float(self.bench(graph.replay))
                self.torch.cuda.synchronize()
                if not math.isfinite(ms) or ms <= 0:
                    raise RuntimeError(f"do_bench of the replay returned {ms}")
                if i and not prior:
                    notes.append(f"captured with capture_error_mode={mode!r}")
                note = "; ".join(notes)
                if key is not None:
                    self.working[key] = (i, note)
                return ms, out, note
            except Exception as exc:
                why = reason(exc)
                notes.append(f"{mode} capture failed: {why}")
                graph = out = None  # drop the graph (and its memory pool) before the next attempt
                if not self._recover(why):
                    notes.append(self.broken)
                    break
        note = "; ".join(notes)
        if key is not None:
            self.given_up[key] = note
        return None, None, note


def check_case(kernels, torch, x, cu, keep, w, grids):
    """Triton vs torch on this input: (indices identical, rows identical for identical indices, worst score error).
    Indices may differ on near-ties (summation order); the kernel's own top-K is exact by construction."""
    from vs_vllm.kernels.common import make_plan
    from vs_vllm.kernels.reference import select_with_scores_ref
    from vs_vllm.kernels.select import select_with_scores_triton

    plan = make_plan(x, cu, keep, grids)
    a, sa = select_with_scores_triton(x, plan, *w)
    b, sb = select_with_scores_ref(x, plan, *w)
    same_idx = bool(torch.equal(a.indices, b.indices))
    same_rows = bool(torch.equal(a.rows, b.rows)) if same_idx else None
    return same_idx, same_rows, float((sa - sb).abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small grid (N in 576/4096/16384, D=3584, r=0.2)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--rep", type=int, default=100, help="do_bench rep (ms)")
    ap.add_argument("--no-check", action="store_true", help="skip the Triton-vs-torch correctness check per case")
    ap.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph (GPU time) measurement")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "bench_select.py needs a CUDA GPU: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Nothing was measured.",
            file=sys.stderr,
        )
        return 2
    import triton
    import triton.testing

    kernels = _import_kernels()
    torch.backends.cuda.matmul.allow_tf32 = False

    grid = QUICK if args.quick else FULL
    gpu = torch.cuda.get_device_name()
    cap = torch.cuda.get_device_capability()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_").lower()
    print(f"GPU: {gpu} (sm_{cap[0]}{cap[1]}), torch {torch.__version__}, triton {triton.__version__}", flush=True)
    bw_copy = copy_bandwidth(torch, triton)
    torch.cuda.empty_cache()
    print(f"device-to-device copy bandwidth: {bw_copy:.0f} GB/s", flush=True)

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=args.rep, return_mode="median")

    timer = GraphTimer(torch, bench)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench_select_{slug}{'_quick' if args.quick else ''}"
    csv_path, md_path = args.out_dir / f"{stem}.csv", args.out_dir / f"{stem}.md"
    header = dict(gpu=gpu, cap=cap, torch=torch.__version__, triton=triton.__version__, bw_copy=bw_copy)

    rows = []
    pending = []  # (row, call arguments, grids, eager Triton selection, bytes moved) for the graph pass
    for images in grid["images"]:
        for d in grid["d"]:
            h = d // 2
            g = torch.Generator(device="cuda").manual_seed(d)
            wq = (torch.randn(h, d, device="cuda", generator=g) / math.sqrt(d)).to(torch.bfloat16)
            wk = (torch.randn(h, d, device="cuda", generator=g) / math.sqrt(d)).to(torch.bfloat16)
            bq = (torch.randn(h, device="cuda", generator=g) * 0.1).to(torch.bfloat16)
            bk = (torch.randn(h, device="cuda", generator=g) * 0.1).to(torch.bfloat16)
            w = (wq, bq, wk, bk)
            for n in grid["n"]:
                x = torch.randn(images * n, d, device="cuda", generator=g).to(torch.bfloat16)
                cu = [i * n for i in range(images + 1)]
                side = math.isqrt(n)
                grids = [(1, side, n // side)] * images if side * (n // side) == n else None
                for r in grid["r"]:
                    k = max(1, int(n * r))
                    keep = [k] * images
                    args_sel = (x, cu, keep, *w)
                    sel = kernels.select_tokens(*args_sel, grids=grids, backend="triton")
                    t_tri = bench(partial(kernels.select_tokens, *args_sel, grids=grids, backend="triton"))
                    t_ref = bench(partial(kernels.select_tokens, *args_sel, grids=grids, backend="torch"))
                    serving = serving_calls(kernels, torch, args_sel, grids or [(1, 1, n)] * images)
                    t_unfused, t_fused = bench(serving["unfused"]), bench(serving["fused"])
                    serving_same = bool(torch.equal(serving["unfused"]().view(torch.int16),
                                                    serving["fused"]().view(torch.int16)))
                    args_gather = (x, cu, sel.indices, sel.cu_keep.tolist(), grids)
                    t_gtri = bench(partial(kernels.gather_selected, *args_gather, backend="triton"))
                    t_gref = bench(partial(kernels.gather_selected, *args_gather, backend="torch"))
                    x_bytes = x.numel() * x.element_size()
                    kept_bytes = images * k * d * x.element_size()
                    eff = (x_bytes + kept_bytes) / (t_tri * 1e-3) / 1e9
                    gather_bw = 2 * kept_bytes / (t_gtri * 1e-3) / 1e9
                    same_idx = same_rows = max_err = None
                    if not args.no_check:
                        same_idx, same_rows, max_err = check_case(kernels, torch, x, cu, keep, w, grids)
                    row = {
                        "gpu": gpu,
                        "images": images,
                        "n": n,
                        "d": d,
                        "r": r,
                        "k": k,
                        "dtype": "bf16",
                        "triton_ms": round(t_tri, 4),
                        "torch_ms": round(t_ref, 4),
                        "speedup": round(t_ref / t_tri, 2),
                        "effective_gbps": round(eff, 1),
                        "pct_of_copy_bw": round(100 * eff / bw_copy, 1),
                        "gather_triton_ms": round(t_gtri, 4),
                        "gather_torch_ms": round(t_gref, 4),
                        "gather_gbps": round(gather_bw, 1),
                        "copy_gbps": round(bw_copy, 1),
                        "same_indices": same_idx,
                        "same_rows": same_rows,
                        "max_score_err": max_err,
                        "serving_unfused_ms": round(t_unfused, 4),
                        "serving_fused_ms": round(t_fused, 4),
                        "fusion_speedup": round(t_unfused / t_fused, 2),
                        "serving_same": serving_same,
                    }
                    # graph columns filled in by the second pass below
                    row.update(graph_columns(None, torch, None, None, None, None, 0, bw_copy,
                                             skip="skipped (--no-graph)" if args.no_graph else "not measured (yet)"))
                    row.update(serving_graph_columns(None, None))
                    row.update(breakdown_graph_columns(None, None, None))
                    rows.append(row)
                    if not args.no_graph:
                        pending.append((row, args_sel, grids, sel, x_bytes + kept_bytes, serving))
                    sel = None
                    print(
                        f"B={images} N={n:5d} D={d} r={r:.1f} K={k:5d}  triton {t_tri:8.4f} ms  torch {t_ref:8.4f} ms"
                        f"  x{row['speedup']:6.2f}  {eff:7.1f} GB/s ({row['pct_of_copy_bw']:5.1f}% of copy)"
                        f"  gather {t_gtri:.4f}/{t_gref:.4f} ms  same_idx={same_idx}",
                        flush=True,
                    )
                    write_results(csv_path, md_path, rows, header)  # every case: a run cut short keeps its rows
                x = None  # free before the next size (the graph pass below still holds its inputs)
                torch.cuda.empty_cache()

    # Second pass, GPU time: the same calls replayed from CUDA graphs. After every eager number, so that nothing a
    # capture leaves behind (graph memory pools, pinned host blocks, a failed capture) can touch the eager columns.
    if pending:
        print("GPU time: the same calls captured in CUDA graphs, graph.replay() timed", flush=True)
    for row, args_sel, grids, sel, moved, serving in pending:
        try:
            row.update(graph_columns(kernels, torch, timer, args_sel, grids, sel, moved, bw_copy))
            row.update(serving_graph_columns(timer, serving))
            if row["r"] == 0.2:
                row.update(breakdown_graph_columns(timer, args_sel, grids or [(1, 1, row["n"])] * row["images"]))
        except Exception as exc:  # graph_columns does not raise; this only guards the eager rows already measured
            row.update(triton_graph_note=f"graph pass failed: {reason(exc)}", torch_graph_note="")
        print(
            f"B={row['images']} N={row['n']:5d} D={row['d']} r={row['r']:.1f} K={row['k']:5d}  graph replay: "
            f"triton {_fmt(row['triton_graph_ms'])} ms  torch {_fmt(row['torch_graph_ms'])} ms"
            f"  x{_fmt(row['speedup_graph'], 2)}  ({_fmt(row['pct_of_copy_bw_graph'], 1)}% of copy)"
            f"  graph_same_idx={row['graph_same_idx']}"
            + "".join(f"  [{c}: {row[c]}]" for c in ("triton_graph_note", "torch_graph_note") if row[c]),
            flush=True,
        )
        write_results(csv_path, md_path, rows, header)
    pending = args_sel = sel = serving = None
    torch.cuda.empty_cache()

    write_results(csv_path, md_path, rows, header)
    print(f"wrote {csv_path} and {md_path}")
    return 0


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None or v == "" else f"{float(v):.{digits}f}"


def graph_columns(kernels, torch, timer, args_sel, grids, sel, moved_bytes: int, bw_copy: float, skip: str = ""):
    """The ``*_graph`` columns of one case (see the module docstring). Never raises."""
    out = {
        "triton_graph_ms": None,
        "torch_graph_ms": None,
        "speedup_graph": None,
        "effective_gbps_graph": None,
        "pct_of_copy_bw_graph": None,
        "graph_same_idx": None,
        "triton_graph_note": skip,
        "torch_graph_note": skip,
    }
    if skip:
        return out
    call = partial(kernels.select_tokens, *args_sel, grids=grids, backend="triton")
    t_tri, res, note = timer.measure(call, "triton")
    out["triton_graph_note"] = note
    if t_tri is not None:
        try:
            out["graph_same_idx"] = bool(torch.equal(res.indices, sel.indices))
        except Exception as exc:
            out["graph_same_idx"] = False
            out["triton_graph_note"] = "; ".join(filter(None, [note, f"index check failed: {reason(exc)}"]))
        eff = moved_bytes / (t_tri * 1e-3) / 1e9
        out.update(triton_graph_ms=round(t_tri, 4), effective_gbps_graph=round(eff, 1),
                   pct_of_copy_bw_graph=round(100 * eff / bw_copy, 1))
    res = None
    try:
        ref = kernels.select_tokens(*args_sel, grids=grids, backend="torch")  # the eager result the replay must match
    except Exception as exc:  # pragma: no cover - the eager torch call was just timed
        out["torch_graph_note"] = f"eager torch call failed: {reason(exc)}"
        return out
    call = partial(kernels.select_tokens, *args_sel, grids=grids, backend="torch")
    t_ref, res, note = timer.measure(call, "torch")
    if t_ref is not None:
        try:
            same = bool(torch.equal(res.indices, ref.indices))
        except Exception as exc:
            same, note = False, "; ".join(filter(None, [note, f"index check failed: {reason(exc)}"]))
        if not same:
            t_ref = None
            note = "; ".join(filter(None, [note, "replay indices differ from the eager torch call: time dropped"]))
    out["torch_graph_note"] = note
    if t_ref is not None:
        out["torch_graph_ms"] = round(t_ref, 4)
        if t_tri is not None:
            out["speedup_graph"] = round(t_ref / t_tri, 2)
    return out


def serving_calls(kernels, torch, args_sel, grids) -> dict:
    """The serving chain before and after the fusion (see the module docstring), as zero-argument calls."""
    from vs_vllm.kernels.position_channels import PositionChannels, encode_position_channels

    def unfused():
        sel = kernels.select_tokens(*args_sel, grids=grids, backend="triton")
        return torch.cat([sel.rows, encode_position_channels(sel.positions, sel.rows.dtype)], dim=1)

    def fused():
        return kernels.select_tokens(*args_sel, grids=grids, backend="triton", channels=PositionChannels()).packed

    return {"unfused": unfused, "fused": fused}


def serving_graph_columns(timer, serving) -> dict:
    """GPU time of both serving chains from CUDA-graph replays (empty without a timer). Never raises."""
    out = {"serving_unfused_graph_ms": None, "serving_fused_graph_ms": None, "fusion_speedup_graph": None,
           "serving_graph_note": ""}
    if timer is None:
        return out
    times, out["serving_graph_note"] = graph_times(timer, serving, "serving_{}")
    out.update({f"serving_{name}_graph_ms": ms for name, ms in times.items()})
    if out["serving_unfused_graph_ms"] and out["serving_fused_graph_ms"]:
        out["fusion_speedup_graph"] = round(out["serving_unfused_graph_ms"] / out["serving_fused_graph_ms"], 2)
    return out


def graph_times(timer, calls: dict, key: str) -> tuple[dict, str]:
    """({name: ms or None}, notes) of each zero-argument call captured and replayed by ``timer`` (capture key
    ``key.format(name)``). Never raises."""
    times, notes = {}, []
    for name, call in calls.items():
        ms, _, note = timer.measure(call, key.format(name))
        times[name] = round(ms, 4) if ms is not None else None
        if note:
            notes.append(f"{name}: {note}")
    return times, "; ".join(notes)


BREAKDOWN_PARTS = ("meta", "scores", "select", "gather")


def breakdown_graph_columns(timer, args_sel, grids) -> dict:
    """GPU time of each pass of the Triton chain alone (see the module docstring; empty without a timer)."""
    out = {f"{part}_graph_ms": None for part in BREAKDOWN_PARTS}
    out["breakdown_note"] = ""
    if timer is None:
        return out
    from vs_vllm.kernels.common import make_plan
    from vs_vllm.kernels.config import _device_meta, _row_major, _target_programs, get_config
    from vs_vllm.kernels.gather import _launch_gather
    from vs_vllm.kernels.position_channels import PositionChannels
    from vs_vllm.kernels.score import _launch_scores
    from vs_vllm.kernels.topk_select import _launch_select

    x, cu, keep, wq, bq, wk, bk = args_sel
    x, wq, wk = _row_major(x), _row_major(wq), _row_major(wk)
    plan, cfg, channels = make_plan(x, cu, keep, grids), get_config(), PositionChannels()
    target = _target_programs(x.device, cfg)
    meta = _device_meta(plan, x.device, channels)
    part_s, part_c, n_ss, n_us = _launch_scores(x, meta.cu, wq, bq, wk, bk, plan, cfg, target)
    sqrt_h = math.sqrt(wq.shape[0])
    _, indices = _launch_select(part_s, part_c, meta.cu, meta.cuk, x.shape[0], n_ss, n_us, sqrt_h, plan, cfg)
    calls = {
        "meta": lambda: _device_meta(plan, x.device, channels),
        "scores": lambda: _launch_scores(x, meta.cu, wq, bq, wk, bk, plan, cfg, target),
        "select": lambda: _launch_select(part_s, part_c, meta.cu, meta.cuk, x.shape[0], n_ss, n_us, sqrt_h, plan,
                                         cfg),
        "gather": lambda: _launch_gather(x, plan, meta, indices, cfg, target),
    }
    times, out["breakdown_note"] = graph_times(timer, calls, "part_{}")
    out.update({f"{part}_graph_ms": ms for part, ms in times.items()})
    return out


def write_results(csv_path: Path, md_path: Path, rows: list, header: dict) -> None:
    """The CSV (every column) and the markdown table of ``rows``."""
    if not rows:
        return
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)

    gpu, cap, bw_copy = header["gpu"], header["cap"], header["bw_copy"]
    big = [r for r in rows if r["n"] >= 4096]
    goal_speed = all(r["speedup"] >= 3 for r in big)
    goal_bw = all(r["pct_of_copy_bw"] >= 70 for r in big)

    def graph_goal(key, threshold):
        valid = [r for r in big if r[key] is not None and r["graph_same_idx"] is True]
        if any(r[key] < threshold for r in valid):
            return "NOT met"
        return "met" if valid and len(valid) == len(big) else "not measured"

    lines = [
        f"# VisionSelector selection: Triton vs torch reference on {gpu}",
        "",
        (
            f"- GPU: {gpu} (sm_{cap[0]}{cap[1]}); torch {header['torch']}; triton {header['triton']}; "
            f"python {platform.python_version()}; {_dt.datetime.now().isoformat(timespec='seconds')}"
        ),
        f"- device-to-device copy bandwidth (read + write): {bw_copy:.0f} GB/s",
        (
            "- times: `triton.testing.do_bench` medians (ms, L2 flushed between runs) of the public `select_tokens` "
            "call (host validation, launches and all), bf16 X, bf16 scorer weights with H = D/2, grids given"
        ),
        (
            "- graph times: the same call captured in a CUDA graph, `do_bench` medians of `graph.replay()`: the GPU "
            "time of the chain without the host's launch overhead (what costs throughput when the selection is "
            "launched asynchronously behind the vision tower); `graph same idx`: the replayed Triton graph holds the "
            "eager call's indices"
        ),
        (
            "- effective GB/s = (X bytes + kept-row bytes) / Triton time; the kernels actually read X twice plus "
            "the weights"
        ),
        (
            f"- goals for N >= 4096, eager call (host launch overhead included): speedup >= 3x: "
            f"{'met' if goal_speed else 'NOT met'}; >= 70% of copy bandwidth: {'met' if goal_bw else 'NOT met'}"
        ),
        (
            f"- goals for N >= 4096, GPU time (CUDA-graph replay): speedup >= 3x: {graph_goal('speedup_graph', 3)}; "
            f">= 70% of copy bandwidth: {graph_goal('pct_of_copy_bw_graph', 70)}"
        ),
        "",
        (
            "| images | N | D | r | K | Triton ms | torch ms | speedup | eff. GB/s | % copy BW | gather Triton ms "
            "| gather torch ms | same idx | Triton graph ms | torch graph ms | graph speedup | % copy BW (graph) "
            "| graph same idx |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['n']} | {r['d']} | {r['r']} | {r['k']} | {r['triton_ms']:.4f} | {r['torch_ms']:.4f}"
            f" | {r['speedup']:.2f} | {r['effective_gbps']:.0f} | {r['pct_of_copy_bw']:.1f} | "
            f"{r['gather_triton_ms']:.4f} | {r['gather_torch_ms']:.4f} | {r['same_indices']} | "
            f"{_fmt(r['triton_graph_ms'])} | {_fmt(r['torch_graph_ms'])} | {_fmt(r['speedup_graph'], 2)} | "
            f"{_fmt(r['pct_of_copy_bw_graph'], 1)} | {'-' if r['graph_same_idx'] is None else r['graph_same_idx']} |"
        )
    lines += [
        "",
        "Serving chain (rows + position channels, what `embed_multimodal` returns): `unfused` = `select_tokens`, "
        "then channels encoded and concatenated in torch (the path before the fusion); `fused` = "
        "`select_tokens(..., channels=PositionChannels())`, one gather into the final buffer. `same`: bit-identical.",
        "",
        "| images | N | D | r | unfused ms | fused ms | fusion speedup | unfused graph ms | fused graph ms "
        "| fusion speedup (graph) | same |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['n']} | {r['d']} | {r['r']} | {r['serving_unfused_ms']:.4f} | "
            f"{r['serving_fused_ms']:.4f} | {r['fusion_speedup']:.2f} | {_fmt(r['serving_unfused_graph_ms'])} | "
            f"{_fmt(r['serving_fused_graph_ms'])} | {_fmt(r['fusion_speedup_graph'], 2)} | {r['serving_same']} |"
        )
    split = [r for r in rows if any(r[f"{p}_graph_ms"] is not None for p in BREAKDOWN_PARTS)]
    if split:
        lines += [
            "",
            "Where the chain's GPU time goes: each pass launched alone from a CUDA graph (ms); `chain` = the whole "
            "`select_tokens` graph above (positions, no channels), `fused` = the serving chain.",
            "",
            "| images | N | D | K | meta | scores | select | gather (packed) | sum | chain | fused |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in split:
            parts = [r[f"{p}_graph_ms"] for p in BREAKDOWN_PARTS]
            total = sum(parts) if all(v is not None for v in parts) else None
            lines.append(f"| {r['images']} | {r['n']} | {r['d']} | {r['k']} | "
                         + " | ".join(_fmt(v) for v in parts)
                         + f" | {_fmt(total)} | {_fmt(r['triton_graph_ms'])} | {_fmt(r['serving_fused_graph_ms'])} |")
    notes = sorted({f"{which}: {r[col]}" for r in rows for which, col in (("Triton", "triton_graph_note"),
                                                                          ("torch", "torch_graph_note"),
                                                                          ("serving", "serving_graph_note"),
                                                                          ("breakdown", "breakdown_note"))
                    if r[col]})
    if notes:
        lines += ["", "Graph capture notes:", ""] + [f"- {n}" for n in notes[:20]]
    md_path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
