"""Qwen2.5-VL with VisionSelector-style visual-token selection before prefill.

Request flow (see docs/architecture in the README):

1. processor (API server): the HF processor runs as usual; for each image N_i is known from its grid, and
   K_i = keep_count(N_i, r) with r from the request's ``mm_processor_kwargs`` (or the server default). The prompt gets
   K_i placeholders; K_i, the method and the seed travel to the model as per-image fields (``vs_keep_k``, ...). The
   options stay in ``mm_processor_kwargs`` so vLLM hashes them into every multimodal cache key.
2. scheduler / KV cache: they only ever see the shorter prompt.
3. model (worker): the vision tower runs on all N_i patches; selection keeps K_i rows per image (the fused kernel for
   ``visionselector``, the shared method registry otherwise) and appends each kept token's (t, h, w) as position
   channels; the encoder cache stores K_i rows.
4. positions: ``get_mrope_input_positions`` places text exactly as in the unpruned sequence before the encoder runs;
   ``recompute_mrope_positions`` (vLLM's pruning hook) writes the kept tokens' original (t, h, w) into the image slots
   and strips the channels before the embeddings are merged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

from vs_vllm.selection.budget import keep_count
from vs_vllm.selection.checkpoint import SCORER_PREFIX, load_scorer
from vs_vllm.selection.methods import list_methods, select
from vs_vllm.selection.positions import MediaSpan, fill_media_positions, grid_coordinates, mrope_positions_for_spans
from vs_vllm.selection.scorer import TransformerScorer
from vs_vllm.vllm_plugin import compat
from vs_vllm.vllm_plugin.options import (
    ENV_SCORER,
    SelectionOptions,
    default_options,
    parse_options,
    split_options,
)
from vs_vllm.vllm_plugin.request_stats import record_visual_tokens

KEEP_K = "vs_keep_k"
METHOD_ID = "vs_method_id"
SEED = "vs_seed"
_FIELDS = (KEEP_K, METHOD_ID, SEED)
_NO_SEED = -1
# Appended after the hidden size of every media embedding: each of (t, h, w) as (value // 256, value % 256), so every
# channel is an integer in [0, 256) that bf16 and fp16 hold exactly (bf16 alone is exact only up to 256). t = -1
# marks media whose positions are already exact (unpruned videos): their slots are left alone.
NUM_POSITION_CHANNELS = 6
_SPLIT = 256


def method_names() -> list[str]:
    """Method ids index this list; every process imports the same registry, so ids agree across processes."""
    return list_methods()


def checkpoint_has_scorer(model_dir: str) -> bool:
    """Whether a local checkpoint carries ``visual.importance_scorer.*`` tensors (reads only headers / the index)."""
    path = Path(model_dir)
    index = path / "model.safetensors.index.json"
    if index.exists():
        keys: Iterable[str] = json.loads(index.read_text())["weight_map"].keys()
    else:
        from safetensors import safe_open

        keys = []
        for file in sorted(path.glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                keys = [*keys, *f.keys()]
    return any(k.startswith(SCORER_PREFIX) or k.startswith("model." + SCORER_PREFIX) for k in keys)


class VsQwen2_5_VLProcessingInfo(Qwen2_5_VLProcessingInfo):
    """Keeps the selection options away from transformers (which would reject or cache-key them)."""

    def get_hf_processor(self, **kwargs: object):
        return super().get_hf_processor(**split_options(kwargs)[1])

    def get_image_processor(self, **kwargs: object):
        return super().get_image_processor(**split_options(kwargs)[1])

    @cached_property
    def default_options(self) -> SelectionOptions:
        return default_options()

    @cached_property
    def has_scorer(self) -> bool:
        if os.environ.get(ENV_SCORER):
            return True
        model = self.ctx.model_config.model
        return os.path.isdir(model) and checkpoint_has_scorer(model)

    def options_for(self, hf_kwargs: Mapping[str, object]) -> SelectionOptions:
        options = parse_options(split_options(hf_kwargs)[0], self.default_options)
        if options.selection_method == "visionselector" and options.retention_ratio < 1.0 and not self.has_scorer:
            raise ValueError(
                "selection_method 'visionselector' needs scorer weights, and this server has none: start it with "
                "`vs-vllm serve MODEL --scorer SCORER.safetensors` or choose another selection_method "
                f"({', '.join(m for m in method_names() if m != 'visionselector')})"
            )
        return options


class VsQwen2_5_VLMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
    """Emits K_i = keep_count(N_i, r) image placeholders and the per-image selection fields."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]):
        return super()._call_hf_processor(hf_data, split_options(hf_kwargs)[1])

    def _postprocess_hf_mm_data(self, mm_inputs, hf_processor_mm_kwargs, processed_data):
        processed_data = super()._postprocess_hf_mm_data(mm_inputs, hf_processor_mm_kwargs, processed_data)
        grid = processed_data.get("image_grid_thw")
        if grid is None or len(grid) == 0:
            return processed_data
        info: VsQwen2_5_VLProcessingInfo = self.info  # type: ignore[assignment]
        options = info.options_for(hf_processor_mm_kwargs)
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        totals = (torch.as_tensor(grid).prod(-1) // (merge * merge)).tolist()
        count = len(totals)
        processed_data[KEEP_K] = torch.tensor([keep_count(int(n), options.retention_ratio) for n in totals])
        processed_data[METHOD_ID] = torch.full((count,), method_names().index(options.selection_method))
        seed = _NO_SEED if options.selection_seed is None else options.selection_seed
        processed_data[SEED] = torch.full((count,), seed, dtype=torch.long)
        return processed_data

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        for name in _FIELDS:
            fields[name] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
        image_token = self.info.get_hf_processor(**hf_processor_mm_kwargs).image_token
        pad_id = self.info.get_tokenizer().get_vocab()[image_token]

        def image_replacement(item_idx: int) -> list[int]:
            k = int(out_mm_kwargs["image"][item_idx][KEEP_K].data)
            return [pad_id] * k

        return [
            PromptReplacement(modality="image", target=[pad_id], replacement=image_replacement)
            if update.modality == "image"
            else update
            for update in updates
        ]

    def apply(self, inputs, timing_ctx):
        result = super().apply(inputs, timing_ctx)
        # Per-request counts for the client and /metrics. N_i comes from the image size, not from the processed item,
        # because processor-cache hits hand back no item.
        images = inputs.mm_data_items.get("image")
        placeholders = result["mm_placeholders"].get("image", [])
        if hasattr(images, "get_image_size") and len(placeholders) == images.get_count():
            info: VsQwen2_5_VLProcessingInfo = self.info  # type: ignore[assignment]
            hf_kwargs = split_options(inputs.hf_processor_mm_kwargs)[1]
            image_processor = info.get_image_processor(**hf_kwargs)
            for i, placeholder in enumerate(placeholders):
                size = images.get_image_size(i)
                total = info.get_num_image_tokens(image_width=size.width, image_height=size.height,
                                                  image_processor=image_processor, mm_kwargs=hf_kwargs)
                record_visual_tokens(int(placeholder.length), int(total))
        return result


@MULTIMODAL_REGISTRY.register_processor(
    VsQwen2_5_VLMultiModalProcessor,
    info=VsQwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class VsQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL that returns only the selected visual tokens of each image (plus their position channels)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        compat.enable_pruning_for(vllm_config.model_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        hidden = int(self.config.vision_config.out_hidden_size)
        # Registered under visual.importance_scorer, the original checkpoints' key path, so the stock weight loader
        # fills it from a VisionSelector checkpoint.
        self.visual.importance_scorer = TransformerScorer(hidden)
        self._scorer_loaded = False
        self._default_options = default_options()

    # ---- weights ---------------------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = set(super().load_weights(weights))
        scorer_names = {f"visual.importance_scorer.{p}" for p, _ in self.visual.importance_scorer.named_parameters()}
        path = os.environ.get(ENV_SCORER)
        if path:
            source = load_scorer(path, in_features=self.visual.importance_scorer.in_features)
            self.visual.importance_scorer.load_state_dict(source.state_dict())
            self._scorer_loaded = True
        else:
            self._scorer_loaded = scorer_names <= loaded
        self.visual.importance_scorer.float()
        default = self._default_options
        if default.selection_method == "visionselector" and default.retention_ratio < 1.0 and not self._scorer_loaded:
            raise ValueError(
                "the default selection_method is 'visionselector' but the checkpoint has no "
                "visual.importance_scorer.* weights: pass --scorer SCORER.safetensors to `vs-vllm serve` (extract one "
                "with `vs-vllm convert` or train one with `vs-vllm train`), or choose another --selection-method"
            )
        # Without a scorer the (random) scorer parameters still count as loaded, so vLLM does not complain; requests
        # that need them are refused by the processor.
        return loaded | scorer_names

    # ---- encoder ---------------------------------------------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object):
        selection = {name: kwargs.pop(name, None) for name in _FIELDS}
        mm_inputs = self._parse_and_validate_multimodal_inputs(**kwargs)
        outputs: list[torch.Tensor] = []
        for modality, mm_input in mm_inputs.items():
            if modality == "image":
                embeds = self._process_image_input(mm_input)
                grids = self._llm_grids(mm_input["image_grid_thw"])
                outputs.extend(self._select_images(embeds, grids, selection))
            elif modality == "video":
                embeds = self._process_video_input(mm_input)
                outputs.extend(self._with_video_channels(embeds))
        return outputs

    def _llm_grids(self, grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
        merge = self.visual.spatial_merge_size
        return [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grid_thw.tolist()]

    def _select_images(self, embeds: Sequence[torch.Tensor], grids, selection) -> list[torch.Tensor]:
        from vs_vllm.kernels import gather_selected, select_tokens

        count = len(embeds)
        keep = _as_list(selection[KEEP_K], count, default=None)
        keep = [int(embeds[i].shape[0]) if k is None else int(k) for i, k in enumerate(keep)]
        names = method_names()
        method_ids = _as_list(selection[METHOD_ID], count, default=names.index(self._default_options.selection_method))
        seeds = _as_list(selection[SEED], count, default=_NO_SEED)
        out: list[torch.Tensor | None] = [None] * count
        scorer_batch = [i for i in range(count) if keep[i] < embeds[i].shape[0] and names[method_ids[i]] == "visionselector"]
        if scorer_batch:
            s = self.visual.importance_scorer
            x = torch.cat([embeds[i] for i in scorer_batch])
            cu = [0]
            for i in scorer_batch:
                cu.append(cu[-1] + int(embeds[i].shape[0]))
            sel = select_tokens(x, cu, [keep[i] for i in scorer_batch], s.q_proj.weight, s.q_proj.bias,
                                s.k_proj.weight, s.k_proj.bias, grids=[grids[i] for i in scorer_batch])
            bounds = sel.cu_keep.tolist()
            for j, i in enumerate(scorer_batch):
                rows = sel.rows[bounds[j]:bounds[j + 1]]
                out[i] = _with_channels(rows, sel.positions[bounds[j]:bounds[j + 1]])
        for i in range(count):
            if out[i] is not None:
                continue
            n = int(embeds[i].shape[0])
            if keep[i] >= n:
                idx = torch.arange(n, device=embeds[i].device)
                out[i] = _with_channels(embeds[i], grid_coordinates(idx, grids[i]).T)
                continue
            seed = None if seeds[i] == _NO_SEED else int(seeds[i])
            idx = select(names[method_ids[i]], embeds[i], grids[i], keep[i], scorer=self.visual.importance_scorer,
                         seed=seed)
            sel = gather_selected(embeds[i], [0, n], idx, [0, keep[i]], grids=[grids[i]])
            out[i] = _with_channels(sel.rows, sel.positions)
        return out  # type: ignore[return-value]

    def _with_video_channels(self, embeds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Videos are not pruned; they still carry (ignored) channels because every media row is stripped alike."""
        out = []
        for emb in embeds:
            coords = torch.full((emb.shape[0], 3), -1, dtype=torch.long)
            out.append(_with_channels(emb, coords))
        return out

    # ---- positions -------------------------------------------------------------------------------------------------

    def get_mrope_input_positions(self, input_tokens, mm_features):
        spans = []
        for offset, t, h, w, t_factor in self.iter_mm_grid_thw(mm_features):
            feature = next(f for f in mm_features if f.mm_position.offset == offset)
            spans.append(MediaSpan(offset=offset, length=int(feature.mm_position.length), grid=(t, h, w),
                                   t_factor=float(t_factor)))
        positions, delta = mrope_positions_for_spans(len(input_tokens), spans)
        return positions, delta

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        if len(multimodal_embeddings) == 0:
            # The V1 runner calls this hook for every request of every step, decodes included: keep it O(1) then.
            return multimodal_embeddings, mrope_positions, self._decode_delta(input_ids, mrope_positions)
        hidden = [mm[:, :-NUM_POSITION_CHANNELS] for mm in multimodal_embeddings]
        coords = _decode_channels(torch.cat([mm[:, -NUM_POSITION_CHANNELS:] for mm in multimodal_embeddings]))
        ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.tensor(input_ids, dtype=torch.long)
        positions = fill_media_positions(
            mrope_positions, ids, (self.config.image_token_id, self.config.video_token_id), coords, num_computed_tokens
        )
        return hidden, positions, self._decode_delta(input_ids, positions)

    def _decode_delta(self, input_ids, positions: torch.Tensor) -> int:
        """P_max + 1 - L: decoding continues one past the largest prompt position.

        Text positions only grow and every media span sits below the text that follows it, so when the prompt ends
        with text its last position is P_max (one element, no reduction). Only a prompt that ends inside a media span
        needs the maximum.
        """
        length = positions.shape[1]
        if int(input_ids[-1]) not in (self.config.image_token_id, self.config.video_token_id):
            return int(positions[0, -1]) + 1 - length
        return int(positions.max()) + 1 - length


def _as_list(value: Any, count: int, default: Any) -> list:
    if value is None:
        return [default] * count
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(v) if not isinstance(v, torch.Tensor) else int(v.item()) for v in value]


def _with_channels(rows: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """[K, D] rows + [K, 3] (t, h, w) -> [K, D + 6] in the rows' dtype (see NUM_POSITION_CHANNELS)."""
    coords = coords.to(device=rows.device, dtype=torch.long)
    if coords.numel() and int(coords.max()) >= _SPLIT * _SPLIT:
        raise ValueError(f"grid coordinate {int(coords.max())} too large for the position channels")
    hi = torch.div(coords, _SPLIT, rounding_mode="floor")
    lo = coords - hi * _SPLIT
    channels = torch.stack([hi, lo], dim=2).reshape(coords.shape[0], NUM_POSITION_CHANNELS)
    return torch.cat([rows, channels.to(rows.dtype)], dim=1)


def _decode_channels(channels: torch.Tensor) -> torch.Tensor:
    pairs = channels.round().long().reshape(channels.shape[0], 3, 2)
    return pairs[..., 0] * _SPLIT + pairs[..., 1]
