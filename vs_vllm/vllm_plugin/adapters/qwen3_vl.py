"""Qwen3-VL (dense) and Qwen3-VL-MoE: what differs from the Qwen2-VL family defaults.

- The vision output row is ``[main (out_hidden_size) | deepstack_1 .. deepstack_L]``; vLLM splits it after the merge
  and adds level i after LLM layer i. The scorer reads the main columns only (``scored_width``); the generic selection
  gathers whole rows, so every DeepStack level stays with its kept token (a dropped token is dropped at every layer).
- A video is one span per frame, separated by timestamp text (``<t seconds><|vision_start|>frame<|vision_end|>``), so
  ``media_spans`` walks the runs of media tokens inside each item's placeholder range instead of assuming one
  contiguous run per item. Images are one run of K_i tokens.
- Positions: interleaved M-RoPE changes how the three position rows map onto rotary frequencies, not the position
  ids, so the ``qwen2_mrope`` scheme applies unchanged: each frame or image is a (1, h, w) grid at its base and the
  text after it continues at base + max(h, w) (transformers' ``Qwen3VLModel.get_rope_index`` does the same).

The MoE variant shares the vision path and the processor; only the model and processing-info base classes differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration, Qwen3VLMoeProcessingInfo
from vllm.multimodal import MULTIMODAL_REGISTRY

from vs_vllm.selection.positions import MediaSpan
from vs_vllm.vllm_plugin.pruning.adapter import ArchitectureAdapter
from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin
from vs_vllm.vllm_plugin.pruning.processor import PruningProcessingInfoMixin, PruningProcessorMixin


def token_runs(tokens: Sequence[int], token: int, start: int, end: int) -> list[tuple[int, int]]:
    """(offset, length) of each maximal run of ``token`` in ``tokens[start:end]``."""
    runs: list[tuple[int, int]] = []
    i = start
    while i < end:
        if tokens[i] != token:
            i += 1
            continue
        j = i
        while j < end and tokens[j] == token:
            j += 1
        runs.append((i, j - i))
        i = j
    return runs


class Qwen3VLAdapter(ArchitectureAdapter):
    architecture = "Qwen3VLForConditionalGeneration"
    vllm_model = "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration"
    # Videos pass through unpruned: the placeholders of a pruned video must be laid out before selection knows which
    # frames its kept tokens come from (vLLM's EVS lumps them into the first frame), which this adapter does not do yet.
    pruned_modalities = ("image",)

    def scored_width(self, hf_config: Any) -> int:
        return int(hf_config.vision_config.out_hidden_size)

    def media_spans(self, model: Any, input_tokens: Sequence[int], mm_features: Sequence[Any]) -> list[MediaSpan]:
        hf_config = model.config
        token_ids = self.media_token_ids(hf_config)
        merge = self.merge_size(hf_config)
        spans: list[MediaSpan] = []
        for feature in sorted(mm_features, key=lambda f: int(f.mm_position.offset)):
            modality = feature.modality
            _, h, w = (int(v) for v in feature.data[self.grid_fields[modality]].data.tolist())
            frame_grid = (1, h // merge, w // merge)  # every image and every video frame is one (1, h, w) grid
            offset = int(feature.mm_position.offset)
            end = offset + int(feature.mm_position.length)
            for start, length in token_runs(input_tokens, token_ids[modality], offset, end):
                spans.append(MediaSpan(offset=start, length=length, grid=frame_grid))
        return spans


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    architecture = "Qwen3VLMoeForConditionalGeneration"
    vllm_model = "vllm.model_executor.models.qwen3_vl_moe:Qwen3VLMoeForConditionalGeneration"


ADAPTER = Qwen3VLAdapter()
MOE_ADAPTER = Qwen3VLMoeAdapter()


class VsQwen3VLProcessingInfo(PruningProcessingInfoMixin, Qwen3VLProcessingInfo):
    vs_adapter = ADAPTER


class VsQwen3VLMultiModalProcessor(PruningProcessorMixin, Qwen3VLMultiModalProcessor):
    vs_adapter = ADAPTER


@MULTIMODAL_REGISTRY.register_processor(
    VsQwen3VLMultiModalProcessor, info=VsQwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class VsQwen3VLForConditionalGeneration(PruningModelMixin, Qwen3VLForConditionalGeneration):
    vs_adapter = ADAPTER


class VsQwen3VLMoeProcessingInfo(PruningProcessingInfoMixin, Qwen3VLMoeProcessingInfo):
    vs_adapter = MOE_ADAPTER


class VsQwen3VLMoeMultiModalProcessor(PruningProcessorMixin, Qwen3VLMultiModalProcessor):
    vs_adapter = MOE_ADAPTER


@MULTIMODAL_REGISTRY.register_processor(
    VsQwen3VLMoeMultiModalProcessor, info=VsQwen3VLMoeProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class VsQwen3VLMoeForConditionalGeneration(PruningModelMixin, Qwen3VLMoeForConditionalGeneration):
    vs_adapter = MOE_ADAPTER
