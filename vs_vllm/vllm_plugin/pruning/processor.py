"""Generic processor side (API-server process): options -> K_i placeholders and per-item fields.

For each pruned media item N_i is known from its grid; K_i = keep_count(N_i, r) with r from the request's
``mm_processor_kwargs`` (or the server default). The prompt gets K_i placeholders; K_i, the method id and the seed
travel to the model as per-item CPU fields (``fields.py``). The options stay in ``mm_processor_kwargs``, which vLLM
hashes into its processor, encoder and prefix cache keys, so different ratios never share a cache entry. The options
are kept away from transformers (which would reject them, or key its processor cache on them).

The overridden hooks (``_call_hf_processor``, ``_postprocess_hf_mm_data``, ``_get_mm_fields_config``,
``_get_prompt_updates``) are vLLM's protected processor API, listed in ``patches.PRIVATE_API``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property, partial
from typing import Any, ClassVar

import torch
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

from vs_vllm.selection.budget import keep_count
from vs_vllm.selection.methods import list_methods, needs_scorer
from vs_vllm.selection.mmr import effective_lambda
from vs_vllm.vllm_plugin.options import ENV_SCORER, SelectionOptions, default_options, parse_options, split_options
from vs_vllm.vllm_plugin.pruning.adapter import ArchitectureAdapter
from vs_vllm.vllm_plugin.pruning.fields import NO_SEED, field_names, method_id
from vs_vllm.vllm_plugin.pruning.scorer_probe import checkpoint_scorer_keys, has_scorer_tensors
from vs_vllm.vllm_plugin.request_stats import record_visual_tokens

__all__ = ["PruningProcessingInfoMixin", "PruningProcessorMixin"]


class PruningProcessingInfoMixin:
    """Mixed in front of an architecture's ``ProcessingInfo``."""

    vs_adapter: ClassVar[ArchitectureAdapter]

    def get_hf_processor(self, **kwargs: object):
        return super().get_hf_processor(**split_options(kwargs)[1])  # type: ignore[misc]

    def get_image_processor(self, **kwargs: object):
        return super().get_image_processor(**split_options(kwargs)[1])  # type: ignore[misc]

    @cached_property
    def default_options(self) -> SelectionOptions:
        return default_options()

    @cached_property
    def has_scorer(self) -> bool:
        """Whether the served weights carry a scorer: ``--scorer``, or scorer tensors in the checkpoint's files.

        The checkpoint may be a local directory or a hub id (found in the local cache the engine downloaded it to);
        when its files cannot be found locally the answer is False, so ``visionselector`` requests get a 400 that
        names the fix (``--scorer``) instead of reaching a worker without a scorer.
        """
        if os.environ.get(ENV_SCORER):
            return True
        model_config = self.ctx.model_config  # type: ignore[attr-defined]
        keys = checkpoint_scorer_keys(str(model_config.model), revision=getattr(model_config, "revision", None))
        return bool(keys) and has_scorer_tensors(keys)

    def options_for(self, hf_kwargs: Mapping[str, object]) -> SelectionOptions:
        options = parse_options(split_options(hf_kwargs)[0], self.default_options)
        method = options.selection_method
        if needs_scorer(method) and min(options.ratio_for("image"), options.ratio_for("video")) < 1.0 \
                and not self.has_scorer:
            raise ValueError(
                f"selection_method {method!r} needs scorer weights, and this server has none: start it with "
                "`vs-vllm serve MODEL --scorer SCORER` or choose another selection_method "
                f"({', '.join(m for m in list_methods() if not needs_scorer(m))})"
            )
        return options


class PruningProcessorMixin:
    """Mixed in front of an architecture's ``MultiModalProcessor``: K_i placeholders per pruned item."""

    vs_adapter: ClassVar[ArchitectureAdapter]

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object], *args, **kwargs):
        return super()._call_hf_processor(hf_data, split_options(hf_kwargs)[1], *args, **kwargs)  # type: ignore[misc]

    def _postprocess_hf_mm_data(self, mm_inputs, hf_processor_mm_kwargs, processed_data):
        processed_data = super()._postprocess_hf_mm_data(  # type: ignore[misc]
            mm_inputs, hf_processor_mm_kwargs, processed_data)
        adapter = self.vs_adapter
        options = None
        for modality in adapter.pruned_modalities:
            grid = processed_data.get(adapter.grid_fields[modality])
            if grid is None or len(grid) == 0:
                continue
            if options is None:
                options = self.info.options_for(hf_processor_mm_kwargs)  # type: ignore[attr-defined]
            hf_config = self.info.get_hf_config()  # type: ignore[attr-defined]
            totals = [t * h * w for t, h, w in adapter.llm_grids(torch.as_tensor(grid), hf_config)]
            keep_name, method_name, seed_name, lambda_name = field_names(modality)
            count = len(totals)
            ratio = options.ratio_for(modality)
            processed_data[keep_name] = torch.tensor([keep_count(n, ratio) for n in totals])
            processed_data[method_name] = torch.full((count,), method_id(options.selection_method))
            seed = NO_SEED if options.selection_seed is None else options.selection_seed
            processed_data[seed_name] = torch.full((count,), seed, dtype=torch.long)
            # float64: the request's lambda arrives in the worker exactly as validated; without one, each item's
            # lambda is the default rule's for its budget, decided here on the host where K is known
            processed_data[lambda_name] = torch.tensor(
                [effective_lambda(options.selection_lambda, k) for k in processed_data[keep_name].tolist()],
                dtype=torch.float64)
        return processed_data

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))  # type: ignore[misc]
        for modality in self.vs_adapter.pruned_modalities:
            for name in field_names(modality):
                fields[name] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))  # type: ignore[misc]
        adapter = self.vs_adapter

        def replacement(item_idx: int, modality: str):
            keep = int(out_mm_kwargs[modality][item_idx][field_names(modality)[0]].data)
            return adapter.pruned_replacement(self, hf_processor_mm_kwargs, out_mm_kwargs, modality, item_idx, keep)

        pruned = set(adapter.pruned_modalities)
        out = []
        for update in updates:
            if update.modality in pruned:
                # Same target as the model's own update: only the replacement's length (and layout) changes.
                update = PromptReplacement(modality=update.modality, target=update.target,
                                           replacement=partial(replacement, modality=update.modality))
            out.append(update)
        return out

    def apply(self, inputs, *args: Any, **kwargs: Any):
        result = super().apply(inputs, *args, **kwargs)  # type: ignore[misc]
        pruned = self.vs_adapter.pruned_modalities
        if "image" in pruned:
            self._record_image_tokens(inputs, result)
        if "video" in pruned:
            self._record_video_tokens(result)
        return result

    def _record_image_tokens(self, inputs, result) -> None:
        """Per-request counts for the client and /metrics. N_i comes from the image size, not from the processed item,
        because processor-cache hits hand back no item."""
        images = inputs.mm_data_items.get("image")
        placeholders = result["mm_placeholders"].get("image", [])
        if not hasattr(images, "get_image_size") or len(placeholders) != images.get_count():
            return
        info = self.info  # type: ignore[attr-defined]
        hf_kwargs = split_options(inputs.hf_processor_mm_kwargs)[1]
        image_processor = info.get_image_processor(**hf_kwargs)
        for i, placeholder in enumerate(placeholders):
            size = images.get_image_size(i)
            total = info.get_num_image_tokens(image_width=size.width, image_height=size.height,
                                              image_processor=image_processor, mm_kwargs=hf_kwargs)
            record_visual_tokens(int(placeholder.length), int(total), "image")

    def _record_video_tokens(self, result) -> None:
        """Per-request counts of videos: K_i is the placeholder's embedding positions (Qwen3-VL's placeholder also
        spans the timestamp text between frames), N_i the processed grid's. A video's frame count can change in the
        HF processor (Qwen3-VL samples frames when vLLM's loader did not), so N_i is not derived from the raw frames:
        it is read from the processed item, and remembered by the item's multimodal hash for processor-cache hits
        (which hand back no item; the hash covers the request's options, so it determines N_i)."""
        placeholders = result["mm_placeholders"].get("video", [])
        if not placeholders:
            return
        items = result["mm_kwargs"].get("video", [])
        hashes = (result.get("mm_hashes") or {}).get("video", [])
        grid_field = self.vs_adapter.grid_fields["video"]
        hf_config = self.info.get_hf_config()  # type: ignore[attr-defined]
        for i, placeholder in enumerate(placeholders):
            item = items[i] if i < len(items) else None
            key = hashes[i] if i < len(hashes) else None
            total = None
            if item is not None and grid_field in item:
                grid = torch.as_tensor(item[grid_field].data).reshape(1, 3)
                total = sum(t * h * w for t, h, w in self.vs_adapter.llm_grids(grid, hf_config))
                if key is not None:
                    _VIDEO_TOTALS.put(key, total)
            elif key is not None:
                total = _VIDEO_TOTALS.get(key)
            if total is not None:
                record_visual_tokens(int(placeholder.get_num_embeds()), int(total), "video")


class _BoundedMemo:
    """A small LRU map (multimodal hash -> N_i) for the API-server process."""

    def __init__(self, capacity: int) -> None:
        from collections import OrderedDict

        self.capacity = capacity
        self._data: OrderedDict[str, int] = OrderedDict()

    def put(self, key: str, value: int) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def get(self, key: str) -> int | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value


#: N_i of recently processed videos. 65,536 entries (a few MiB) outlive the processor cache's video items, each of
#: which holds its frames' pixels; a hit whose entry was evicted is left out of the counts rather than guessed.
_VIDEO_TOTALS = _BoundedMemo(65536)
