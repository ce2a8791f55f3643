#!/usr/bin/env python
"""Odd-shape sweep of the selection kernels against the plain-torch reference, as plain Python (no pytest needed).

Run by ``gpu_check.py`` (stage b2) on the GPU in strict mode (``VS_VLLM_STRICT_KERNELS=1``: an automatic Triton call
that fails raises instead of falling back to torch). For fp32 / bf16 / fp16 and every D of the profile, one ragged
batch of odd image sizes (up to 16384 + 1 tokens) goes through:

- ``select_tokens`` (automatic dispatch, which must resolve to Triton on the device): the kernel tests' rules
  (tests/kernels/test_kernels_select.py): fp32 scores close to the reference's; indices exactly the tie-broken top-K
  of the kernel's own scores, and equal to the reference's up to near-ties (summation order may flip those; the
  ``same_indices`` column says whether they were identical); rows bit-identical to a torch gather of the indices,
  positions and cu_keep equal. One more batch per dtype with strided rows (a column slice of a wider tensor).
- ``gather_selected`` (automatic) with random unsorted indices: rows and positions bit-identical to the reference.
- ``select_tokens_mmr(backend="triton")``: as tests/kernels/test_kernels_mmr.py: indices identical (every dtype) to the
  reference MMR applied to the Triton score pass's own scores, rows / positions bit-identical to the gather; whether
  they also equal ``backend="torch"`` (the reference scores too) is reported. K stays small on the big images: the
  kernel runs one program (one SM) per image, so each step streams N x D rows.

Writes one CSV row per case and exits 1 if any case failed. Test hook: ``VS_GPU_CHECK_INJECT_FAULT=select`` makes
the Triton score pass raise, to check that strict mode turns a broken kernel into a failed sweep.

    python benchmarks/gpu/kernel_sweep.py --out sweep.csv [--profile full|quick|dry]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAULT_ENV = "VS_GPU_CHECK_INJECT_FAULT"

# lengths: one ragged batch (odd sizes, 16384 + 1 crosses the register-resident select limit); keep: K per image for
# select_tokens (10%, 20%, N - 1, ~N/7, K = N, K = N = 1); mmr_keep / lambdas: small K on big images, one K = N and
# one lambda = 1 image (both routed to the top-K kernel).
PROFILES = {
    "full": {
        "dims": [1280, 2048, 3584, 5120],
        "lengths": [16385, 4099, 1197, 577, 7, 1],
        "keep": [1638, 819, 1196, 82, 7, 1],
        "mmr_keep": [16, 24, 32, 40, 7, 1],
        "lambdas": [0.5, 0.3, 0.0, 1.0, 0.5, 0.5],
    },
    "quick": {
        "dims": [1280, 3584],
        "lengths": [16385, 4099, 1197, 577, 7, 1],
        "keep": [1638, 819, 1196, 82, 7, 1],
        "mmr_keep": [16, 24, 32, 40, 7, 1],
        "lambdas": [0.5, 0.3, 0.0, 1.0, 0.5, 0.5],
    },
    # CPU dry run (Triton interpreter): the same cases on toy sizes.
    "dry": {
        "dims": [24],
        "lengths": [65, 33, 7, 1],
        "keep": [6, 32, 7, 1],
        "mmr_keep": [5, 4, 7, 1],
        "lambdas": [0.5, 1.0, 0.3, 0.5],
    },
}
FIELDS = ["op", "dtype", "d", "lengths", "keep", "backend", "ok", "same_indices", "max_score_err", "score_atol",
          "seconds", "detail"]


def load_kernels():
    """``vs_vllm.kernels`` (installed, or this checkout's kernels/ via bench_select's loader) and the test helpers."""
    for path in (REPO, REPO / "benchmarks" / "kernels", REPO / "tests" / "kernels"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from bench_select import _import_kernels

    return _import_kernels()


def inject_fault(ksel) -> None:
    """Test hook: the Triton score pass (every select_tokens call) raises."""
    if os.environ.get(FAULT_ENV, "") != "select":
        return

    def broken(*args, **kwargs):
        raise RuntimeError(f"injected kernel fault ({FAULT_ENV}=select)")

    ksel.select_with_scores_triton = broken
    print(f"[sweep] {FAULT_ENV}=select: the Triton score pass is broken on purpose", flush=True)


class Sweep:
    def __init__(self, device: str, profile: dict):
        import torch

        self.torch = torch
        self.device = device
        self.profile = profile
        self.rows: list[dict] = []
        self.K = load_kernels()
        from vs_vllm.kernels import dispatch
        from vs_vllm.kernels import select as ksel

        self.dispatch, self.ksel = dispatch, ksel
        inject_fault(ksel)

    def case(self, op, dtype, d, lengths, keep, backend, fn) -> None:
        torch = self.torch
        row = {"op": op, "dtype": str(dtype).replace("torch.", ""), "d": d, "lengths": " ".join(map(str, lengths)),
               "keep": " ".join(map(str, keep)), "backend": backend, "ok": False, "same_indices": None,
               "max_score_err": None, "score_atol": None, "detail": ""}
        t0 = time.perf_counter()
        try:
            row.update(fn() or {})
            row["ok"] = True
        except Exception as exc:  # one failing case never hides the others
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row["detail"] = f"{type(exc).__name__}: {first}"[:300]
            traceback.print_exc(file=sys.stdout)
        if self.device == "cuda":
            torch.cuda.synchronize()
        row["seconds"] = round(time.perf_counter() - t0, 3)
        self.rows.append(row)
        extra = f" same_indices={row['same_indices']}" if row["same_indices"] is not None else ""
        err = f" max_score_err={row['max_score_err']:.2e}" if row["max_score_err"] is not None else ""
        print(f"[sweep] {op:7s} {row['dtype']:8s} D={d:<5d} {'ok' if row['ok'] else 'FAILED'} "
              f"{row['seconds']:.2f} s{extra}{err} {row['detail']}", flush=True)

    # -- select_tokens ------------------------------------------------------------------------------------------------
    def check_select(self, x, cu, keep, w, grids):
        import kernel_testlib as tl

        torch, K, ksel = self.torch, self.K, self.ksel
        from vs_vllm.kernels.common import make_plan
        from vs_vllm.kernels.reference import gather_with_plan_ref, select_with_scores_ref

        backend = self.dispatch.resolve_backend(x)
        if backend != "triton":
            raise AssertionError(f"automatic dispatch resolves to {backend!r} for {x.device.type} {x.dtype}")
        sel = K.select_tokens(x, cu, keep, *w, grids=grids)  # automatic: strict mode raises if Triton fails
        plan = make_plan(x, cu, keep, grids)
        _, scores = ksel.select_with_scores_triton(x, plan, *w)
        ref, ref_scores = select_with_scores_ref(x, plan, *w)
        # the kernel tests' tolerance (D <= 257 there), widened with sqrt(D) for the summation error of long dots
        atol = tl.SCORE_ATOL * max(1.0, math.sqrt(x.shape[1] / 256))
        scores_c, ref_c = scores.float().cpu(), ref_scores.float().cpu()
        err = float((scores_c - ref_c).abs().max()) if scores_c.numel() else 0.0
        assert not torch.isnan(scores_c).any(), "NaN scores"
        torch.testing.assert_close(scores_c, ref_c, rtol=tl.SCORE_RTOL, atol=atol)
        idx = sel.indices.cpu()
        assert sel.indices.dtype == torch.long and idx.shape == (plan.total_keep,), (sel.indices.dtype, idx.shape)
        assert torch.equal(idx, tl.own_topk(scores_c, list(cu), list(keep))), "not the top-K of the kernel's scores"
        tl.assert_same_selection_up_to_near_ties(idx, ref.indices.cpu(), ref_c, list(cu), list(keep), atol=atol)
        expect = gather_with_plan_ref(x, plan, sel.indices)
        assert sel.rows.dtype == x.dtype and torch.equal(tl.bits(sel.rows.cpu()), tl.bits(expect.rows.cpu())), \
            "rows differ from a torch gather of the kernel's indices"
        assert torch.equal(sel.cu_keep.cpu(), torch.tensor(plan.cu_keep)), "cu_keep"
        if grids is not None:
            assert torch.equal(sel.positions.cpu(), expect.positions.cpu()), "positions"
        return {"same_indices": bool(torch.equal(idx, ref.indices.cpu())), "max_score_err": err, "score_atol": atol}

    # -- gather_selected ----------------------------------------------------------------------------------------------
    def check_gather(self, x, cu, keep, grids, seed):
        import kernel_testlib as tl

        torch, K = self.torch, self.K
        from vs_vllm.kernels.reference import gather_selected_ref

        g = torch.Generator().manual_seed(seed)
        parts = [torch.randperm(b - a, generator=g)[:k] for a, b, k in zip(cu[:-1], cu[1:], keep)]  # unsorted
        idx = torch.cat(parts).to(x.device)
        cuk = [0]
        for k in keep:
            cuk.append(cuk[-1] + k)
        sel = K.gather_selected(x, cu, idx, cuk, grids=grids)  # automatic
        ref = gather_selected_ref(x, cu, idx, cuk, grids=grids)
        assert torch.equal(tl.bits(sel.rows.cpu()), tl.bits(ref.rows.cpu())), "rows"
        assert torch.equal(sel.indices.cpu(), idx.cpu()), "indices"
        assert torch.equal(sel.positions.cpu(), ref.positions.cpu()), "positions"
        assert torch.equal(sel.cu_keep.cpu(), torch.tensor(cuk)), "cu_keep"

    # -- select_tokens_mmr --------------------------------------------------------------------------------------------
    def check_mmr(self, x, cu, keep, w, lams, grids):
        import kernel_testlib as tl

        torch, K, ksel = self.torch, self.K, self.ksel
        from vs_vllm.kernels.common import make_plan
        from vs_vllm.kernels.mmr_reference import mmr_with_plan_ref
        from vs_vllm.kernels.reference import gather_with_plan_ref

        sel = K.select_tokens_mmr(x, cu, keep, *w, lams, grids=grids, backend="triton")
        plan = make_plan(x, cu, keep, grids)
        _, scores = ksel.select_with_scores_triton(x, plan, *w)
        own = mmr_with_plan_ref(scores, x, plan, lams)
        assert torch.equal(sel.indices.cpu(), own.cpu()), "indices differ from the reference MMR on the kernel's scores"
        expect = gather_with_plan_ref(x, plan, sel.indices)
        assert torch.equal(tl.bits(sel.rows.cpu()), tl.bits(expect.rows.cpu())), "rows"
        assert torch.equal(sel.positions.cpu(), expect.positions.cpu()), "positions"
        assert torch.equal(sel.cu_keep.cpu(), torch.tensor(plan.cu_keep)), "cu_keep"
        ref = K.select_tokens_mmr(x, cu, keep, *w, lams, grids=grids, backend="torch")
        return {"same_indices": bool(torch.equal(sel.indices.cpu(), ref.indices.cpu()))}

    # -- the serving call: scores on the first D columns, whole rows + position channels into the packed layout ------
    def check_packed(self, source, d, cu, keep, w, grids, factors):
        import kernel_testlib as tl

        torch, K = self.torch, self.K
        from vs_vllm.kernels.common import make_plan
        from vs_vllm.kernels.position_channels import NUM_POSITION_CHANNELS, PositionChannels
        from vs_vllm.kernels.reference import gather_with_plan_ref

        x, channels = source[:, :d], PositionChannels(tuple(factors))
        out = self.check_select(x, cu, keep, w, grids)  # scores and indices by the select rules
        sel = K.select_tokens(x, cu, keep, *w, grids=grids, source=source, channels=channels)  # automatic
        expect = gather_with_plan_ref(x, make_plan(x, cu, keep, grids), sel.indices, source=source,
                                      channels=channels)
        assert sel.packed.shape == (sum(keep), source.shape[1] + NUM_POSITION_CHANNELS), tuple(sel.packed.shape)
        assert torch.equal(tl.bits(sel.packed.cpu()), tl.bits(expect.packed.cpu())), \
            "packed rows + channels differ from the torch reference of the kernel's indices"
        return out

    def run(self) -> None:
        import kernel_testlib as tl

        torch, p = self.torch, self.profile
        if not self.dispatch.is_strict():
            raise SystemExit(f"[sweep] {self.dispatch.STRICT_ENV} is not set: a failing kernel could pass as the "
                             "torch fallback; refusing to run")
        lengths, keep, mmr_keep, lams = p["lengths"], p["keep"], p["mmr_keep"], p["lambdas"]
        grids = [tl.factor_grid(n) for n in lengths]
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for j, d in enumerate(p["dims"]):
                seed = 17 * d + 3 * j + {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[dtype]
                x, cu, w = tl.make_problem(lengths, d, dtype, seed)
                x, w = x.to(self.device), tuple(t.to(self.device) for t in w)
                self.case("select", dtype, d, lengths, keep, "auto",
                          lambda x=x, cu=cu, w=w: self.check_select(x, cu, keep, w, grids))
                self.case("gather", dtype, d, lengths, keep, "auto",
                          lambda x=x, cu=cu, seed=seed: self.check_gather(x, cu, keep, grids, seed))
                self.case("mmr", dtype, d, lengths, mmr_keep, "triton",
                          lambda x=x, cu=cu, w=w: self.check_mmr(x, cu, mmr_keep, w, lams, grids))
                x = w = None
                if self.device == "cuda":
                    torch.cuda.empty_cache()
            # strided rows (row stride D + 11), no grids, the smallest D of the profile
            d = p["dims"][0]
            x, cu, w = tl.make_problem(lengths, d, dtype, seed=991 + d, strided=True)
            wide = torch.full((x.shape[0], d + 11), float("nan"), dtype=dtype, device=self.device)
            wide[:, :d] = x.to(self.device)  # .to() alone would return a dense copy
            x, w = wide[:, :d], tuple(t.to(self.device) for t in w)
            assert x.stride(0) == d + 11
            self.case("select_strided", dtype, d, lengths, keep, "auto",
                      lambda x=x, cu=cu, w=w: self.check_select(x, cu, keep, w, None))
            # the serving call: rows 2 D wide (DeepStack-like) scored on their first D columns, gathered whole into
            # the packed layout with position channels (videos' temporal factors included)
            x, cu, w = tl.make_problem(lengths, 2 * d, dtype, seed=997 + d)
            source, w = x.to(self.device), tuple(t[:, :d] if t.dim() == 2 else t for t in w)
            w = tuple(t.contiguous().to(self.device) for t in w)
            factors = [(1.0, 2.0, 0.5)[i % 3] for i in range(len(lengths))]
            self.case("select_packed", dtype, d, lengths, keep, "auto",
                      lambda source=source, cu=cu, w=w, d=d, factors=factors:
                      self.check_packed(source, d, cu, keep, w, grids, factors))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="CSV to write (one row per case)")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full")
    args = ap.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and args.profile != "dry":
        print("[sweep] needs a CUDA GPU (torch.cuda.is_available() is False); --profile dry runs the same cases "
              "on the CPU through the Triton interpreter", flush=True)
        return 2
    if device == "cpu" and os.environ.get("TRITON_INTERPRET", "") != "1":
        print("[sweep] on the CPU the sweep needs TRITON_INTERPRET=1 before triton is imported", flush=True)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    sweep = Sweep(device, PROFILES[args.profile])
    t0 = time.perf_counter()
    sweep.run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        wr.writerows(sweep.rows)
    failed = [r for r in sweep.rows if not r["ok"]]
    print(f"[sweep] {len(sweep.rows) - len(failed)}/{len(sweep.rows)} cases passed on {device} in "
          f"{time.perf_counter() - t0:.1f} s; wrote {args.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
