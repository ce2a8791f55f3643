"""benchmarks/prefill/hf_gpu_prefill.py: the vision attention substitutions and the CUDA-graph bookkeeping, on the CPU.

``varlen`` (one SDPA call per layer with a block-diagonal mask) and ``padded`` (one SDPA call over the windows as a
padded batch) must give transformers' per-window output on an image with several windows and a full-attention layer;
their masks and indices are built without a host sync. The CUDA-graph path cannot run here: its helpers are driven
with stand-ins for ``torch.cuda`` (a failed capture still ends the capture and reports the first error; a graph that
does not read its static buffers is caught by the eager comparison; a failure leaves NaN and a reason, never an
exception). The whole script runs end to end with ``--tiny``.
"""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from vs_vllm.testing.scripts import load_script
import torch

from vs_vllm.testing.sync_guard import DEVICE, as_device, sync_guard, to_host

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]


def _script():
    return load_script(REPO / "benchmarks" / "prefill" / "hf_gpu_prefill.py", "hf_gpu_prefill_under_test")


@pytest.fixture(scope="module")
def tiny():
    """The script's tiny model (fp32, CPU) and its default --tiny input: one 448x252 image."""
    h = _script()
    torch.manual_seed(0)
    model = h.build_model(h.TINY, "cpu", torch.float32, "sdpa")
    inputs, grid, n, _ = h.build_inputs(h.TINY, 448, 252, 15, 43, "cpu", torch.float32, 0)
    yield h, model, inputs
    h.set_vit_attention(model, "per-window")


def _vision_output(model, inputs):
    with torch.inference_mode():
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    return torch.cat(list(out.pooler_output))


@contextlib.contextmanager
def _count_sdpa(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
        yield calls


@pytest.mark.slow  # runs the script's transformers model
def test_vit_attention_modes_match_per_window_on_windows_and_full_attention(tiny, monkeypatch):
    h, model, inputs = tiny
    visual = model.model.visual
    # The input covers both kinds of layer: several (uneven) windows in layer 0, full attention in the last layer.
    assert visual.fullatt_block_indexes == [len(visual.blocks) - 1] and len(visual.blocks) >= 2
    h.set_vit_attention(model, "per-window")
    first = h.vision_attentions(model)[0]
    ref = []
    args, kwargs = h.capture_call(first, lambda: ref.append(_vision_output(model, inputs)))
    cu = kwargs["cu_seqlens"]
    lengths = (cu[1:] - cu[:-1]).tolist()
    assert len(lengths) == 12 and len(set(lengths)) > 1, lengths  # 3 x 4 windows, the bottom row partial
    with torch.inference_mode():
        attn_ref = first(*args, **kwargs)
    with _count_sdpa(monkeypatch) as calls:
        _vision_output(model, inputs)
    assert len(calls) == len(lengths) + 1  # transformers: one call per window, one for the full layer

    for mode in ("varlen", "padded"):
        assert h.set_vit_attention(model, mode) == len(visual.blocks)
        with _count_sdpa(monkeypatch) as calls:
            out = _vision_output(model, inputs)
        assert len(calls) == len(visual.blocks), mode  # one SDPA call per layer
        assert calls[-1] is None  # the full-attention layer (one image): no mask
        torch.testing.assert_close(out, ref[0], rtol=1e-5, atol=1e-6)
        with torch.inference_mode():
            torch.testing.assert_close(first(*args, **kwargs), attn_ref, rtol=1e-5, atol=1e-6)
    h.set_vit_attention(model, "per-window")
    assert type(first).__name__ == "Qwen2_5_VLVisionAttention"


@pytest.mark.slow  # runs the script's transformers model
@pytest.mark.parametrize("mode", ["varlen", "padded"])
def test_one_call_attention_on_uneven_segments(tiny, mode):
    """Segments of any lengths (several images in a full-attention layer look like this), vs transformers' loop."""
    h, model, _ = tiny
    h.set_vit_attention(model, "per-window")
    attn = h.vision_attentions(model)[0]
    g = torch.Generator().manual_seed(1)
    cu = torch.tensor([0, 7, 8, 40, 41, 90], dtype=torch.int32)
    hidden = torch.randn(90, attn.dim, generator=g)
    angles = torch.randn(90, attn.head_dim, generator=g)
    kwargs = dict(cu_seqlens=cu, position_embeddings=(angles.cos(), angles.sin()))
    with torch.inference_mode():
        ref = attn(hidden, **kwargs)
        h.set_vit_attention(model, mode)
        out = attn(hidden, **kwargs)
        out_given_max = attn(hidden, max_seqlen=49, **kwargs)  # transformers' max_seqlen, when given, is used
        wrong = attn(hidden, **dict(kwargs, cu_seqlens=torch.tensor([0, 90], dtype=torch.int32)))
    h.set_vit_attention(model, "per-window")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_given_max, ref, rtol=1e-5, atol=1e-6)
    assert h.rel_err(wrong, ref) > 0.1  # attention across segments is far off: the check above means something


@pytest.mark.slow  # runs the script's transformers model
def test_choose_vit_attention_checks_times_and_falls_back(tiny, monkeypatch):
    h, model, inputs = tiny
    timer = h.Timer("cpu")

    def vit_call():
        return model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])

    with torch.inference_mode():
        used, times, ms, err, attn_err, notes = h.choose_vit_attention(
            model, "padded", vit_call, lambda: _vision_output(model, inputs), timer, 0, 1, "float32")
        assert used == "padded" and len(times) == 1 and not notes
        assert type(h.vision_attentions(model)[0]).__name__ == "PaddedQwen2_5_VLVisionAttention"
        assert all(ms[m] > 0 and err[m] <= 1e-5 and attn_err[m] <= 1e-5 for m in h.VIT_ATTENTION)
        # A mode that disagrees with per-window is not used: the run falls back to transformers' attention.
        monkeypatch.setitem(h.VIT_ATTN_REL_TOL, "float32", -1.0)
        used, times, ms, err, attn_err, notes = h.choose_vit_attention(
            model, "varlen", vit_call, lambda: _vision_output(model, inputs), timer, 0, 1, "float32")
    assert used == "per-window" and len(times) == 1 and ms["per-window"] > 0 and math.isnan(ms["varlen"])
    assert type(h.vision_attentions(model)[0]).__name__ == "Qwen2_5_VLVisionAttention"
    assert any("`varlen` not usable: RuntimeError: output differs" in n for n in notes), notes
    assert notes[-1] == "fell back to `per-window` instead of `varlen`"


def test_masks_and_indices_are_built_on_the_device_without_a_host_sync():
    h = _script()
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    with sync_guard():
        mask = h.block_diagonal_mask(as_device(cu), 9, torch.float32, DEVICE)
        gather, key_mask, seg, slot = h.padded_layout(as_device(cu), 9, 5, torch.float32, DEVICE)
    mask, gather, key_mask, seg, slot = (to_host(x) for x in (mask, gather, key_mask, seg, slot))
    same = torch.block_diag(torch.ones(3, 3), torch.ones(1, 1), torch.ones(5, 5)).bool()
    assert mask.shape == (1, 1, 9, 9)
    assert torch.equal(mask[0, 0] == 0, same) and torch.isinf(mask[0, 0][~same]).all()
    assert gather.tolist() == [[0, 1, 2, 0, 0], [3, 0, 0, 0, 0], [4, 5, 6, 7, 8]]
    assert key_mask.shape == (3, 1, 5, 5)
    assert torch.isinf(key_mask[:, 0, 0]).tolist() == [[False] * 3 + [True] * 2, [False] + [True] * 4, [False] * 5]
    assert torch.equal(key_mask, key_mask[:, :, :1].expand(-1, -1, 5, -1))  # the same for every query
    assert seg.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2] and slot.tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4]
    assert torch.equal(gather[seg, slot], torch.arange(9))  # every position reads itself back


def test_per_cu_seqlens_cache_is_by_tensor_identity():
    h = _script()
    cache, built = h._PerCuSeqlens(size=2), []
    a, b = torch.tensor([0, 4]), torch.tensor([0, 4])

    def build(tag):
        built.append(tag)
        return tag

    assert cache.get(a, ("k",), lambda: build("a")) == "a"
    assert cache.get(a, ("k",), lambda: build("again")) == "a"
    assert cache.get(b, ("k",), lambda: build("b")) == "b"  # equal values, another tensor: another forward
    assert cache.get(a, ("k2",), lambda: build("a2")) == "a2"
    assert built == ["a", "b", "a2"] and len(cache.entries) == 2


# -- CUDA graph helpers with stand-ins for torch.cuda -----------------------------------------------------------------


class FakeCuda:
    """The torch.cuda surface capture_cuda_graph uses; records what happens on which stream."""

    def __init__(self, end_error=None):
        self.log: list[str] = []
        self.current = "default"
        self.end_error = end_error
        cuda = self

        class Stream:
            def __init__(self):
                self.name = "side"

            def wait_stream(self, other):
                cuda.log.append(f"{self.name} waits {other.name}")

        class Graph:
            def capture_begin(self):
                cuda.log.append(f"capture_begin on {cuda.current}")

            def capture_end(self):
                cuda.log.append("capture_end")
                if cuda.end_error is not None:
                    raise cuda.end_error

        self.Stream, self.CUDAGraph = Stream, Graph
        self.default = SimpleNamespace(name="default", wait_stream=lambda s: self.log.append(f"default waits {s.name}"))

    def current_stream(self):
        return self.default if self.current == "default" else SimpleNamespace(name=self.current)

    @contextlib.contextmanager
    def stream(self, s):
        before, self.current = self.current, s.name
        try:
            yield
        finally:
            self.current = before

    def synchronize(self):
        self.log.append("synchronize")

    def empty_cache(self):
        pass


def test_capture_warms_up_on_a_side_stream_and_always_ends_the_capture():
    h = _script()
    cuda = FakeCuda()
    ran = []

    def fn(x):
        ran.append(cuda.current)
        return x + 1

    graph, out = h.capture_cuda_graph(SimpleNamespace(cuda=cuda), fn, (torch.zeros(2),), warmup=2)
    assert ran == ["side", "side", "side"] and torch.equal(out, torch.ones(2))
    assert cuda.log.index("capture_begin on side") < cuda.log.index("capture_end")
    assert cuda.log[:2] == ["side waits default", "default waits side"] and cuda.current == "default"

    def syncs(x):
        if cuda.current == "side" and "capture_begin on side" in cuda.log[-1:]:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")
        return x

    for end_error in (None, RuntimeError("capture invalidated")):
        cuda = FakeCuda(end_error=end_error)
        with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
            h.capture_cuda_graph(SimpleNamespace(cuda=cuda), syncs, (torch.zeros(2),), warmup=1)
        assert cuda.log[-1] == "capture_end" and cuda.current == "default"


class FakeGraph:
    """Replays ``fn`` on the static buffers into the static output, like a CUDA graph; ``stale`` replays nothing."""

    def __init__(self, fn, args, out, stale=False):
        self.fn, self.args, self.out, self.stale, self.replays = fn, args, out, stale, 0

    def replay(self):
        self.replays += 1
        if not self.stale:
            self.out.copy_(self.fn(*self.args))


def _graph_setup(h, monkeypatch, capture):
    d = 8
    weight = torch.randn(d, 5, generator=torch.Generator().manual_seed(2))

    def prepare(r):
        k = max(1, round(10 * r))
        g = torch.Generator().manual_seed(k)
        return SimpleNamespace(inputs_embeds=torch.randn(1, k + 2, d, generator=g),
                               position_ids=torch.arange(k + 2).expand(3, 1, -1).clone())

    def llm_logits(embeds, pos):
        return (embeds[:, -1] + pos[0, :, -1:].float()) @ weight

    monkeypatch.setattr(h, "capture_cuda_graph", capture)
    rows = [{"ratio": r} for r in (1.0, 0.5, 0.2)]
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(synchronize=lambda: None, empty_cache=lambda: None))
    return rows, fake_torch, prepare, llm_logits


def test_graph_rows_match_eager_and_give_a_speedup(monkeypatch):
    h = _script()
    graphs = []

    def capture(torch_, fn, args, warmup):
        out = fn(*args)
        graphs.append(FakeGraph(fn, args, out))
        return graphs[-1], out

    rows, fake_torch, prepare, llm_logits = _graph_setup(h, monkeypatch, capture)
    h.time_llm_graphs(fake_torch, rows, prepare, llm_logits, h.Timer("cpu"), warmup=1, repeats=2)
    for row in rows:
        assert row["graph_error"] == "" and row["graph_matches_eager"] is True and row["graph_rel_err"] < 1e-6
        assert row["llm_graph_ms_p50"] > 0 and row["prefill_graph_ms_p10"] <= row["prefill_graph_ms_p90"]
        assert row["speedup_graph"] == pytest.approx(rows[0]["prefill_graph_ms_p50"] / row["prefill_graph_ms_p50"])
    assert rows[0]["speedup_graph"] == 1.0
    assert all(g.replays == 1 + 3 + 3 for g in graphs)  # the check, then warm-up + repeats for LLM and prefill


def test_graph_that_ignores_its_buffers_is_reported_as_not_matching(monkeypatch):
    h = _script()

    def capture(torch_, fn, args, warmup):
        out = fn(*args)  # captured on the zeroed buffers, never replayed on the prompt
        return FakeGraph(fn, args, out, stale=True), out

    rows, fake_torch, prepare, llm_logits = _graph_setup(h, monkeypatch, capture)
    h.time_llm_graphs(fake_torch, rows, prepare, llm_logits, h.Timer("cpu"), warmup=0, repeats=1)
    assert [row["graph_matches_eager"] for row in rows] == [False] * 3
    assert all(row["graph_rel_err"] > 0.1 and row["graph_error"] == "" for row in rows)


def test_graph_failure_leaves_nan_and_a_reason_and_stops(monkeypatch):
    h = _script()
    tries = []

    def capture(torch_, fn, args, warmup):
        tries.append(args[0].shape)
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors ...")

    rows, fake_torch, prepare, llm_logits = _graph_setup(h, monkeypatch, capture)
    h.time_llm_graphs(fake_torch, rows, prepare, llm_logits, h.Timer("cpu"), warmup=1, repeats=1)
    assert len(tries) == 1
    assert rows[0]["graph_error"] == "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    assert [row["graph_error"] for row in rows[1:]] == ["not tried (failed at ratio 1)"] * 2
    assert rows[0]["graph_matches_eager"] == ""
    assert all(math.isnan(rows[0][c]) for c in h.GRAPH_COLUMNS)
    assert all(math.isnan(row["speedup_graph"]) for row in rows)


# -- end to end -------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the script's transformers model
def test_tiny_run_end_to_end(tmp_path):
    h = _script()
    threads = torch.get_num_threads()
    try:
        # --llm-graphs on the CPU: the capture fails (no CUDA) and the run goes on with the eager numbers.
        md = h.run(h.parse_args(["--tiny", "--ratios", "1.0,0.2", "--warmup", "0", "--repeats", "1", "--llm-graphs",
                                 "--out-dir", str(tmp_path)]))
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "hf_gpu_prefill_tiny_cpu.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["ratio"]) for r in rows] == [1.0, 0.2]
    for column in ("prefill_ms_p50", "llm_ms_p50", "vit_ms_p50", "speedup", "ceiling_measured", "ceiling_flops",
                   "vit_attention", "vit_rel_err", "vit_attn_rel_err", "vit_ms_p50_varlen", "vit_ms_p50_padded",
                   "vit_ms_p50_per_window", "llm_graph_ms_p50", "prefill_graph_ms_p50", "speedup_graph",
                   "graph_matches_eager", "graph_rel_err", "graph_error"):
        assert column in rows[0], column
    assert all(r["vit_attention"] == "padded" and float(r["vit_rel_err"]) <= 1e-4 for r in rows)
    assert float(rows[1]["speedup"]) > 0 and all(float(r["vit_ms_p50_padded"]) > 0 for r in rows)
    assert rows[0]["graph_error"] and rows[1]["graph_error"].startswith("not tried")
    assert rows[1]["speedup_graph"] == "" and rows[0]["llm_graph_ms_p50"] == ""  # empty, not "nan"
    text = md.read_text()
    assert "| speedup (graph) | graph = eager |" in text and "CUDA graph errors:" in text
    assert "ViT attention: `padded`" in text
