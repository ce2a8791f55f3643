"""Smoke test of the decode benchmark (`vs-vllm bench decode --quick`): the CLI's configuration, the per-session
warm-up and timed runs, the CSVs, the markdown and --report-only, against the session's tiny stock and plugin servers
(the real benchmark starts and stops one server per session; here the running ones are borrowed, so the test adds
seconds, not two server start-ups). Plus the pure parts (ABBA order, ratios, goal verdicts) without a server."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

OUTPUT_TOKENS = 8
REQUESTS = 4


class _Borrowed:
    """A running session server seen through the VLLMServer interface the benchmark uses; start/stop do nothing."""

    def __init__(self, server) -> None:
        self.server = server
        self.base_url = server.base_url
        self.log_path = server.log_path
        self.starts = 0

    def argv(self) -> list[str]:
        return self.server.argv()

    def model_runner(self) -> str:
        return self.server.model_runner()

    def start(self):
        self.starts += 1
        return self

    def stop(self) -> None:
        pass


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.runner_matrix
def test_bench_decode_quick_against_tiny_servers(vllm_server, plugin_server, tiny_model_dir: Path,
                                                 scorer_file: Path, tmp_path: Path, vllm_runner) -> None:
    from vs_vllm.benchmarking import decode

    parser = argparse.ArgumentParser()
    decode.add_arguments(parser)
    argv = ["--quick", "--workloads", "text,image-r1", "--output-tokens", str(OUTPUT_TOKENS), "--requests",
            str(REQUESTS), "--warmup-requests", "1", "--model-dir", str(tiny_model_dir), "--scorer", str(scorer_file),
            "--out-dir", str(tmp_path)]
    cfg, model_dir, out, scorer = decode.config_from_args(parser.parse_args(argv))
    assert (cfg.model_kind, cfg.repeats, cfg.eager, cfg.served_model_name) == ("tiny", 1, True, "tiny")
    assert out == tmp_path and scorer == scorer_file and cfg.stem == "decode_cpu_tiny"
    assert "--kv-cache-memory-bytes" in cfg.server_args()  # a vLLM CPU server always gets a KV-cache size

    borrowed = {"stock": _Borrowed(vllm_server), "plugin": _Borrowed(plugin_server)}
    made = []

    def factory(cfg_, model_dir_, scorer_, log_dir):
        made.append(log_dir.name)
        return borrowed

    md = decode.run_benchmark(cfg, model_dir, out, "vs-vllm bench decode " + " ".join(argv), scorer=scorer,
                              log=lambda *_: None, server_factory=factory)
    assert made == ["00_stock", "01_plugin"]  # one server per session, stock first in repeat 0
    assert borrowed["stock"].starts == borrowed["plugin"].starts == 1

    runs = _rows(tmp_path / "decode_cpu_tiny.csv")
    for col in ("run_id", "repeat", "session", "server", "workload", "requests", "ok", "failed", "output_tokens",
                "wrong_length", "tokens_per_chunk", "itl_p50_ms", "itl_p99_ms", "tpot_p50_ms", "ttft_p50_ms",
                "srv_itl_ms", "itl_burst_share", "loadavg_1m"):
        assert col in runs[0], col
    assert [(r["server"], r["workload"]) for r in runs] == [
        ("stock", "text"), ("stock", "image-r1"), ("plugin", "text"), ("plugin", "image-r1")]
    for r in runs:
        assert int(r["requests"]) == int(r["ok"]) == REQUESTS and int(r["failed"]) == 0, r
        assert float(r["output_tokens"]) == OUTPUT_TOKENS and int(r["wrong_length"]) == 0, r
        # One chunk per token, unless a starved API server merged outputs (the tok/chunk column shows it).
        assert 1.0 <= float(r["tokens_per_chunk"]) <= OUTPUT_TOKENS
        assert 0 < int(r["itl_n"]) <= REQUESTS * (OUTPUT_TOKENS - 1)
        assert 0 <= float(r["itl_p50_ms"]) <= float(r["itl_p99_ms"]) and float(r["itl_p99_ms"]) > 0
        assert float(r["itl_mean_ms"]) > 0 and float(r["tpot_mean_ms"]) > 0 and float(r["ttft_p50_ms"]) > 0
        assert float(r["srv_itl_ms"]) > 0  # the server's own ITL histogram moved during the run
    image = {r["server"]: r for r in runs if r["workload"] == "image-r1"}
    assert int(image["plugin"]["visual_kept"]) == int(image["stock"]["visual_kept"]) == 64  # ratio 1.0 keeps all
    assert image["plugin"]["prompt_tokens"] == image["stock"]["prompt_tokens"]

    requests = _rows(tmp_path / "decode_cpu_tiny_requests.csv")
    assert len(requests) == 4 * REQUESTS
    assert all(int(q["ok"]) == 1 and int(q["output_tokens"]) == OUTPUT_TOKENS
               and 1 <= int(q["token_chunks"]) <= OUTPUT_TOKENS and float(q["tpot_ms"]) > 0 for q in requests)
    for r in runs:  # every gap of a run is between two token chunks of one of its requests
        chunks = [int(q["token_chunks"]) for q in requests if q["run_id"] == r["run_id"]]
        assert int(r["itl_n"]) == sum(c - 1 for c in chunks)

    text = md.read_text()
    assert md == tmp_path / "decode_cpu_tiny.md"
    for needle in ("## Goals", "text-only ITL p50", "ratio-1.0 image TTFT p50", "## Results",
                   "| text-only | stock |", "| image, ratio 1.0 | plugin |", "### Plugin / stock", "QUICK MODE",
                   "--kv-cache-memory-bytes"):
        assert needle in text, needle
    # The report says which model runner served (read from the servers' logs): the session's, on both.
    from vs_vllm.benchmarking.report import RUNNER_NAMES

    assert f"- vLLM model runner: {RUNNER_NAMES[vllm_runner]}, every server." in text
    assert (tmp_path / "decode_cpu_tiny_meta.json").exists()
    # --report-only re-renders the same report from the files.
    md.unlink()
    assert decode.main(["--report-only", str(tmp_path)]) == 0
    assert md.read_text() == text


def test_decode_order_ratios_and_goals(tmp_path: Path) -> None:
    """No server: ABBA order, workload parsing, the summary's ratios and spreads, goal verdicts, the report."""
    from vs_vllm.benchmarking import decode

    assert decode.session_order(3) == [(0, "stock"), (0, "plugin"), (1, "plugin"), (1, "stock"), (2, "stock"),
                                       (2, "plugin")]
    assert decode.Workload("image-r0.3").ratio == 0.3 and not decode.Workload("text").is_image
    for bad in ("video", "image-r0", "image-r2"):
        with pytest.raises(ValueError):
            decode.Workload(bad)

    def row(rep, server, workload, itl, ttft):
        return {"run_id": 0, "repeat": rep, "session": 0, "server": server, "workload": workload, "requests": 4,
                "ok": 4, "failed": 0, "wrong_length": 0, "prompt_tokens": 70, "visual_kept": 0,
                "itl_p50_ms": itl, "itl_p99_ms": itl * 2, "tpot_p50_ms": itl, "ttft_p50_ms": ttft,
                "srv_itl_ms": itl, "tokens_per_chunk": 1.0, "itl_burst_share": 0.0, "output_tok_per_s": 100.0,
                "loadavg_1m": 1.0}

    runs = []
    for rep, (s_itl, p_itl) in enumerate([(4.0, 4.2), (4.4, 4.4), (4.2, 4.5)]):
        runs += [row(rep, "stock", "text", s_itl, 100.0), row(rep, "plugin", "text", p_itl, 100.5)]
        runs += [row(rep, "stock", "image-r1", 5.0, 200.0), row(rep, "plugin", "image-r1", 5.0, 199.0)]
    summary = decode.DecodeSummary(runs)
    assert summary.cell("text", "stock", "itl_p50_ms") == (4.2, 4.0, 4.4)
    ratio, lo, hi = summary.ratio("text", "itl_p50_ms")
    assert ratio == pytest.approx(4.4 / 4.2) and lo == pytest.approx(1.0) and hi == pytest.approx(4.5 / 4.2)
    goals = {g["goal"]: g for g in decode.goal_rows(summary)}
    # The stock server's own sessions differ by (4.4 - 4.0) / 4.2 = 9.5% on text ITL (the plugin's by 0.3 / 4.4):
    # +4.8% is not resolved.
    assert summary.session_spread("text", "itl_p50_ms") == pytest.approx(0.4 / 4.2)
    text_itl = goals["text-only ITL p50"]
    assert not text_itl["met"] and text_itl["verdict"].startswith("not resolved: +4.8% vs stock, within the 9.5%")
    assert goals["text-only TTFT p50"]["met"] and goals["ratio-1.0 image TTFT p50"]["met"]
    meta = {"stem": "decode_cpu", "config": vars(decode.DecodeConfig()) | {"image_size": [224, 224]},
            "machine": {"cpus_available": 2, "loadavg_start": [0.5, 0.5, 0.5]}, "sessions": []}
    text = decode.render_markdown(runs, meta)
    assert "| text-only ITL p50 | 1.048 [1.000–1.071] | not resolved" in text
    assert "One server's own sessions (max − min over repeats, relative to the median; the larger" in text

    # Sessions that agree with each other resolve the same +4.8%: not met.
    tight = [dict(r, itl_p50_ms=4.2) if r["server"] == "stock" and r["workload"] == "text" else r for r in runs]
    tight = [dict(r, itl_p50_ms=4.4) if r["server"] == "plugin" and r["workload"] == "text" else r for r in tight]
    goals = {g["goal"]: g for g in decode.goal_rows(decode.DecodeSummary(tight))}
    assert not goals["text-only ITL p50"]["met"]
    assert goals["text-only ITL p50"]["verdict"].startswith("NOT met: +4.8% vs stock")
