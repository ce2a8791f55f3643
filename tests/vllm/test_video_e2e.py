"""Video pruning end to end through ``vs-vllm serve`` (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE), against stock vLLM
and the HF reference.

Per request, ``retention_ratio`` applies to every media item and ``video_retention_ratio`` overrides it for videos;
each video keeps K = keep_count(N, r) tokens at their original (t, h, w) M-RoPE positions, the temporal index scaled by
seconds-per-patch x ``tokens_per_second`` (the tiny Qwen2.5-VL uses 25, so a 12-frame video's temporal extent exceeds
its height and width and the text after it must continue past it). Videos travel as ``data:video/jpeg`` frame lists,
which vLLM decodes with PIL exactly as the reference does.
"""

from __future__ import annotations

import pytest
import torch

from vs_vllm.selection.budget import keep_count
from vs_vllm.testing.client import chat_messages, openai_client
from vs_vllm.testing.images import noise_image, noise_video

pytestmark = [pytest.mark.slow, pytest.mark.runner_matrix]

QUESTION = "What happens in the video?"
MAX_TOKENS = 8
#: The whole matrix runs for Qwen2.5-VL (contiguous videos, temporal scaling) and Qwen3-VL (per-frame layout);
#: Qwen2-VL shares Qwen2.5-VL's video path and Qwen3-VL-MoE Qwen3-VL's: they run ratio 1.0 == stock and pruned == HF
#: (``LIGHT_ARCHS`` tests) on the servers the image tests of their architecture use, to keep the suite within its 20
#: minutes. (Qwen3.5's videos are in test_qwen3_5_e2e.py.)
ARCHS = ["qwen2_5_vl", "qwen3_vl"]
LIGHT_ARCHS = ARCHS + ["qwen2_vl", "qwen3_vl_moe"]

#: key -> (images as (w, h), videos as (w, h, frames))
MEDIA = {
    "video": ([], [(112, 112, 12)]),
    "image+video": ([(140, 196)], [(112, 84, 8)]),
    "two-videos": ([], [(112, 112, 6), (84, 140, 4)]),
    # A video followed by an image in one prompt: vLLM's own video pruning (EVS) once mis-positioned the image after a
    # pruned video (vLLM issue 27859).
    "video+image": ([(140, 196)], [(112, 84, 8)]),
}
#: keys whose prompt puts the videos before the images
VIDEOS_FIRST = {"video+image"}
#: a videos-first key -> the key with the same media, images first
IMAGES_FIRST_TWIN = {"video+image": "image+video"}


def _media(key):
    images, videos = MEDIA[key]
    return ([noise_image(w, h, seed=50 + i) for i, (w, h) in enumerate(images)],
            [noise_video(w, h, n, seed=60 + i) for i, (w, h, n) in enumerate(videos)])


@pytest.fixture(scope="session", params=ARCHS)
def arch_setup(request, served_arch):
    return (request.param, *served_arch(request.param))


@pytest.fixture(scope="module")
def hf_reference(arch_setup, scorer_file):
    """Greedy results of the transformers reference on the server's exact frames, memoised."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vs_vllm.hf.qwen_vl import QwenVLSelector
    from vs_vllm.selection.checkpoint import load_scorer

    model_dir = arch_setup[1]
    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    selector = QwenVLSelector(model, load_scorer(scorer_file))
    memo: dict = {}

    def run(key, ratio, method="visionselector", video_ratio=None, seed=None):
        memo_key = (key, ratio, method, video_ratio, seed)
        if memo_key not in memo:
            images, videos = _media(key)
            image_parts, video_parts = [{"type": "image"} for _ in images], [{"type": "video"} for _ in videos]
            content = video_parts + image_parts if key in VIDEOS_FIRST else image_parts + video_parts
            content.append({"type": "text", "text": QUESTION})
            prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                              tokenize=False)
            inputs = proc(text=[prompt], images=images or None, videos=[v.frames() for v in videos],
                          video_metadata=[v.metadata() for v in videos], do_sample_frames=False, return_tensors="pt")
            tokens, pruned = selector.generate(inputs, ratio=ratio, method=method, max_new_tokens=MAX_TOKENS,
                                               seed=seed, video_ratio=video_ratio)
            memo[memo_key] = (tokens, pruned.prompt_tokens, pruned.kept)
        return memo[memo_key]

    return run


def _chat(server, key, **options):
    images, videos = _media(key)
    return openai_client(server.base_url).chat.completions.create(
        model="tiny", messages=chat_messages(images, QUESTION, videos=videos, videos_first=key in VIDEOS_FIRST),
        max_tokens=MAX_TOKENS,
        temperature=0.0, extra_body={"return_token_ids": True, "ignore_eos": True, **options},
    )


@pytest.fixture
def chunked_plugin(arch_setup, served_arch):
    """``vs-vllm serve`` with 48-token prefill chunks and no prefix cache (shared with the image tests)."""
    return served_arch.chunked(arch_setup[0])


@pytest.mark.parametrize("arch_setup", LIGHT_ARCHS, indirect=True)
@pytest.mark.parametrize("key", list(MEDIA))
def test_ratio_one_is_token_identical_to_stock_vllm(arch_setup, key) -> None:
    _, _, stock, plugin = arch_setup
    ours = _chat(plugin, key, retention_ratio=1.0)
    theirs = _chat(stock, key)
    assert ours.prompt_token_ids == theirs.prompt_token_ids
    assert ours.choices[0].token_ids == theirs.choices[0].token_ids


def test_reference_at_ratio_one_is_stock_vllm(arch_setup, hf_reference) -> None:
    """The oracle sees the server's frames and positions: unpruned, it reproduces vLLM."""
    for key in MEDIA:
        tokens, prompt_tokens, _ = hf_reference(key, 1.0)
        theirs = _chat(arch_setup[2], key)
        assert theirs.usage.prompt_tokens == prompt_tokens, key
        assert theirs.choices[0].token_ids == tokens, key


@pytest.mark.parametrize("arch_setup", LIGHT_ARCHS, indirect=True)
@pytest.mark.parametrize("key,ratio", [("video", 0.5), ("video", 0.2), ("image+video", 0.3), ("two-videos", 0.3),
                                       ("two-videos", 0.05), ("video+image", 0.3)])
def test_pruned_video_matches_hf_reference(arch_setup, hf_reference, key, ratio) -> None:
    tokens, prompt_tokens, kept = hf_reference(key, ratio)
    full_tokens, full_prompt, _ = hf_reference(key, 1.0)
    resp = _chat(arch_setup[3], key, retention_ratio=ratio)
    assert resp.usage.prompt_tokens == prompt_tokens < full_prompt
    assert [int(k.numel()) for k in kept] == [keep_count(n, ratio) for n in _item_sizes(hf_reference, key)]
    assert resp.choices[0].token_ids == tokens


def _item_sizes(hf_reference, key):
    return [int(k.numel()) for k in hf_reference(key, 1.0)[2]]


def _metric(base_url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


@pytest.mark.parametrize("key", list(MEDIA))
def test_visual_token_counts_cover_videos_and_processor_cache_hits(arch_setup, hf_reference, key) -> None:
    """usage.visual_tokens, the headers and /metrics count videos (K_i embedding positions of N_i, from the processed
    grid), also on the second, identical request, which the processor cache answers without a processed item."""
    import json

    images, videos = MEDIA[key]
    # N_i of the images, then of the videos: a videos-first key takes them from its images-first twin (same media),
    # so nothing here depends on the order in which the reference lists the items of a videos-first prompt.
    sizes = _item_sizes(hf_reference, IMAGES_FIRST_TWIN.get(key, key))
    assert MEDIA[IMAGES_FIRST_TWIN.get(key, key)] == MEDIA[key]
    ratio, video_ratio = 0.5, 0.2
    kept = [keep_count(n, ratio) for n in sizes[:len(images)]] + [keep_count(n, video_ratio)
                                                                   for n in sizes[len(images):]]
    expected = {"kept": sum(kept), "total": sum(sizes), "images": len(images), "videos": len(videos)}
    plugin = arch_setup[3]
    before = _metric(plugin.base_url, "vs_vllm:videos_total")
    for _ in range(2):
        media_images, media_videos = _media(key)
        raw = openai_client(plugin.base_url).chat.completions.with_raw_response.create(
            model="tiny", messages=chat_messages(media_images, QUESTION, videos=media_videos,
                                                 videos_first=key in VIDEOS_FIRST), max_tokens=2,
            temperature=0.0, extra_body={"retention_ratio": ratio, "video_retention_ratio": video_ratio})
        assert json.loads(raw.text)["usage"]["visual_tokens"] == expected
        assert int(raw.headers["x-vs-visual-tokens-kept"]) == expected["kept"]
        assert int(raw.headers["x-vs-visual-tokens-total"]) == expected["total"]
    assert _metric(plugin.base_url, "vs_vllm:videos_total") - before == 2 * len(videos)


def test_video_retention_ratio_prunes_videos_only(arch_setup, hf_reference) -> None:
    tokens, prompt_tokens, kept = hf_reference("image+video", 1.0, video_ratio=0.2)
    sizes = _item_sizes(hf_reference, "image+video")
    assert [int(k.numel()) for k in kept] == [sizes[0], keep_count(sizes[1], 0.2)]
    resp = _chat(arch_setup[3], "image+video", retention_ratio=1.0, video_retention_ratio=0.2)
    assert resp.usage.prompt_tokens == prompt_tokens
    assert resp.choices[0].token_ids == tokens
    # Inside mm_processor_kwargs too, with the image pruned at its own ratio.
    tokens, prompt_tokens, _ = hf_reference("image+video", 0.5, video_ratio=0.1)
    resp = _chat(arch_setup[3], "image+video", mm_processor_kwargs={"retention_ratio": 0.5,
                                                                     "video_retention_ratio": 0.1})
    assert resp.usage.prompt_tokens == prompt_tokens
    assert resp.choices[0].token_ids == tokens


@pytest.mark.parametrize("method", ["temporal", "random", "uniform", "norm", "divprune", "dart", "visionselector_mmr"])
def test_video_methods_match_hf_reference(arch_setup, hf_reference, method) -> None:
    tokens, prompt_tokens, _ = hf_reference("image+video", 0.3, method, seed=11)
    resp = _chat(arch_setup[3], "image+video", retention_ratio=0.3, selection_method=method, selection_seed=11)
    assert resp.usage.prompt_tokens == prompt_tokens
    assert resp.choices[0].token_ids == tokens


def test_same_video_at_changing_ratios_with_prefix_caching(arch_setup, hf_reference) -> None:
    for ratio in [0.5, 0.1, 1.0, 0.5, 0.3, 0.1]:
        tokens, prompt_tokens, _ = hf_reference("video", ratio)
        resp = _chat(arch_setup[3], "video", retention_ratio=ratio)
        assert resp.usage.prompt_tokens == prompt_tokens, ratio
        assert resp.choices[0].token_ids == tokens, ratio


def test_chunked_prefill_through_a_video(arch_setup, chunked_plugin) -> None:
    for key, ratio in [("video", 1.0), ("video", 0.3), ("image+video", 0.3), ("two-videos", 0.5),
                       ("video+image", 0.2)]:
        a = _chat(chunked_plugin, key, retention_ratio=ratio)
        b = _chat(arch_setup[3], key, retention_ratio=ratio)
        assert a.usage.prompt_tokens == b.usage.prompt_tokens
        assert a.choices[0].token_ids == b.choices[0].token_ids, (key, ratio)


def test_video_then_image_with_both_pruned_matches_hf_reference(arch_setup, hf_reference) -> None:
    """The image after a pruned video keeps its own tokens and positions (vLLM's EVS once broke exactly this)."""
    tokens, prompt_tokens, kept = hf_reference("video+image", 0.5, video_ratio=0.1)
    full_prompt = hf_reference("video+image", 1.0)[1]
    resp = _chat(arch_setup[3], "video+image", retention_ratio=0.5, video_retention_ratio=0.1)
    assert resp.usage.prompt_tokens == prompt_tokens < full_prompt
    assert resp.choices[0].token_ids == tokens


@pytest.mark.parametrize("ratio", [0.5, 0.2, 0.05])
def test_qwen3_vl_timestamps_survive_pruning_and_placeholders_equal_the_kept_count(arch_setup, hf_reference,
                                                                                   ratio) -> None:
    """Qwen3-VL writes a timestamp and frame markers before every frame of a video. Pruning must keep all of them and
    change only the number of video placeholders, to exactly the kept count (vLLM issue 30847: EVS counted the
    timestamps into the pruned budget)."""
    import json

    if arch_setup[0] != "qwen3_vl":
        pytest.skip("timestamps between frames are Qwen3-VL's video layout")
    config = json.loads((arch_setup[1] / "config.json").read_text())
    video_token = config["video_token_id"]
    full = _chat(arch_setup[3], "video", retention_ratio=1.0).prompt_token_ids
    pruned = _chat(arch_setup[3], "video", retention_ratio=ratio).prompt_token_ids
    (size,) = _item_sizes(hf_reference, "video")
    assert full.count(video_token) == size
    assert pruned.count(video_token) == keep_count(size, ratio)
    # everything else, timestamps and frame markers included, is the unpruned prompt's text, in order
    assert [t for t in pruned if t != video_token] == [t for t in full if t != video_token]
    frames = config["vision_start_token_id"]
    assert pruned.count(frames) == full.count(frames) > 1
