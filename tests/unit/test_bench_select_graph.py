"""bench_select.GraphTimer: the CUDA-graph (GPU time) measurement never breaks the benchmark.

On the CPU with a stand-in for ``torch.cuda`` (capture failures, a fallback capture mode, a CUDA state that cannot be
recovered); on a CUDA machine also for real: a capture that syncs fails with a reason, the next capture still works,
and a replayed ``select_tokens(backend="triton")`` graph reproduces the eager indices.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from vs_vllm.testing.scripts import load_script
import torch

REPO = Path(__file__).resolve().parents[2]


def _bench_select():
    return load_script(REPO / "benchmarks" / "kernels" / "bench_select.py", "bench_select_under_test")


class FakeCuda:
    """Just the torch.cuda surface GraphTimer uses. ``fail`` maps capture_error_mode -> exception for captures."""

    def __init__(self, fail=None, sync_error=None):
        self.fail = dict(fail or {})
        self.sync_error = sync_error
        self.captures: list[str] = []
        self.graphs: list = []
        self.syncs = 0
        cuda = self

        class Stream:
            def wait_stream(self, other):
                pass

        class CUDAGraph:
            def __init__(self):
                self.ok = False
                self.replays = 0
                cuda.graphs.append(self)

            def replay(self):
                assert self.ok, "replay of a graph whose capture failed"
                self.replays += 1

        class graph:  # the name torch.cuda uses
            def __init__(self, g, pool=None, stream=None, capture_error_mode="global"):
                self.g, self.mode = g, capture_error_mode

            def __enter__(self):
                cuda.captures.append(self.mode)
                if self.mode in cuda.fail:
                    raise cuda.fail[self.mode]
                return self

            def __exit__(self, *exc):
                self.g.ok = exc[0] is None
                return False

        self.Stream, self.CUDAGraph, self.graph = Stream, CUDAGraph, graph

    def current_stream(self):
        return self.Stream()

    def stream(self, s):
        return contextlib.nullcontext()

    def synchronize(self):
        self.syncs += 1
        if self.sync_error is not None:
            raise self.sync_error


def _timer(cuda, ms=0.25):
    return _bench_select().GraphTimer(SimpleNamespace(cuda=cuda), lambda fn: (fn(), ms)[1])


def test_capture_in_the_default_mode():
    cuda = FakeCuda()
    calls = []
    ms, out, note = _timer(cuda).measure(lambda: calls.append(1) or "result")
    assert (ms, out, note) == (0.25, "result", "")
    assert cuda.captures == ["global"] and len(calls) == 4  # 3 warm-up calls on the side stream + the capture
    assert cuda.graphs[0].replays >= 2  # one checked replay, then the timed ones


def test_fallback_mode_is_recorded():
    cuda = FakeCuda(fail={"global": RuntimeError("operation not permitted when stream is capturing")})
    ms, out, note = _timer(cuda).measure(lambda: "r")
    assert ms == 0.25 and out == "r"
    assert cuda.captures == ["global", "relaxed"]
    assert "global capture failed: RuntimeError: operation not permitted" in note
    assert "capture_error_mode='relaxed'" in note


def test_failed_capture_is_a_reason_and_the_next_capture_works():
    cuda = FakeCuda(fail={m: RuntimeError(f"{m} | boom,\nsecond line") for m in ("global", "relaxed")})
    timer = _timer(cuda)
    ms, out, note = timer.measure(lambda: "r")
    assert ms is None and out is None
    assert "global capture failed" in note and "relaxed capture failed" in note
    assert "\n" not in note and "|" not in note  # one line, safe in a markdown table
    assert cuda.syncs >= 2  # synchronised after each failed attempt
    cuda.fail.clear()
    ms, out, note = timer.measure(lambda: "again")
    assert (ms, out, note) == (0.25, "again", "")
    assert cuda.graphs[-1] is not cuda.graphs[0]  # a fresh graph


def test_unusable_cuda_state_stops_further_captures():
    cuda = FakeCuda(fail={"global": RuntimeError("capture invalidated")})
    timer = _timer(cuda)
    cuda.sync_error = RuntimeError("an illegal memory access was encountered")
    ms, _, note = timer.measure(lambda: "r")
    assert ms is None and "CUDA unusable" in note and timer.broken
    n = len(cuda.captures)
    ms, _, note = timer.measure(lambda: "r")
    assert ms is None and note.startswith("not captured: CUDA unusable") and len(cuda.captures) == n


def test_per_key_memory_of_modes_and_failures():
    """A key that failed in every mode is not captured again (each failure leaves an unfinished capture in torch's
    allocator); a key that needed the fallback mode starts from it, keeping the note; other keys are unaffected."""
    cuda = FakeCuda(fail={"global": RuntimeError("pin_memory in capture")})
    timer = _timer(cuda)
    assert timer.measure(lambda: "r", "triton")[2].endswith("capture_error_mode='relaxed'")
    ms, _, note = timer.measure(lambda: "r", "triton")
    assert ms == 0.25 and cuda.captures == ["global", "relaxed", "relaxed"] and "pin_memory in capture" in note
    cuda.fail["relaxed"] = RuntimeError("sync in capture")
    ms, _, note = timer.measure(lambda: "r", "torch")
    assert ms is None and "sync in capture" in note
    n = len(cuda.captures)
    ms, _, note = timer.measure(lambda: "r", "torch")
    assert ms is None and "not tried again" in note and len(cuda.captures) == n
    cuda.fail.clear()
    assert timer.measure(lambda: "r", "copy") == (0.25, "r", "")


@pytest.mark.parametrize("bad", [float("nan"), 0.0])
def test_bad_timing_is_not_a_measurement(bad):
    ms, _, note = _timer(FakeCuda(), ms=bad).measure(lambda: "r")
    assert ms is None and "do_bench of the replay returned" in note


# `make gpu-check` runs this file on the GPU (its b1 stage); on the CPU this test skips and -m gpu selects it.
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_timer_on_a_gpu():
    import triton.testing

    bs = _bench_select()

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")

    timer = bs.GraphTimer(torch, bench)
    x = torch.randn(1 << 20, device="cuda")
    ms, _, note = timer.measure(lambda: x.sum().item())  # a host sync: illegal in a capture
    assert ms is None and "capture failed" in note, note
    assert not timer.broken
    y = torch.empty_like(x)
    ms, _, note = timer.measure(lambda: y.copy_(x))
    assert ms is not None and ms > 0 and note == "", note
    torch.cuda.synchronize()
    assert torch.equal(y, x)

    kernels = bs._import_kernels()
    n, d, images = 1024, 256, 2
    g = torch.Generator(device="cuda").manual_seed(0)
    w = [(torch.randn(*shape, device="cuda", generator=g) / math.sqrt(d)).to(torch.bfloat16)
         for shape in ((d // 2, d), (d // 2,), (d // 2, d), (d // 2,))]
    x = torch.randn(images * n, d, device="cuda", generator=g).to(torch.bfloat16)
    args = (x, [0, n, 2 * n], [100, 300], *w)
    grids = [(1, 32, 32)] * images
    sel = kernels.select_tokens(*args, grids=grids, backend="triton")
    row = bs.graph_columns(kernels, torch, timer, args, grids, sel, x.numel() * 2, 1000.0)
    assert row["graph_same_idx"] is True, row
    assert row["triton_graph_ms"] > 0 and row["pct_of_copy_bw_graph"] > 0, row
    if row["torch_graph_ms"] is None:  # the reference may not be capturable: then a reason says why
        assert row["torch_graph_note"] and row["speedup_graph"] is None, row
    else:
        assert row["speedup_graph"] > 0, row
