"""Patch: the V1 runner calls the pruning hook only on steps that have media rows in flight.

What: ``vllm.v1.worker.gpu_model_runner.GPUModelRunner._gather_mm_embeddings`` (the CPU runner inherits it),
wrapped: when no request of the step has a media item overlapping its scheduled window, the original runs with the
runner's ``is_multimodal_pruning_enabled`` off for that call (restored right after).
Why: with the flag on, the V1 runner calls ``recompute_mrope_positions`` for every request on every step, decodes
included, and then recomputes and re-uploads the whole batch's M-RoPE positions a second time
(``should_sync_mrope_positions``): per-step host work that stock vLLM does not do, in steps where the hook has
nothing to rewrite. The V2 runner already calls it only for requests with media rows in the window; this gives the
V1 runner the same rule, at step granularity (a step with media in any request runs exactly as before).
Skipping is exact: a window without media rows leaves the positions unchanged, and the decode delta the hook would
return equals the one already stored -- text positions are exact from ``get_mrope_input_positions`` and the last
media chunk's hook call stored the final delta (a prompt that ends inside a media span has that span's last rows in
its last window, so the hook runs there).
Versions: vLLM 0.32.x and 0.33.x, V1 runner only (the V1 runner's loop is the same in both; 0.34 deleted it). Model
Runner V2 needs no patch: its pruner calls the hook only for requests with media rows in the step's window
(``MultiModalPruner.recompute``); ``tests/vllm/test_mrv2_hook.py`` shows it.
"""

from __future__ import annotations

import functools
from typing import Any


__all__ = ["GPU_RUNNER_MODULE", "patch_media_steps", "step_has_media_rows"]

GPU_RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"
PATCH_MARK = "__vs_vllm_patched__"



def patch_media_steps(gpu_model_runner: Any = None) -> bool:
    """Idempotent. True when the patch is (now) in place; ``PatchTargetMissing`` naming the symbol otherwise."""
    from vs_vllm.vllm_plugin.patches import require_attr

    if gpu_model_runner is None:
        from vllm.v1.worker import gpu_model_runner
    symbol = f"{GPU_RUNNER_MODULE}:GPUModelRunner._gather_mm_embeddings"
    runner_cls = require_attr(gpu_model_runner, "GPUModelRunner", symbol)
    original = require_attr(runner_cls, "_gather_mm_embeddings", symbol)
    if getattr(original, PATCH_MARK, False):
        return True

    @functools.wraps(original)
    def _gather_mm_embeddings(self, scheduler_output, shift_computed_tokens: int = 0, *args, **kwargs):
        if not self.is_multimodal_pruning_enabled or step_has_media_rows(self, scheduler_output, shift_computed_tokens):
            return original(self, scheduler_output, shift_computed_tokens, *args, **kwargs)
        self.is_multimodal_pruning_enabled = False
        try:
            return original(self, scheduler_output, shift_computed_tokens, *args, **kwargs)
        finally:
            self.is_multimodal_pruning_enabled = True

    setattr(_gather_mm_embeddings, PATCH_MARK, True)
    runner_cls._gather_mm_embeddings = _gather_mm_embeddings
    return True


def step_has_media_rows(runner: Any, scheduler_output: Any, shift_computed_tokens: int = 0) -> bool:
    """Whether any request of the step has a media item overlapping its scheduled token window (vLLM's own test)."""
    from vllm.multimodal.utils import get_mm_features_in_window

    scheduled = scheduler_output.num_scheduled_tokens
    for req_id in runner.input_batch.req_ids:
        req = runner.requests[req_id]
        if not req.mm_features:
            continue
        start = req.num_computed_tokens + shift_computed_tokens
        if start >= req.mm_features[-1].mm_position.offset + req.mm_features[-1].mm_position.length:
            continue  # past the last item: every decode step lands here
        lo, hi = get_mm_features_in_window(req.mm_features, start=start, end=start + scheduled[req_id])
        if lo < hi:
            return True
    return False
