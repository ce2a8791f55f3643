"""vLLM's own parallelism with the plugin: tensor parallel 2 on the CPU backend (issue 14 item 1, partly).

Opt-in (``make test-parallel`` sets VS_VLLM_TEST_PARALLEL=1): a TP server costs ~1 minute of start-up that the
default suite's 20-minute budget does not have. Each TP rank is a process bound to its own core
(``VLLM_CPU_OMP_THREADS_BIND=0|1``). ``TORCHDYNAMO_DISABLE=1``: with TP > 1 vLLM's vocab-parallel embedding calls a
``torch.compile``d helper, and inductor's CPU backend needs a working C++ compiler (this machine's g++ has no
``cc1plus``); the helper then runs eagerly, which changes no result.

Checked: greedy outputs, prompt token counts and visual-token counts identical to the single-process plugin server
over a mixed set of requests (ratios x methods x 1-3 images), with the vision tower sharded (default) and
data-parallel (``--mm-encoder-tp-mode data``).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import pytest

from vs_vllm.testing.client import chat_messages
from vs_vllm.testing.images import noise_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("VS_VLLM_TEST_PARALLEL") != "1",
                       reason="opt-in: make test-parallel (VS_VLLM_TEST_PARALLEL=1)"),
]

CASES = [  # (ratio, method, images)
    (1.0, "visionselector", 1), (0.5, "visionselector", 2), (0.3, "visionselector_mmr", 3), (0.2, "uniform", 1),
    (0.3, "divprune", 2), (0.1, "dart", 1), (0.5, "norm", 3),
]


def _answers(server) -> list[tuple[int, int, str]]:
    out = []
    for i, (ratio, method, n) in enumerate(CASES):
        images = [noise_image(300 - 40 * j, 200 + 24 * j, seed=10 * i + j) for j in range(n)]
        body = {"model": "tiny", "max_tokens": 8, "temperature": 0, "retention_ratio": ratio,
                "selection_method": method, "messages": chat_messages(images, "What is in the pictures?")}
        req = urllib.request.Request(f"{server.base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as resp:
            data = json.loads(resp.read())
        out.append((data["usage"]["prompt_tokens"], data["usage"]["visual_tokens"]["kept"],
                    data["choices"][0]["message"]["content"]))
    return out


@pytest.mark.parametrize("encoder_mode", ["weights", "data"])
def test_tensor_parallel_2_matches_one_process(plugin_server, tiny_model_dir, scorer_file, tmp_path,
                                               encoder_mode) -> None:
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    args = ["--scorer", str(scorer_file), *tiny_serve_args(max_images=4, max_videos=2),
            "--tensor-parallel-size", "2", "--distributed-executor-backend", "mp",
            "--mm-encoder-tp-mode", encoder_mode]
    server = VLLMServer(tiny_model_dir, args, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", "TORCHDYNAMO_DISABLE": "1"},
                        command=[sys.executable, "-m", "vs_vllm", "serve"], log_path=tmp_path / "server.log",
                        startup_timeout=600)
    server.start()
    try:
        parallel = _answers(server)
    finally:
        server.stop()
    assert parallel == _answers(plugin_server)
