#!/usr/bin/env python
"""Benchmark MMR selection (learned + diversity, ``vs_vllm.selection.mmr``): the cost of choosing K of N tokens.

The op is timed alone, given the scores (the score pass is the same as VisionSelector's, see bench_select.py):

- CPU:  the plain-torch op ``mmr_select`` per image (on the CPU its deferred loop, backend ``torch``) and, for N up to
        ``--stepwise-max-n``, the step-by-step loop it replaced (``mmr_select_stepwise``, one full mat-vec per step,
        backend ``torch_stepwise``), fp32 rows, ``--threads`` intra-op threads (default 2); ``rows`` = ``random``
        (nearly orthogonal rows) and, at N = 4096, ``clustered`` (a shared direction plus 16 clusters: cosines 0.3-0.99,
        so diversity reorders the ranking and the deferred loop refreshes more often). Triton is not run (the
        interpreter would time numpy, not the kernel).
- CUDA: the torch reference (``mmr_select_ref``, per image; step by step on the GPU) vs the Triton kernels
        (``mmr_select_triton``): ``triton_gram`` (kernels/mmr_gram.py: one fp32 N x N GEMM, then every step over a
        row of it, all K steps in one launch) and ``triton_stream`` (the streaming kernel, every step re-reading the
        N x D rows), bf16 rows, timed with CUDA events (medians); per-image cost = batch time / images, for 1 image
        and for a batch of ``--batch`` images; indices compared with the reference.

Analytic work per image (the dominant term: every step is a mat-vec of the image's N x D rows against the token just
chosen): FLOPs = 2·K·N·D; bytes moved = K·N·D·s, where s is the element size the implementation re-reads every step
(4 for the torch reference's fp32 unit rows, x's element size for the kernel); scores and O(N) vectors are ignored.

Grid: N in {576, 1196, 4096, 16384}, K = 10% and 20% of N, D = 3584, lambda = 0.5 (--quick: N in {576, 4096},
K = 10%). Writes benchmarks/results/mmr_select_<device>[_quick].csv and .md:

    PYTHONPATH=. python benchmarks/kernels/bench_mmr.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FULL = {"n": [576, 1196, 4096, 16384], "r": [0.1, 0.2], "d": 3584}
QUICK = {"n": [576, 4096], "r": [0.1], "d": 3584}
LAMBDA = 0.5


def _import_kernels():
    """``vs_vllm.kernels``, also from a plain checkout (bench_select's loader, shared by every kernel benchmark)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_select import _import_kernels as load

    return load()


def cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_s = f", {mem:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        mem_s = ""
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {os.cpu_count()} logical CPUs ({avail} available){mem_s}, {platform.system()} {platform.release()}"


def time_cpu(fn, reps: int, budget_s: float) -> tuple[list[float], float]:
    """Wall times (ms) of ``fn`` (at least one run, up to ``reps``, none started once ``budget_s`` is spent) and the
    cores it kept busy on average (process CPU time / wall time)."""
    out, spent, cpu = [], 0.0, 0.0
    while len(out) < reps and (not out or spent < budget_s):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        cpu += time.process_time() - c0
        out.append(dt * 1e3)
        spent += dt
    return out, cpu / spent


def time_cuda(torch, fn, reps: int, budget_s: float) -> list[float]:
    fn()  # warm-up (and the JIT compile on the first Triton call)
    torch.cuda.synchronize()
    out, spent = [], 0.0
    while len(out) < reps and (not out or spent < budget_s):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        out.append(ms)
        spent += ms / 1e3
    return out


PROBE_K = (8, 16)


def time_cuda_bounded(torch, fn_for_k, k: int, reps: int, budget_s: float) -> tuple[list[float], str]:
    """CUDA times (ms) of ``fn_for_k(k)``, or, when the full run would blow the budget, one time extrapolated from
    runs with K = 8 and 16 (fixed cost + K x per-step cost): a one-program-per-image kernel on one SM can need minutes
    per image at N = 16384, D = 3584."""
    if k <= PROBE_K[1]:
        return time_cuda(torch, fn_for_k(k), reps, budget_s), "measured"
    t1, t2 = (statistics.median(time_cuda(torch, fn_for_k(kp), 3, budget_s)) for kp in PROBE_K)
    per_step = max(0.0, (t2 - t1) / (PROBE_K[1] - PROBE_K[0]))
    est = max(t1 - PROBE_K[0] * per_step, 0.0) + k * per_step
    if est / 1e3 * (reps + 1) > budget_s:
        return [est], f"extrapolated from K={PROBE_K[0]},{PROBE_K[1]}"
    return time_cuda(torch, fn_for_k(k), reps, budget_s), "measured"


#: LLM-token grids (h, w) of the benchmark's N: the vision tower's work at the same N, for scale.
VIT_GRIDS = {576: (24, 24), 1196: (26, 46), 4096: (64, 64), 16384: (128, 128)}


def vit_gflop(n: int) -> float | None:
    """Analytic vision-tower FLOPs of Qwen2.5-VL-7B for an image of N LLM tokens (vs_vllm.benchmarking.flops)."""
    from vs_vllm.benchmarking.flops import QwenVLArch, vision_flops

    if n not in VIT_GRIDS:
        return None
    h, w = VIT_GRIDS[n]
    arch = QwenVLArch.qwen2_5_vl_7b()
    merge = arch.spatial_merge_size
    return sum(vision_flops(arch, (1, h * merge, w * merge)).values()) / 1e9


def clustered_rows(torch, n: int, d: int, g, clusters: int = 16):
    """Rows like a vision tower's: a shared direction, a few clusters, small noise (cosines 0.3-0.99)."""
    centres = torch.randn(clusters, d, generator=g)
    pick = torch.randint(0, clusters, (n,), generator=g)
    return 2 * torch.randn(1, d, generator=g) + centres[pick] + 0.5 * torch.randn(n, d, generator=g)


def row_for(device, dtype, backend, images, n, d, k, elem, times_ms, same, cores=None, timing="measured",
            rows="random"):
    per_image = statistics.median(times_ms) / images
    flops = 2 * k * n * d
    vit = vit_gflop(n)
    nbytes = k * n * d * elem
    return {
        "device": device,
        "backend": backend,
        "rows": rows,
        "dtype": dtype,
        "images": images,
        "n": n,
        "d": d,
        "k": k,
        "lambda": LAMBDA,
        "ms_per_image": round(per_image, 4),
        "us_per_step": round(1e3 * per_image / k, 3),
        "runs": len(times_ms),
        "gflop_per_image": round(flops / 1e9, 3),
        "vit_gflop_7b": None if vit is None else round(vit, 1),
        "mmr_over_vit_flop_pct": None if vit is None else round(100 * flops / 1e9 / vit, 3),
        "gb_per_image": round(nbytes / 1e9, 3),
        "gflops": round(flops / (per_image * 1e-3) / 1e9, 1),
        "gbps": round(nbytes / (per_image * 1e-3) / 1e9, 1),
        "same_indices": same,
        "cores_busy": None if cores is None else round(cores, 2),
        "timing": timing,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N in {576, 4096}, K = 10%% of N")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per case (median), fewer once --budget is spent")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per case after which no new run starts")
    ap.add_argument("--batch", type=int, default=8, help="images per batch for the batched CUDA rows (0: skip)")
    ap.add_argument("--cpu", action="store_true", help="benchmark the CPU even when CUDA is available")
    ap.add_argument("--stepwise-max-n", type=int, default=4096,
                    help="CPU: also time the step-by-step loop for N up to this (it takes ~17 s per 1638 steps at "
                         "N = 16384)")
    args = ap.parse_args(argv)

    import torch

    _import_kernels()
    from vs_vllm.kernels.mmr_reference import mmr_select_ref
    from vs_vllm.selection.mmr import mmr_select, mmr_select_stepwise

    cuda = torch.cuda.is_available() and not args.cpu
    grid = QUICK if args.quick else FULL
    d = grid["d"]
    rows = []
    t_start = time.time()
    if cuda:
        import triton

        from dataclasses import replace

        from vs_vllm.kernels.mmr_select import get_mmr_config, mmr_select_triton

        stream_cfg = replace(get_mmr_config(), gram_max_bytes=0)
        gram_cfg = replace(get_mmr_config(), gram_max_bytes=1 << 30)  # the Gram route is opt-in (MMRConfig)

        def mmr_stream(s, x, cu, keep, lam):
            return mmr_select_triton(s, x, cu, keep, lam, config=stream_cfg)

        def mmr_gram(s, x, cu, keep, lam):
            return mmr_select_triton(s, x, cu, keep, lam, config=gram_cfg)

        dev = "cuda"
        name = torch.cuda.get_device_name()
        cap = torch.cuda.get_device_capability()
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
        machine = f"{name} (sm_{cap[0]}{cap[1]}); torch {torch.__version__}; triton {triton.__version__}"
        dtype, elem = torch.bfloat16, 2
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        dev, slug = "cpu", "cpu"
        torch.set_num_threads(args.threads)
        machine = f"{cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"
        dtype, elem = torch.float32, 4
    print(f"device: {machine}", flush=True)
    g = torch.Generator(device=dev).manual_seed(0)

    for n in grid["n"]:
        for r in grid["r"]:
            k = max(1, int(n * r))
            if not cuda:
                for kind in ("random", "clustered") if n == 4096 else ("random",):
                    x = torch.randn(n, d, generator=g) if kind == "random" else clustered_rows(torch, n, d, g)
                    s = torch.randn(n, generator=g)
                    ops = [("torch", mmr_select)]
                    if n <= args.stepwise_max_n:
                        ops.append(("torch_stepwise", mmr_select_stepwise))
                    picked = {}
                    for backend, op in ops:
                        times, cores = time_cpu(lambda x=x, s=s, k=k, op=op: op(s, x, k, LAMBDA), args.reps,
                                                args.budget)
                        picked[backend] = op(s, x, k, LAMBDA)
                        rows.append(row_for("cpu", "fp32", backend, 1, n, d, k, 4, times, None, cores, rows=kind))
                        print(f"N={n:5d} K={k:5d} {kind:9s} {backend:14s} {rows[-1]['ms_per_image']:10.2f} ms/image, "
                              f"{cores:.2f} cores busy", flush=True)
                    if len(picked) == 2:
                        same = bool(torch.equal(picked["torch"], picked["torch_stepwise"]))
                        for r in rows[-2:]:
                            r["same_indices"] = same
                continue
            for images in [1] + ([args.batch] if args.batch > 1 else []):
                x = torch.randn(images * n, d, device=dev, generator=g).to(dtype)
                s = torch.randn(images * n, device=dev, generator=g)
                cu = [i * n for i in range(images + 1)]
                results = {}
                ops = (("torch", mmr_select_ref), ("triton_gram", mmr_gram), ("triton_stream", mmr_stream))
                for backend, op in ops:

                    def fn_for_k(kk, op=op, x=x, s=s, cu=cu, images=images):
                        return lambda: op(s, x, cu, [kk] * images, LAMBDA)

                    times, timing = time_cuda_bounded(torch, fn_for_k, k, args.reps, args.budget)
                    results[backend] = (times, timing)
                # indices compared with the reference at the largest K every backend actually ran
                k_cmp = k if all(t == "measured" for _, t in results.values()) else PROBE_K[1]
                want = mmr_select_ref(s, x, cu, [k_cmp] * images, LAMBDA)
                same_by = {b: bool(torch.equal(op(s, x, cu, [k_cmp] * images, LAMBDA), want)) for b, op in ops}
                for backend, (times, timing) in results.items():
                    # bytes re-read per step: fp32 unit rows (torch), bf16 rows (stream), one fp32 row of S (gram)
                    elem_b = {"torch": 4, "triton_stream": elem}.get(backend, 4 / d)
                    same = same_by[backend]
                    rows.append(row_for(slug, "bf16", backend, images, n, d, k, elem_b, times, same, None, timing))
                    print(
                        f"B={images} N={n:5d} K={k:5d} {backend:13s} {rows[-1]['ms_per_image']:10.3f} ms/image "
                        f"({timing}) same={same}",
                        flush=True,
                    )
                x = s = None
                torch.cuda.empty_cache()
    elapsed = time.time() - t_start

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"mmr_select_{slug}{'_quick' if args.quick else ''}"
    csv_path, md_path = args.out_dir / f"{stem}.csv", args.out_dir / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)

    lines = [
        f"# MMR selection cost per image on {'CUDA' if cuda else 'CPU'}",
        "",
        f"- Machine: {machine}; python {platform.python_version()}",
        f"- Run: {_dt.datetime.now().isoformat(timespec='seconds')}, {elapsed:.0f} s; "
        f"`python benchmarks/kernels/bench_mmr.py{' --quick' if args.quick else ''}`",
        f"- Op: greedy MMR, lambda = {LAMBDA}, D = {d}, K = {', '.join(f'{int(r * 100)}%' for r in grid['r'])} of N, "
        "given the scores (random); the time is the selection alone, median of up to "
        f"{args.reps} runs (fewer past {args.budget:.0f} s per case).",
        "- Analytic work per image, of the step-by-step loop: FLOPs = 2·K·N·D (one N×D mat-vec per step); bytes = "
        "K·N·D·s, the rows re-read every step (s = 4 for the torch reference's fp32 unit rows; 2 for the streaming "
        "kernel's bf16 rows; 4/D for the Gram kernel's one fp32 row of S per step, its GEMM not counted). GFLOP/s "
        "below is that work divided by the measured time: for the CPU's deferred loop and the Gram kernel, which do "
        "other work, it is an equivalent rate, not the hardware's.",
        "- For scale: `ViT GFLOP (7B)` is Qwen2.5-VL-7B's analytic vision-tower work for an image of the same N "
        "(`vs_vllm.benchmarking.flops`; grids 24x24, 26x46, 64x64, 128x128 LLM tokens).",
    ]
    if cuda:
        lines.append(
            f"- CUDA: bf16 rows; per-image time = batch time / images (1 image, and {args.batch} images: the kernels "
            "run one program, i.e. one SM, per image). `same` = indices identical to the torch reference's."
        )
    else:
        lines.append(
            "- CPU: torch only (fp32 rows; the Triton kernels need a GPU, the interpreter would time numpy): `torch` = "
            "`vs_vllm.selection.mmr.mmr_select` (the deferred loop), `torch_stepwise` = `mmr_select_stepwise` (one "
            "full mat-vec per step, the loop before). `same` = both gave identical indices; `x stepwise` = the "
            "step-wise time / this time on the same rows; `cores` = process CPU time / wall time."
        )
    ref_backend = "torch" if cuda else "torch_stepwise"
    base = {(r["rows"], r["n"], r["k"], r["images"]): r["ms_per_image"] for r in rows if r["backend"] == ref_backend}
    lines += [
        "",
        "| backend | rows | images | N | K | ms / image | µs / step | x " + ("torch" if cuda else "stepwise")
        + " | GFLOP/s | same | cores | ViT GFLOP (7B) | MMR / ViT FLOP |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|--:|:-:|--:|--:|--:|",
    ]
    for r in rows:
        ref_ms = base.get((r["rows"], r["n"], r["k"], r["images"]))
        speed = "-" if ref_ms is None else f"{ref_ms / r['ms_per_image']:.2f}"
        lines.append(
            f"| {r['backend']} | {r['rows']} | {r['images']} | {r['n']} | {r['k']} | {r['ms_per_image']:.2f}"
            f"{'' if r['timing'] == 'measured' else '*'} | {r['us_per_step']:.1f} | {speed} | {r['gflops']:.1f}"
            f" | {'-' if r['same_indices'] is None else r['same_indices']} | "
            f"{'-' if r['cores_busy'] is None else r['cores_busy']} | {r['vit_gflop_7b']} | {r['mmr_over_vit_flop_pct']}% |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
