#!/usr/bin/env python
"""Prefill time of the Qwen2.5-VL-7B architecture with VisionSelector pruning, in transformers, on one CUDA GPU.

Random bf16 weights built from a config (no model hub, no download), one 1280x720 image (92x52 patches -> 1196 visual
tokens) and 60 text tokens (15 before the image, 45 after), ratios 1.0 / 0.5 / 0.3 / 0.2 / 0.1 / 0.05. One "prefill"
is what the HF reference does before the first token: embedding lookup, vision tower, scorer + top-K + gather
(``vs_vllm.hf.qwen2_5_vl.QwenVLSelector.prepare``, method visionselector with a random scorer), M-RoPE positions, and
the LLM forward over the pruned prompt plus the LM head on the last token. Timed with CUDA events after a warm-up;
the vision tower alone and the LLM alone (at each K) are timed too, for the measured Amdahl ceiling
``(T_vit + T_llm(N)) / (T_vit + T_llm(K))``, next to the FLOP ceiling of ``vs_vllm.benchmarking.flops``.

This is the transformers reference path (eager PyTorch, host syncs in the position computation), not vLLM: use it for
the shape of the speedup curve, not for serving latency. Two benchmark-only changes keep the host out of the way
(the weights and the math are unchanged):

- ``--vit-attention`` (default ``padded``, the fastest on an H200). transformers' ``Qwen2_5_VLVisionAttention`` runs, for every
  attn_implementation but flash, ``cu_seqlens.tolist()`` (a host sync) and one SDPA call per window in a Python loop
  (84 windows x 28 windowed layers for a 1280x720 image). This script swaps the class of those modules (in this
  process only, :func:`set_vit_attention`) for a subclass whose forward is the same qkv / rotary / scaling / proj math
  with ONE ``torch.nn.functional.scaled_dot_product_attention`` call per layer over all windows, as vLLM does with
  varlen flash attention:

  * ``varlen``: a block-diagonal additive mask [1, 1, S, S] (0 inside a window, -inf across), built on the device
    from ``cu_seqlens`` with no host sync, once per ``cu_seqlens`` tensor (transformers passes the same tensor to
    every layer of one forward). A layer with a single segment (the full-attention layers, one image) gets no mask,
    so flash attention. On CUDA a masked SDPA runs the memory-efficient kernel over the whole S x S square: correct,
    but it does the attention FLOPs of a full layer in every windowed layer.
  * ``padded``: the windows gathered into a zero-padded batch [windows, heads, max window length, head_dim] with a
    key-padding mask, one SDPA call, the outputs gathered back: the FLOPs of per-window attention, one host sync per
    ``cu_seqlens`` tensor (its longest window) unless transformers passes ``max_seqlen``.
  * ``per-window``: transformers' own forward, unchanged.

  ``varlen`` and ``padded`` always use SDPA; with a flash ``--attn`` the ViT is left to transformers (already varlen).
  Every mode is checked against ``per-window`` and timed once (ViT alone) before the main timings.
- ``--llm-graphs`` (default on with CUDA): after the eager timings, the LLM forward + LM head is captured per ratio in
  a CUDA graph (static ``inputs_embeds`` [1, T, D] and ``position_ids`` [3, 1, T], warmed up on a side stream first),
  its logits checked against the eager ones, and timed alone (``llm_graph_ms_p50``) and inside a prefill
  (``prefill_graph_ms_p50`` = eager ``prepare()`` + copy into the static buffers + ``graph.replay()``). A capture that
  fails (code that syncs or branches on data) is reported in ``graph_error`` and leaves the graph columns empty; the
  eager results are written before any capture is tried, and written again with the graph columns at the end.

Columns (CSV, one row per ratio): the eager ones (``prefill_ms_p50/p10/p90``, ``vit_ms_p50``, ``llm_ms_p50``,
``select_and_rest_ms``, ``plain_forward_ms_p50``, ``speedup`` = eager prefill at ratio 1 / at r, the ceilings), then
``vit_attention`` (the mode in place for every timing), ``vit_rel_err`` / ``vit_attn_rel_err`` (its vision tower /
layer-0 attention output vs per-window), ``vit_ms_p50_{varlen,padded,per_window}`` (ViT alone in each mode), and the
graph ones: ``llm_graph_ms_p50``, ``prefill_graph_ms_p50/p10/p90``, ``speedup_graph`` (prefill_graph at ratio 1 / at
r), ``graph_rel_err``, ``graph_matches_eager``, ``graph_error`` (empty when the graph ran; ``off`` without graphs).

Needs only torch + transformers (>= 5) and this repository on the path::

    python benchmarks/prefill/hf_gpu_prefill.py                  # GPU; writes benchmarks/results/hf_gpu_prefill_<gpu>.*
    python benchmarks/prefill/hf_gpu_prefill.py --tiny           # CPU smoke test of the same code, tiny config
    python benchmarks/prefill/hf_gpu_prefill.py --tiny --device cuda   # seconds on a GPU: the graph path, tiny config
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import platform
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RATIOS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)

# Qwen/Qwen2.5-VL-7B-Instruct (config.json), as in anchors.md §6.
QWEN25_VL_7B = {
    "text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                 rms_norm_eps=1e-6, use_sliding_window=False, tie_word_embeddings=False),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, in_chans=3),
    "ids": dict(vision_start_token_id=151652, vision_end_token_id=151653, image_token_id=151655,
                video_token_id=151656),
}
# The same code path with a model that runs in a second on a CPU.
TINY = {
    "text": dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1004, eos_token_id=1005,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
                 rms_norm_eps=1e-6, use_sliding_window=False, tie_word_embeddings=False),
    "vision": dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256, patch_size=14,
                   spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
                   tokens_per_second=2, in_chans=3),
    "ids": dict(vision_start_token_id=1000, vision_end_token_id=1001, image_token_id=1002, video_token_id=1003),
}


def build_model(spec: dict, device, dtype, attn: str):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(text_config=dict(spec["text"]), vision_config=dict(spec["vision"]),
                              tie_word_embeddings=False, **spec["ids"])
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    return model.to(device=device, dtype=dtype).eval()


def build_inputs(spec: dict, width: int, height: int, text_before: int, text_after: int, device, dtype, seed: int):
    """Token ids (random text around one image's placeholders), random pixel patches, and the patch grid."""
    import torch

    from vs_vllm.benchmarking.flops import QwenVLArch, image_grid

    v, ids = spec["vision"], spec["ids"]
    arch = QwenVLArch.from_hf_config({"text_config": spec["text"], "vision_config": v})
    t, gh, gw = image_grid(arch, width, height, min_pixels=56 * 56, max_pixels=10**9)
    n = t * gh * gw // v["spatial_merge_size"] ** 2
    g = torch.Generator().manual_seed(seed)
    text_hi = min(ids.values())  # ordinary text ids stay below the special ones
    before = torch.randint(0, text_hi, (text_before,), generator=g)
    after = torch.randint(0, text_hi, (text_after,), generator=g)
    input_ids = torch.cat([before, torch.tensor([ids["vision_start_token_id"]]),
                           torch.full((n,), ids["image_token_id"]), torch.tensor([ids["vision_end_token_id"]]),
                           after])[None]
    patch_dim = v["in_chans"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    pixel_values = torch.randn(t * gh * gw, patch_dim, generator=g)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": pixel_values.to(device=device, dtype=dtype),
        "image_grid_thw": torch.tensor([[t, gh, gw]], device=device),
    }, (t, gh, gw), n, arch


class Timer:
    """Milliseconds of ``fn()``: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device) -> None:
        import torch

        self.torch = torch
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn, warmup: int, repeats: int) -> list[float]:
        torch = self.torch
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return times


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _nan() -> float:
    return float("nan")


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """``Type: first line of the message``, short enough for a CSV cell and a markdown table."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".replace("|", "/")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def rel_err(got, expected) -> float:
    """||got - expected|| / ||expected|| (Frobenius, in fp32); NaN when either holds a NaN."""
    got, expected = got.float(), expected.float()
    return float((got - expected).norm() / expected.norm().clamp_min(1e-30))


# -- ViT attention: one SDPA call per layer (benchmark-only substitution, see the module docstring) -------------------

VIT_ATTENTION = ("varlen", "padded", "per-window")
VISION_ATTENTION_CLASS = "Qwen2_5_VLVisionAttention"
#: Largest relative errors vs transformers' per-window attention that a substituted mode may show before the run falls
#: back to per-window: the first vision attention layer's output (a windowed layer: attention over the wrong keys is
#: off by ~1 there, bf16 rounding by ~1e-2 at most) and the vision tower's output (with random weights a wrong mask
#: moves it by only ~1e-2, so that one is there for NaN and garbage). fp32 (--tiny on the CPU): rounding only.
VIT_ATTN_REL_TOL = {"float32": 1e-4, "bfloat16": 0.1, "float16": 0.1}
VIT_REL_TOL = {"float32": 1e-4, "bfloat16": 0.25, "float16": 0.25}


class _PerCuSeqlens:
    """Tensors derived from one ``cu_seqlens`` tensor, looked up by the tensor object itself.

    transformers builds ``cu_seqlens`` / ``cu_window_seqlens`` once per vision forward and passes the same tensor to
    every layer, so what is derived from it (mask, indices) is built once per forward, not once per layer. An entry
    holds its tensor, so the identity of a cached tensor is never reused; only the last few entries are kept.
    """

    def __init__(self, size: int = 6) -> None:
        self.size = size
        self.entries: list[tuple[object, tuple, object]] = []

    def get(self, cu_seqlens, key: tuple, build):
        for tensor, k, value in self.entries:
            if tensor is cu_seqlens and k == key:
                return value
        value = build()
        self.entries = [*self.entries[-(self.size - 1):], (cu_seqlens, key, value)]
        return value

    def clear(self) -> None:
        self.entries = []


_DERIVED = _PerCuSeqlens()


def segment_ids(cu_seqlens, seq_len: int, device):
    """Segment (window, or image) of every position 0 .. seq_len-1 of ``cu_seqlens``; device ops only, no host sync."""
    import torch

    cu = cu_seqlens.to(device)
    pos = torch.arange(seq_len, device=device, dtype=cu.dtype)
    return torch.searchsorted(cu[1:].contiguous(), pos, right=True)


def block_diagonal_mask(cu_seqlens, seq_len: int, dtype, device):
    """Additive [1, 1, S, S] mask: 0 where query and key lie in the same segment of ``cu_seqlens``, -inf elsewhere.
    Every row keeps its own segment, so no row is all -inf. Device ops only, no host sync."""
    import torch

    seg = segment_ids(cu_seqlens, seq_len, device)
    mask = torch.zeros((1, 1, seq_len, seq_len), dtype=dtype, device=device)
    return mask.masked_fill_(seg[:, None] != seg[None, :], float("-inf"))


def padded_layout(cu_seqlens, seq_len: int, max_len: int, dtype, device):
    """The segments of ``cu_seqlens`` as a zero-padded batch of ``max_len`` slots each (W = number of segments):
    ``gather`` [W, L], the row each slot reads (padding slots read row 0); ``key_mask`` [W, 1, L, L], additive, -inf on
    the padding keys; ``seg`` and ``slot`` [S], where each position's output sits in the batch. Device ops only."""
    import torch

    cu = cu_seqlens.to(device).long()
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    slots = torch.arange(max_len, device=device)
    valid = slots[None, :] < lengths[:, None]
    gather = (starts[:, None] + slots[None, :]).masked_fill(~valid, 0)
    # [W, 1, L, L] like transformers' own [batch, 1, q, k] masks (the kernels' usual form), not a broadcast [W, 1, 1, L]
    key_mask = torch.zeros((cu.shape[0] - 1, 1, max_len, max_len), dtype=dtype, device=device)
    key_mask.masked_fill_(~valid[:, None, None, :], float("-inf"))
    seg = segment_ids(cu_seqlens, seq_len, device).long()
    slot = torch.arange(seq_len, device=device) - cu[seg]
    return gather, key_mask, seg, slot


def _one_call_vision_attention_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None,
                                       **kwargs):
    """``Qwen2_5_VLVisionAttention.forward`` (transformers 5.x: qkv, rotary, scaling, proj unchanged) with one SDPA
    call over every segment of ``cu_seqlens`` instead of one call per segment; ``self._vs_mode`` is ``varlen`` or
    ``padded`` (module docstring)."""
    import torch.nn.functional as F

    if position_embeddings is None:
        raise ValueError("this benchmark's vision attention needs position_embeddings (transformers >= 5)")
    seq_len = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_len, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = self._vs_apply_rotary(q, k, cos, sin)  # [S, H, d] each, like v
    device = q.device
    if cu_seqlens.shape[0] <= 2 or self._vs_mode == "varlen":
        if cu_seqlens.shape[0] <= 2:  # a single segment (full-attention layer, one image): no mask at all
            mask = None
        else:
            mask = _DERIVED.get(cu_seqlens, ("varlen", seq_len, q.dtype, device),
                                lambda: block_diagonal_mask(cu_seqlens, seq_len, q.dtype, device))
        q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, H, S, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scaling)
        out = out[0].transpose(0, 1)  # [S, H, d]
    else:
        def build():
            longest = max_seqlen if isinstance(max_seqlen, int) else int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            return padded_layout(cu_seqlens, seq_len, longest, q.dtype, device)

        gather, key_mask, seg, slot = _DERIVED.get(cu_seqlens, ("padded", seq_len, q.dtype, device), build)
        q, k, v = (x[gather].permute(0, 2, 1, 3) for x in (q, k, v))  # [W, H, L, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=0.0, scale=self.scaling)
        out = out.permute(0, 2, 1, 3)[seg, slot]  # [S, H, d]
    return self.proj(out.reshape(seq_len, -1))


def vision_attentions(model) -> list:
    """The ``Qwen2_5_VLVisionAttention`` modules of ``model`` (swapped or not), in layer order."""
    return [m for m in model.modules() if getattr(type(m), "_vs_base", type(m)).__name__ == VISION_ATTENTION_CLASS]


def capture_call(module, fn) -> tuple[tuple, dict]:
    """The positional and keyword arguments of ``module``'s first call while ``fn()`` runs."""
    seen: list = []
    handle = module.register_forward_pre_hook(lambda _m, a, kw: seen.append((a, kw)) if not seen else None,
                                              with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"{type(module).__name__} was not called")
    return seen[0]


_VIT_CLASSES: dict = {}


def set_vit_attention(model, mode: str) -> int:
    """Benchmark-only: make every ``Qwen2_5_VLVisionAttention`` of ``model`` run ``mode`` by swapping the module's
    class for a subclass whose ``forward`` is :func:`_one_call_vision_attention_forward` (``per-window``: back to
    transformers' own class). Weights, buffers and hooks stay as they are. Returns how many modules were switched."""
    if mode not in VIT_ATTENTION:
        raise ValueError(f"vit attention {mode!r} not in {VIT_ATTENTION}")
    count = 0
    for module in vision_attentions(model):
        base = getattr(type(module), "_vs_base", type(module))
        if mode == "per-window":
            module.__class__ = base
        else:
            if (base, mode) not in _VIT_CLASSES:
                rotary = sys.modules[base.__module__].apply_rotary_pos_emb_vision  # the model's own rotary
                name = mode.title().replace("-", "") + base.__name__
                _VIT_CLASSES[base, mode] = type(name, (base,), {
                    "forward": _one_call_vision_attention_forward, "_vs_base": base, "_vs_mode": mode,
                    "_vs_apply_rotary": staticmethod(rotary), "__module__": __name__})
            module.__class__ = _VIT_CLASSES[base, mode]
        count += 1
    if not count:
        raise RuntimeError(f"no {VISION_ATTENTION_CLASS} module in {type(model).__name__}")
    _DERIVED.clear()
    return count


def choose_vit_attention(model, chosen: str, vit_call, vit_output, timer, warmup: int, repeats: int,
                         dtype_name: str):
    """Check every ViT attention mode against transformers' per-window attention (the first layer's attention output
    and the vision tower's output, on the benchmark's image) and time the vision tower alone in each; ``chosen`` goes
    last and stays in place. A mode that fails or disagrees is reported in the notes; if it is ``chosen``, the run
    falls back to ``per-window``. Returns (mode in place, its ViT timings, ViT ms by mode, tower rel. error by mode,
    layer-0 attention rel. error by mode, notes)."""
    ms, err, attn_err = (dict.fromkeys(VIT_ATTENTION, _nan()) for _ in range(3))
    notes: list[str] = []
    used, used_times = None, None
    try:
        set_vit_attention(model, "per-window")
        first = vision_attentions(model)[0]  # layer 0: a windowed layer
        reference = []
        attn_args, attn_kwargs = capture_call(first, lambda: reference.append(vit_output()))
        attn_reference = first(*attn_args, **attn_kwargs)
        err["per-window"] = attn_err["per-window"] = 0.0
    except Exception as exc:
        notes.append(f"ViT attention modes not checked: {_one_line(exc)}")
        print(f"[hf-prefill] {notes[-1]}", flush=True)
        first = None
    for mode in ([m for m in VIT_ATTENTION if m != chosen] + [chosen]) if first is not None else []:
        try:
            set_vit_attention(model, mode)
            if mode != "per-window":
                attn_err[mode] = rel_err(first(*attn_args, **attn_kwargs), attn_reference)
                err[mode] = rel_err(vit_output(), reference[0])
                if not (attn_err[mode] <= VIT_ATTN_REL_TOL.get(dtype_name, 0.1)
                        and err[mode] <= VIT_REL_TOL.get(dtype_name, 0.25)):
                    raise RuntimeError(f"output differs from per-window (rel. err: layer 0 attention "
                                       f"{attn_err[mode]:.2e}, vision tower {err[mode]:.2e})")
            times = timer(vit_call, warmup, repeats)
            ms[mode] = statistics.median(times)
            if mode == chosen:
                used, used_times = mode, times
        except Exception as exc:
            notes.append(f"ViT attention `{mode}` not usable: {_one_line(exc)}")
            print(f"[hf-prefill] {notes[-1]}", flush=True)
    if used is None:  # transformers' own attention
        try:
            set_vit_attention(model, "per-window")
        except Exception as exc:  # nothing was swapped then
            notes.append(f"ViT attention left as built: {_one_line(exc)}")
        used, used_times = "per-window", timer(vit_call, warmup, repeats)
        if chosen != "per-window":
            notes.append(f"fell back to `per-window` instead of `{chosen}`")
            print(f"[hf-prefill] {notes[-1]}", flush=True)
    return used, used_times, ms, err, attn_err, notes


# -- LLM in a CUDA graph ----------------------------------------------------------------------------------------------

#: Largest relative error (Frobenius) of the replayed logits vs the eager ones for ``graph_matches_eager``: bf16 over 28
#: layers, and the capture may take another attention kernel (transformers 5.17 builds an explicit causal mask while
#: a stream captures, so SDPA runs memory-efficient instead of flash). A graph reading the wrong buffers is off by ~1.
GRAPH_REL_TOL = 5e-2
GRAPH_COLUMNS = ("llm_graph_ms_p50", "prefill_graph_ms_p50", "prefill_graph_ms_p10", "prefill_graph_ms_p90",
                 "speedup_graph", "graph_rel_err")


def capture_cuda_graph(torch, fn, static_args: tuple, warmup: int):
    """CUDA graph of ``fn(*static_args)`` and its static output: warmed up on a side stream, then captured on that
    stream (torch.cuda.graph's recipe, spelled out so that a failed capture always ends the capture and gives the
    original error)."""
    import gc

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(1, warmup)):
            fn(*static_args)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        graph.capture_begin()
        error = None
        try:
            out = fn(*static_args)
        except Exception as exc:  # the capture must still be ended
            error = exc
        try:
            graph.capture_end()
        except Exception:
            if error is None:
                raise
        if error is not None:
            raise error
    torch.cuda.synchronize()
    return graph, out


def time_llm_graphs(torch, rows: list[dict], prepare, llm_logits, timer, warmup: int, repeats: int) -> None:
    """Fill the graph columns of ``rows``, one CUDA graph per ratio (module docstring). Never raises: an error goes
    into ``graph_error`` (and after a failure the remaining ratios are not tried), leaving that row's numbers NaN."""
    from vs_vllm.benchmarking.stats import percentile

    failed_at = None
    for row in rows:
        r = row["ratio"]
        if failed_at is not None:
            row.update(dict.fromkeys(GRAPH_COLUMNS, _nan()), graph_matches_eager="",
                       graph_error=f"not tried (failed at ratio {failed_at})")
            continue
        graph = logits = embeds = pos = prefill = None
        try:
            prompt = prepare(r)
            # Captured on zeros, replayed on the prompt: the logits only match the eager ones if the graph reads both
            # static buffers.
            embeds = prompt.inputs_embeds.new_zeros(prompt.inputs_embeds.shape)
            pos = prompt.position_ids.new_zeros(prompt.position_ids.shape)
            graph, logits = capture_cuda_graph(torch, llm_logits, (embeds, pos), warmup)
            embeds.copy_(prompt.inputs_embeds)
            pos.copy_(prompt.position_ids)
            graph.replay()
            expected = llm_logits(prompt.inputs_embeds, prompt.position_ids)
            torch.cuda.synchronize()
            err = rel_err(logits, expected)
            row["graph_rel_err"] = err
            row["graph_matches_eager"] = bool(math.isfinite(err) and err <= GRAPH_REL_TOL)

            def prefill(r=r, embeds=embeds, pos=pos, graph=graph):
                p = prepare(r)
                if p.inputs_embeds.shape != embeds.shape or p.position_ids.shape != pos.shape:
                    raise RuntimeError(f"prompt shape {tuple(p.inputs_embeds.shape)} is not the captured "
                                       f"{tuple(embeds.shape)}")
                embeds.copy_(p.inputs_embeds)
                pos.copy_(p.position_ids)
                graph.replay()

            t_llm = timer(graph.replay, warmup, repeats)
            t_pre = timer(prefill, warmup, repeats)
            row.update(llm_graph_ms_p50=statistics.median(t_llm), prefill_graph_ms_p50=statistics.median(t_pre),
                       prefill_graph_ms_p10=percentile(t_pre, 10), prefill_graph_ms_p90=percentile(t_pre, 90), graph_error="")
            print(f"[hf-prefill] r={r:<5g} CUDA graph: LLM {row['llm_graph_ms_p50']:7.1f} ms, prefill "
                  f"{row['prefill_graph_ms_p50']:8.1f} ms (p10 {row['prefill_graph_ms_p10']:.1f}, p90 "
                  f"{row['prefill_graph_ms_p90']:.1f}); logits vs eager rel. err {err:.2e} "
                  f"({'match' if row['graph_matches_eager'] else 'MISMATCH'})", flush=True)
        except Exception as exc:
            failed_at = f"{r:g}"
            row.update(dict.fromkeys(GRAPH_COLUMNS, _nan()), graph_matches_eager="", graph_error=_one_line(exc))
            print(f"[hf-prefill] r={r:g}: CUDA graph failed, eager numbers only: {row['graph_error']}", flush=True)
        finally:
            del graph, logits, embeds, pos, prefill
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception as exc:  # a broken context: the eager results are on disk already
                print(f"[hf-prefill] after the ratio {r:g} graph: {_one_line(exc)}", flush=True)
                failed_at = failed_at or f"{r:g}"
    base = next((row.get("prefill_graph_ms_p50", _nan()) for row in rows if row["ratio"] == 1.0), _nan())
    for row in rows:
        row["speedup_graph"] = base / row.get("prefill_graph_ms_p50", _nan())


def _fmt(x, spec: str, suffix: str = "") -> str:
    return "–" if isinstance(x, float) and math.isnan(x) else f"{x:{spec}}{suffix}"


def run(args: argparse.Namespace) -> Path:
    import torch
    import transformers

    from vs_vllm.benchmarking.flops import flop_ceiling, prefill_split
    from vs_vllm.benchmarking.paths import portable_text
    from vs_vllm.benchmarking.stats import percentile
    from vs_vllm.hf.qwen2_5_vl import QwenVLSelector
    from vs_vllm.selection.budget import keep_count
    from vs_vllm.selection.scorer import TransformerScorer

    spec = TINY if args.tiny else QWEN25_VL_7B
    where = args.device or ("cpu" if args.tiny else "cuda")
    if where == "cpu":
        if not args.tiny:
            raise SystemExit("hf_gpu_prefill.py: error: the 7B config runs on a GPU only; use --tiny on the CPU")
        device, dtype = torch.device("cpu"), torch.float32
        # One thread: on a small shared CPU, OpenMP spin-waiting makes 2 threads up to 40x slower than 1.
        torch.set_num_threads(args.threads)
        device_name = f"CPU ({platform.processor() or platform.machine()}), tiny config"
        stem = "hf_gpu_prefill_tiny_cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("hf_gpu_prefill.py: error: needs a CUDA GPU (torch.cuda.is_available() is False); "
                             "use --tiny for a CPU smoke test of the same code")
        device, dtype = torch.device("cuda", 0), torch.bfloat16
        gpu = torch.cuda.get_device_name(0)
        device_name = f"{gpu}, tiny config" if args.tiny else gpu
        stem = "hf_gpu_prefill_" + ("tiny_" if args.tiny else "") + _slug(gpu)
    graphs = args.llm_graphs if args.llm_graphs is not None else device.type == "cuda"
    torch.manual_seed(args.seed)
    width, height = (int(x) for x in args.size.split("x"))
    print(f"[hf-prefill] building {'tiny' if args.tiny else 'Qwen2.5-VL-7B'} with random {dtype} weights on "
          f"{device_name} ...", flush=True)
    t0 = time.perf_counter()
    model = build_model(spec, device, dtype, args.attn)
    print(f"[hf-prefill] built in {time.perf_counter() - t0:.1f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:,.1f}M parameters)", flush=True)
    scorer = TransformerScorer(spec["text"]["hidden_size"])
    scorer.reset_parameters(init_std=0.02)
    scorer = scorer.to(device)
    selector = QwenVLSelector(model, scorer=scorer)
    text_before = min(15, args.text_tokens)
    inputs, grid, n, arch = build_inputs(spec, width, height, text_before, args.text_tokens - text_before - 2,
                                         device, dtype, args.seed)
    lm, head = model.model.language_model, model.lm_head
    timer = Timer(device)

    def llm_logits(inputs_embeds, position_ids):
        hidden = lm(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False)
        return head(hidden.last_hidden_state[:, -1])

    def llm(prompt):
        return llm_logits(prompt.inputs_embeds, prompt.position_ids)

    def prepare(r):
        return selector.prepare(inputs, ratio=r, method=args.method)

    def vit_call():
        return model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])

    def vit_output():
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
        return torch.cat(list(out.pooler_output))

    dtype_name = str(dtype).replace("torch.", "")
    vit_ms, vit_err, vit_attn_err = (dict.fromkeys(VIT_ATTENTION, _nan()) for _ in range(3))
    vit_notes: list[str] = []
    rows: list[dict] = []
    with torch.inference_mode():
        if "flash" in args.attn:  # transformers' flash path is varlen already
            vit_mode = "transformers-flash"
            vit = timer(vit_call, args.warmup, args.repeats)
        else:
            vit_mode, vit, vit_ms, vit_err, vit_attn_err, vit_notes = choose_vit_attention(
                model, args.vit_attention, vit_call, vit_output, timer, args.warmup, args.repeats, dtype_name)
            print("[hf-prefill] ViT alone by attention: " + ", ".join(
                f"{m} {_fmt(vit_ms[m], '.1f')} ms (rel. err attention {_fmt(vit_attn_err[m], '.1e')}, tower "
                f"{_fmt(vit_err[m], '.1e')})" for m in VIT_ATTENTION)
                + f"; using {vit_mode}", flush=True)
        plain = timer(lambda: model(**inputs, logits_to_keep=1, use_cache=False), args.warmup, args.repeats)
        print(f"[hf-prefill] N={n} visual tokens, grid {grid}; ViT {statistics.median(vit):.1f} ms ({vit_mode}); "
              f"plain transformers forward {statistics.median(plain):.1f} ms", flush=True)
        llm_full = None
        base = None
        for r in args.ratios:
            k = keep_count(n, r)
            prompt = prepare(r)
            t_llm = timer(lambda p=prompt: llm(p), args.warmup, args.repeats)
            t_pre = timer(lambda r=r: llm(prepare(r)), args.warmup, args.repeats)
            llm_med, pre_med, vit_med = statistics.median(t_llm), statistics.median(t_pre), statistics.median(vit)
            if r == 1.0:
                llm_full, base = llm_med, pre_med
            text = prompt.prompt_tokens - k
            row = {
                "device": device_name, "dtype": dtype_name, "attn": args.attn, "vit_attention": vit_mode,
                "image": f"{width}x{height}", "grid": "x".join(map(str, grid)), "N": n, "ratio": r, "K": k,
                "prompt_tokens": prompt.prompt_tokens, "method": args.method,
                "prefill_ms_p50": pre_med, "prefill_ms_p10": percentile(t_pre, 10), "prefill_ms_p90": percentile(t_pre, 90),
                "vit_ms_p50": vit_med, "llm_ms_p50": llm_med,
                "select_and_rest_ms": pre_med - vit_med - llm_med,
                "plain_forward_ms_p50": statistics.median(plain),
                "speedup": (base / pre_med) if base else _nan(),
                "ceiling_measured": ((vit_med + llm_full) / (vit_med + llm_med)) if llm_full else _nan(),
                "ceiling_flops": flop_ceiling(arch, grid, text, k),
            }
            row["achieved_over_ceiling"] = row["speedup"] / row["ceiling_measured"]
            row["vit_rel_err"] = vit_err.get(vit_mode, _nan())
            row["vit_attn_rel_err"] = vit_attn_err.get(vit_mode, _nan())
            row.update({f"vit_ms_p50_{m.replace('-', '_')}": vit_ms[m] for m in VIT_ATTENTION})
            row.update(dict.fromkeys(GRAPH_COLUMNS, _nan()), graph_matches_eager="",
                       graph_error="pending" if graphs else "off")
            rows.append(row)
            print(f"[hf-prefill] r={r:<5g} K={k:<5d} prefill {pre_med:8.1f} ms (p10 {row['prefill_ms_p10']:.1f}, "
                  f"p90 {row['prefill_ms_p90']:.1f}), LLM {llm_med:7.1f} ms, speedup {row['speedup']:.2f}x, "
                  f"ceiling {row['ceiling_measured']:.2f}x measured / {row['ceiling_flops']:.2f}x FLOPs", flush=True)
    if rows and math.isnan(rows[0]["speedup"]):
        print("[hf-prefill] note: put 1.0 first in --ratios to get speedups and measured ceilings", flush=True)

    split = prefill_split(arch, grid, args.text_tokens, text_before=text_before)
    out_dir = Path(args.out_dir or (".cache/hf-gpu-prefill-tiny" if args.tiny else REPO / "benchmarks" / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        with open(out_dir / f"{stem}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                # graph columns without a value stay empty (not "nan"): readers test them for presence
                writer.writerow({k: ("" if k in GRAPH_COLUMNS and isinstance(v, float) and math.isnan(v)
                                     else f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        sh = split.shares()
        unit, scale = ("GF", 1e9) if args.tiny else ("TF", 1e12)
        if graphs:
            graph_line = (f"- LLM CUDA graphs: one per ratio (static inputs_embeds and position_ids, LLM + LM head); "
                          f"\"prefill graph\" = eager prepare() + copy into the static buffers + replay; \"graph = "
                          f"eager\": replayed logits within {GRAPH_REL_TOL:g} relative error of the eager ones.")
        else:
            graph_line = "- LLM CUDA graphs: off (graph columns empty)."
        lines = [
            f"# HF transformers prefill with VisionSelector pruning: {device_name}",
            "",
            f"{_dt.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}"
            + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else "")
            + f", transformers {transformers.__version__}, Python {platform.python_version()}.",
            "",
            f"- Model: {'tiny test config' if args.tiny else 'Qwen2.5-VL-7B architecture'}, random {dtype_name} "
            f"weights, attention `{args.attn}`; scorer random (std 0.02), method `{args.method}`.",
            f"- Input: one {width}x{height} image (patch grid {grid[1]}x{grid[2]}, N = {n} visual tokens) and "
            f"{args.text_tokens} text tokens ({text_before} before the image).",
            f"- FLOP split: vision {split.vision / scale:.2f} {unit} ({sh['vision']:.1%}), LLM on visual "
            f"{split.llm_visual / scale:.2f} {unit} ({sh['llm_visual']:.1%}), LLM on text "
            f"{split.llm_text / scale:.2f} {unit} ({sh['llm_text']:.1%}).",
            f"- ViT attention: `{vit_mode}` in every timing below (benchmark-only substitution of transformers' "
            "per-window loop, see the script's docstring). ViT alone by mode: "
            + ", ".join(f"{m} {_fmt(vit_ms[m], '.1f')} ms" for m in VIT_ATTENTION) + "; relative error vs per-window "
            "of the layer-0 attention output / the tower output: "
            + ", ".join(f"{m} {_fmt(vit_attn_err[m], '.1e')} / {_fmt(vit_err[m], '.1e')}" for m in VIT_ATTENTION
                        if m != "per-window") + ".",
            *(f"- {note}." for note in vit_notes),
            f"- Timing: {args.warmup} warm-up + {args.repeats} timed runs each, "
            f"{'CUDA events' if device.type == 'cuda' else 'perf_counter'}; prefill = prepare() (embeddings, ViT, "
            "scorer, top-K, gather, M-RoPE positions) + LLM + LM head on the last token, eager. ViT alone "
            f"{statistics.median(vit):.1f} ms; plain `model(...)` forward without the plugin "
            f"{statistics.median(plain):.1f} ms.",
            graph_line,
            "",
            "| ratio | K | prompt tokens | prefill p50 ms [p10–p90] | LLM ms | select + rest ms | speedup | "
            "ceiling (measured parts) | ceiling (FLOPs) | achieved / ceiling | LLM graph ms | "
            "prefill graph p50 ms [p10–p90] | speedup (graph) | graph = eager |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
        ]
        for r in rows:
            pre_graph = _fmt(r["prefill_graph_ms_p50"], ".1f")
            if pre_graph != "–":
                pre_graph += f" [{r['prefill_graph_ms_p10']:.1f}–{r['prefill_graph_ms_p90']:.1f}]"
            lines.append(
                f"| {r['ratio']:g} | {r['K']} | {r['prompt_tokens']} | {r['prefill_ms_p50']:.1f} "
                f"[{r['prefill_ms_p10']:.1f}–{r['prefill_ms_p90']:.1f}] | {r['llm_ms_p50']:.1f} | "
                f"{r['select_and_rest_ms']:.1f} | {_fmt(r['speedup'], '.2f', '×')} | "
                f"{_fmt(r['ceiling_measured'], '.2f', '×')} | {r['ceiling_flops']:.2f}× | "
                f"{_fmt(r['achieved_over_ceiling'], '.0%')} | {_fmt(r['llm_graph_ms_p50'], '.1f')} | {pre_graph} | "
                f"{_fmt(r['speedup_graph'], '.2f', '×')} | "
                f"{ {True: 'yes', False: 'NO'}.get(r['graph_matches_eager'], '–')} |")
        errors = [f"ratio {r['ratio']:g}: {r['graph_error']}" for r in rows if r["graph_error"] not in ("", "off")]
        if errors:
            lines += ["", "CUDA graph errors: " + "; ".join(errors) + "."]
        command = " ".join(["python benchmarks/prefill/hf_gpu_prefill.py", *sys.argv[1:]])
        lines += ["", "Command: `" + portable_text(command) + "`", ""]
        (out_dir / f"{stem}.md").write_text("\n".join(lines))
        print(f"[hf-prefill] wrote {out_dir / stem}.csv and .md", flush=True)

    write()  # the eager results, before anything is captured
    if graphs and rows:
        print("[hf-prefill] LLM + LM head in CUDA graphs, one per ratio ...", flush=True)
        try:
            with torch.inference_mode():
                time_llm_graphs(torch, rows, prepare, llm_logits, timer, args.warmup, args.repeats)
        except Exception as exc:  # time_llm_graphs catches its own errors; this is belt and braces
            print(f"[hf-prefill] CUDA graphs: {_one_line(exc)}", flush=True)
            for row in rows:
                if row["graph_error"] == "pending":
                    row["graph_error"] = _one_line(exc)
        at = [r for r in rows if abs(r["ratio"] - 0.2) < 1e-9]
        if at and not math.isnan(at[0]["speedup_graph"]):
            print(f"[hf-prefill] speedup at ratio 0.2: {at[0]['speedup']:.2f}x eager, "
                  f"{at[0]['speedup_graph']:.2f}x with the LLM in a CUDA graph", flush=True)
        write()
    return out_dir / f"{stem}.md"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny config (smoke test of the same code path; on the CPU "
                   "unless --device cuda)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where to run (default: cuda; --tiny: cpu). --tiny --device cuda: the tiny config in bf16 on "
                   "the GPU, seconds, e.g. to try the CUDA graph path")
    p.add_argument("--size", default=None, help="image WxH (default: 1280x720; --tiny: 448x252)")
    p.add_argument("--text-tokens", type=int, default=60, help="text tokens around the image (default: %(default)s)")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="retention ratios, 1.0 first "
                   "(default: %(default)s)")
    p.add_argument("--method", default="visionselector", help="selection method (default: %(default)s)")
    p.add_argument("--attn", default="sdpa", help="transformers attention implementation (default: %(default)s)")
    # padded by default: on an H200 (bf16, 1280x720) the ViT took 46.9 ms padded, 60.9 ms varlen, 144.1 ms per-window
    p.add_argument("--vit-attention", choices=VIT_ATTENTION, default="padded",
                   help="vision tower attention (benchmark-only substitution): varlen = one SDPA call per layer with a "
                   "block-diagonal mask over all windows; padded = one SDPA call per layer over the windows as a "
                   "padded batch (per-window FLOPs); per-window = transformers' own loop, one SDPA call per window "
                   "(default: %(default)s)")
    p.add_argument("--llm-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the LLM + LM head replayed from a CUDA graph per ratio, and the prefill with it "
                   "(columns llm_graph_ms_p50, prefill_graph_ms_p50, speedup_graph, graph_matches_eager, graph_error; "
                   "a failed capture leaves them empty and the run goes on; default: on with CUDA, off on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: 3; --tiny: 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default: 10; --tiny: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads on the CPU (default: %(default)s)")
    p.add_argument("--out-dir", default=None,
                   help="where the CSV and markdown go (default: benchmarks/results; --tiny: .cache/hf-gpu-prefill-tiny)")
    args = p.parse_args(argv)
    args.size = args.size or ("448x252" if args.tiny else "1280x720")
    args.ratios = [float(x) for x in args.ratios.split(",") if x.strip()]
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.repeats = args.repeats if args.repeats is not None else (3 if args.tiny else 10)
    if args.text_tokens < 2:
        p.error("--text-tokens must be >= 2 (vision start and end markers)")
    return args


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
