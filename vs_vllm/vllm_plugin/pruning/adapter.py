"""What an architecture adapter says: only the facts that differ between architectures.

The generic machinery (``processor.py``, ``model.py``) asks the adapter of the model class it is mixed into. The
defaults here describe the Qwen2-VL family layout — media as flattened patches plus a ``(t, h, w)`` patch grid per
item, merged ``spatial_merge_size``-square into LLM tokens, Qwen2-style M-RoPE — so the Qwen2-VL and Qwen2.5-VL
adapters are a handful of lines; an architecture with another layout overrides the corresponding method.

Every method that reaches into a vLLM model's protected API is listed in ``vs_vllm.vllm_plugin.patches.PRIVATE_API``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from vs_vllm.selection.positions import MediaSpan, video_t_factors

__all__ = ["ArchitectureAdapter"]


class ArchitectureAdapter:
    #: vLLM / HF architecture name the adapter's model class replaces.
    architecture: ClassVar[str]
    #: the vLLM model class extended, as "module:Class" (for the API-surface test).
    vllm_model: ClassVar[str]
    #: position scheme of ``vs_vllm.selection.position_schemes``.
    position_scheme: ClassVar[str] = "qwen2_mrope"
    #: modalities whose items are pruned; the others pass through unpruned (with "already positioned" channels).
    pruned_modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    #: modality -> key of the model's ``_parse_and_validate_multimodal_inputs`` result.
    parsed_input_keys: ClassVar[Mapping[str, str]] = {"image": "image", "video": "video"}
    #: modality -> the processor field holding each item's patch grid (t, h, w).
    grid_fields: ClassVar[Mapping[str, str]] = {"image": "image_grid_thw", "video": "video_grid_thw"}
    #: modality -> the processor field holding the flattened patches.
    pixel_fields: ClassVar[Mapping[str, str]] = {"image": "pixel_values", "video": "pixel_values_videos"}

    @property
    def private_api(self) -> tuple[Any, ...]:
        """The vLLM protected methods the default encoder hooks below call (checked by the API-surface test)."""
        from vs_vllm.vllm_plugin.patches import ApiTouch

        where = f"adapter {type(self).__name__}"
        parse = f"{self.vllm_model}._parse_and_validate_multimodal_inputs"
        apply = "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply"
        touches = [
            ApiTouch(parse, "call", ("self", "kwargs"), "parse the encoder kwargs exactly as the model does", where),
            ApiTouch(f"{self.vllm_model}._process_image_input", "call", ("self", "image_input"),
                     "run the vision tower on images", where),
            ApiTouch(f"{self.vllm_model}._process_video_input", "call", ("self", "video_input"),
                     "run the vision tower on videos", where),
            ApiTouch(f"{self.vllm_model}.get_encoder_cudagraph_config", "call", ("self",),
                     "the model's encoder CUDA-graph config, returned with no modality (pruning/model.py)", where),
            ApiTouch(f"{self.vllm_model}.visual", "attribute", None,
                     "the vision tower: the scorer is attached to it and loaded with its weights", where,
                     probe="loaded_model"),
        ]
        # The parsed image input: its key in the parse result, and the keys split_input and item_grids_of read.
        image = self.parsed_input_keys["image"]
        for member in (image, f"{image}.type", f"{image}.{self.grid_fields['image']}",
                       f"{image}.{self.pixel_fields['image']}"):
            touches.append(ApiTouch(parse, "key", None, "the parsed image input", where, member=member,
                                    probe="loaded_model"))
        # The processed items' grids, read for N_i and by media_spans.
        for modality in self.pruned_modalities:
            touches.append(ApiTouch(apply, "key", None, f"a processed {modality} item's patch grid", where,
                                    member=f"mm_kwargs.{modality}.0.{self.grid_fields[modality]}", probe="processor"))
        if type(self).media_spans is ArchitectureAdapter.media_spans:
            touches.append(ApiTouch(f"{self.vllm_model}.iter_mm_grid_thw", "call", ("self", "mm_features"),
                                    "each media item's grid and temporal factor, as the model's own positions use",
                                    where))
        return tuple(touches)

    # ---- token ids and grids -----------------------------------------------------------------------------------

    def media_token_ids(self, hf_config: Any) -> dict[str, int]:
        return {"image": int(hf_config.image_token_id), "video": int(hf_config.video_token_id)}

    def merge_size(self, hf_config: Any) -> int:
        return int(hf_config.vision_config.spatial_merge_size)

    def llm_grids(self, grid_thw: torch.Tensor | Sequence[Sequence[int]], hf_config: Any) -> list[tuple[int, int, int]]:
        """Each item's LLM-token grid from its patch grid (a CPU tensor: no device sync)."""
        merge = self.merge_size(hf_config)
        rows = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else grid_thw
        return [(int(t), int(h) // merge, int(w) // merge) for t, h, w in rows]

    def scored_width(self, hf_config: Any) -> int:
        """Columns of a vision-output row the scorer reads (the LLM hidden size; later columns are gathered only)."""
        return int(hf_config.get_text_config().hidden_size)

    def temporal_factors(self, modality: str, mm_input: Any, hf_config: Any) -> list[float]:
        """Per item, the factor M-RoPE scales a token's temporal index by: seconds per temporal patch x the vision
        config's ``tokens_per_second`` for Qwen2/2.5-VL videos (exactly as vLLM's ``iter_mm_grid_thw``), 1 for
        images. ``second_per_grid_ts`` is a CPU field (vLLM keeps it there), so this reads no device memory."""
        count = len(mm_input[self.grid_fields[modality]])
        if modality != "video":
            return [1.0] * count
        return video_t_factors(mm_input.get("second_per_grid_ts"), hf_config.vision_config, count)

    def fill_kwargs(self, hf_config: Any) -> dict[str, Any]:
        """Extra keyword arguments of the position scheme's ``fill_media_positions`` (e.g. Qwen3-VL's frame anchor)."""
        return {}

    def pruned_replacement(self, processor: Any, hf_kwargs: Mapping[str, object], out_mm_kwargs: Any, modality: str,
                           item_idx: int, keep: int) -> Any:
        """The prompt tokens of a media item that keeps ``keep`` tokens (a prompt-update replacement): by default
        ``keep`` placeholder tokens in one run."""
        token = self.placeholder_token_id(processor.info, hf_kwargs, modality)
        return [token] * keep

    def placeholder_token_id(self, info: Any, hf_kwargs: Mapping[str, object], modality: str) -> int:
        processor = info.get_hf_processor(**hf_kwargs)
        return int(info.get_tokenizer().get_vocab()[getattr(processor, f"{modality}_token")])

    # ---- encoder -------------------------------------------------------------------------------------------------

    def parse_inputs(self, model: Any, kwargs: Mapping[str, object]) -> dict[str, Any]:
        """modality -> parsed input, in the order vLLM's model would process them."""
        parsed = model._parse_and_validate_multimodal_inputs(**kwargs)
        by_key = {v: k for k, v in self.parsed_input_keys.items()}
        return {by_key[key]: value for key, value in parsed.items() if value is not None}

    def encode(self, model: Any, modality: str, mm_input: Any) -> Sequence[torch.Tensor]:
        """Vision-tower outputs, one [N_i, D] tensor per item, in raster order."""
        if modality == "image":
            return model._process_image_input(mm_input)
        return model._process_video_input(mm_input)

    def item_grids_of(self, modality: str, mm_input: Any) -> torch.Tensor:
        return mm_input[self.grid_fields[modality]]

    def split_input(self, modality: str, mm_input: Any, start: int, end: int) -> Any:
        """The parsed input restricted to items [start, end) — for micro-batching the vision tower."""
        grid = mm_input[self.grid_fields[modality]]
        if mm_input["type"] != self.pixel_fields[modality]:
            raise ValueError(f"cannot split {modality} input of type {mm_input['type']!r}")
        patches = grid.prod(-1).tolist()  # a CPU field: no device sync
        first = sum(patches[:start])
        last = first + sum(patches[start:end])
        pixel_key = self.pixel_fields[modality]
        return {"type": mm_input["type"], pixel_key: mm_input[pixel_key][first:last],
                self.grid_fields[modality]: grid[start:end]}

    def is_pixel_input(self, modality: str, mm_input: Any) -> bool:
        return mm_input["type"] == self.pixel_fields[modality]

    # ---- positions -------------------------------------------------------------------------------------------------

    def media_spans(self, model: Any, input_tokens: Sequence[int], mm_features: Sequence[Any]) -> list[MediaSpan]:
        """The prompt's media spans (offset, placeholder count, LLM grid, temporal factor), in prompt order.

        Default: one contiguous run per item (Qwen2-VL family; videos carry their temporal factor). An architecture
        whose items are split by text (Qwen3-VL's per-frame timestamps) overrides this.
        """
        lengths = {int(f.mm_position.offset): int(f.mm_position.length) for f in mm_features}
        return [
            MediaSpan(offset=offset, length=lengths[offset], grid=(t, h, w), t_factor=float(t_factor))
            for offset, t, h, w, t_factor in model.iter_mm_grid_thw(mm_features)
        ]
