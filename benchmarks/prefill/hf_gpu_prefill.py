#!/usr/bin/env python
"""Prefill time of the Qwen2.5-VL-7B architecture with VisionSelector pruning, in transformers, on one CUDA GPU.

Random bf16 weights built from a config (no model hub, no download), one 1280x720 image (92x52 patches -> 1196 visual
tokens) and 60 text tokens (15 before the image, 45 after), ratios 1.0 / 0.5 / 0.3 / 0.2 / 0.1 / 0.05. One "prefill"
is what the HF reference does before the first token: embedding lookup, vision tower, scorer + top-K + gather
(``vs_vllm.hf.qwen2_5_vl.QwenVLSelector.prepare``, method visionselector with a random scorer), M-RoPE positions, and
the LLM forward over the pruned prompt plus the LM head on the last token. Timed with CUDA events after a warm-up;
the vision tower alone and the LLM alone (at each K) are timed too, for the measured Amdahl ceiling
``(T_vit + T_llm(N)) / (T_vit + T_llm(K))``, next to the FLOP ceiling of ``vs_vllm.benchmarking.flops``.

This is the transformers reference path (eager PyTorch, per-window SDPA in the ViT, host syncs in the position
computation), not vLLM: use it for the shape of the speedup curve, not for serving latency.

Needs only torch + transformers (>= 5) and this repository on the path::

    python benchmarks/prefill/hf_gpu_prefill.py                  # GPU; writes benchmarks/results/hf_gpu_prefill_<gpu>.*
    python benchmarks/prefill/hf_gpu_prefill.py --tiny           # CPU smoke test of the same code, tiny config
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


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def run(args: argparse.Namespace) -> Path:
    import torch
    import transformers

    from vs_vllm.benchmarking.flops import flop_ceiling, prefill_split
    from vs_vllm.hf.qwen2_5_vl import QwenVLSelector
    from vs_vllm.selection.budget import keep_count
    from vs_vllm.selection.scorer import TransformerScorer

    if args.tiny:
        spec, device, dtype = TINY, torch.device("cpu"), torch.float32
        # One thread: on a small shared CPU, OpenMP spin-waiting makes 2 threads up to 40x slower than 1.
        torch.set_num_threads(args.threads)
        device_name = f"CPU ({platform.processor() or platform.machine()}), tiny config"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("hf_gpu_prefill.py: error: needs a CUDA GPU (torch.cuda.is_available() is False); "
                             "use --tiny for a CPU smoke test of the same code")
        spec, device, dtype = QWEN25_VL_7B, torch.device("cuda", 0), torch.bfloat16
        device_name = torch.cuda.get_device_name(0)
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

    def llm(prompt):
        hidden = lm(inputs_embeds=prompt.inputs_embeds, position_ids=prompt.position_ids, use_cache=False)
        return head(hidden.last_hidden_state[:, -1])

    rows = []
    with torch.inference_mode():
        vit = timer(lambda: model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]),
                    args.warmup, args.repeats)
        plain = timer(lambda: model(**inputs, logits_to_keep=1, use_cache=False), args.warmup, args.repeats)
        print(f"[hf-prefill] N={n} visual tokens, grid {grid}; ViT {statistics.median(vit):.1f} ms; plain "
              f"transformers forward {statistics.median(plain):.1f} ms", flush=True)
        llm_full = None
        base = None
        for r in args.ratios:
            k = keep_count(n, r)
            prompt = selector.prepare(inputs, ratio=r, method=args.method)
            t_llm = timer(lambda p=prompt: llm(p), args.warmup, args.repeats)
            t_pre = timer(lambda r=r: llm(selector.prepare(inputs, ratio=r, method=args.method)), args.warmup,
                          args.repeats)
            llm_med, pre_med, vit_med = statistics.median(t_llm), statistics.median(t_pre), statistics.median(vit)
            if r == 1.0:
                llm_full, base = llm_med, pre_med
            text = prompt.prompt_tokens - k
            row = {
                "device": device_name, "dtype": str(dtype).replace("torch.", ""), "attn": args.attn,
                "image": f"{width}x{height}", "grid": "x".join(map(str, grid)), "N": n, "ratio": r, "K": k,
                "prompt_tokens": prompt.prompt_tokens, "method": args.method,
                "prefill_ms_p50": pre_med, "prefill_ms_p10": _q(t_pre, 0.1), "prefill_ms_p90": _q(t_pre, 0.9),
                "vit_ms_p50": vit_med, "llm_ms_p50": llm_med,
                "select_and_rest_ms": pre_med - vit_med - llm_med,
                "plain_forward_ms_p50": statistics.median(plain),
                "speedup": (base / pre_med) if base else float("nan"),
                "ceiling_measured": ((vit_med + llm_full) / (vit_med + llm_med)) if llm_full else float("nan"),
                "ceiling_flops": flop_ceiling(arch, grid, text, k),
            }
            row["achieved_over_ceiling"] = row["speedup"] / row["ceiling_measured"]
            rows.append(row)
            print(f"[hf-prefill] r={r:<5g} K={k:<5d} prefill {pre_med:8.1f} ms (p10 {row['prefill_ms_p10']:.1f}, "
                  f"p90 {row['prefill_ms_p90']:.1f}), LLM {llm_med:7.1f} ms, speedup {row['speedup']:.2f}x, "
                  f"ceiling {row['ceiling_measured']:.2f}x measured / {row['ceiling_flops']:.2f}x FLOPs", flush=True)
    if rows and math.isnan(rows[0]["speedup"]):
        print("[hf-prefill] note: put 1.0 first in --ratios to get speedups and measured ceilings", flush=True)

    split = prefill_split(arch, grid, args.text_tokens, text_before=text_before)
    out_dir = Path(args.out_dir or (".cache/hf-gpu-prefill-tiny" if args.tiny else REPO / "benchmarks" / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "hf_gpu_prefill_" + ("tiny_cpu" if args.tiny else _slug(device_name))
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    sh = split.shares()
    unit, scale = ("GF", 1e9) if args.tiny else ("TF", 1e12)
    lines = [
        f"# HF transformers prefill with VisionSelector pruning: {device_name}",
        "",
        f"{_dt.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}"
        + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else "")
        + f", transformers {transformers.__version__}, Python {platform.python_version()}.",
        "",
        f"- Model: {'tiny test config' if args.tiny else 'Qwen2.5-VL-7B architecture'}, random {row['dtype']} "
        f"weights, attention `{args.attn}`; scorer random (std 0.02), method `{args.method}`.",
        f"- Input: one {width}x{height} image (patch grid {grid[1]}x{grid[2]}, N = {n} visual tokens) and "
        f"{args.text_tokens} text tokens ({text_before} before the image).",
        f"- FLOP split: vision {split.vision / scale:.2f} {unit} ({sh['vision']:.1%}), LLM on visual "
        f"{split.llm_visual / scale:.2f} {unit} ({sh['llm_visual']:.1%}), LLM on text "
        f"{split.llm_text / scale:.2f} {unit} ({sh['llm_text']:.1%}).",
        f"- Timing: {args.warmup} warm-up + {args.repeats} timed runs each, "
        f"{'CUDA events' if device.type == 'cuda' else 'perf_counter'}; prefill = prepare() (embeddings, ViT, "
        "scorer, top-K, gather, M-RoPE positions) + LLM + LM head on the last token. ViT alone "
        f"{statistics.median(vit):.1f} ms; plain `model(...)` forward without the plugin "
        f"{statistics.median(plain):.1f} ms.",
        "",
        "| ratio | K | prompt tokens | prefill p50 ms [p10–p90] | LLM ms | select + rest ms | speedup | "
        "ceiling (measured parts) | ceiling (FLOPs) | achieved / ceiling |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['ratio']:g} | {r['K']} | {r['prompt_tokens']} | {r['prefill_ms_p50']:.1f} "
            f"[{r['prefill_ms_p10']:.1f}–{r['prefill_ms_p90']:.1f}] | {r['llm_ms_p50']:.1f} | "
            f"{r['select_and_rest_ms']:.1f} | {r['speedup']:.2f}× | {r['ceiling_measured']:.2f}× | "
            f"{r['ceiling_flops']:.2f}× | {r['achieved_over_ceiling']:.0%} |")
    lines += ["", "Command: `" + " ".join(["python benchmarks/prefill/hf_gpu_prefill.py", *sys.argv[1:]]) + "`", ""]
    (out_dir / f"{stem}.md").write_text("\n".join(lines))
    print(f"[hf-prefill] wrote {out_dir / stem}.csv and .md", flush=True)
    return out_dir / f"{stem}.md"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny config on the CPU (smoke test of the same code path)")
    p.add_argument("--size", default=None, help="image WxH (default: 1280x720; --tiny: 448x252)")
    p.add_argument("--text-tokens", type=int, default=60, help="text tokens around the image (default: %(default)s)")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="retention ratios, 1.0 first "
                   "(default: %(default)s)")
    p.add_argument("--method", default="visionselector", help="selection method (default: %(default)s)")
    p.add_argument("--attn", default="sdpa", help="transformers attention implementation (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: 3; --tiny: 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default: 10; --tiny: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads with --tiny (default: %(default)s)")
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
