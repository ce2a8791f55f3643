"""The loaded vLLM model of each adapter, inspected in-process (offline ``LLM``, plugin enabled):

- pruning was switched on before the base ``__init__`` read it, and encoder CUDA graphs are off (their path skips
  ``embed_multimodal``, so pruned counts and position channels would be lost);
- the runner calls the pruning hook (V1: its pruning flag, set on the CPU by the CPU-runner patch; MRv2: it created
  its ``MultiModalPruner``) and the model carries vLLM's pruning marker;
- the vision tower is micro-batched within the encoder budget: with a budget small enough to force splitting, no
  tower call exceeds it and the outputs equal one unsplit call.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from vs_vllm.testing.server import cpu_env
from vs_vllm.vllm_plugin.patches import installed_vllm_version
from vs_vllm.vllm_plugin.patches.surface import probed_touches
from vs_vllm.vllm_plugin.pruning.encoder_budget import plan_micro_batches

pytestmark = [pytest.mark.slow, pytest.mark.runner_matrix]

ARCHITECTURES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch

    def inspect_model(model):
        from transformers import AutoProcessor
        from vs_vllm.testing.images import noise_image
        from vs_vllm.vllm_plugin.pruning.fields import field_names, method_id

        out = {
            "class": type(model).__name__,
            "cudagraph_modalities": list(model.get_encoder_cudagraph_config().modalities),
            "model_pruning_flag": getattr(model, "is_multimodal_pruning_enabled", None),
            "marker": bool(getattr(model, "supports_multimodal_pruning", False)),
            "profiled_budget": model.vs_encoder_budget,
        }
        proc = AutoProcessor.from_pretrained(sys.argv[1])
        images = [noise_image(w, h, seed=i) for i, (w, h) in enumerate([(300, 200), (224, 224), (140, 420)])]
        batch = proc.image_processor(images=images, return_tensors="pt")
        grid = batch["image_grid_thw"]
        n = (grid.prod(-1) // 4).tolist()
        keep_name, method_name, seed_name, lambda_name = field_names("image")
        kwargs = dict(pixel_values=batch["pixel_values"].to(torch.float32), image_grid_thw=grid)
        kwargs[keep_name] = torch.tensor([max(1, int(x * 0.3)) for x in n])
        methods = ("visionselector", "divprune", "visionselector_mmr")
        kwargs[method_name] = torch.tensor([method_id(m) for m in methods])
        kwargs[seed_name] = torch.full((3,), -1)
        kwargs[lambda_name] = torch.full((3,), 0.3, dtype=torch.float64)

        calls = []
        original = model.visual.forward
        def counting(x, *args, **kw):
            calls.append(int(x.shape[0]))
            return original(x, *args, **kw)
        model.visual.forward = counting
        with torch.no_grad():
            model.vs_encoder_budget = None
            whole = [t.clone() for t in model.embed_multimodal(**dict(kwargs))]
            whole_calls = list(calls)
            calls.clear()
            model.vs_encoder_budget = max(n) + 1  # forces one call per image here
            split = [t.clone() for t in model.embed_multimodal(**dict(kwargs))]
        model.visual.forward = original
        # The attributes and keys the plugin reads from the loaded model, by the table (probe "loaded_model").
        from vs_vllm.vllm_plugin.patches import installed_vllm_version
        from vs_vllm.vllm_plugin.patches.surface import check_member, probed_touches
        parsed = model._parse_and_validate_multimodal_inputs(**dict(kwargs))
        touches = probed_touches("loaded_model", installed_vllm_version(), None, [model.vs_adapter.architecture])
        out["model_checked"] = [f"{t.symbol}[{t.member}]" for t in touches]
        out["model_problems"] = [p for p in (check_member(t, parsed if t.kind == "key" else model) for t in touches)
                                 if p]
        out["tokens"] = n
        out["whole_calls"] = whole_calls
        out["split_calls"] = calls
        out["shapes"] = [list(t.shape) for t in split]
        out["same_shapes"] = [list(a.shape) == list(b.shape) for a, b in zip(whole, split)]
        out["channels_equal"] = all(torch.equal(a[:, -6:], b[:, -6:]) for a, b in zip(whole, split))
        out["max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(whole, split))
        return out

    def main():
        from vllm import LLM
        llm = LLM(model=sys.argv[1], max_model_len=2048, max_num_seqs=4, enforce_eager=True, dtype="float32",
                  limit_mm_per_prompt={"image": 3, "video": 0}, distributed_executor_backend="uni",
                  kv_cache_memory_bytes=128 * 1024 * 1024)
        result = llm.apply_model(inspect_model)[0]
        runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
        state = getattr(runner, "model_state", None)
        if state is not None:  # Model Runner V2: the hook runs exactly when it created a pruner
            result["runner"] = "mrv2"
            result["runner_pruning_flag"] = getattr(state, "mm_pruner", None) is not None
        else:
            result["runner"] = "v1"
            result["runner_pruning_flag"] = bool(getattr(runner, "is_multimodal_pruning_enabled", False))
        # The runner's attributes the plugin reads (probe "runner"; V1's media-steps patch), on this runner.
        from vs_vllm.vllm_plugin.patches import installed_vllm_version
        from vs_vllm.vllm_plugin.patches.surface import check_member, probed_touches
        touches = probed_touches("runner", installed_vllm_version(), result["runner"], [])
        result["runner_checked"] = [t.symbol for t in touches]
        result["runner_problems"] = [p for p in (check_member(t, runner) for t in touches) if p]
        print("RESULT " + json.dumps(result))

    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_vl"])
def test_loaded_model_guards(arch, tiny_model_dir, tiny_qwen2_vl_dir, scorer_file, tmp_path, vllm_runner) -> None:
    model_dir = {"qwen2_5_vl": tiny_model_dir, "qwen2_vl": tiny_qwen2_vl_dir}[arch]
    script = tmp_path / "inspect_loaded_model.py"
    script.write_text(SCRIPT)
    env = cpu_env(VS_VLLM_ENABLE="1", VS_VLLM_SCORER=str(scorer_file), VLLM_ENABLE_V1_MULTIPROCESSING="0",
                  VLLM_ALLOW_INSECURE_SERIALIZATION="1")
    proc = subprocess.run([sys.executable, str(script), str(model_dir)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])

    assert result["runner"] == vllm_runner
    # Every attribute and key the table says a loaded model and its runner must have, looked up on the real ones.
    version = installed_vllm_version()
    model_touches = probed_touches("loaded_model", version, None, [ARCHITECTURES[arch]])
    assert result["model_checked"] == [f"{t.symbol}[{t.member}]" for t in model_touches] and model_touches
    assert result["model_problems"] == []
    runner_touches = probed_touches("runner", version, vllm_runner, [])
    assert result["runner_checked"] == [t.symbol for t in runner_touches]
    assert bool(runner_touches) == (vllm_runner == "v1")  # only V1's media-steps patch reads runner state
    assert result["runner_problems"] == []
    assert result["class"].startswith("Vs")
    assert result["cudagraph_modalities"] == []
    assert result["marker"] is True and result["runner_pruning_flag"] is True
    if arch == "qwen2_5_vl":
        # Qwen2.5-VL reads the switch in its own __init__: True proves it was on before the base class ran.
        assert result["model_pruning_flag"] is True
    assert result["profiled_budget"] and result["profiled_budget"] >= max(result["tokens"])

    tokens = result["tokens"]
    assert len(result["whole_calls"]) == 1  # no budget: one tower call
    budget = max(tokens) + 1
    groups = plan_micro_batches(tokens, budget)
    assert len(groups) >= 2, tokens  # the budget really forces splitting
    assert len(result["split_calls"]) == len(groups)
    patches_per_token = result["whole_calls"][0] // sum(tokens)
    assert result["split_calls"] == [sum(tokens[a:b]) * patches_per_token for a, b in groups]
    assert all(c <= budget * patches_per_token for c in result["split_calls"])
    assert all(result["same_shapes"]) and result["channels_equal"]
    assert result["max_abs_diff"] < 1e-4
    assert [s[0] for s in result["shapes"]] == [max(1, int(n * 0.3)) for n in tokens]
