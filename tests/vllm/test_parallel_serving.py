"""vLLM's own parallelism with the plugin on the CPU backend: tensor, data and pipeline parallel 2.

Each configuration serves the tiny model with two ranks, each rank a process bound to its own core
(``VLLM_CPU_OMP_THREADS_BIND=0|1``), and must answer a mixed set of requests (ratios x methods x 1-3 images) with the
greedy outputs, prompt token counts and visual-token counts of the single-process plugin server:

- tensor parallel 2 with the vision tower sharded (``--mm-encoder-tp-mode weights``, the default) and data-parallel
  (``--mm-encoder-tp-mode data``);
- data parallel 2 (two engines behind one API server; requests are sent concurrently so both engines prune);
- pipeline parallel 2 (the vision tower and the pruning run on the first stage).

``TORCHDYNAMO_DISABLE=1``: with TP > 1 vLLM's vocab-parallel embedding calls a ``torch.compile``d helper, and
inductor's CPU backend needs a working C++ compiler (this machine's g++ has no ``cc1plus``); the helper then runs
eagerly, which changes no result. Pipeline parallel runs without ``--enforce-eager``: vLLM 0.32's CPU runner allocates
the buffers a later stage receives into only in its compile warm-up, which eager mode skips (stock vLLM then fails the
first request; ``vs-vllm serve`` refuses that combination on the CPU build, see ``serve.py``). With dynamo disabled
(and ``VLLM_USE_AOT_COMPILE=0``), the warm-up runs and the model still executes eagerly.

The four servers cost ~2.5 minutes of the suite; ``make test-parallel`` runs just this file.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from vs_vllm.testing.client import chat_messages
from vs_vllm.testing.images import noise_image

pytestmark = [pytest.mark.slow, pytest.mark.runner_matrix]

CASES = [  # (ratio, method, images)
    (1.0, "visionselector", 1), (0.5, "visionselector", 2), (0.3, "visionselector_mmr", 3), (0.2, "uniform", 1),
    (0.3, "divprune", 2), (0.1, "dart", 1), (0.5, "norm", 3),
]

_NO_COMPILER = {"TORCHDYNAMO_DISABLE": "1"}
#: name -> (vllm serve arguments, extra environment, whether the run must be eager)
CONFIGS = {
    "tp2-encoder-sharded": (["--tensor-parallel-size", "2", "--mm-encoder-tp-mode", "weights"], _NO_COMPILER, True),
    "tp2-encoder-data-parallel": (["--tensor-parallel-size", "2", "--mm-encoder-tp-mode", "data"], _NO_COMPILER, True),
    "dp2": (["--data-parallel-size", "2"], _NO_COMPILER, True),
    "pp2": (["--pipeline-parallel-size", "2"], {**_NO_COMPILER, "VLLM_USE_AOT_COMPILE": "0"}, False),
}


def _ask(server, i: int) -> tuple[int, int, str]:
    ratio, method, n = CASES[i]
    images = [noise_image(300 - 40 * j, 200 + 24 * j, seed=10 * i + j) for j in range(n)]
    body = {"model": "tiny", "max_tokens": 8, "temperature": 0, "retention_ratio": ratio,
            "selection_method": method, "messages": chat_messages(images, "What is in the pictures?")}
    req = urllib.request.Request(f"{server.base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        data = json.loads(resp.read())
    return (data["usage"]["prompt_tokens"], data["usage"]["visual_tokens"]["kept"],
            data["choices"][0]["message"]["content"])


def _answers(server, *, concurrent: bool = False) -> list[tuple[int, int, str]]:
    if not concurrent:
        return [_ask(server, i) for i in range(len(CASES))]
    with ThreadPoolExecutor(len(CASES)) as pool:
        return list(pool.map(lambda i: _ask(server, i), range(len(CASES))))


def _prompt_tokens_per_engine(server) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'vllm:prompt_tokens_total\{(.*)\} (\S+)$', line)
        if m:
            engine = re.search(r'engine="(\d+)"', m.group(1))
            key = engine.group(1) if engine else "?"
            found[key] = found.get(key, 0.0) + float(m.group(2))
    return found


@pytest.fixture(scope="module")
def one_process_answers(plugin_server):
    return _answers(plugin_server)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_parallel_serving_matches_one_process(one_process_answers, tiny_model_dir, scorer_file, tmp_path,
                                              config, vllm_runner) -> None:
    from vs_vllm.testing.server import VLLMServer, cpu_env, tiny_serve_args

    parallel_args, env, eager = CONFIGS[config]
    base = [a for a in tiny_serve_args(max_images=4, max_videos=2) if eager or a != "--enforce-eager"]
    server = VLLMServer(tiny_model_dir, ["--scorer", str(scorer_file), *base, *parallel_args,
                                         "--distributed-executor-backend", "mp"],
                        # the whole environment (the session's runner switch included) plus this config's
                        env=cpu_env(VLLM_CPU_OMP_THREADS_BIND="0|1", **env),
                        command=[sys.executable, "-m", "vs_vllm", "serve"], log_path=tmp_path / "server.log",
                        startup_timeout=600)
    server.start()
    try:
        assert server.model_runner() == vllm_runner
        answers = _answers(server, concurrent=config == "dp2")
        per_engine = _prompt_tokens_per_engine(server)
    finally:
        server.stop()
    assert answers == one_process_answers
    if config == "dp2":  # both engines served (and so pruned) requests
        assert sorted(per_engine) == ["0", "1"] and all(v > 0 for v in per_engine.values()), per_engine
