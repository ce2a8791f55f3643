"""Property-based fuzz of the request surface against a real ``vs-vllm serve``: never a 5xx, never a traceback.

The middleware's own fuzz test (tests/unit/test_middleware_fuzz.py) checks its exact answers around a fake app; here the
same strategies hit the real server (middleware, vLLM's request validation, the processor, the engine) on every POST
path the middleware guards and on others: never a 5xx, never a traceback in the body, every refusal an OpenAI-style
error body, and afterwards the server still answers a pruned request exactly as before the fuzz. The committed long run
is ``vs-vllm bench fuzz`` (benchmarks/results/fuzz_cpu.md).
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vs_vllm.benchmarking.fuzz import answer_problem, post_json, pruned_answer
from vs_vllm.testing.client import chat_messages
from vs_vllm.testing.fuzz import GUARDED_PATHS, PATHS, bodies, for_path, raw_bodies
from vs_vllm.testing.images import noise_image

pytestmark = [pytest.mark.slow, pytest.mark.runner_matrix]

IMAGE_CHAT = chat_messages([noise_image(84, 56, seed=1)], "What is in the picture?")
#: (path, status) of every fuzzed answer: the fuzz must also reach the engine, not only the refusals.
SEEN: Counter = Counter()


def _check_answer(status: int, text: str) -> None:
    assert answer_problem(status, text) is None, (status, text)


@pytest.fixture(scope="module")
def before_fuzz(plugin_server):
    answer = pruned_answer(plugin_server.base_url, "tiny")
    assert isinstance(answer, tuple), answer
    return answer


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=bodies("tiny", IMAGE_CHAT))
def test_any_option_value_never_gets_a_5xx_from_the_server(plugin_server, before_fuzz, path, body) -> None:
    status, text = post_json(plugin_server.base_url, path, json.dumps(for_path(path, body), allow_nan=True).encode())
    SEEN[path, status] += 1
    _check_answer(status, text)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(GUARDED_PATHS), raw=raw_bodies)
def test_any_body_bytes_never_get_a_5xx_from_the_server(plugin_server, before_fuzz, path, raw) -> None:
    _check_answer(*post_json(plugin_server.base_url, path, raw))


def test_server_serves_as_before_after_the_fuzz(plugin_server, before_fuzz) -> None:
    guarded = {status for (path, status) in SEEN if path in GUARDED_PATHS}
    assert {200, 400} <= guarded, SEEN  # bodies reached the engine, and bodies were refused
    with urllib.request.urlopen(plugin_server.base_url + "/health", timeout=30) as resp:
        assert resp.status == 200
    assert pruned_answer(plugin_server.base_url, "tiny") == before_fuzz
