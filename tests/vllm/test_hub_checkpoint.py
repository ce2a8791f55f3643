"""A checkpoint that embeds its scorer, served by hub id (from the local Hugging Face cache, offline).

The API-server probe must find the scorer from the hub cache (no local directory to look at), the worker's weight
loader must load it from the checkpoint (no ``--scorer``), and pruned output must equal the HF reference run with
the scorer read back from the same checkpoint.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from vs_vllm.testing.client import chat_messages, openai_client
from vs_vllm.testing.images import noise_image

pytestmark = pytest.mark.slow

REPO = "vs-test/tiny-qwen2_5_vl-with-scorer"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def hub_cache(tiny_model_dir, scorer_file, tmp_path_factory):
    """A Hugging Face hub cache holding the tiny model with the scorer tensors inside model.safetensors."""
    from safetensors.torch import load_file, save_file

    cache = tmp_path_factory.mktemp("hf-hub")
    repo_dir = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    shutil.copytree(tiny_model_dir, snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    weights = load_file(str(snapshot / "model.safetensors"))
    for name, tensor in load_file(str(scorer_file)).items():  # visual.importance_scorer.* in the file
        weights["model." + name] = tensor.contiguous()
    save_file(weights, str(snapshot / "model.safetensors"), metadata={"format": "pt"})
    return cache, snapshot


def test_scorer_embedded_in_a_hub_id_checkpoint(hub_cache, tmp_path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vs_vllm.hf.qwen_vl import QwenVLSelector
    from vs_vllm.selection.checkpoint import load_scorer
    from vs_vllm.testing.server import VLLMServer, cpu_env, tiny_serve_args
    from vs_vllm.vllm_plugin.pruning.scorer_probe import checkpoint_scorer_keys

    cache, snapshot = hub_cache
    env = cpu_env(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    import sys

    server = VLLMServer(REPO, ["--retention-ratio", "0.3", *tiny_serve_args(max_images=4)], env=env,
                        log_path=tmp_path / "server.log", command=[sys.executable, "-m", "vs_vllm", "serve"])
    image = noise_image(300, 200, seed=9)
    with server:
        client = openai_client(server.base_url)
        resp = client.chat.completions.create(
            model="tiny", messages=chat_messages([image], QUESTION), max_tokens=8, temperature=0.0,
            extra_body={"return_token_ids": True, "ignore_eos": True, "selection_method": "visionselector"},
        )
    scorer = load_scorer(snapshot)  # the checkpoint directory: model.visual.importance_scorer.* keys
    assert checkpoint_scorer_keys(str(snapshot)) and checkpoint_scorer_keys(REPO, download_dir=str(cache))
    proc = AutoProcessor.from_pretrained(snapshot)
    model = AutoModelForImageTextToText.from_pretrained(snapshot, dtype=torch.float32).eval()
    content = [{"type": "image"}, {"type": "text", "text": QUESTION}]
    prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=False)
    inputs = proc(text=[prompt], images=[image], return_tensors="pt")
    tokens, pruned = QwenVLSelector(model, scorer).generate(inputs, ratio=0.3, max_new_tokens=8)
    assert pruned.visual_kept < pruned.visual_total
    assert resp.usage.prompt_tokens == pruned.prompt_tokens
    assert resp.choices[0].token_ids == tokens
