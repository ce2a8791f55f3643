"""Qwen3-VL (dense) and Qwen3-VL-MoE: what differs from the Qwen2-VL family defaults.

- The vision output row is ``[main (out_hidden_size) | deepstack_1 .. deepstack_L]``; vLLM splits it after the merge
  and adds level i after LLM layer i. The scorer reads the main columns only (``scored_width``); the generic selection
  gathers whole rows, so every DeepStack level stays with its kept token (a dropped token is dropped at every layer).
- A video is one run per frame, each after its own timestamp text and ``<|vision_start|>``, so ``media_spans`` walks
  the frame markers inside each item's placeholder range instead of assuming one contiguous run per item. A pruned
  video keeps that per-frame layout with all K kept tokens in the first frame's run and the other runs empty
  (``pruned_replacement``; vLLM's EVS does the same, because the prompt is fixed before selection knows which frames
  its tokens come from). Images are one run of K_i tokens.
- Positions (``qwen3_frames`` scheme): interleaved M-RoPE changes how the three position rows map onto rotary
  frequencies, not the position ids. Each image or frame is a (1, h, w) grid one past its own ``<|vision_start|>``;
  the temporal channel of a kept video token is its frame index, which picks the anchor (``fill_frame_positions``),
  so a token moved into the first frame's run still gets its own frame's position; text keeps its unpruned position.

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

from vs_vllm.selection.positions import MediaSpan, token_runs
from vs_vllm.vllm_plugin.pruning.adapter import ArchitectureAdapter
from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin
from vs_vllm.vllm_plugin.pruning.processor import PruningProcessingInfoMixin, PruningProcessorMixin


class Qwen3VLAdapter(ArchitectureAdapter):
    architecture = "Qwen3VLForConditionalGeneration"
    vllm_model = "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration"
    position_scheme = "qwen3_frames"

    @property
    def private_api(self) -> tuple[Any, ...]:
        from vs_vllm.vllm_plugin.patches import ApiTouch

        return (*super().private_api, ApiTouch(
            "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor.get_video_repl", "call",
            ("tokens_per_frame", "timestamps", "tokenizer", "vision_start_token_id", "vision_end_token_id",
             "video_token_id", "select_token_id"),
            "build a video's per-frame prompt (timestamps, frame markers) with our token counts",
            f"adapter {type(self).__name__}"), ApiTouch(
            "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply", "key", None,
            "a processed video's frame timestamps, for its pruned per-frame prompt", f"adapter {type(self).__name__}",
            member="mm_kwargs.video.0.timestamps", probe="processor"), ApiTouch(
            f"{self.vllm_model}.config", "attribute", None, "the model's HF config (token ids, merge size)",
            f"adapter {type(self).__name__}", probe="loaded_model"))

    def fill_kwargs(self, hf_config: Any) -> dict[str, Any]:
        return {"frame_anchor_id": int(hf_config.vision_start_token_id)}

    def temporal_factors(self, modality: str, mm_input: Any, hf_config: Any) -> list[float]:
        # The temporal channel is the frame index: time lives in the timestamp text, not in the positions.
        return [1.0] * len(mm_input[self.grid_fields[modality]])

    def pruned_replacement(self, processor: Any, hf_kwargs, out_mm_kwargs: Any, modality: str, item_idx: int,
                           keep: int) -> Any:
        """A pruned video keeps its per-frame layout (timestamp, ``<|vision_start|>``, tokens, ``<|vision_end|>`` per
        frame) with all K kept tokens in the first frame's run and the other runs empty, as vLLM's EVS does: the prompt
        is fixed before selection knows which frames its tokens come from. Unpruned, it is the stock layout."""
        if modality != "video":
            return super().pruned_replacement(processor, hf_kwargs, out_mm_kwargs, modality, item_idx, keep)
        item = out_mm_kwargs["video"][item_idx]
        hf_config = processor.info.get_hf_config()
        t, h, w = (int(v) for v in item["video_grid_thw"].data.tolist())
        per_frame = (h // self.merge_size(hf_config)) * (w // self.merge_size(hf_config))
        tokens_per_frame = [per_frame] * t if keep >= t * per_frame else [keep] + [0] * (t - 1)
        return Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=tokens_per_frame,
            timestamps=item["timestamps"].data,
            tokenizer=processor.info.get_tokenizer(),
            vision_start_token_id=int(hf_config.vision_start_token_id),
            vision_end_token_id=int(hf_config.vision_end_token_id),
            video_token_id=int(hf_config.video_token_id),
            select_token_id=True,
        )

    def scored_width(self, hf_config: Any) -> int:
        return int(hf_config.vision_config.out_hidden_size)

    def media_spans(self, model: Any, input_tokens: Sequence[int], mm_features: Sequence[Any]) -> list[MediaSpan]:
        hf_config = model.config
        token_ids = self.media_token_ids(hf_config)
        anchor_id = int(hf_config.vision_start_token_id)
        merge = self.merge_size(hf_config)
        spans: list[MediaSpan] = []
        for feature in sorted(mm_features, key=lambda f: int(f.mm_position.offset)):
            modality = feature.modality
            t, h, w = (int(v) for v in feature.data[self.grid_fields[modality]].data.tolist())
            frame_grid = (1, h // merge, w // merge)  # every image and every video frame is one (1, h, w) grid
            offset = int(feature.mm_position.offset)
            end = offset + int(feature.mm_position.length)
            if modality == "image":
                for start, length in token_runs(input_tokens, token_ids[modality], offset, end):
                    spans.append(MediaSpan(offset=start, length=length, grid=frame_grid))
                continue
            # A video: one frame per anchor, its run right after it (empty when its tokens were lumped elsewhere).
            anchors = [i for i in range(offset, end) if input_tokens[i] == anchor_id]
            if len(anchors) != t:
                raise ValueError(f"video at {offset}: {len(anchors)} frame markers for {t} frames")
            counts = []
            for a in anchors:
                j = a + 1
                while j < end and input_tokens[j] == token_ids[modality]:
                    j += 1
                counts.append(j - a - 1)
            lumped = sum(counts) < t * frame_grid[1] * frame_grid[2]
            spans.extend(MediaSpan(offset=a + 1, length=n, grid=frame_grid, lumped=lumped)
                         for a, n in zip(anchors, counts))
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
