"""Smoke tests of the prefill benchmarks: the sweep's client loop against a real `vs-vllm serve` (image and video
workloads), and the GPU script's --tiny path on the CPU."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from vs_vllm.testing.scripts import load_script

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_sweep_client_loop_against_plugin_server(plugin_server, tiny_model_dir: Path) -> None:
    from vs_vllm.benchmarking.prefill import PayloadFactory, Slot, SweepConfig, run_sweep
    from vs_vllm.selection.budget import keep_count

    cfg = SweepConfig(
        image_sizes=[(224, 224)], ratios=[1.0, 0.25], concurrencies=[1, 2], repeats=1, min_requests=2,
        requests_per_slot=1, warmup_requests=1, served_model_name="tiny", switch_pause_s=0.0,
    )
    slots = [Slot("plugin", r) for r in cfg.ratios]
    runs, requests = run_sweep(cfg, tiny_model_dir, {"plugin": plugin_server}, slots, PayloadFactory(cfg),
                               log=lambda *_: None)

    assert len(runs) == len(slots) * len(cfg.concurrencies)
    assert len(requests) == sum(r["requests"] for r in runs)
    n = 64  # the tiny model caps a 224x224 image at 64 visual tokens
    by_key = {(r["config"], r["concurrency"]): r for r in runs}
    for (config, _conc), row in by_key.items():
        assert row["ok"] == row["requests"] == 2 and row["failed"] == 0, row
        assert row["visual_tokens"] == n
        assert row["visual_kept"] == (n if config == "r=1" else keep_count(n, 0.25))
        assert 0 < row["ttft_p50_ms"] <= row["ttft_max_ms"] <= row["latency_p50_ms"] * 10
        assert row["req_per_s"] > 0 and row["wall_s"] > 0
        assert row["kv_usage_max"] is not None and 0.0 <= row["kv_usage_max"] <= 1.0
        assert row["srv_prefill_ms"] > 0  # the server's own prefill histogram moved during the run
        assert row["kv_mib_per_request"] > 0
    # Pruning shortens the prompt by exactly N - K tokens.
    assert by_key[("r=1", 1)]["prompt_tokens"] - by_key[("r=0.25", 1)]["prompt_tokens"] == n - keep_count(n, 0.25)
    for q in requests:
        assert q["ok"] == 1 and q["ttft_ms"] > 0 and q["visual_total"] == n


def test_video_sweep_against_plugin_server(plugin_server, tiny_model_dir: Path) -> None:
    """The video workload: one fresh ``data:video/jpeg`` video per request, pruned through video_retention_ratio."""
    from vs_vllm.benchmarking.flops import Media
    from vs_vllm.benchmarking.prefill import PayloadFactory, Slot, SweepConfig, _visual_tokens, run_sweep
    from vs_vllm.selection.budget import keep_count

    cfg = SweepConfig(
        image_sizes=[], ratios=[1.0, 0.25], concurrencies=[2], repeats=1, min_requests=2, requests_per_slot=1,
        warmup_requests=1, served_model_name="tiny", switch_pause_s=0.0, workload="video", video_frames=[5],
        video_sizes=[(112, 84)],
    )
    assert [m.label for m in cfg.media()] == ["5f@112x84"]
    n = _visual_tokens(tiny_model_dir, Media(112, 84, 5))
    assert n == 3 * 6 * 8 // 4  # 5 frames -> 3 temporal patches of 6x8 patches, 2x2 merge
    slots = [Slot("plugin", r) for r in cfg.ratios]
    warnings: list[str] = []
    runs, requests = run_sweep(cfg, tiny_model_dir, {"plugin": plugin_server}, slots, PayloadFactory(cfg),
                               log=lambda msg: warnings.append(msg) if "WARNING" in msg else None)
    assert not warnings  # prompt lengths agree with the predicted N and the kept counts
    by_config = {r["config"]: r for r in runs}
    assert set(by_config) == {"r=1", "r=0.25"}
    for config, row in by_config.items():
        assert row["ok"] == row["requests"] == 2 and row["failed"] == 0, row
        assert row["video"] == "5f@112x84" and "image" not in row
        assert row["visual_tokens"] == n
        assert row["visual_kept"] == (n if config == "r=1" else keep_count(n, 0.25))
        assert row["ttft_p50_ms"] > 0 and row["req_per_s"] > 0 and row["srv_prefill_ms"] > 0
    # Pruning the video shortens the prompt by exactly N - K tokens.
    assert by_config["r=1"]["prompt_tokens"] - by_config["r=0.25"]["prompt_tokens"] == n - keep_count(n, 0.25)
    assert all(q["ok"] == 1 and q["video"] == "5f@112x84" for q in requests)


def _load_gpu_script():
    return load_script(REPO / "benchmarks" / "prefill" / "hf_gpu_prefill.py", "hf_gpu_prefill")


def test_hf_gpu_prefill_tiny_on_cpu(tmp_path: Path) -> None:
    script = _load_gpu_script()
    assert script.main(["--tiny", "--out-dir", str(tmp_path), "--ratios", "1.0,0.5,0.1", "--repeats", "1",
                        "--warmup", "0"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "hf_gpu_prefill_tiny_cpu.csv")))
    assert [float(r["ratio"]) for r in rows] == [1.0, 0.5, 0.1]
    assert [int(r["K"]) for r in rows] == [144, 72, 14]
    assert float(rows[0]["speedup"]) == 1.0
    for r in rows:
        assert float(r["prefill_ms_p50"]) > 0 and float(r["ceiling_flops"]) >= 1.0
        assert int(r["prompt_tokens"]) == int(r["K"]) + 60
    assert "tiny config" in (tmp_path / "hf_gpu_prefill_tiny_cpu.md").read_text()


def test_hf_gpu_prefill_without_cuda_fails_clearly(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    script = _load_gpu_script()
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        script.main(["--out-dir", str(tmp_path)])
