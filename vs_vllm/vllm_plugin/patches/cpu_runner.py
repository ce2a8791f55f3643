"""Patch: the CPU runner sets the pruning flag the GPU runner sets.

What: ``vllm.v1.worker.cpu_model_runner.CPUModelRunner.load_model``, wrapped: after the original, the runner's
``is_multimodal_pruning_enabled`` is set by the GPU runner's own rule (``GPUModelRunner.load_model``).
Why: the CPU runner replaces ``load_model`` and never sets the flag, so on CPU the hook is never called (vllm-ascend
#11067 hit the same gap). Applied only on the CPU platform, when vLLM imports the runner (importing it eagerly costs
~5 s in processes that never run a model).
Versions: vLLM 0.32.x, V1 runner only (0.33.x has no CPU build, the file is unchanged in its wheel; 0.34 deleted the
V1 runner). Model Runner V2 needs no patch: it creates its pruner from the model config's flag
(``maybe_create_mm_pruner``), which ``pruning_flag.py`` sets.
"""

from __future__ import annotations

import functools
from typing import Any


__all__ = ["CPU_RUNNER_MODULE", "patch_cpu_runner", "runner_pruning_flag"]

CPU_RUNNER_MODULE = "vllm.v1.worker.cpu_model_runner"
PATCH_MARK = "__vs_vllm_patched__"



def patch_cpu_runner(cpu_model_runner: Any = None) -> bool:
    """Idempotent. True when the patch is (now) in place; ``PatchTargetMissing`` naming the symbol otherwise."""
    from vs_vllm.vllm_plugin.patches import require_attr

    if cpu_model_runner is None:
        from vllm.v1.worker import cpu_model_runner
    symbol = f"{CPU_RUNNER_MODULE}:CPUModelRunner.load_model"
    runner_cls = require_attr(cpu_model_runner, "CPUModelRunner", symbol)
    original = require_attr(runner_cls, "load_model", symbol)
    if getattr(original, PATCH_MARK, False):
        return True

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        self.is_multimodal_pruning_enabled = runner_pruning_flag(self.model_config, self.get_model())
        return result

    setattr(load_model, PATCH_MARK, True)
    runner_cls.load_model = load_model
    return True


def runner_pruning_flag(model_config: Any, model: Any) -> bool:
    """The GPU runner's rule for its ``is_multimodal_pruning_enabled`` flag (gpu_model_runner.py, load_model)."""
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    mm_config = getattr(model_config, "multimodal_config", None)
    return bool(supports_multimodal_pruning(model) and mm_config is not None and mm_config.is_multimodal_pruning_enabled())
