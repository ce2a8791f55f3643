"""Qwen2-VL: the Qwen2-VL family layout (the adapter defaults) and vLLM's Qwen2-VL classes.

vLLM's Qwen2-VL does not implement the pruning hook; the generic model mixin supplies it (and the marker the runners
test). Its parsed inputs are keyed "images"/"videos" where Qwen2.5-VL uses "image"/"video".
"""

from __future__ import annotations

from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vs_vllm.vllm_plugin.pruning.adapter import ArchitectureAdapter
from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin
from vs_vllm.vllm_plugin.pruning.processor import PruningProcessingInfoMixin, PruningProcessorMixin


class Qwen2VLAdapter(ArchitectureAdapter):
    architecture = "Qwen2VLForConditionalGeneration"
    parsed_input_keys = {"image": "images", "video": "videos"}
    vllm_model = "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration"


ADAPTER = Qwen2VLAdapter()


class VsQwen2VLProcessingInfo(PruningProcessingInfoMixin, Qwen2VLProcessingInfo):
    vs_adapter = ADAPTER


class VsQwen2VLMultiModalProcessor(PruningProcessorMixin, Qwen2VLMultiModalProcessor):
    vs_adapter = ADAPTER


@MULTIMODAL_REGISTRY.register_processor(
    VsQwen2VLMultiModalProcessor, info=VsQwen2VLProcessingInfo, dummy_inputs=Qwen2VLDummyInputsBuilder
)
class VsQwen2VLForConditionalGeneration(PruningModelMixin, Qwen2VLForConditionalGeneration):
    vs_adapter = ADAPTER
