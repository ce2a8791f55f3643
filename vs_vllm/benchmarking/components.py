"""Time the parts of one prefill separately in transformers (CPU or GPU): preprocessing, vision tower, LLM prefill.

These give the Amdahl ceiling of pruning (only the LLM part shrinks with the kept tokens). The vision tower is timed
through ``model.model.get_image_features`` (``get_video_features`` for a video), the LLM through
``model.model.language_model`` on the prompt embeddings (plus the LM head on the last token, as vLLM computes logits
for it only), with the same weights vLLM serves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vs_vllm.benchmarking.flops import Media

__all__ = ["ComponentTimes", "time_components"]


@dataclass
class ComponentTimes:
    """Median wall times (seconds) for one image size or video."""

    image: str  # the media label: "WxH" for an image, "<frames>f@WxH" for a video
    visual_tokens: int  # N
    text_tokens: int
    t_proc: float  # HF processor (resize, normalize, patchify, tokenize)
    t_enc: float  # vision tower incl. merger
    t_llm: float  # LLM prefill over N + text tokens
    t_llm_at: dict[int, float] = field(default_factory=dict)  # measured LLM prefill at K kept tokens
    threads: int = 1
    repeats: int = 0


def _median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_components(
    model_dir: str | Path,
    image_sizes: Sequence[tuple[int, int] | Media],
    question: str,
    *,
    keeps_for: Callable[[int], Sequence[int]] = lambda n: (),
    threads: int | None = None,
    repeats: int = 5,
    log=print,
) -> list[ComponentTimes]:
    """Median component times per media item (fp32, CPU): ``(w, h)`` tuples or :class:`Media` (images or videos).
    ``keeps_for(N)`` lists the kept-token counts K at which the LLM prefill is also measured directly (to check how
    linear it is in K)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vs_vllm.hf.qwen2_5_vl import QwenVLSelector
    from vs_vllm.testing.images import noise_image, noise_video

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        processor = AutoProcessor.from_pretrained(str(model_dir))
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        selector = QwenVLSelector(model)
        lm, head = model.model.language_model, model.lm_head
        out: list[ComponentTimes] = []
        for item in image_sizes:
            media = item if isinstance(item, Media) else Media(*item)
            w, h = media.width, media.height
            messages = [{"role": "user", "content": [{"type": media.kind}, {"type": "text", "text": question}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            if media.frames:
                video = noise_video(w, h, media.frames, seed=12345 + w)
                # All frames at vLLM's frame rate for data:video/jpeg (JpegVideo.metadata), none sampled away: the
                # processor then sees exactly what the server's does.
                media_kw = {"videos": [video.frames()], "video_metadata": [video.metadata()],
                            "do_sample_frames": False}
                pixels, grid_key, encode = "pixel_values_videos", "video_grid_thw", model.model.get_video_features
            else:
                media_kw = {"images": [noise_image(w, h, seed=12345 + w)]}
                pixels, grid_key, encode = "pixel_values", "image_grid_thw", model.model.get_image_features

            def process(text=text, media_kw=media_kw):
                return processor(text=[text], return_tensors="pt", **media_kw)

            t_proc = _median_time(process, repeats)
            inputs = process()
            pv, grid = inputs[pixels], inputs[grid_key]
            with torch.inference_mode():
                t_enc = _median_time(lambda pv=pv, grid=grid, encode=encode: encode(pv, grid), repeats)
                full = selector.prepare(inputs, ratio=1.0)
                n = full.visual_total
                text_tokens = full.prompt_tokens - n

                def prefill(p):
                    hidden = lm(inputs_embeds=p.inputs_embeds, position_ids=p.position_ids, use_cache=False)
                    return head(hidden.last_hidden_state[:, -1])

                t_llm = _median_time(lambda p=full: prefill(p), repeats)
                at: dict[int, float] = {}
                for k in sorted(set(keeps_for(n))):
                    if k >= n:
                        at[n] = t_llm
                        continue
                    pruned = selector.prepare(inputs, ratio=k / n + 1e-9, method="uniform")
                    at[pruned.visual_kept] = _median_time(lambda p=pruned: prefill(p), repeats)
            row = ComponentTimes(media.label, n, text_tokens, t_proc, t_enc, t_llm, at, torch.get_num_threads(),
                                 repeats)
            log(f"[bench] HF components {row.image}: N={n} text={text_tokens} proc {t_proc * 1e3:.0f} ms, "
                f"ViT {t_enc * 1e3:.0f} ms, LLM {t_llm * 1e3:.0f} ms ({row.threads} thread(s))")
            out.append(row)
        return out
    finally:
        torch.set_num_threads(old_threads)
