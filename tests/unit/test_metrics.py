"""Prometheus counters for visual tokens (default registry, read back through prometheus_client)."""

from __future__ import annotations

import importlib

from prometheus_client import REGISTRY, generate_latest

from vs_vllm.vllm_plugin import metrics
from vs_vllm.vllm_plugin.request_stats import collecting, record_visual_tokens

SERIES = (
    "vs_vllm:visual_tokens_kept_total",
    "vs_vllm:visual_tokens_total",
    "vs_vllm:images_total",
    "vs_vllm:images_pruned_total",
    "vs_vllm:videos_total",
    "vs_vllm:videos_pruned_total",
)


def snapshot() -> dict[str, float]:
    values = {name: REGISTRY.get_sample_value(name) for name in SERIES}
    assert all(v is not None for v in values.values()), values
    return values


def delta(before: dict[str, float]) -> tuple[float, ...]:
    after = snapshot()
    return tuple(after[name] - before[name] for name in SERIES)


def test_observe_increments_counters() -> None:
    before = snapshot()
    metrics.observe_visual_tokens(30, 120)
    assert delta(before) == (30, 120, 1, 1, 0, 0)
    before = snapshot()
    metrics.observe_visual_tokens(64, 64)  # ratio 1.0: counted, not pruned
    assert delta(before) == (64, 64, 1, 0, 0, 0)
    before = snapshot()
    metrics.observe_visual_tokens(90, 360, "video")
    assert delta(before) == (90, 360, 0, 0, 1, 1)


def test_record_visual_tokens_feeds_the_counters_for_requests_only() -> None:
    before = snapshot()
    record_visual_tokens(5, 20)  # outside a request (start-up warm-up, offline LLM): not counted
    assert delta(before) == (0, 0, 0, 0, 0, 0)
    with collecting() as stats:
        record_visual_tokens(7, 10)
        record_visual_tokens(40, 40, "video")
    assert (stats.kept, stats.total, stats.images, stats.videos) == (47, 50, 1, 1)
    assert delta(before) == (47, 50, 1, 1, 1, 0)


def test_unknown_modality_is_a_value_error_naming_it() -> None:
    import pytest

    with pytest.raises(ValueError, match="'audio'"):
        record_visual_tokens(1, 2, "audio")


def test_reimport_reuses_the_registered_counters() -> None:
    kept = metrics.VISUAL_TOKENS_KEPT
    importlib.reload(metrics)  # would raise "Duplicated timeseries" without the guard
    assert metrics.VISUAL_TOKENS_KEPT is kept
    before = snapshot()
    metrics.observe_visual_tokens(1, 2)
    assert delta(before) == (1, 2, 1, 1, 0, 0)


def test_exposed_names() -> None:
    text = generate_latest(REGISTRY).decode()
    for name in SERIES:
        assert f"# TYPE {name.removesuffix('_total')} counter" in text or f"# TYPE {name} counter" in text, name
        assert f"\n{name} " in text, name
