"""Reference inference for a transformers Qwen2-VL or Qwen2.5-VL with visual-token selection.

Both architectures expose the same pieces this needs (``model.model.visual``, ``get_image_features`` returning
per-image merger outputs, ``model.model.language_model``, ``lm_head``) and the same image M-RoPE, so one class
serves both; ``vs_vllm.hf.qwen2_vl`` and ``vs_vllm.hf.qwen2_5_vl`` re-export it.

This is the oracle the vLLM plugin is tested against, written to be obviously right rather than fast:

1. the HF processor expands each image to its N_i placeholder tokens as usual;
2. the vision tower runs; each image keeps K_i = keep_count(N_i, ratio) tokens chosen by the requested method
   (the shared registry in ``vs_vllm.selection.methods``), in original order;
3. dropped image tokens are removed from ``input_ids`` and the embeddings before the LLM;
4. positions: kept tokens keep their original M-RoPE (t, h, w); text keeps its unpruned positions; decoding continues at
   P_max + 1 (``vs_vllm.selection.positions``, checked against transformers' own ``get_rope_index``);
5. greedy decoding with a KV cache.

Ratio 1.0 skips selection entirely and is token-identical to ``model.generate``. Selection is per image (each image
has its own mean key and K_i), as a serving engine needs; the original pools one top-K over all images of a call.
Batch size 1, images only (videos raise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from vs_vllm.selection.budget import keep_count, validate_ratio
from vs_vllm.selection.methods import select
from vs_vllm.selection.mmr import DEFAULT_LAMBDA
from vs_vllm.selection.positions import mrope_positions

__all__ = ["MODEL_TYPES", "PrunedPrompt", "QwenVLSelector"]

#: transformers ``model_type`` values this reference (and ``vs-vllm train``, which shares its forward) supports.
MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


@dataclass
class PrunedPrompt:
    """A prompt after selection, ready for the LLM."""

    input_ids: torch.Tensor  # [1, L'] pruned token ids
    inputs_embeds: torch.Tensor  # [1, L', D]
    position_ids: torch.Tensor  # [3, 1, L'] M-RoPE positions
    rope_delta: int  # P_max + 1 - L'
    kept: list[torch.Tensor]  # per image: ascending flat indices of the kept tokens
    visual_total: int  # sum N_i
    visual_kept: int  # sum K_i

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])


class QwenVLSelector:
    """Wraps a ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen2VLForConditionalGeneration`` (frozen) with
    VisionSelector-style pruning.

    ``scorer`` is a :class:`~vs_vllm.selection.scorer.TransformerScorer`; when omitted, ``model.visual.importance_scorer``
    is used if the model carries one (original VisionSelector checkpoints do).
    """

    def __init__(self, model, scorer=None) -> None:
        self.model = model
        self.config = model.config
        self.scorer = scorer if scorer is not None else getattr(model.model.visual, "importance_scorer", None)
        self.merge = int(self.config.vision_config.spatial_merge_size)
        self.image_token_id = int(self.config.image_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def llm_grids(self, image_grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
        return [(int(t), int(h) // self.merge, int(w) // self.merge) for t, h, w in image_grid_thw.tolist()]

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Merger outputs per image, [N_i, D] each, in raster order."""
        out = self.model.model.get_image_features(
            pixel_values.to(self.device), image_grid_thw.to(self.device), return_dict=True
        )
        return list(out.pooler_output)

    @torch.no_grad()
    def prepare(
        self,
        inputs: Mapping[str, torch.Tensor],
        ratio: float = 1.0,
        method: str = "visionselector",
        seed: int | None = None,
        selection_lambda: float = DEFAULT_LAMBDA,
    ) -> PrunedPrompt:
        """Select, prune and position one processed prompt (the processor's output for batch size 1)."""
        ratio = validate_ratio(ratio)
        if inputs.get("pixel_values_videos") is not None:
            raise NotImplementedError("the HF reference prunes images only; videos are not supported")
        input_ids = inputs["input_ids"].to(self.device)
        if input_ids.shape[0] != 1:
            raise ValueError(f"batch size 1 only, got {input_ids.shape[0]}")
        ids = input_ids[0]
        embeds = self.model.get_input_embeddings()(ids)  # [L, D]

        grid_thw = inputs.get("image_grid_thw")
        grids = self.llm_grids(grid_thw) if grid_thw is not None else []
        kept: list[torch.Tensor] = []
        if grids:
            features = self.image_features(inputs["pixel_values"], grid_thw)
            for feat, grid in zip(features, grids):
                k = keep_count(feat.shape[0], ratio)
                if k == feat.shape[0]:
                    kept.append(torch.arange(k, device=feat.device))
                else:
                    kept.append(select(method, feat, grid, k, scorer=self.scorer, seed=seed,
                                       selection_lambda=selection_lambda))
            is_image = ids == self.image_token_id
            keep_mask = ~is_image
            image_slots = is_image.nonzero().flatten()
            offsets = [0]
            for feat in features:
                offsets.append(offsets[-1] + feat.shape[0])
            kept_slots = torch.cat([image_slots[offsets[i] + idx] for i, idx in enumerate(kept)])
            keep_mask[kept_slots] = True
            embeds = embeds.clone()
            embeds[kept_slots] = torch.cat([f[idx] for f, idx in zip(features, kept)]).to(embeds.dtype)
            ids = ids[keep_mask]
            embeds = embeds[keep_mask]

        positions, delta = mrope_positions(ids.cpu(), self.image_token_id, grids, kept=[k.cpu() for k in kept])
        visual_total = sum(t * h * w for t, h, w in grids)
        return PrunedPrompt(
            input_ids=ids[None],
            inputs_embeds=embeds[None],
            position_ids=positions[:, None, :].to(self.device),
            rope_delta=delta,
            kept=kept,
            visual_total=visual_total,
            visual_kept=sum(int(k.numel()) for k in kept),
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: Mapping[str, torch.Tensor],
        ratio: float = 1.0,
        method: str = "visionselector",
        max_new_tokens: int = 16,
        seed: int | None = None,
        eos_token_ids: Sequence[int] = (),
        selection_lambda: float = DEFAULT_LAMBDA,
    ) -> tuple[list[int], PrunedPrompt]:
        """Greedy decoding on the pruned prompt. Returns the generated ids and the pruned prompt."""
        from transformers import DynamicCache

        prompt = self.prepare(inputs, ratio=ratio, method=method, seed=seed, selection_lambda=selection_lambda)
        lm = self.model.model.language_model
        cache = DynamicCache(config=self.config.get_text_config())
        out = lm(inputs_embeds=prompt.inputs_embeds, position_ids=prompt.position_ids, past_key_values=cache,
                 use_cache=True)
        generated: list[int] = []
        next_pos = prompt.prompt_tokens + prompt.rope_delta  # = P_max + 1
        for step in range(max_new_tokens):
            logits = self.model.lm_head(out.last_hidden_state[:, -1])
            token = int(logits.argmax(dim=-1))
            generated.append(token)
            if token in eos_token_ids or step == max_new_tokens - 1:
                break
            pos = torch.full((3, 1, 1), next_pos + step, dtype=torch.long, device=self.device)
            embeds = self.model.get_input_embeddings()(torch.tensor([[token]], device=self.device))
            out = lm(inputs_embeds=embeds, position_ids=pos, past_key_values=cache, use_cache=True)
        return generated, prompt
