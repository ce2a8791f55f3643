"""``vs-vllm bench stress`` against the session's plugin server: a short seeded mix, every check of the full run."""

from __future__ import annotations

import pytest

from vs_vllm.benchmarking.stress import StressConfig, run_stress

pytestmark = pytest.mark.slow


def test_stress_mix_against_the_plugin_server(plugin_server, tiny_model_dir, scorer_file, tmp_path) -> None:
    cfg = StressConfig(requests=48, duration_s=120, concurrency=4, seed=3)
    summary = run_stress(cfg, tmp_path, model_dir=tiny_model_dir, scorer=scorer_file,
                         base_url=plugin_server.base_url, stem="stress_cpu", command="test", log=lambda *a: None)
    assert summary["requests"] == 48 and summary["client_errors"] == 0
    assert summary["status_5xx"] == 0 and summary["unexpected_status"] == 0, summary["by_kind_status"]
    assert summary["checked_visual_tokens"] > 20 and summary["wrong_visual_tokens"] == 0
    assert summary["health_end"] == 200
    kinds = {key.split()[0] for key in summary["by_kind_status"]}
    assert {"chat", "bad", "disconnect"} <= kinds
    text = (tmp_path / "stress_cpu.md").read_text()
    assert "| 5xx answers | 0 |" in text and (tmp_path / "stress_cpu.csv").exists()
