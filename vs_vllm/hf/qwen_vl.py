"""Reference inference for a transformers Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3-VL-MoE with visual-token selection.

All four expose the same pieces this needs (``model.model.visual``, ``get_image_features`` returning per-image merger
outputs, ``model.model.language_model``, ``lm_head``) and the same image M-RoPE layout, so one class serves them;
``vs_vllm.hf.qwen2_vl`` and ``vs_vllm.hf.qwen2_5_vl`` re-export it. The one architectural difference that matters
here is DeepStack (Qwen3-VL and its MoE variant, :data:`DEEPSTACK_MODEL_TYPES`): besides the main merger output, the
vision tower emits one extra [N_i, D] feature per DeepStack level, which the language model adds to the hidden states
of the visual positions after decoder layer ``level``. Interleaved M-RoPE (Qwen3) only changes how the language
model consumes the (t, h, w) positions, not the positions themselves.

This is the oracle the vLLM plugin is tested against, written to be obviously right rather than fast:

1. the HF processor expands each image to its N_i placeholder tokens as usual;
2. the vision tower runs; each image keeps K_i = keep_count(N_i, ratio) tokens chosen by the requested method
   (the shared registry in ``vs_vllm.selection.methods``), in original order. Scorer and methods read the main
   merger output only (D columns), never the DeepStack levels;
3. dropped image tokens are removed from ``input_ids`` and the embeddings before the LLM; with DeepStack, every
   level is gathered at the same kept indices (dropping a token drops it at every layer), and the prefill step gets
   those features plus the visual-position mask of the pruned sequence (decode steps get neither);
4. positions: kept tokens keep their original M-RoPE (t, h, w); text keeps its unpruned positions; decoding continues at
   P_max + 1 (``vs_vllm.selection.positions``, checked against transformers' own ``get_rope_index``);
5. greedy decoding with a KV cache.

Ratio 1.0 skips selection entirely and is token-identical to ``model.generate``. Selection is per image (each image
has its own mean key and K_i), as a serving engine needs; the original pools one top-K over all images of a call.
Batch size 1. Videos (Qwen2-VL, Qwen2.5-VL) are pruned like images, one contiguous run each, with the temporal
index scaled by seconds-per-patch x ``tokens_per_second`` as vLLM does; the text after a video continues one past the
largest position the unpruned video used (vLLM and the original Qwen2.5-VL code; transformers 5.19's
``get_rope_index`` advances by max(h, w) only, which differs when the temporal extent is larger). Qwen3-VL videos
raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from vs_vllm.selection.budget import keep_count, validate_ratio
from vs_vllm.selection.methods import select
from vs_vllm.selection.mmr import BY_BUDGET, LambdaDefault
from vs_vllm.selection.positions import MediaSpan, mrope_positions_for_spans, token_runs, video_t_factors

__all__ = ["DEEPSTACK_MODEL_TYPES", "MODEL_TYPES", "PER_FRAME_VIDEO_MODEL_TYPES", "PrunedPrompt", "QwenVLSelector"]

#: transformers ``model_type`` values this reference (and ``vs-vllm train``, which shares its forward) supports.
MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5")
#: The subset whose vision tower feeds DeepStack levels into the first decoder layers of the language model.
DEEPSTACK_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
#: The subset whose videos are one run of tokens per frame, with timestamp text between frames.
PER_FRAME_VIDEO_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5")


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
    # DeepStack models with media (None otherwise): per level, the kept tokens' features [sum K_i, D] in prompt
    # order, and the [1, L'] mask of the media slots they are added to.
    deepstack_embeds: list[torch.Tensor] | None = None
    visual_pos_mask: torch.Tensor | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def prefill_kwargs(self) -> dict[str, object]:
        """Keyword arguments of the language model's forward for the prefill of this prompt (add ``past_key_values``,
        ``use_cache`` as needed). Decode steps must not pass the DeepStack entries: they only touch image slots."""
        kwargs: dict[str, object] = {"inputs_embeds": self.inputs_embeds, "position_ids": self.position_ids}
        if self.deepstack_embeds is not None:
            kwargs["visual_pos_masks"] = self.visual_pos_mask
            kwargs["deepstack_visual_embeds"] = self.deepstack_embeds
        return kwargs


@dataclass
class ImageFeatures:
    """Vision-tower output of one prompt, split per image."""

    main: list[torch.Tensor]  # per image [N_i, D]: the merger output that replaces the placeholder embeddings
    deepstack: list[list[torch.Tensor]]  # per level, per image [N_i, D]; empty without DeepStack


class QwenVLSelector:
    """Wraps a frozen Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3-VL-MoE ``...ForConditionalGeneration`` with
    VisionSelector-style pruning.

    ``scorer`` is a :class:`~vs_vllm.selection.scorer.TransformerScorer`; when omitted, ``model.visual.importance_scorer``
    is used if the model carries one (original VisionSelector checkpoints do).
    """

    def __init__(self, model, scorer=None) -> None:
        self.model = model
        self.config = model.config
        model_type = getattr(self.config, "model_type", None)
        if model_type not in MODEL_TYPES:
            # Refused rather than guessed: an unknown variant may carry per-layer visual inputs (like DeepStack) that
            # a pruned prompt would silently drop.
            raise ValueError(f"QwenVLSelector supports model_type {', '.join(MODEL_TYPES)}; got {model_type!r}")
        self.has_deepstack = model_type in DEEPSTACK_MODEL_TYPES
        self.scorer = scorer if scorer is not None else getattr(model.model.visual, "importance_scorer", None)
        self.merge = int(self.config.vision_config.spatial_merge_size)
        self.image_token_id = int(self.config.image_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def llm_grids(self, image_grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
        return [(int(t), int(h) // self.merge, int(w) // self.merge) for t, h, w in image_grid_thw.tolist()]

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> ImageFeatures:
        """Main merger outputs and (DeepStack models) every level's features, per image, in raster order."""
        out = self.model.model.get_image_features(
            pixel_values.to(self.device), image_grid_thw.to(self.device), return_dict=True
        )
        deepstack = [list(level) for level in out.deepstack_features] if self.has_deepstack else []
        return ImageFeatures(main=list(out.pooler_output), deepstack=deepstack)

    def image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Merger outputs per image, [N_i, D] each, in raster order (the main features only)."""
        return self.vision_features(pixel_values, image_grid_thw).main

    def _video_features(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        grid_thw = inputs["video_grid_thw"]
        out = self.model.model.get_video_features(
            inputs["pixel_values_videos"].to(self.device), grid_thw.to(self.device), return_dict=True
        )
        return list(out.pooler_output)

    @torch.no_grad()
    def prepare(
        self,
        inputs: Mapping[str, torch.Tensor],
        ratio: float = 1.0,
        method: str = "visionselector",
        seed: int | None = None,
        selection_lambda: float | LambdaDefault = BY_BUDGET,
        video_ratio: float | None = None,
    ) -> PrunedPrompt:
        """Select, prune and position one processed prompt (the processor's output for batch size 1).

        ``ratio`` applies to every image and video; ``video_ratio`` (when given) overrides it for videos, as the
        request option ``video_retention_ratio`` does.
        """
        ratio = validate_ratio(ratio)
        video_ratio = ratio if video_ratio is None else validate_ratio(video_ratio, name="video_ratio")
        if inputs.get("video_grid_thw") is not None and self.config.model_type in PER_FRAME_VIDEO_MODEL_TYPES:
            return self._prepare_per_frame(inputs, ratio, video_ratio, method, seed, selection_lambda)
        input_ids = inputs["input_ids"].to(self.device)
        if input_ids.shape[0] != 1:
            raise ValueError(f"batch size 1 only, got {input_ids.shape[0]}")
        ids = input_ids[0]
        embeds = self.model.get_input_embeddings()(ids)  # [L, D]

        # Media items per modality, in the order the processor lists them.
        items: dict[str, list[tuple[torch.Tensor, tuple[int, int, int], float]]] = {"image": [], "video": []}
        deepstack_levels: list[list[torch.Tensor]] = []
        if inputs.get("image_grid_thw") is not None:
            vision = self.vision_features(inputs["pixel_values"], inputs["image_grid_thw"])
            grids = self.llm_grids(inputs["image_grid_thw"])
            items["image"] = [(f, g, 1.0) for f, g in zip(vision.main, grids)]
            deepstack_levels = vision.deepstack
        if inputs.get("video_grid_thw") is not None:
            grids = self.llm_grids(inputs["video_grid_thw"])
            factors = video_t_factors(inputs.get("second_per_grid_ts"), self.config.vision_config, len(grids))
            items["video"] = list(zip(self._video_features(inputs), grids, factors))

        # Each item is one contiguous run of its modality's token, matched in order.
        token_of = {"image": self.image_token_id, "video": int(self.config.video_token_id)}
        placed = []  # (offset, modality, index within its modality)
        for modality, token in token_of.items():
            runs = token_runs(ids.tolist(), token)
            if len(runs) != len(items[modality]):
                raise ValueError(f"prompt has {len(runs)} {modality} runs but the processor gave "
                                 f"{len(items[modality])} {modality}s")
            for i, (offset, length) in enumerate(runs):
                if length != items[modality][i][0].shape[0]:
                    raise ValueError(f"{modality} {i}: {length} placeholders for {items[modality][i][0].shape[0]} "
                                     "features")
                placed.append((offset, modality, i))
        placed.sort()

        keep_mask = torch.ones_like(ids, dtype=torch.bool)
        embeds = embeds.clone()
        kept: list[torch.Tensor] = []
        kept_images: list[torch.Tensor] = []
        spans_before: list[tuple[int, int, tuple[int, int, int], float]] = []  # (offset, K, grid, t_factor)
        for offset, modality, i in placed:
            feat, grid, t_factor = items[modality][i]
            n = feat.shape[0]
            k = keep_count(n, ratio if modality == "image" else video_ratio)
            if k == n:
                idx = torch.arange(n, device=feat.device)
            else:
                idx = select(method, feat, grid, k, scorer=self.scorer, seed=seed, selection_lambda=selection_lambda)
            keep_mask[offset : offset + n] = False
            keep_mask[offset + idx] = True
            embeds[offset + idx] = feat[idx].to(embeds.dtype)
            kept.append(idx)
            if modality == "image":
                kept_images.append(idx)
            spans_before.append((offset, k, grid, t_factor))
        new_index = torch.cumsum(keep_mask.long(), 0) - 1  # index in the pruned prompt of every kept token
        ids = ids[keep_mask]
        embeds = embeds[keep_mask]
        # A pruned run starts where its first kept token landed (K >= 1 always).
        spans = [
            MediaSpan(offset=int(new_index[offset + int(idx[0])]), length=k, grid=grid, t_factor=t_factor,
                      kept=idx.cpu())
            for (offset, k, grid, t_factor), idx in zip(spans_before, kept)
        ]

        deepstack_embeds: list[torch.Tensor] | None = None
        visual_pos_mask: torch.Tensor | None = None
        if self.has_deepstack and kept_images:
            # Same indices as the main features, image by image, so level l's row j belongs to the j-th kept slot.
            deepstack_embeds = [
                torch.cat([f[idx] for f, idx in zip(level, kept_images)]).to(embeds.dtype) for level in deepstack_levels
            ]
            visual_pos_mask = (ids == self.image_token_id)[None]

        positions, delta = mrope_positions_for_spans(int(ids.shape[0]), spans)
        return PrunedPrompt(
            input_ids=ids[None],
            inputs_embeds=embeds[None],
            position_ids=positions[:, None, :].to(self.device),
            rope_delta=delta,
            kept=kept,
            visual_total=sum(item[0].shape[0] for group in items.values() for item in group),
            visual_kept=sum(int(k.numel()) for k in kept),
            deepstack_embeds=deepstack_embeds,
            visual_pos_mask=visual_pos_mask,
        )

    @torch.no_grad()
    def _prepare_per_frame(self, inputs, ratio: float, video_ratio: float, method: str, seed: int | None,
                           selection_lambda: float | LambdaDefault) -> PrunedPrompt:
        """Qwen3-VL-family prompts with videos: each video frame is its own run of tokens after timestamp text.

        Obviously right rather than fast: transformers' ``get_rope_index`` positions the *unpruned* prompt; every item
        keeps K tokens (videos: selected over all frames at once); the pruned prompt is the unpruned one with dropped
        tokens removed and, as the plugin lays it out (and vLLM's EVS), each video's kept tokens moved into its first
        frame's run (the other runs left empty), every token carrying its unpruned position.
        """
        ids = inputs["input_ids"].to(self.device)[0]
        if inputs["input_ids"].shape[0] != 1:
            raise ValueError(f"batch size 1 only, got {inputs['input_ids'].shape[0]}")
        inner = self.model.model
        unpruned_positions, _ = inner.get_rope_index(
            inputs["input_ids"].to(self.device), mm_token_type_ids=inputs["mm_token_type_ids"].to(self.device),
            image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs.get("video_grid_thw"))
        unpruned_positions = unpruned_positions[:, 0]
        embeds = self.model.get_input_embeddings()(ids).clone()
        token_of = {"image": self.image_token_id, "video": int(self.config.video_token_id)}
        # Per modality, per item: main features, DeepStack levels, grid, and the item's slots in the unpruned prompt.
        items: dict[str, list[tuple[torch.Tensor, list[torch.Tensor], tuple[int, int, int]]]] = {"image": [], "video": []}
        for modality, grid_key, pixel_key, getter in (
            ("image", "image_grid_thw", "pixel_values", inner.get_image_features),
            ("video", "video_grid_thw", "pixel_values_videos", inner.get_video_features),
        ):
            if inputs.get(grid_key) is None:
                continue
            out = getter(inputs[pixel_key].to(self.device), inputs[grid_key].to(self.device), return_dict=True)
            levels = [list(level) for level in out.deepstack_features] if self.has_deepstack else []
            for i, (feat, grid) in enumerate(zip(out.pooler_output, self.llm_grids(inputs[grid_key]))):
                items[modality].append((feat, [level[i] for level in levels], grid))
        slots = {m: (ids == token_of[m]).nonzero().flatten() for m in token_of}  # items' slots, in item order
        order: list[int] = []  # unpruned indices of the pruned prompt, in its order
        placed_rows: dict[int, tuple[str, int, int]] = {}  # unpruned slot -> (modality, item, feature row)
        dropped: set[int] = set()
        kept_all: list[torch.Tensor] = []
        visual_total = visual_kept = 0
        starts = {m: 0 for m in token_of}
        first_slot: dict[int, list[int]] = {}  # first unpruned slot of a video -> the slots its kept rows fill
        for modality in token_of:
            for i, (feat, _, grid) in enumerate(items[modality]):
                n = feat.shape[0]
                item_slots = slots[modality][starts[modality]: starts[modality] + n].tolist()
                starts[modality] += n
                k = keep_count(n, ratio if modality == "image" else video_ratio)
                idx = torch.arange(n) if k == n else select(method, feat, grid, k, scorer=self.scorer, seed=seed,
                                                             selection_lambda=selection_lambda).cpu()
                kept_all.append(idx)
                visual_total += n
                visual_kept += k
                for j in idx.tolist():
                    placed_rows[item_slots[j]] = (modality, i, j)
                if modality == "video" and k < n:
                    dropped.update(item_slots)
                    first_slot[item_slots[0]] = [item_slots[j] for j in idx.tolist()]
                else:
                    dropped.update(set(item_slots) - {item_slots[j] for j in idx.tolist()})
        for position in range(ids.shape[0]):
            if position in first_slot:
                order.extend(first_slot[position])
            elif position not in dropped:
                order.append(position)
        index = torch.tensor(order, device=self.device)
        for slot, (modality, i, j) in placed_rows.items():
            embeds[slot] = items[modality][i][0][j].to(embeds.dtype)
        new_ids = ids[index]
        positions = unpruned_positions[:, index]
        deepstack_embeds = visual_pos_mask = None
        if self.has_deepstack:
            visual = [o for o in order if o in placed_rows]
            deepstack_embeds = [
                torch.stack([items[placed_rows[o][0]][placed_rows[o][1]][1][level][placed_rows[o][2]] for o in visual])
                .to(embeds.dtype)
                for level in range(len(self.config.vision_config.deepstack_visual_indexes))
            ]
            visual_pos_mask = ((new_ids == token_of["image"]) | (new_ids == token_of["video"]))[None]
        return PrunedPrompt(
            input_ids=new_ids[None],
            inputs_embeds=embeds[index][None],
            position_ids=positions[:, None, :],
            rope_delta=int(positions.max()) + 1 - len(order),
            kept=kept_all,
            visual_total=visual_total,
            visual_kept=visual_kept,
            deepstack_embeds=deepstack_embeds,
            visual_pos_mask=visual_pos_mask,
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
        selection_lambda: float | LambdaDefault = BY_BUDGET,
        video_ratio: float | None = None,
    ) -> tuple[list[int], PrunedPrompt]:
        """Greedy decoding on the pruned prompt. Returns the generated ids and the pruned prompt."""
        from transformers import DynamicCache

        prompt = self.prepare(inputs, ratio=ratio, method=method, seed=seed, selection_lambda=selection_lambda,
                              video_ratio=video_ratio)
        lm = self.model.model.language_model
        cache = DynamicCache(config=self.config.get_text_config())
        out = lm(**prompt.prefill_kwargs(), past_key_values=cache, use_cache=True)
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
            # No DeepStack inputs here: a generated token is text, and DeepStack only adds to image slots.
            out = lm(inputs_embeds=embeds, position_ids=pos, past_key_values=cache, use_cache=True)
        return generated, prompt
