"""The prefill benchmark's pure parts: FLOP counter, ceilings, statistics, metrics parsing, report (no server)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vs_vllm.benchmarking.client import histogram_means, parse_metrics
from vs_vllm.benchmarking.flops import (
    QwenVLArch,
    amdahl_ceiling,
    flop_ceiling,
    image_grid,
    llm_flops,
    prefill_split,
    smart_resize,
    vision_flops,
    window_sizes,
)
from vs_vllm.benchmarking.model import BENCH_SIZES, IMAGE_SIZES, MAIN_IMAGE, TEXT_BEFORE, TEXT_TOKENS, bench_arch
from vs_vllm.benchmarking.stats import percentile, summarize

REPO = Path(__file__).resolve().parents[2]


def _small_arch(**kw) -> QwenVLArch:
    base = dict(text_hidden=4, text_layers=1, text_heads=2, text_kv_heads=1, text_intermediate=8, vocab_size=10,
                vision_depth=2, vision_hidden=2, vision_heads=1, vision_intermediate=3, fullatt_block_indexes=(1,),
                window_size=56)
    base.update(kw)
    return QwenVLArch(**base)


# ---------------------------------------------------------------------------------------------------------- LLM


def test_llm_flops_hand_computed() -> None:
    a = _small_arch()  # head_dim 2, q width 4, kv width 2
    # per token, 2 * (q 4*4 + k,v 2*4*2 + o 4*4 + SwiGLU 3*4*8) = 2 * 144 = 288
    assert llm_flops(a, 0, 0, 0)["per_token_linear"] == 288
    out = llm_flops(a, 0, 0, 3)
    # 3 tokens: linear 864; attention: keys 1 + 2 + 3 = 6, 4 FLOPs * q width 4 per key -> 96; LM head 2*4*10 = 80
    assert out["text"] == 864 + 96 + 80
    assert out["visual"] == 0
    assert out["attention"] == 96


def test_llm_attention_is_charged_to_the_query_token() -> None:
    a = _small_arch()
    out = llm_flops(a, 1, 2, 0)  # [text, visual, visual]: the visual queries see 2 and 3 keys
    assert out["visual"] == 2 * 288 + 16 * (2 + 3)
    assert out["text"] == 288 + 16 * 1 + 80
    assert out["total"] == llm_flops(a, 0, 0, 3)["total"]  # same length, same cost whatever the token kinds


def test_llm_flops_reject_negative_counts() -> None:
    with pytest.raises(ValueError):
        llm_flops(_small_arch(), -1, 2, 0)


# ------------------------------------------------------------------------------------------------------- vision


def test_window_sizes_partial_edges() -> None:
    a = _small_arch(window_size=112)  # 112 px = 4 merged units = 8 patches per side
    # patch grid 6x10 -> merged 3x5 -> one row of windows, columns of 4 and 1 merged units
    assert window_sizes(a, (1, 6, 10)) == [3 * 4 * 4, 3 * 1 * 4]
    assert sum(window_sizes(a, (1, 52, 92))) == 52 * 92
    with pytest.raises(ValueError):
        window_sizes(a, (1, 5, 10))


def test_vision_flops_hand_computed() -> None:
    a = _small_arch()  # windows of 56 px = 2 merged units = 4 patches per side
    grid = (1, 4, 8)  # 32 patches; merged 2x4 -> two windows of 16 patches
    out = vision_flops(a, grid)
    assert out["patch_embed"] == 2 * 32 * (3 * 2 * 14 * 14) * 2
    assert out["linear"] == 2 * 2 * 32 * (3 * 4 + 4 + 3 * 2 * 3)  # 2 blocks: qkv, proj, SwiGLU
    # block 0 windowed (2 windows of 16: 512), block 1 full (32^2 = 1024); 2 products x 2 FLOPs x hidden 2
    assert out["attention"] == 4 * 2 * (512 + 1024)
    assert out["merger"] == 2 * 8 * ((4 * 2) ** 2 + 4 * 2 * 4)
    assert out["total"] == out["patch_embed"] + out["linear"] + out["attention"] + out["merger"]


def test_smart_resize_and_grid_like_qwen() -> None:
    assert smart_resize(720, 1280, max_pixels=10**9) == (728, 1288)
    assert smart_resize(1080, 1920, max_pixels=10**9) == (1092, 1932)
    h, w = smart_resize(720, 1280, max_pixels=28 * 28 * 512)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 28 * 28 * 512
    assert image_grid(QwenVLArch.qwen2_5_vl_7b(), 1280, 720, max_pixels=10**9) == (1, 52, 92)


@pytest.mark.parametrize(
    ("size", "tokens", "vision_tf", "llm_visual_tf", "ceilings"),
    [((1280, 720), 1196, 6.66, 15.9, (1.92, 2.21, 2.59)), ((1920, 1080), 2691, 16.3, 36.6, (1.93, 2.22, 2.60))],
)
def test_reproduces_the_7b_anchor_numbers(size, tokens, vision_tf, llm_visual_tf, ceilings) -> None:
    """anchors.md §6: Qwen2.5-VL-7B, 60 text tokens."""
    a = QwenVLArch.qwen2_5_vl_7b()
    grid = image_grid(a, *size, max_pixels=10**9)
    s = prefill_split(a, grid, 60)
    assert s.visual_tokens == tokens
    assert s.vision / 1e12 == pytest.approx(vision_tf, rel=0.01)
    assert s.llm_visual / 1e12 == pytest.approx(llm_visual_tf, rel=0.01)
    assert s.llm_text / 1e12 == pytest.approx(0.79, rel=0.02)
    got = [flop_ceiling(a, grid, 60, int(tokens * r)) for r in (0.3, 0.2, 0.1)]
    assert got == pytest.approx(ceilings, abs=0.02)
    assert flop_ceiling(a, grid, 60, tokens) == 1.0


def test_arch_from_hf_config_dict_matches_sizes() -> None:
    config = {
        "text_config": {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
                        "intermediate_size": 2816, "vocab_size": 768},
        "vision_config": {"depth": 8, "hidden_size": 160, "num_heads": 2, "intermediate_size": 432,
                          "fullatt_block_indexes": [7], "window_size": 112},
    }
    assert QwenVLArch.from_hf_config(config) == bench_arch()


# ----------------------------------------------------------------------------------------- the benchmark's model


def test_bench_model_proportions() -> None:
    """At the main image the ViT is 20-35% of prefill FLOPs (7B at 720p: 28.5%) and the LLM dominates."""
    a = bench_arch()
    grid = image_grid(a, *MAIN_IMAGE, BENCH_SIZES["min_pixels"], BENCH_SIZES["max_pixels"])
    s = prefill_split(a, grid, TEXT_TOKENS, text_before=TEXT_BEFORE)
    assert 300 <= s.visual_tokens <= 1000
    shares = s.shares()
    assert 0.20 <= shares["vision"] <= 0.35
    assert shares["llm_visual"] > 0.5
    # Every benchmark image is kept as it is (no resize by max_pixels) and fits the served context.
    for w, h in IMAGE_SIZES:
        t, gh, gw = image_grid(a, w, h, BENCH_SIZES["min_pixels"], BENCH_SIZES["max_pixels"])
        assert (gh * 14, gw * 14) == (h, w)
        assert gh * gw // 4 + TEXT_TOKENS < 2048


def test_bench_model_fits_vllm_cpu() -> None:
    head_dim = BENCH_SIZES["text_hidden"] // BENCH_SIZES["text_heads"]
    assert head_dim in (32, 64, 80, 96, 112, 128)
    assert sum(BENCH_SIZES["mrope_section"]) * 2 == head_dim
    assert BENCH_SIZES["text_heads"] % BENCH_SIZES["text_kv_heads"] == 0


# --------------------------------------------------------------------------------------------------- ceilings


def test_amdahl_ceiling_formula() -> None:
    # T_enc 1, T_llm 3, N 100, K 10, no text: 4 / (1 + 3 * 0.1)
    assert amdahl_ceiling(1.0, 3.0, 100, 10, 0) == pytest.approx(4 / 1.3)
    # with text: (K + text) / (N + text) = 20 / 110
    assert amdahl_ceiling(1.0, 3.0, 100, 10, 10) == pytest.approx(4 / (1 + 3 * 20 / 110))
    # a fixed overhead both sides pay
    assert amdahl_ceiling(1.0, 3.0, 100, 10, 0, overhead=1.0) == pytest.approx(5 / 2.3)
    # an explicit full TTFT
    assert amdahl_ceiling(1.0, 3.0, 100, 10, 0, t_full=5.2) == pytest.approx(5.2 / 1.3)
    assert amdahl_ceiling(1.0, 3.0, 100, 100, 7) == 1.0
    # no LLM: nothing to gain; no encoder: the token ratio
    assert amdahl_ceiling(2.0, 0.0, 100, 10, 0) == 1.0
    assert amdahl_ceiling(0.0, 2.0, 100, 10, 0) == pytest.approx(10.0)


@pytest.mark.parametrize("bad", [dict(keep=101), dict(keep=-1), dict(visual_tokens=0, keep=0), dict(text_tokens=-1)])
def test_amdahl_ceiling_rejects_bad_counts(bad) -> None:
    args = dict(t_enc=1.0, t_llm=1.0, visual_tokens=100, keep=10, text_tokens=0) | bad
    with pytest.raises(ValueError):
        amdahl_ceiling(**args)


# ------------------------------------------------------------------------------------------------- statistics


def test_percentiles_match_numpy_linear() -> None:
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 10) == pytest.approx(1.3)
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile([7.0], 90) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_summarize() -> None:
    s = summarize([1, 2, 3, 4, float("nan"), None])
    assert s["n"] == 4 and s["mean"] == 2.5 and s["p50"] == 2.5 and s["min"] == 1 and s["max"] == 4
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["p50"])


# ------------------------------------------------------------------------------------------- metrics scraping


_METRICS_BEFORE = """\
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="bench"} 0.0
vllm:request_prefill_time_seconds_sum{engine="0",model_name="bench"} 10.0
vllm:request_prefill_time_seconds_count{engine="0",model_name="bench"} 20.0
vllm:request_prefill_time_seconds_bucket{engine="0",le="0.3",model_name="bench"} 5.0
"""
_METRICS_AFTER = """\
vllm:kv_cache_usage_perc{engine="0",model_name="bench"} 0.125
vllm:request_prefill_time_seconds_sum{engine="0",model_name="bench"} 12.0
vllm:request_prefill_time_seconds_count{engine="0",model_name="bench"} 24.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="bench"} 1.0
vllm:request_queue_time_seconds_count{engine="0",model_name="bench"} 0.0
"""


def test_parse_metrics_and_histogram_means() -> None:
    before, after = parse_metrics(_METRICS_BEFORE), parse_metrics(_METRICS_AFTER)
    assert before["vllm:kv_cache_usage_perc"] == [0.0]
    assert after["vllm:kv_cache_usage_perc"] == [0.125]
    means = histogram_means(before, after)
    assert means == {"srv_prefill": pytest.approx(0.5)}  # 2 s over 4 requests; queue had no new observation


# ------------------------------------------------------------------------------------------------------ report


def _synthetic_rows():
    runs, requests = [], []
    rid = 0
    for conc in (1, 4):
        for config, k, ttft in (("stock", 576, 1000.0), ("r=1", 576, 1010.0), ("r=0.1", 57, 500.0)):
            for rep in range(2):
                runs.append({
                    "run_id": rid, "repeat": rep, "config": config, "server": "stock" if config == "stock" else
                    "plugin", "image": "896x504", "visual_tokens": 576, "visual_kept": k, "concurrency": conc,
                    "requests": 3, "ok": 3, "failed": 0, "prompt_tokens": k + 62, "ttft_p50_ms": ttft * conc,
                    "ttft_mean_ms": ttft * conc, "req_per_s": 1000 / ttft, "kv_usage_max": 0.0,
                    "kv_mib_per_request": (k + 62) * 6 / 1024, "srv_queue_ms": 0.0, "srv_prefill_ms": ttft * 0.9,
                    "srv_ttft_ms": ttft, "loadavg_1m": 1.0,
                })
                for i in range(3):
                    requests.append({"run_id": rid, "ok": 1, "ttft_ms": ttft * conc * (0.95 + 0.05 * i)})
                rid += 1
    return runs, requests


def test_report_from_synthetic_rows(tmp_path) -> None:
    from dataclasses import asdict

    from vs_vllm.benchmarking.report import Summary, ceilings, write_report

    runs, requests = _synthetic_rows()
    summary = Summary(runs, requests)
    assert summary.configs == ["stock", "r=1", "r=0.1"]
    assert summary.speedup("896x504", 1, "r=0.1") == pytest.approx(2.0)
    comp = {"image": "896x504", "visual_tokens": 576, "text_tokens": 62, "t_proc": 0.03, "t_enc": 0.3,
            "t_llm": 0.6, "t_llm_at": {"57": 0.1}, "threads": 1, "repeats": 3}
    c = ceilings(comp, 57, summary.get("896x504", 1, "stock"))
    assert c["hf"] == pytest.approx(amdahl_ceiling(0.3, 0.6, 576, 57, 62))
    assert 1.0 < c["overhead"] < c["hf"]  # the fixed 10% of TTFT outside the engine lowers the bound
    meta = {
        "machine": {"cpu": "test CPU", "logical_cpus": 2, "cpus_available": 2, "mem_gib": 1, "os": "x",
                    "python": "3", "simd_flags": "avx2", "loadavg_start": [0, 0, 0]},
        "versions": {"vllm": "0"}, "config": {"ratios": [1.0, 0.1], "method": "visionselector",
                                              "concurrencies": [1, 4], "repeats": 2, "min_requests": 3,
                                              "requests_per_slot": 3, "image_format": "JPEG", "together": True,
                                              "dtype": "float32", "eager": True, "quick": True},
        "arch": asdict(bench_arch()), "model_config": dict(BENCH_SIZES), "kv_bytes_per_token": 6144,
        "components": [comp], "command": "vs-vllm bench prefill --quick", "server_commands": {"stock": "vllm serve"},
    }
    path = write_report(tmp_path, runs, requests, meta)
    text = path.read_text()
    for needle in ("896x504, concurrency 1", "ceiling (HF parts)", "r=0.1", "2.00×", "Where the time goes",
                   "29.7%", "vs-vllm bench prefill --quick"):
        assert needle in text, needle
    assert (tmp_path / "prefill_cpu_ttft.png").stat().st_size > 1000
    assert (tmp_path / "prefill_cpu_throughput.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------- video workload


def test_video_grid_pairs_frames_and_pads_an_odd_count() -> None:
    from vs_vllm.benchmarking.flops import video_grid

    a = bench_arch()
    lo, hi = BENCH_SIZES["min_pixels"], BENCH_SIZES["max_pixels"]
    assert video_grid(a, 224, 224, 16, lo, hi) == (8, 16, 16)
    assert video_grid(a, 224, 224, 15, lo, hi) == (8, 16, 16)  # the last frame is repeated to fill the patch
    assert video_grid(a, 224, 224, 1, lo, hi) == (1, 16, 16)
    assert video_grid(a, 448, 252, 32, lo, hi) == (16, *image_grid(a, 448, 252, lo, hi)[1:])
    with pytest.raises(ValueError):
        video_grid(a, 224, 224, 0)


def test_video_grid_matches_the_hf_video_processor() -> None:
    """The FLOP model's grid is the one transformers' Qwen2-VL video processor produces (frames not sampled)."""
    import numpy as np
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from vs_vllm.benchmarking.flops import video_grid

    a = bench_arch()
    lo, hi = BENCH_SIZES["min_pixels"], BENCH_SIZES["max_pixels"]
    proc = Qwen2VLVideoProcessor(size={"shortest_edge": lo, "longest_edge": hi})
    for w, h, f in ((224, 224, 4), (130, 100, 5), (300, 170, 2)):
        frames = np.zeros((f, h, w, 3), dtype=np.uint8)
        out = proc(videos=[frames], do_sample_frames=False, return_tensors="pt")
        assert tuple(out["video_grid_thw"][0].tolist()) == video_grid(a, w, h, f, lo, hi), (w, h, f)


def test_video_vision_flops_scale_with_temporal_patches_and_llm_tokens_count_like_image_tokens() -> None:
    from vs_vllm.benchmarking.flops import Media

    a = bench_arch()
    one = vision_flops(a, (1, 16, 16))
    eight = vision_flops(a, (8, 16, 16))
    for part in ("patch_embed", "linear", "attention", "merger", "total"):
        assert eight[part] == pytest.approx(8 * one[part])  # no attention group spans two temporal slices
    m = Media(224, 224, 16)
    grid = m.grid(a, BENCH_SIZES["min_pixels"], BENCH_SIZES["max_pixels"])
    s = prefill_split(a, grid, TEXT_TOKENS, text_before=TEXT_BEFORE)
    assert s.visual_tokens == m.tokens(a, BENCH_SIZES["min_pixels"], BENCH_SIZES["max_pixels"]) == 512
    # In the LLM a video token costs what an image token costs: same totals as an image prompt of as many tokens.
    assert s.llm_visual + s.llm_text == pytest.approx(
        sum(llm_flops(a, TEXT_BEFORE, 512, TEXT_TOKENS - TEXT_BEFORE)[k] for k in ("visual", "text")))
    # Pruning leaves the ViT term alone, so the ceiling stays below the pure token ratio.
    pruned = prefill_split(a, grid, TEXT_TOKENS, keep=51, text_before=TEXT_BEFORE)
    assert pruned.vision == s.vision
    assert 1.0 < s.total / pruned.total < (512 + TEXT_TOKENS) / (51 + TEXT_TOKENS)


def test_media_labels_round_trip() -> None:
    from vs_vllm.benchmarking.flops import Media

    for m in (Media(896, 504), Media(224, 224, 16), Media(84, 140, 3)):
        assert Media.parse(m.label) == m
    assert Media(224, 224, 16).label == "16f@224x224" and Media(224, 224, 16).kind == "video"
    assert Media(896, 504).label == "896x504" and Media(896, 504).kind == "image"
    for bad in ("16f@224", "x@224x224", "224", "ff@1x1"):
        with pytest.raises(ValueError):
            Media.parse(bad)


def _video_args(*argv: str):
    import argparse

    from vs_vllm.benchmarking.prefill import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--workload", "video", *argv])


def test_video_workload_arguments() -> None:
    from vs_vllm.benchmarking.prefill import config_from_args

    cfg, out = config_from_args(_video_args())
    assert [m.label for m in cfg.media()] == ["16f@224x224"]
    assert cfg.ratios == [1.0, 0.3, 0.1] and cfg.concurrencies == [1, 4] and cfg.repeats == 3
    assert cfg.stem == "prefill_video_cpu" and out == Path("benchmarks/results")
    args = cfg.server_args()
    assert args[args.index("--limit-mm-per-prompt") + 1] == '{"image": 0, "video": 1}'
    cfg, out = config_from_args(_video_args("--quick"))
    assert [m.label for m in cfg.media()] == ["8f@224x224"] and cfg.eager and cfg.quick
    assert out == Path(".cache/bench-prefill-quick")
    cfg, out = config_from_args(_video_args("--quick", "--out-dir", str(REPO / "benchmarks" / "results")))
    assert out.name == "quick"  # a smoke run never lands on the committed results
    cfg, _ = config_from_args(_video_args("--video-frames", "16,64", "--video-size", "224x224,112x84",
                                          "--video-ratio-field", "retention_ratio"))
    assert [m.label for m in cfg.media()] == ["16f@224x224", "64f@224x224", "16f@112x84", "64f@112x84"]
    assert cfg.max_model_len >= 2048 // 4 * 4 + TEXT_TOKENS  # 64 frames: 2048 visual tokens plus the text
    assert cfg.max_num_batched_tokens == cfg.max_model_len and cfg.video_ratio_field == "retention_ratio"
    with pytest.raises(ValueError):
        config_from_args(_video_args("--sizes", "896x504"))
    with pytest.raises(ValueError):
        config_from_args(_video_args("--video-frames", "0"))


def test_video_payloads_are_fresh_and_carry_the_video_ratio() -> None:
    import base64

    from vs_vllm.benchmarking.flops import Media
    from vs_vllm.benchmarking.prefill import PayloadFactory, Slot, config_from_args

    cfg, _ = config_from_args(_video_args())
    factory = PayloadFactory(cfg)
    media = Media(28, 28, 3)
    plugin = factory.make(2, media, Slot("plugin", 0.3))
    stock = factory.make(1, media, Slot("stock", None))
    urls = []
    for p in plugin + stock:
        part = p["messages"][0]["content"][0]
        assert part["type"] == "video_url"
        url = part["video_url"]["url"]
        assert url.startswith("data:video/jpeg;base64,")
        frames = url.split(",", 1)[1].split(",")
        assert len(frames) == 3 and all(base64.b64decode(f)[:2] == b"\xff\xd8" for f in frames)  # JPEG SOI
        urls.append(url)
        assert p["max_tokens"] == 1 and p["stream"] and p["ignore_eos"]
    assert len(set(urls)) == 3  # a fresh video per request
    assert plugin[0]["video_retention_ratio"] == 0.3 and "retention_ratio" not in plugin[0]
    assert "video_retention_ratio" not in stock[0] and "selection_method" not in stock[0]


def test_video_report_from_synthetic_rows(tmp_path) -> None:
    from dataclasses import asdict

    from vs_vllm.benchmarking.report import Summary, flop_ceiling_at, write_report

    runs, requests = _synthetic_rows()
    for r in runs:  # the same numbers, as a 16-frame video of 512 tokens
        r["video"] = "16f@224x224"
        del r["image"]
        r["visual_tokens"] = 512
        r["visual_kept"] = {"stock": 512, "r=1": 512}.get(r["config"], 51)
    summary = Summary(runs, requests)
    assert summary.images == ["16f@224x224"] and summary.kind == "video"
    comp = {"image": "16f@224x224", "visual_tokens": 512, "text_tokens": 62, "t_proc": 0.03, "t_enc": 0.3,
            "t_llm": 0.6, "t_llm_at": {"51": 0.1}, "threads": 1, "repeats": 3}
    meta = {
        "machine": {"cpu": "test CPU", "logical_cpus": 2, "cpus_available": 2, "mem_gib": 1, "os": "x",
                    "python": "3", "simd_flags": "avx2", "loadavg_start": [9.5, 0, 0]},
        "loadavg_end": [1.0, 1.0, 1.0],
        "versions": {"vllm": "0"}, "config": {"ratios": [1.0, 0.1], "method": "visionselector",
                                              "concurrencies": [1, 4], "repeats": 2, "min_requests": 3,
                                              "requests_per_slot": 3, "image_format": "JPEG", "together": True,
                                              "dtype": "float32", "eager": True, "quick": False,
                                              "video_ratio_field": "video_retention_ratio", "video_quality": 75},
        "arch": asdict(bench_arch()), "model_config": dict(BENCH_SIZES), "kv_bytes_per_token": 6144,
        "components": [comp], "command": "vs-vllm bench prefill --workload video",
        "server_commands": {"stock": "vllm serve"}, "workload": "video", "stem": "prefill_video_cpu",
        "payload_kib": {"16f@224x224": 123.4},
    }
    fc = flop_ceiling_at(meta, "16f@224x224", 51, 62)
    assert 1.0 < fc < (512 + 62) / (51 + 62)
    path = write_report(tmp_path, runs, requests, meta)
    assert path.name == "prefill_video_cpu.md"
    text = path.read_text()
    for needle in ("# Video prefill on CPU", "16f@224x224, concurrency 1", "8x16x16 → 512", "FLOP ceiling",
                   f"{fc:.2f}", f"{2.0 / fc:.0%}", "video_retention_ratio", "Qwen2.5-VL-7B on the same videos",
                   "get_video_features", "Loaded machine", "123.4 KiB"):
        assert needle in text, needle
    assert (tmp_path / "prefill_video_cpu_ttft.png").stat().st_size > 1000
    assert (tmp_path / "prefill_video_cpu_throughput.png").stat().st_size > 1000
