"""Architecture adapters: architecture name -> the vs-vllm model class that replaces vLLM's.

One registry, read by ``register()`` (in every vLLM process) to point vLLM's ``ModelRegistry`` at our subclasses with
lazy "module:Class" strings, so importing it never imports vLLM models or initialises a device. Each adapter module
(one per architecture) defines the model, processor and processing-info subclasses by mixing the generic pruning
layer (``vs_vllm.vllm_plugin.pruning``) in front of vLLM's classes, plus an ``ArchitectureAdapter`` with the facts
that differ.
"""

from __future__ import annotations

__all__ = ["ADAPTERS", "register_models", "served_architectures"]

ADAPTERS: dict[str, str] = {
    "Qwen2VLForConditionalGeneration": "vs_vllm.vllm_plugin.adapters.qwen2_vl:VsQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration":
        "vs_vllm.vllm_plugin.adapters.qwen2_5_vl:VsQwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "vs_vllm.vllm_plugin.adapters.qwen3_vl:VsQwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration":
        "vs_vllm.vllm_plugin.adapters.qwen3_vl:VsQwen3VLMoeForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration": "vs_vllm.vllm_plugin.adapters.qwen3_5:VsQwen3_5ForConditionalGeneration",
}


def served_architectures() -> list[str]:
    return sorted(ADAPTERS)


def register_models() -> None:
    """Point vLLM's model registry at our subclasses (public API: ``ModelRegistry.register_model``)."""
    from vllm import ModelRegistry

    for arch, target in ADAPTERS.items():
        ModelRegistry.register_model(arch, target)


def load_model_class(arch: str):
    """Import and return the model class registered for ``arch`` (tests, tools)."""
    import importlib

    module, _, name = ADAPTERS[arch].partition(":")
    return getattr(importlib.import_module(module), name)
