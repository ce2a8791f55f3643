"""Generic model side (worker process): vision tower -> selection -> K_i rows with position channels; the hook.

Mixed in front of an architecture's vLLM model class by its adapter module. What it owns:

- the scorer module (``visual.importance_scorer``, the original checkpoints' key path, so vLLM's weight loader fills
  it from a VisionSelector checkpoint) and the decision whether one was loaded;
- ``embed_multimodal``: parse (adapter) -> vision tower in micro-batches within the profiled encoder budget
  (``encoder_budget.py``) -> selection (``selection.py``) -> rows + position channels (``channels.py``);
- ``get_mrope_input_positions``: exact text positions around provisional media slots (the adapter's scheme);
- ``recompute_mrope_positions``: vLLM's pruning hook (``hook.py``);
- the guards: pruning switched on for this model's config *before* the base ``__init__`` reads it, encoder CUDA graphs
  off (their path skips ``embed_multimodal``), vLLM's own video pruning refused.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterable
from functools import cached_property
from typing import Any, ClassVar

import torch

from vs_vllm.selection.checkpoint import load_scorer
from vs_vllm.selection.methods import needs_scorer
from vs_vllm.selection.position_schemes import PositionScheme, get_position_scheme
from vs_vllm.selection.scorer import TransformerScorer

# Imported here, not where it is used: vLLM imports this module in the API-server process while it resolves the model
# class, before it starts the engine, and importing metrics registers the collector that puts the kernel-health series
# (fed by the engine's processes) on that process's /metrics from start-up.
from vs_vllm.vllm_plugin import metrics
from vs_vllm.vllm_plugin.options import ENV_SCORER, default_options
from vs_vllm.vllm_plugin.patches.pruning_flag import enable_pruning_for
from vs_vllm.vllm_plugin.pruning.adapter import ArchitectureAdapter
from vs_vllm.vllm_plugin.pruning.channels import check_grid_fits, unpositioned
from vs_vllm.vllm_plugin.pruning.encoder_budget import plan_micro_batches
from vs_vllm.vllm_plugin.pruning.fields import NO_SEED, field_names, method_name
from vs_vllm.vllm_plugin.pruning.guards import refuse_vllm_video_pruning
from vs_vllm.vllm_plugin.pruning.hook import recompute_positions
from vs_vllm.vllm_plugin.pruning.selection import ItemSelection, select_items

logger = logging.getLogger("vllm.plugins.vs_vllm")

__all__ = ["PruningModelMixin"]


class PruningModelMixin:
    """Mixed in front of an architecture's vLLM model class (``class VsX(PruningModelMixin, X)``)."""

    vs_adapter: ClassVar[ArchitectureAdapter]
    # vLLM's SupportsMultiModalPruning marker: the runners call ``recompute_mrope_positions`` only for models that set
    # it (Qwen2-VL's in-tree class does not).
    supports_multimodal_pruning: ClassVar[bool] = True

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        refuse_vllm_video_pruning(vllm_config.model_config)
        # Before the base __init__: in-tree models read the switch there (e.g. Qwen2.5-VL keeps encoder CUDA graphs on
        # unless pruning is enabled when it is constructed).
        enable_pruning_for(vllm_config.model_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)  # type: ignore[call-arg]
        hf_config = vllm_config.model_config.hf_config
        self.visual.importance_scorer = TransformerScorer(self.vs_adapter.scored_width(hf_config))
        self.vs_scorer_loaded = False
        self.vs_default_options = default_options()
        # Unpruned LLM tokens one vision-tower call may carry: the encoder budget memory profiling was sized for.
        self.vs_encoder_budget: int | None = int(vllm_config.scheduler_config.max_num_encoder_input_tokens) or None
        self.vs_max_model_len = int(vllm_config.model_config.max_model_len)
        self.vs_dtype = vllm_config.model_config.dtype  # the encoder output's dtype (the kernels specialise on it)

    @cached_property
    def vs_media_token_ids(self) -> tuple[int, ...]:
        return tuple(self.vs_adapter.media_token_ids(self.config).values())

    @cached_property
    def vs_positions(self) -> PositionScheme:
        return get_position_scheme(self.vs_adapter.position_scheme)

    @cached_property
    def vs_fill_positions(self):
        return functools.partial(self.vs_positions.fill_media_positions, **self.vs_adapter.fill_kwargs(self.config))

    # ---- weights ---------------------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = set(super().load_weights(weights))  # type: ignore[misc]
        scorer = self.visual.importance_scorer
        scorer_names = {f"visual.importance_scorer.{p}" for p, _ in scorer.named_parameters()}
        path = os.environ.get(ENV_SCORER)
        if path:
            source = load_scorer(path, in_features=scorer.in_features)
            scorer.load_state_dict(source.state_dict())
            self.vs_scorer_loaded = True
        else:
            self.vs_scorer_loaded = scorer_names <= loaded
        scorer.float()
        default = self.vs_default_options
        pruned_by_default = min(default.ratio_for("image"), default.ratio_for("video")) < 1.0
        if needs_scorer(default.selection_method) and pruned_by_default and not self.vs_scorer_loaded:
            raise ValueError(
                f"the default selection_method is {default.selection_method!r} but the served weights have no "
                "visual.importance_scorer.* tensors: pass --scorer SCORER to `vs-vllm serve` (a scorer file or "
                "directory; extract one with `vs-vllm convert` or train one with `vs-vllm train`), or choose another "
                "--selection-method"
            )
        self._vs_warm_up_kernels()
        # Without a scorer the (random) scorer parameters still count as loaded, so vLLM does not complain; requests
        # that need them are refused by the processor.
        return loaded | scorer_names

    def _vs_warm_up_kernels(self) -> None:
        """Compile every Triton selection-kernel variant this server can launch now, not on a request, and say in the
        log what was compiled and what failed (a failed kernel falls back to torch: ERROR, and on /metrics)."""
        # This process runs the kernels: its fallbacks, here or on any request, go to the server's /metrics.
        metrics.watch_kernel_fallbacks()
        scorer = self.visual.importance_scorer
        weight = scorer.q_proj.weight
        from vs_vllm.kernels.dispatch import MMR_TRITON_ENV, _env_flag
        from vs_vllm.kernels.warmup import warm_up_selection

        weights = (scorer.q_proj.weight, scorer.q_proj.bias, scorer.k_proj.weight, scorer.k_proj.bias)
        # Buckets above sel_one_chunk_max (4096 tokens) share one select variant, so any bound past it warms them all.
        max_tokens = max(self.vs_encoder_budget or 0, self.vs_max_model_len)
        done = warm_up_selection(scorer.in_features, self.vs_dtype, weight.device, weights, max_tokens,
                                 mmr=_env_flag(MMR_TRITON_ENV))
        where = f"{weight.device.type} {str(self.vs_dtype).removeprefix('torch.')}"
        if done.failed:
            logger.error("vs-vllm: Triton selection-kernel warm-up on %s: %s", where, done.describe())
        else:
            logger.info("vs-vllm: Triton selection-kernel warm-up on %s: %s", where, done.describe())

    # ---- encoder ---------------------------------------------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object):
        adapter = self.vs_adapter
        fields = {}
        for modality in adapter.pruned_modalities:
            for name in field_names(modality):
                fields[name] = kwargs.pop(name, None)
        outputs: list[torch.Tensor] = []
        for modality, mm_input in adapter.parse_inputs(self, kwargs).items():
            if modality not in adapter.pruned_modalities:
                outputs.extend(unpositioned(e) for e in adapter.encode(self, modality, mm_input))
                continue
            grids = adapter.llm_grids(adapter.item_grids_of(modality, mm_input), self.config)
            embeds = self._vs_encode(modality, mm_input, grids)
            choices = self._vs_choices(modality, fields, [int(e.shape[0]) for e in embeds])
            # the channels carry the temporal *position* offset (videos: index x seconds x tokens per second)
            factors = adapter.temporal_factors(modality, mm_input, self.config)
            for grid, factor in zip(grids, factors):
                check_grid_fits(grid, factor)
            outputs.extend(select_items(embeds, grids, choices, self.visual.importance_scorer,
                                        adapter.scored_width(self.config), factors))
        return outputs

    def _vs_encode(self, modality: str, mm_input: Any, grids: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """The vision tower over all items, in micro-batches of at most ``vs_encoder_budget`` unpruned tokens."""
        adapter = self.vs_adapter
        groups = [(0, len(grids))]
        if adapter.is_pixel_input(modality, mm_input):
            groups = plan_micro_batches([t * h * w for t, h, w in grids], self.vs_encoder_budget)
        if len(groups) == 1:
            return list(adapter.encode(self, modality, mm_input))
        logger.debug("vs-vllm: %d %s items in %d vision-tower calls (budget %s tokens)", len(grids), modality,
                     len(groups), self.vs_encoder_budget)
        out: list[torch.Tensor] = []
        for start, end in groups:
            out.extend(adapter.encode(self, modality, adapter.split_input(modality, mm_input, start, end)))
        return out

    def _vs_choices(self, modality: str, fields: dict[str, Any], lengths: list[int]) -> list[ItemSelection]:
        keep_name, method_field, seed_name, lambda_name = field_names(modality)
        count = len(lengths)
        default = self.vs_default_options
        keep = _host_values(fields[keep_name], count, int)
        methods = _host_values(fields[method_field], count, int)
        seeds = _host_values(fields[seed_name], count, int)
        lambdas = _host_values(fields[lambda_name], count, float)
        return [
            ItemSelection(
                keep=lengths[i] if keep is None else keep[i],
                method=default.selection_method if methods is None else method_name(methods[i]),
                seed=None if seeds is None or seeds[i] == NO_SEED else seeds[i],
                selection_lambda=default.selection_lambda if lambdas is None else lambdas[i],
            )
            for i in range(count)
        ]

    def get_encoder_cudagraph_config(self):
        """Encoder CUDA graphs replay the tower without ``embed_multimodal``: no graphs for any modality."""
        config = super().get_encoder_cudagraph_config()  # type: ignore[misc]
        return dataclasses.replace(config, modalities=[])

    # ---- positions -------------------------------------------------------------------------------------------------

    def get_mrope_input_positions(self, input_tokens, mm_features):
        spans = self.vs_adapter.media_spans(self, input_tokens, mm_features)
        return self.vs_positions.prompt_positions(len(input_tokens), spans)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        return recompute_positions(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens,
                                   self.vs_media_token_ids, self.vs_fill_positions)


def _host_values(value: Any, count: int, kind: type) -> list | None:
    """Per-item values from a CPU field (``keep_on_cpu``), a list of CPU scalars, or None when absent."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise ValueError(f"per-item selection fields must stay on the CPU (keep_on_cpu), got {value.device}")
        out = [kind(v) for v in value.flatten().tolist()]
    else:
        out = [kind(v) for v in value]
    if len(out) != count:
        raise ValueError(f"{len(out)} per-item selection values for {count} items")
    return out
