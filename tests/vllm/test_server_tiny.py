"""End to end: vLLM's OpenAI server on CPU serves the tiny model, and its greedy tokens equal transformers'."""

from __future__ import annotations

import re
import urllib.request

import pytest

from vs_vllm.testing.images import noise_image, to_data_url

pytestmark = [pytest.mark.slow, pytest.mark.runner_matrix]

QUESTION = "What colour is the shape?"


def _chat(server, images, *, max_tokens=8, **extra):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="EMPTY", timeout=120)
    content = [{"type": "image_url", "image_url": {"url": to_data_url(img)}} for img in images]
    content.append({"type": "text", "text": QUESTION})
    return client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0.0,
        extra_body={"return_token_ids": True, "ignore_eos": True, **extra},
    )


def _hf_greedy(model_dir, images, max_new_tokens=8):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": QUESTION}]
    prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=False)
    inputs = proc(text=[prompt], images=list(images), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             do_sample=False)
    prompt_ids = inputs["input_ids"][0].tolist()
    return prompt_ids, out[0, len(prompt_ids):].tolist()


def test_server_answers_chat_with_image(vllm_server) -> None:
    resp = _chat(vllm_server, [noise_image(224, 224, seed=1)])
    assert resp.choices[0].message.content is not None
    assert resp.usage.completion_tokens == 8
    # 64 image tokens + the chat template's text tokens.
    assert resp.usage.prompt_tokens > 64
    with urllib.request.urlopen(f"{vllm_server.base_url}/health", timeout=5) as health:
        assert health.status == 200


@pytest.mark.parametrize(
    "sizes",
    [[(224, 224)], [(300, 200)], [(140, 420), (224, 224)]],
    ids=["square", "odd-landscape", "two-images"],
)
def test_greedy_tokens_match_transformers(vllm_server, tiny_model_dir, sizes) -> None:
    images = [noise_image(w, h, seed=10 + i) for i, (w, h) in enumerate(sizes)]
    resp = _chat(vllm_server, images)
    hf_prompt, hf_tokens = _hf_greedy(tiny_model_dir, images)
    assert resp.prompt_token_ids == hf_prompt
    assert resp.usage.prompt_tokens == len(hf_prompt)
    assert resp.choices[0].token_ids == hf_tokens


def test_plugin_loaded_in_engine_processes(vllm_server) -> None:
    log = vllm_server.log_path.read_text(errors="replace")
    assert "Failed to load plugin" not in log
    loaded = re.findall(r"\((\w+) pid=\d+\).*vs-vllm [\d.]+ plugin loaded", log)
    assert "EngineCore" in loaded, log[-3000:]
