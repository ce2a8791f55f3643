"""Decode step time of the engine alone, stock vs plugin: offline ``LLM`` (no API server, no HTTP client), the decode
benchmark's model and settings, 4 text prompts decoding 96 tokens, 12 timed batches after a warm-up.

    VS_VLLM_ENABLE= python benchmarks/decode/offline_steps.py stock .cache/bench-qwen2_5_vl
    VS_VLLM_ENABLE=1 VS_VLLM_SCORER=SCORER python benchmarks/decode/offline_steps.py plugin .cache/bench-qwen2_5_vl

(the label only names the output; the environment decides whether the plugin is on). Prints one RESULT line: the
median and the minimum wall time per decode step (batch time / 96).
"""

from __future__ import annotations

import json
import sys
import time

STEPS = 96
BATCHES = 12
QUESTION = ("Write a detailed description of a busy harbour at dawn: the boats, their colours, the people on the "
            "quays and the weather.")


def prompts(seed: int) -> list[str]:
    return [f"Request {seed * 10 + i:09d}. {QUESTION}" for i in range(4)]


def main() -> None:
    label, model_dir = sys.argv[1], sys.argv[2]
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="float32", max_model_len=2048, max_num_seqs=8, max_num_batched_tokens=2048,
              kv_cache_memory_bytes=64 * 2**20, limit_mm_per_prompt={"image": 1, "video": 0},
              enable_prefix_caching=False)
    params = SamplingParams(max_tokens=STEPS, min_tokens=STEPS, ignore_eos=True, temperature=0)
    llm.generate(prompts(0), params, use_tqdm=False)
    times = []
    for batch in range(BATCHES):
        start = time.perf_counter()
        llm.generate(prompts(batch + 1), params, use_tqdm=False)
        times.append(time.perf_counter() - start)
    times.sort()
    print("RESULT " + json.dumps({"label": label, "median_ms_per_step": 1000 * times[len(times) // 2] / STEPS,
                                  "min_ms_per_step": 1000 * times[0] / STEPS}))


if __name__ == "__main__":  # vLLM's engine process is spawned: the module must not run on import
    main()
