"""Qwen2.5-VL: the Qwen2-VL family layout (the adapter defaults) and vLLM's Qwen2.5-VL classes."""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vs_vllm.vllm_plugin.pruning.adapter import ArchitectureAdapter
from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin
from vs_vllm.vllm_plugin.pruning.processor import PruningProcessingInfoMixin, PruningProcessorMixin


class Qwen2_5_VLAdapter(ArchitectureAdapter):
    architecture = "Qwen2_5_VLForConditionalGeneration"
    vllm_model = "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration"

    @property
    def private_api(self) -> tuple[Any, ...]:
        from vs_vllm.vllm_plugin.patches import ApiTouch

        # temporal_factors reads it with .get (Qwen2-VL's processor has no such field): a rename here would
        # silently give Qwen2.5-VL videos unscaled M-RoPE time positions, so the processor probe looks for it.
        return (*super().private_api, ApiTouch(
            "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply", "key", None,
            "a video's seconds per temporal patch (M-RoPE time positions)", f"adapter {type(self).__name__}",
            member="mm_kwargs.video.0.second_per_grid_ts", probe="processor"))


ADAPTER = Qwen2_5_VLAdapter()


class VsQwen2_5_VLProcessingInfo(PruningProcessingInfoMixin, Qwen2_5_VLProcessingInfo):
    vs_adapter = ADAPTER


class VsQwen2_5_VLMultiModalProcessor(PruningProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    vs_adapter = ADAPTER


@MULTIMODAL_REGISTRY.register_processor(
    VsQwen2_5_VLMultiModalProcessor, info=VsQwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class VsQwen2_5_VLForConditionalGeneration(PruningModelMixin, Qwen2_5_VLForConditionalGeneration):
    vs_adapter = ADAPTER
