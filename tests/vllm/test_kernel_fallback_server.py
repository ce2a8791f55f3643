"""A Triton kernel that fails in a real ``vs-vllm serve`` is loud: one ERROR line with the cause in the server log,
the warm-up line says what compiled and what failed, and /metrics shows ``vs_vllm:kernel_fallbacks_total`` and
``vs_vllm_kernels_healthy`` 0 (counted in the engine's worker process, served by the API-server process).

The server runs the Triton path on the CPU through the interpreter (``TRITON_INTERPRET=1``), with the test hook
``VS_VLLM_INJECT_KERNEL_FAULT=select`` making the select kernel fail and strict mode off (the production behaviour);
the gather kernel keeps running on Triton.
"""

from __future__ import annotations

import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vs_vllm.kernels.dispatch import INJECT_FAULT_ENV, STRICT_ENV
from vs_vllm.selection.budget import keep_count
from vs_vllm.testing.client import chat_messages, openai_client
from vs_vllm.testing.images import noise_image
from vs_vllm.testing.server import VLLMServer, tiny_serve_args

pytestmark = pytest.mark.slow

SELECT = ("select", "cpu", "float32")
FAILURE_LINE = "vs-vllm: the Triton select kernel failed on cpu float32 (RuntimeError: fault injected by " \
               f"{INJECT_FAULT_ENV}=select (a test hook))"


@pytest.fixture(scope="module")
def faulty_server(tiny_model_dir, scorer_file, tmp_path_factory):
    args = ["--scorer", str(scorer_file), *tiny_serve_args(max_images=2, max_videos=0)]
    server = VLLMServer(tiny_model_dir, args, log_path=tmp_path_factory.mktemp("faulty-serve") / "server.log",
                        command=[sys.executable, "-m", "vs_vllm", "serve"])
    # After construction: cpu_env() drops TRITON_INTERPRET, which this server needs to take the Triton path on the CPU.
    server.env.update({"TRITON_INTERPRET": "1", INJECT_FAULT_ENV: "select"})
    server.env.pop(STRICT_ENV, None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scrape(server) -> tuple[dict[tuple[str, str, str], float], float | None]:
    """(fallback counts by (op, device, dtype), the health gauge) from the server's /metrics."""
    with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts, healthy = {}, None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vs_vllm:kernel_fallbacks_total":
                counts[(s.labels["op"], s.labels["device"], s.labels["dtype"])] = s.value
            elif s.name == "vs_vllm_kernels_healthy":
                healthy = s.value
    return counts, healthy


def log_lines(server, needle: str) -> list[str]:
    return [line for line in server.log_path.read_text(errors="replace").splitlines() if needle in line]


def test_injected_kernel_fault_is_logged_once_and_shown_on_metrics(faulty_server) -> None:
    # At start-up the warm-up met the fault: one ERROR with the cause, and a warm-up line that says what happened.
    failures = log_lines(faulty_server, FAILURE_LINE)
    assert len(failures) == 1 and " ERROR " in failures[0], failures
    warm_up = log_lines(faulty_server, "Triton selection-kernel warm-up on cpu float32")
    assert len(warm_up) == 1 and " ERROR " in warm_up[0], warm_up
    assert "compiled gather for 256 tokens" in warm_up[0] and "FAILED select (RuntimeError: fault injected" in warm_up[0]
    assert not log_lines(faulty_server, "warmed up")
    counts, healthy = scrape(faulty_server)
    assert healthy == 0 and counts == {SELECT: 1}, (counts, healthy)

    client = openai_client(faulty_server.base_url)
    image = noise_image(224, 224, seed=3)
    kept = {}
    for method in ("visionselector", "uniform"):  # select (on the torch fallback), then gather (still on Triton)
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=chat_messages([image], "What is it?"), max_tokens=2, temperature=0.0,
            extra_body={"retention_ratio": 0.5, "selection_method": method},
        )
        kept[method] = int(raw.headers["x-vs-visual-tokens-kept"]), int(raw.headers["x-vs-visual-tokens-total"])
    assert all(k == keep_count(n, 0.5) < n for k, n in kept.values()), kept  # both requests really pruned

    counts, healthy = scrape(faulty_server)
    assert healthy == 0 and counts == {SELECT: 2}, (counts, healthy)  # the select request only; gather never failed
    assert len(log_lines(faulty_server, FAILURE_LINE)) == 1  # logged once, not per request
    assert not log_lines(faulty_server, "Triton gather kernel failed")
