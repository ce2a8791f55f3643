"""The HF reference with videos: unpruned it is transformers' own ``generate``; pruned it keeps K tokens per video.

Qwen3-VL (per-frame runs between timestamp text, DeepStack) goes through the reference's per-frame path; Qwen2.5-VL
through the contiguous one. (Qwen2.5-VL is compared with ``generate`` on a one-temporal-patch video, whose extent does not
exceed its height and width: beyond that, transformers 5.19's ``get_rope_index`` continues the text after a video at
base + max(h, w) while vLLM and the original Qwen2.5-VL code continue one past the video's largest position, which
the reference follows; the vLLM e2e tests pin that case against stock vLLM.)
"""

from __future__ import annotations

import pytest
import torch

from vs_vllm.selection.budget import keep_count
from vs_vllm.testing.images import noise_image, noise_video

# transformers models (loaded or run): make test, not make test-fast.
pytestmark = pytest.mark.slow

ARCHS = {"qwen3_vl": (8, 112, 112), "qwen2_5_vl": (2, 112, 84)}  # arch -> (frames, width, height)


@pytest.fixture(scope="module", params=list(ARCHS))
def setup(request, tiny_arch_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vs_vllm.hf.qwen_vl import QwenVLSelector
    from vs_vllm.selection.scorer import TransformerScorer

    model_dir = tiny_arch_dir(request.param)
    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(5)
    scorer = TransformerScorer(model.config.get_text_config().hidden_size)
    scorer.reset_parameters(init_std=0.05)
    frames, width, height = ARCHS[request.param]
    video = noise_video(width, height, frames, seed=9)
    content = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "What happens?"}]
    prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=False)
    inputs = proc(text=[prompt], images=[noise_image(140, 84, seed=4)], videos=[video.frames()],
                  video_metadata=[video.metadata()], do_sample_frames=False, return_tensors="pt")
    return model, QwenVLSelector(model, scorer), inputs


def test_ratio_one_is_transformers_generate(setup) -> None:
    model, selector, inputs = setup
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    tokens, prompt = selector.generate(inputs, ratio=1.0, max_new_tokens=8)
    assert tokens == expected.tolist()
    assert prompt.prompt_tokens == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("ratio,video_ratio", [(0.5, None), (1.0, 0.1), (0.3, 0.05)])
@pytest.mark.parametrize("method", ["visionselector", "uniform", "temporal"])
def test_pruned_keeps_k_per_item_and_every_text_token(setup, ratio, video_ratio, method) -> None:
    model, selector, inputs = setup
    prompt = selector.prepare(inputs, ratio=ratio, method=method, video_ratio=video_ratio)
    n_image, n_video = (int(g.prod()) // 4 for g in (inputs["image_grid_thw"][0], inputs["video_grid_thw"][0]))
    k_image, k_video = keep_count(n_image, ratio), keep_count(n_video, ratio if video_ratio is None else video_ratio)
    assert sorted(int(k.numel()) for k in prompt.kept) == sorted([k_image, k_video])
    ids = inputs["input_ids"][0]
    media = (ids == model.config.image_token_id) | (ids == model.config.video_token_id)
    assert prompt.prompt_tokens == int((~media).sum()) + k_image + k_video
    # text tokens are all there, in order
    pruned = prompt.input_ids[0]
    pruned_media = (pruned == model.config.image_token_id) | (pruned == model.config.video_token_id)
    assert torch.equal(pruned[~pruned_media], ids[~media])
    if selector.has_deepstack:
        assert all(level.shape[0] == k_image + k_video for level in prompt.deepstack_embeds)
        assert int(prompt.visual_pos_mask.sum()) == k_image + k_video
    tokens, _ = selector.generate(inputs, ratio=ratio, method=method, video_ratio=video_ratio, max_new_tokens=3)
    assert len(tokens) == 3
