"""End to end through ``vs-vllm serve``: per-request retention ratios against the HF reference and stock vLLM.

The matrix (ratio 1.0 == stock, pruned == HF reference for 1-3 images x ratios x methods, prefix cache across ratios,
concurrent mixed requests, chunked prefill) runs for every architecture with an adapter; the request-surface tests
(bad input, metrics, options) run once, on Qwen2.5-VL.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
import torch

from vs_vllm.selection.budget import keep_count
from vs_vllm.testing.client import chat_messages, openai_client
from vs_vllm.testing.images import noise_image

pytestmark = [pytest.mark.slow, pytest.mark.runner_matrix]

QUESTION = "What colour is the shape?"
MAX_TOKENS = 8


#: Every architecture with an adapter runs the whole matrix, except the MoE variant of Qwen3-VL, whose vision path
#: and adapter are the dense one's: it runs ratio 1.0 == stock and pruned == HF (``MOE_ARCHS`` tests).
ARCHS = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]
MOE_ARCHS = ARCHS + ["qwen3_vl_moe"]


@pytest.fixture(scope="session", params=ARCHS)
def arch_setup(request, served_arch):
    """(arch, model_dir, stock server, plugin server); tests are grouped per architecture."""
    return (request.param, *served_arch(request.param))


@pytest.fixture(scope="module")
def hf_reference(arch_setup, scorer_file):
    """Greedy results of the transformers reference with the same scorer, memoised per (images, ratio, method)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vs_vllm.hf.qwen_vl import QwenVLSelector
    from vs_vllm.selection.checkpoint import load_scorer
    from vs_vllm.selection.mmr import BY_BUDGET  # what the server uses when a request gives no selection_lambda

    model_dir = arch_setup[1]
    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    selector = QwenVLSelector(model, load_scorer(scorer_file))
    memo: dict = {}

    def run(images_key, images, ratio, method="visionselector", seed=None, selection_lambda=BY_BUDGET):
        key = (images_key, ratio, method, seed, selection_lambda)
        if key not in memo:
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": QUESTION}]
            prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                              tokenize=False)
            inputs = proc(text=[prompt], images=list(images), return_tensors="pt")
            tokens, pruned = selector.generate(inputs, ratio=ratio, method=method, max_new_tokens=MAX_TOKENS,
                                               seed=seed, selection_lambda=selection_lambda)
            memo[key] = (tokens, pruned.prompt_tokens, pruned.visual_kept, pruned.visual_total)
        return memo[key]

    return run


def _chat(server, images, **options):
    client = openai_client(server.base_url)
    return client.chat.completions.create(
        model="tiny", messages=chat_messages(images, QUESTION), max_tokens=MAX_TOKENS, temperature=0.0,
        extra_body={"return_token_ids": True, "ignore_eos": True, **options},
    )


IMAGE_SETS = {
    "square": [(224, 224)],
    "odd": [(300, 200)],
    "tall": [(140, 420)],
    "two-images": [(140, 420), (252, 196)],
    "three-images": [(100, 100), (300, 200), (196, 252)],
}


def _images(key):
    return [noise_image(w, h, seed=31 + i) for i, (w, h) in enumerate(IMAGE_SETS[key])]


@pytest.mark.parametrize("arch_setup", MOE_ARCHS, indirect=True)
@pytest.mark.parametrize("key", ["square", "two-images"])
def test_ratio_one_is_token_identical_to_stock_vllm(arch_setup, key) -> None:
    _, _, vllm_server, plugin_server = arch_setup
    images = _images(key)
    ours = _chat(plugin_server, images, retention_ratio=1.0)
    stock = _chat(vllm_server, images)
    assert ours.prompt_token_ids == stock.prompt_token_ids
    assert ours.choices[0].token_ids == stock.choices[0].token_ids


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.1])
@pytest.mark.parametrize("key", IMAGE_SETS)
def test_matches_hf_reference(arch_setup, hf_reference, key, ratio) -> None:
    """Prompt size and greedy tokens equal the transformers reference with the same scorer."""
    _check_matches_hf_reference(arch_setup, hf_reference, key, ratio)


@pytest.mark.parametrize("arch_setup", ["qwen3_vl_moe"], indirect=True)
@pytest.mark.parametrize("key,ratio", [("two-images", 0.3), ("odd", 0.1)])
def test_moe_pruned_matches_hf_reference(arch_setup, hf_reference, key, ratio) -> None:
    _check_matches_hf_reference(arch_setup, hf_reference, key, ratio)


def _check_matches_hf_reference(arch_setup, hf_reference, key, ratio) -> None:
    plugin_server = arch_setup[3]
    images = _images(key)
    tokens, prompt_tokens, kept, total = hf_reference(key, images, ratio)
    resp = _chat(plugin_server, images, retention_ratio=ratio)
    counts = _visual_counts(arch_setup[1], key)
    assert sum(counts) == total and kept < total
    text_tokens = prompt_tokens - kept
    assert resp.usage.prompt_tokens == prompt_tokens == text_tokens + sum(keep_count(n, ratio) for n in counts)
    assert resp.choices[0].token_ids == tokens


def _visual_counts(model_dir, key):
    """N_i per image of IMAGE_SETS[key]: the processor resizes to multiples of one LLM token (patch x merge pixels:
    28 for Qwen2/2.5-VL, 32 for Qwen3-VL) within the model's pixel bounds."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    token_px = pre["patch_size"] * pre["merge_size"]
    counts = []
    for w, h in IMAGE_SETS[key]:
        rh, rw = smart_resize(h, w, factor=token_px, min_pixels=pre["size"]["shortest_edge"],
                              max_pixels=pre["size"]["longest_edge"])
        counts.append((rh // token_px) * (rw // token_px))
    return counts


@pytest.mark.parametrize("method", ["random", "uniform", "norm", "divprune", "dart", "visionselector_mmr"])
def test_other_methods_match_hf_reference(arch_setup, hf_reference, method) -> None:
    plugin_server = arch_setup[3]
    images = _images("two-images")
    tokens, prompt_tokens, _, _ = hf_reference("two-images", images, 0.3, method, 7)
    resp = _chat(plugin_server, images, retention_ratio=0.3, selection_method=method, selection_seed=7)
    assert resp.usage.prompt_tokens == prompt_tokens
    assert resp.choices[0].token_ids == tokens


@pytest.mark.parametrize("key", ["square", "two-images", "three-images"])
@pytest.mark.parametrize("ratio", [0.5, 0.1])
def test_learned_diversity_selection_matches_hf_reference(arch_setup, hf_reference, key, ratio) -> None:
    """visionselector_mmr with a per-request lambda: prompt size and greedy tokens equal the HF reference."""
    plugin_server = arch_setup[3]
    images = _images(key)
    tokens, prompt_tokens, _, _ = hf_reference(key, images, ratio, "visionselector_mmr", None, 0.3)
    resp = _chat(plugin_server, images, retention_ratio=ratio, selection_method="visionselector_mmr",
                 selection_lambda=0.3)
    assert resp.usage.prompt_tokens == prompt_tokens
    assert resp.choices[0].token_ids == tokens


def test_lambda_one_is_visionselector_and_lambda_changes_the_choice(arch_setup, hf_reference) -> None:
    plugin_server = arch_setup[3]
    images = _images("three-images")
    learned = _chat(plugin_server, images, retention_ratio=0.1)
    at_one = _chat(plugin_server, images, retention_ratio=0.1, selection_method="visionselector_mmr",
                   selection_lambda=1)
    assert at_one.choices[0].token_ids == learned.choices[0].token_ids
    assert at_one.usage.prompt_tokens == learned.usage.prompt_tokens
    for lam in (0.0, 0.7):
        tokens, _, _, _ = hf_reference("three-images", images, 0.1, "visionselector_mmr", None, lam)
        resp = _chat(plugin_server, images, retention_ratio=0.1, selection_method="visionselector_mmr",
                     selection_lambda=lam)
        assert resp.choices[0].token_ids == tokens, lam


def test_same_image_at_changing_ratios_with_prefix_caching(arch_setup, hf_reference) -> None:
    """Prefix caching is on: the same image at alternating ratios must still give the fresh (HF) results."""
    plugin_server = arch_setup[3]
    images = _images("odd")
    for ratio in [0.5, 0.1, 1.0, 0.5, 0.3, 0.1, 0.5]:
        tokens, prompt_tokens, _, _ = hf_reference("odd", images, ratio)
        resp = _chat(plugin_server, images, retention_ratio=ratio)
        assert resp.usage.prompt_tokens == prompt_tokens, ratio
        assert resp.choices[0].token_ids == tokens, ratio


def test_options_inside_mm_processor_kwargs(arch_setup, hf_reference) -> None:
    plugin_server = arch_setup[3]
    images = _images("square")
    tokens, prompt_tokens, _, _ = hf_reference("square", images, 0.3)
    resp = _chat(plugin_server, images, mm_processor_kwargs={"retention_ratio": 0.3})
    assert resp.usage.prompt_tokens == prompt_tokens
    assert resp.choices[0].token_ids == tokens


def test_completions_endpoint_and_text_only(plugin_server, vllm_server) -> None:
    client = openai_client(plugin_server.base_url)
    stock = openai_client(vllm_server.base_url)
    kwargs = dict(model="tiny", prompt="The colour of the sky is", max_tokens=6, temperature=0.0)
    ours = client.completions.create(**kwargs, extra_body={"retention_ratio": 0.2, "return_token_ids": True})
    ref = stock.completions.create(**kwargs, extra_body={"return_token_ids": True})
    assert ours.choices[0].token_ids == ref.choices[0].token_ids
    assert ours.usage.prompt_tokens == ref.usage.prompt_tokens


def test_visual_token_counts_reach_the_client_and_metrics(plugin_server, tiny_model_dir) -> None:
    images = _images("two-images")
    client = openai_client(plugin_server.base_url)
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=chat_messages(images, QUESTION), max_tokens=2, temperature=0.0,
        extra_body={"retention_ratio": 0.25},
    )
    body = json.loads(raw.text)
    counts = _visual_counts(tiny_model_dir, "two-images")
    kept = sum(keep_count(n, 0.25) for n in counts)
    assert body["usage"]["visual_tokens"] == {"kept": kept, "total": sum(counts), "images": 2, "videos": 0}
    assert int(raw.headers["x-vs-visual-tokens-kept"]) == kept
    assert int(raw.headers["x-vs-visual-tokens-total"]) == sum(counts)
    with urllib.request.urlopen(f"{plugin_server.base_url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert _metric(metrics, "vs_vllm:visual_tokens_kept_total") >= kept
    assert _metric(metrics, "vs_vllm:visual_tokens_total") >= sum(counts)


def _metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or
              line.startswith(name + "{")]
    assert values, f"{name} not on /metrics"
    return sum(values)


BAD_INPUTS = [
    ({"retention_ratio": 0}, "retention_ratio"),
    ({"retention_ratio": -0.1}, "retention_ratio"),
    ({"retention_ratio": 1.5}, "retention_ratio"),
    ({"retention_ratio": "0.5"}, "retention_ratio"),
    ({"retention_ratio": True}, "retention_ratio"),
    ({"retention_ratio": None}, "retention_ratio"),
    ({"selection_method": "nope"}, "selection_method"),
    ({"selection_method": 3}, "selection_method"),
    ({"selection_seed": -1}, "selection_seed"),
    ({"selection_lambda": 1.01}, "selection_lambda"),
    ({"selection_lambda": "0.5"}, "selection_lambda"),
    ({"mm_processor_kwargs": {"selection_lambda": -1}}, "selection_lambda"),
    ({"mm_processor_kwargs": {"max_pixels": 1000000}}, "max_pixels"),
    ({"mm_processor_kwargs": {"retention_ratio": 2}}, "retention_ratio"),
    ({"video_retention_ratio": 0}, "video_retention_ratio"),
    ({"video_retention_ratio": 1.5}, "video_retention_ratio"),
    ({"video_retention_ratio": "0.5"}, "video_retention_ratio"),
    ({"video_retention_ratio": True}, "video_retention_ratio"),
    ({"video_retention_ratio": None}, "video_retention_ratio"),
    ({"mm_processor_kwargs": {"video_retention_ratio": -0.2}}, "video_retention_ratio"),
]


def _post(server, path: str, payload: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"{server.base_url}{path}", data=payload, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize("extra,field", BAD_INPUTS, ids=[json.dumps(b[0]) for b in BAD_INPUTS])
def test_bad_input_gets_400_naming_the_field(plugin_server, extra, field) -> None:
    payload = {"model": "tiny", "messages": chat_messages(_images("square"), QUESTION), "max_tokens": 2, **extra}
    status, body = _post(plugin_server, "/v1/chat/completions", json.dumps(payload).encode())
    assert status == 400, body
    assert body["error"]["code"] == 400
    assert field in (body["error"].get("param") or "") or field in body["error"]["message"]


def test_nan_ratio_gets_400_and_server_keeps_serving(plugin_server) -> None:
    payload = json.dumps({"model": "tiny", "messages": chat_messages(_images("square"), QUESTION),
                          "max_tokens": 2}).encode()
    status, body = _post(plugin_server, "/v1/chat/completions", payload[:-1] + b', "retention_ratio": NaN}')
    assert status == 400 and "retention_ratio" in json.dumps(body)
    status, body = _post(plugin_server, "/v1/completions",
                         b'{"model": "tiny", "prompt": "hi", "max_tokens": 2, "retention_ratio": 7}')
    assert status == 400 and body["error"]["param"] == "retention_ratio"
    with urllib.request.urlopen(f"{plugin_server.base_url}/health", timeout=10) as resp:
        assert resp.status == 200
    ok = _chat(plugin_server, _images("square"), retention_ratio=0.5)
    assert ok.usage.completion_tokens == MAX_TOKENS


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/unreachable.jpg", "file:///etc/hostname"])
def test_media_url_the_server_cannot_fetch_gets_400_not_500(plugin_server, url) -> None:
    """Stock vLLM answers 500 for both (a client error reported as a server fault); media_connector.py makes it 400."""
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    payload = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    status, body = _post(plugin_server, "/v1/chat/completions", json.dumps(payload).encode())
    assert status == 400, body
    assert body["error"]["type"] == "BadRequestError" and "Traceback" not in body["error"]["message"]
    assert ("127.0.0.1:1" in body["error"]["message"]) if url.startswith("http") else \
        ("--allowed-local-media-path" in body["error"]["message"])
    ok = _chat(plugin_server, _images("square"), retention_ratio=0.5)
    assert ok.usage.completion_tokens == MAX_TOKENS


def test_fifty_concurrent_mixed_requests(arch_setup, hf_reference) -> None:
    plugin_server = arch_setup[3]
    cases = []
    ratios = [1.0, 0.5, 0.3, 0.1]
    methods = ["visionselector", "random", "uniform", "norm", "divprune", "dart", "visionselector_mmr"]
    keys = list(IMAGE_SETS)
    for i in range(52):
        cases.append((keys[i % len(keys)], ratios[i % len(ratios)], methods[(i // 2) % len(methods)]))
    expected = [hf_reference(k, _images(k), r, m, 3) for k, r, m in cases]

    async def run_all():
        client = openai_client(plugin_server.base_url, async_client=True)

        async def one(k, r, m):
            return await client.chat.completions.create(
                model="tiny", messages=chat_messages(_images(k), QUESTION), max_tokens=MAX_TOKENS, temperature=0.0,
                extra_body={"return_token_ids": True, "ignore_eos": True, "retention_ratio": r,
                            "selection_method": m, "selection_seed": 3},
            )

        return await asyncio.gather(*(one(*c) for c in cases))

    results = asyncio.run(run_all())
    for case, resp, (tokens, prompt_tokens, _, _) in zip(cases, results, expected):
        assert resp.usage.prompt_tokens == prompt_tokens, case
        assert resp.choices[0].token_ids == tokens, case


def test_chunked_prefill_equals_unchunked(arch_setup, served_arch) -> None:
    arch, _, _, plugin_server = arch_setup
    chunked = served_arch.chunked(arch)  # 48-token prefill chunks, no prefix cache; shared with the video tests
    for key, ratio in [("square", 1.0), ("two-images", 0.5), ("three-images", 0.3), ("tall", 0.1)]:
        a = _chat(chunked, _images(key), retention_ratio=ratio)
        b = _chat(plugin_server, _images(key), retention_ratio=ratio)
        assert a.usage.prompt_tokens == b.usage.prompt_tokens
        assert a.choices[0].token_ids == b.choices[0].token_ids, (key, ratio)


def test_visionselector_without_scorer_fails_at_startup(tiny_model_dir, start_plugin_server) -> None:
    with pytest.raises(RuntimeError) as info:
        start_plugin_server(tiny_model_dir, scorer=None, extra_args=["--retention-ratio", "0.5"])
    assert "--scorer" in str(info.value)


def test_unsupported_architecture_is_served_as_stock(start_plugin_server, tmp_path) -> None:
    """Enabled plugin, a model it does not prune (text-only Qwen2): greedy ids equal transformers', no pruning."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vs_vllm.testing.tiny_models import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny-qwen2", arch="qwen2", seed=2)
    server = start_plugin_server(model_dir, scorer=None,
                                 extra_args=["--retention-ratio", "0.5", "--selection-method", "uniform"])
    prompt = "What colour is the sky? The answer is"
    resp = openai_client(server.base_url).completions.create(
        model="tiny", prompt=prompt, max_tokens=8, temperature=0.0,
        extra_body={"return_token_ids": True, "ignore_eos": True, "retention_ratio": 0.2},
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert resp.choices[0].token_ids == ref[0, ids.shape[1]:].tolist()
    assert resp.usage.prompt_tokens == ids.shape[1]
    log = server.log_path.read_text(errors="replace")
    assert "visual-token selection enabled" in log
