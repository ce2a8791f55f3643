"""Patch: the renderer's thread-pool calls keep the request's ``contextvars``.

What: ``vllm.renderers.base.make_async``, replaced by a wrapper that runs each call inside a copy of the caller's
context (what ``asyncio.to_thread`` does). Same executor, same thread-safety; only the context travels.
Why: the API server runs the multimodal processor on a thread pool via ``loop.run_in_executor``, which drops
``contextvars``; the processor reports each request's kept/total visual tokens through a contextvar that the HTTP
middleware opened (``request_stats.py``).
Versions: vLLM 0.32.x, 0.33.x and 0.34.x (``renderers/base.make_async`` unchanged), both runners.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any


__all__ = ["RENDERER_MODULE", "propagate_context_to_renderer"]

RENDERER_MODULE = "vllm.renderers.base"
PATCH_MARK = "__vs_vllm_patched__"



def propagate_context_to_renderer(renderer_base: Any = None) -> bool:
    """Idempotent; raises ``PatchTargetMissing`` naming the symbol if vLLM moved ``make_async``."""
    from vs_vllm.vllm_plugin.patches import require_attr

    if renderer_base is None:
        from vllm.renderers import base as renderer_base
    original = require_attr(renderer_base, "make_async", "vllm.renderers.base:make_async")
    if getattr(original, PATCH_MARK, False):
        return True

    @functools.wraps(original)
    def make_async(func, executor=None):
        run_in_executor = original(_run_in_context, executor=executor)

        @functools.wraps(func)
        def call(*args, **kwargs):
            # Captured here, in the caller (the request's task); entered in the executor thread.
            return run_in_executor(contextvars.copy_context(), func, *args, **kwargs)

        return call

    setattr(make_async, PATCH_MARK, True)
    renderer_base.make_async = make_async
    return True


def _run_in_context(context: contextvars.Context, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return context.run(func, *args, **kwargs)
