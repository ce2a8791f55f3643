"""Offline ``LLM.generate`` with the plugin enabled: per-prompt mm_processor_kwargs, one batch of mixed ratios."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from vs_vllm.testing.images import noise_image
from vs_vllm.testing.server import cpu_env

pytestmark = [pytest.mark.slow, pytest.mark.runner_matrix]

PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
          "<|vision_start|><|image_pad|><|vision_end|>What colour is the shape?<|im_end|>\n<|im_start|>assistant\n")
CASES = [(1.0, "visionselector"), (0.5, "visionselector"), (0.2, "visionselector"), (0.3, "uniform"), (0.1, "dart")]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vs_vllm.testing.images import noise_image

    def main():
        from vllm import LLM, SamplingParams
        model, prompt, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        llm = LLM(model=model, max_model_len=2048, max_num_seqs=8, enforce_eager=True, dtype="float32",
                  limit_mm_per_prompt={"image": 1, "video": 0}, distributed_executor_backend="uni",
                  kv_cache_memory_bytes=256 * 1024 * 1024)
        requests = [{"prompt": prompt, "multi_modal_data": {"image": noise_image(300, 200, seed=5)},
                     "mm_processor_kwargs": {"retention_ratio": r, "selection_method": m}} for r, m in cases]
        outs = llm.generate(requests, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        print("RESULT " + json.dumps([[len(o.prompt_token_ids), list(o.outputs[0].token_ids)] for o in outs]))

    if __name__ == "__main__":
        main()
    """
)


def test_offline_batch_of_mixed_ratios_matches_hf(tiny_model_dir, scorer_file, tmp_path) -> None:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vs_vllm.hf.qwen2_5_vl import QwenVLSelector
    from vs_vllm.selection.checkpoint import load_scorer

    script = tmp_path / "offline.py"
    script.write_text(SCRIPT)
    env = cpu_env(VS_VLLM_ENABLE="1", VS_VLLM_SCORER=str(scorer_file), VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([sys.executable, str(script), str(tiny_model_dir), PROMPT, json.dumps(CASES)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    results = json.loads(line[len("RESULT "):])

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    selector = QwenVLSelector(model, load_scorer(scorer_file))
    inputs = processor(text=[PROMPT], images=[noise_image(300, 200, seed=5)], return_tensors="pt")
    for (ratio, method), (prompt_len, tokens) in zip(CASES, results):
        ref_tokens, pruned = selector.generate(inputs, ratio=ratio, method=method, max_new_tokens=8)
        assert prompt_len == pruned.prompt_tokens, (ratio, method)
        assert tokens == ref_tokens, (ratio, method)
