"""One training forward of a frozen transformers Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE with a soft-masked
visual input.

    merger output X_i per image (no grad)  ->  scores (scorer, fp32, detached input)  ->  soft top-K mask p
    ->  p * X scattered into inputs_embeds at the <|image_pad|> slots (full length: nothing is dropped)
    ->  LLM with the UNMODIFIED M-RoPE positions (get_rope_index on the original ids and grids)
    ->  CE on the answer tokens (logits only at labelled positions, fp32)  +  lambda * BCE(p, hard top-K)

DeepStack models (Qwen3-VL and its MoE variant) also add one [N, D] feature per level to the hidden states of the
image slots after the first decoder layers. Inference drops a token at every layer at once, so the soft mask scales
each token's whole row: the main feature and every DeepStack level by the same p. The scorer still reads the main
features only.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from vs_vllm.training.data import IGNORE_INDEX
from vs_vllm.training.loss import TopKScope, masked_ce, soft_select

__all__ = ["StepOutput", "training_forward"]


@dataclass
class StepOutput:
    loss: torch.Tensor  # ce + lam * bce, differentiable w.r.t. the scorer
    ce: torch.Tensor
    bce: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _has_deepstack(model: Any) -> bool:
    from vs_vllm.hf.qwen_vl import DEEPSTACK_MODEL_TYPES

    return getattr(model.config, "model_type", None) in DEEPSTACK_MODEL_TYPES


def training_forward(
    model: Any,
    scorer: torch.nn.Module,
    batch: dict[str, Any],
    *,
    ratio: float,
    scope: TopKScope,
    lam: float,
    autocast_dtype: torch.dtype | None = None,
) -> StepOutput:
    """Loss of one micro-batch (the output of :func:`~vs_vllm.training.data.collate_batch`, on the model's device).

    ``model`` is a ``Qwen2VL``, ``Qwen2_5_VL``, ``Qwen3VL`` or ``Qwen3VLMoe`` ``ForConditionalGeneration`` whose
    parameters are all frozen; ``scorer`` is the (possibly DDP-wrapped)
    :class:`~vs_vllm.selection.scorer.TransformerScorer`. ``autocast_dtype`` (bf16) applies to the frozen model only;
    the scorer, the soft top-K and both losses are fp32.
    """
    inner = model.model
    ids = batch["input_ids"]
    attn = batch["attention_mask"]
    labels = batch["labels"]
    grid = batch.get("image_grid_thw")
    device = ids.device
    amp = _autocast(device, autocast_dtype)

    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        position_ids, _ = inner.get_rope_index(
            ids, mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=grid, attention_mask=attn
        )
        feats = None
        deepstack_levels: list[torch.Tensor] = []  # per level [sum N_i, D], same row order as the main features
        if grid is not None:
            with amp:
                out = inner.get_image_features(batch["pixel_values"], grid, return_dict=True)
            feats = list(out.pooler_output)
            if _has_deepstack(model):
                deepstack_levels = [torch.cat(list(level)) for level in out.deepstack_features]

    stats: dict[str, float] = {}
    lm_visual_kwargs: dict[str, Any] = {}
    if feats:
        sizes = [int(f.shape[0]) for f in feats]
        x = torch.cat(feats)
        image_mask = ids == int(model.config.image_token_id)
        n_slots = int(image_mask.sum())
        if n_slots != x.shape[0]:
            raise ValueError(f"micro-batch has {n_slots} image tokens but the vision tower returned {x.shape[0]}")
        sel = soft_select(scorer, x, sizes, batch["images_per_sample"], ratio, scope)
        scaled = (x.float() * sel.mask[:, None]).to(embeds.dtype)
        embeds = embeds.masked_scatter(image_mask[..., None], scaled)
        if deepstack_levels:
            lm_visual_kwargs = {
                "visual_pos_masks": image_mask,
                "deepstack_visual_embeds": [(lvl.float() * sel.mask[:, None]).to(embeds.dtype)
                                            for lvl in deepstack_levels],
            }
        bce = sel.bce
        stats.update(sel.stats())
        stats["visual_tokens"] = float(x.shape[0])
    else:
        # Text-only micro-batch: still run the scorer once so that a DDP-wrapped scorer sees all its parameters used.
        hidden_size = int(embeds.shape[-1])
        dummy = scorer(torch.zeros(2, hidden_size, device=device), None, "pooled")
        bce = dummy.float().sum() * 0.0
        stats.update({"score_std": 0.0, "p_kept": float("nan"), "p_dropped": float("nan"), "visual_tokens": 0.0})

    with amp:
        hidden = inner.language_model(
            inputs_embeds=embeds, attention_mask=attn, position_ids=position_ids, use_cache=False, **lm_visual_kwargs
        ).last_hidden_state
    # Next-token targets; logits only where there is a label (the full [B, L, V] logits would dwarf everything else).
    targets = labels[:, 1:]
    where = targets != IGNORE_INDEX
    with amp:
        logits = model.lm_head(hidden[:, :-1][where])
    ce = masked_ce(logits, targets[where])
    loss = ce + float(lam) * bce
    stats["answer_tokens"] = float(where.sum())
    return StepOutput(loss=loss, ce=ce.detach(), bce=bce.detach(), stats=stats)
