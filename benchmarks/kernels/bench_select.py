#!/usr/bin/env python
"""Benchmark VisionSelector selection: Triton kernels vs the plain-torch reference, on a CUDA GPU.

For every (images per batch, N, D, r) case: medians of ``triton.testing.do_bench`` (cold L2 between runs) for
``select_tokens(backend="triton")`` and ``select_tokens(backend="torch")``, and for the shared gather alone
(``gather_selected``). "Effective GB/s" counts the bytes a selection cannot avoid moving: X read once plus the kept
rows written once; it is compared with the device-to-device copy bandwidth measured here (a large ``copy_``, read +
write). The Triton pipeline itself reads X twice (mean, then scores: the mean key must be known before any score)
and reads the scorer weights once, so the effective figure understates its actual memory traffic.

Writes benchmarks/results/bench_select_<gpu>[_quick].csv and .md. Needs torch + triton only (no vLLM):

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

    rows = []
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
                    }
                    rows.append(row)
                    print(
                        f"B={images} N={n:5d} D={d} r={r:.1f} K={k:5d}  triton {t_tri:8.4f} ms  torch {t_ref:8.4f} ms"
                        f"  x{row['speedup']:6.2f}  {eff:7.1f} GB/s ({row['pct_of_copy_bw']:5.1f}% of copy)"
                        f"  gather {t_gtri:.4f}/{t_gref:.4f} ms  same_idx={same_idx}",
                        flush=True,
                    )
                x = None  # free before the next size
                torch.cuda.empty_cache()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench_select_{slug}{'_quick' if args.quick else ''}"
    csv_path, md_path = args.out_dir / f"{stem}.csv", args.out_dir / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)

    big = [r for r in rows if r["n"] >= 4096]
    goal_speed = all(r["speedup"] >= 3 for r in big)
    goal_bw = all(r["pct_of_copy_bw"] >= 70 for r in big)
    lines = [
        f"# VisionSelector selection: Triton vs torch reference on {gpu}",
        "",
        (
            f"- GPU: {gpu} (sm_{cap[0]}{cap[1]}); torch {torch.__version__}; triton {triton.__version__}; "
            f"python {platform.python_version()}; {_dt.datetime.now().isoformat(timespec='seconds')}"
        ),
        f"- device-to-device copy bandwidth (read + write): {bw_copy:.0f} GB/s",
        (
            "- times: `triton.testing.do_bench` medians (ms, L2 flushed between runs) of the public `select_tokens` "
            "call (host validation, launches and all), bf16 X, bf16 scorer weights with H = D/2, grids given"
        ),
        (
            "- effective GB/s = (X bytes + kept-row bytes) / Triton time; the kernels actually read X twice plus "
            "the weights"
        ),
        (
            f"- goals for N >= 4096: speedup >= 3x: {'met' if goal_speed else 'NOT met'}; "
            f">= 70% of copy bandwidth: {'met' if goal_bw else 'NOT met'}"
        ),
        "",
        (
            "| images | N | D | r | K | Triton ms | torch ms | speedup | eff. GB/s | % copy BW | gather Triton ms "
            "| gather torch ms | same idx |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['n']} | {r['d']} | {r['r']} | {r['k']} | {r['triton_ms']:.4f} | {r['torch_ms']:.4f}"
            f" | {r['speedup']:.2f} | {r['effective_gbps']:.0f} | {r['pct_of_copy_bw']:.1f} | "
            f"{r['gather_triton_ms']:.4f} | {r['gather_torch_ms']:.4f} | {r['same_indices']} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
