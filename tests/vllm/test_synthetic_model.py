"""The committed synthetic-benchmark model (benchmarks/synthetic/model) served by `vs-vllm serve` with its scorer.

A model whose answers mean something: on fresh images (a generator seed nobody trained or tuned on) it answers the
benchmark question with every visual token, and the learned scorer keeps the answer at ratio 0.1 where a content-blind
selection loses it.
"""

from __future__ import annotations

import pytest

from vs_vllm.demo import SYNTHETIC_MODEL_DIR, synthetic_model_available, synthetic_samples
from vs_vllm.testing.client import openai_client

pytestmark = pytest.mark.slow

N_IMAGES = 16
SEED = 5


@pytest.fixture(scope="module")
def samples():
    return synthetic_samples(N_IMAGES, SEED)


@pytest.fixture(scope="module")
def synthetic_server(start_plugin_server):
    assert synthetic_model_available(), f"the committed model is missing from {SYNTHETIC_MODEL_DIR}"
    return start_plugin_server(SYNTHETIC_MODEL_DIR, scorer=SYNTHETIC_MODEL_DIR / "scorer.safetensors")


def _correct(server, samples, ratio: float, method: str) -> tuple[int, set[int]]:
    question, items = samples
    client = openai_client(server.base_url)
    hits, kept = 0, set()
    for url, truth in items:
        raw = client.chat.completions.with_raw_response.create(
            model="tiny",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": question}]}],
            max_tokens=4, temperature=0.0,
            extra_body={"retention_ratio": ratio, "selection_method": method},
        )
        resp = raw.parse()
        hits += resp.choices[0].message.content.strip() == truth
        kept.add(int(raw.headers["x-vs-visual-tokens-kept"]))
    return hits, kept


def test_answers_with_every_visual_token(synthetic_server, samples):
    hits, kept = _correct(synthetic_server, samples, 1.0, "visionselector")
    assert kept == {64}
    assert hits >= N_IMAGES - 2, f"{hits}/{N_IMAGES} correct with all 64 visual tokens"


def test_learned_selection_keeps_the_answer(synthetic_server, samples):
    learned, kept = _correct(synthetic_server, samples, 0.1, "visionselector")
    blind, _ = _correct(synthetic_server, samples, 0.1, "random")
    assert kept == {6}
    # The scorer keeps the target in ~85% of images at this ratio (benchmarks/results/synthetic_accuracy.md), random
    # selection in ~40%.
    assert learned >= 11, f"visionselector: {learned}/{N_IMAGES} correct from 6 of 64 tokens"
    assert learned >= blind + 4, f"visionselector {learned} vs random {blind} of {N_IMAGES}"
