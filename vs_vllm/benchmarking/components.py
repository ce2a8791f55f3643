"""Time the parts of one prefill separately in transformers (CPU or GPU): preprocessing, vision tower, LLM prefill.

These give the Amdahl ceiling of pruning (only the LLM part shrinks with the kept tokens). The vision tower is timed
through ``model.model.get_image_features``, the LLM through ``model.model.language_model`` on the prompt embeddings
(plus the LM head on the last token, as vLLM computes logits for it only), with the same weights vLLM serves.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ComponentTimes", "time_components"]


@dataclass
class ComponentTimes:
    """Median wall times (seconds) for one image size."""

    image: str  # "WxH"
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
    image_sizes: Sequence[tuple[int, int]],
    question: str,
    *,
    keeps_for: Callable[[int], Sequence[int]] = lambda n: (),
    threads: int | None = None,
    repeats: int = 5,
    log=print,
) -> list[ComponentTimes]:
    """Median component times per image size (fp32, CPU). ``keeps_for(N)`` lists the kept-token counts K at which the
    LLM prefill is also measured directly (to check how linear it is in K)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vs_vllm.hf.qwen2_5_vl import QwenVLSelector
    from vs_vllm.testing.images import noise_image

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        processor = AutoProcessor.from_pretrained(str(model_dir))
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        selector = QwenVLSelector(model)
        lm, head = model.model.language_model, model.lm_head
        out: list[ComponentTimes] = []
        for w, h in image_sizes:
            image = noise_image(w, h, seed=12345 + w)
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

            def process(text=text, image=image):
                return processor(text=[text], images=[image], return_tensors="pt")

            t_proc = _median_time(process, repeats)
            inputs = process()
            pv, grid = inputs["pixel_values"], inputs["image_grid_thw"]
            with torch.inference_mode():
                t_enc = _median_time(lambda pv=pv, grid=grid: model.model.get_image_features(pv, grid), repeats)
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
            row = ComponentTimes(f"{w}x{h}", n, text_tokens, t_proc, t_enc, t_llm, at, torch.get_num_threads(),
                                 repeats)
            log(f"[bench] HF components {row.image}: N={n} text={text_tokens} proc {t_proc * 1e3:.0f} ms, "
                f"ViT {t_enc * 1e3:.0f} ms, LLM {t_llm * 1e3:.0f} ms ({row.threads} thread(s))")
            out.append(row)
        return out
    finally:
        torch.set_num_threads(old_threads)
