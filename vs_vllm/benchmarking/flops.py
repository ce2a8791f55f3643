"""Analytic prefill FLOPs of a Qwen2.5-VL request, and the Amdahl ceiling of visual-token pruning.

Counting rules (the same as ``anchors.md`` §6, so the 7B numbers there are reproduced):

- every matrix product is 2 FLOPs per multiply-accumulate (MAC): linear layers ``2 * rows * in * out``;
- attention is the two batched products QK^T and AV: ``2 * 2 * sum_g(n_g^2) * d`` for groups of n_g tokens attending to
  each other (ViT windows or whole images), ``2 * 2 * sum_i(keys_i) * d_q`` for causal LLM attention, where query i
  sees ``keys_i = i + 1`` keys;
- norms, activations, softmax, rotary embeddings, residual adds and the embedding lookup are ignored (a few % at most);
- the LLM computes logits for the last prompt token only (as vLLM does).

ViT window geometry: ``window_size`` pixels per side = ``window_size / patch`` patches, cut on the merged grid (as the
model does), so edge windows are partial; blocks in ``fullatt_block_indexes`` attend over the whole image.

Videos: the processor resizes every frame as it would an image and stacks ``temporal_patch_size`` frames per patch
(padding an odd count with the last frame), so a video is a grid ``(t, h, w)`` with ``t = ceil(frames / 2)``. Every
ViT attention group (window or full) stays within one temporal slice, so the ViT cost is ``t`` times that of one
slice; in the LLM the ``t * h * w / merge^2`` video tokens cost exactly what as many image tokens would. Pruning
removes LLM tokens only: the ViT term is the same at every retention ratio.

Pure Python (no torch), so the GPU script, the tests and the report all share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "FlopSplit",
    "Media",
    "QwenVLArch",
    "amdahl_ceiling",
    "flop_ceiling",
    "image_grid",
    "llm_flops",
    "prefill_split",
    "smart_resize",
    "video_grid",
    "vision_flops",
    "window_sizes",
]


@dataclass(frozen=True)
class QwenVLArch:
    """The shapes that determine a Qwen2.5-VL prefill's FLOPs."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vocab_size: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    fullatt_block_indexes: tuple[int, ...]
    window_size: int = 112
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    in_channels: int = 3
    text_head_dim: int | None = None  # None: text_hidden // text_heads

    @property
    def head_dim(self) -> int:
        return self.text_head_dim or self.text_hidden // self.text_heads

    @classmethod
    def qwen2_5_vl_7b(cls) -> QwenVLArch:
        """``Qwen/Qwen2.5-VL-7B-Instruct`` (anchors.md §6)."""
        return cls(
            text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944,
            vocab_size=152064, vision_depth=32, vision_hidden=1280, vision_heads=16, vision_intermediate=3420,
            fullatt_block_indexes=(7, 15, 23, 31),
        )

    @classmethod
    def from_sizes(cls, sizes: Any, vocab_size: int = 768) -> QwenVLArch:
        """From a :class:`vs_vllm.testing.tiny_models.QwenVLSizes` (or a mapping with its field names)."""
        s = sizes if isinstance(sizes, Mapping) else asdict(sizes)
        return cls(
            text_hidden=s["text_hidden"], text_layers=s["text_layers"], text_heads=s["text_heads"],
            text_kv_heads=s["text_kv_heads"], text_intermediate=s["text_intermediate"], vocab_size=vocab_size,
            vision_depth=s["vision_depth"], vision_hidden=s["vision_hidden"], vision_heads=s["vision_heads"],
            vision_intermediate=s["vision_intermediate"], fullatt_block_indexes=tuple(s["fullatt_block_indexes"]),
            window_size=s.get("window_size", 112),
        )

    @classmethod
    def from_hf_config(cls, config: Any) -> QwenVLArch:
        """From a ``Qwen2_5_VLConfig`` object or its ``config.json`` dict."""
        def get(obj: Any, key: str, default: Any = None) -> Any:
            return obj.get(key, default) if isinstance(obj, Mapping) else getattr(obj, key, default)

        text = get(config, "text_config") or config
        vision = get(config, "vision_config")
        return cls(
            text_hidden=get(text, "hidden_size"), text_layers=get(text, "num_hidden_layers"),
            text_heads=get(text, "num_attention_heads"), text_kv_heads=get(text, "num_key_value_heads"),
            text_intermediate=get(text, "intermediate_size"), vocab_size=get(text, "vocab_size"),
            vision_depth=get(vision, "depth"), vision_hidden=get(vision, "hidden_size"),
            vision_heads=get(vision, "num_heads"), vision_intermediate=get(vision, "intermediate_size"),
            fullatt_block_indexes=tuple(get(vision, "fullatt_block_indexes", ())),
            window_size=get(vision, "window_size", 112), patch_size=get(vision, "patch_size", 14),
            spatial_merge_size=get(vision, "spatial_merge_size", 2),
            temporal_patch_size=get(vision, "temporal_patch_size", 2),
            text_head_dim=get(text, "head_dim", None),
        )


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be < 200, got {height}x{width}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def image_grid(arch: QwenVLArch, width: int, height: int, min_pixels: int = 56 * 56,
               max_pixels: int = 28 * 28 * 1280) -> tuple[int, int, int]:
    """Patch grid ``(t, h, w)`` of one image of ``width`` x ``height`` pixels (t = 1 for a still image)."""
    factor = arch.patch_size * arch.spatial_merge_size
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return 1, h // arch.patch_size, w // arch.patch_size


def video_grid(arch: QwenVLArch, width: int, height: int, frames: int, min_pixels: int = 56 * 56,
               max_pixels: int = 28 * 28 * 1280) -> tuple[int, int, int]:
    """Patch grid ``(t, h, w)`` of a video of ``frames`` frames of ``width`` x ``height`` pixels, all frames kept
    (``do_sample_frames=False``, as for ``data:video/jpeg`` URLs in vLLM): frames resized like images, and
    ``temporal_patch_size`` frames per temporal patch, an incomplete last patch padded (so 15 frames cost as 16)."""
    if frames < 1:
        raise ValueError(f"a video needs at least one frame, got {frames}")
    _, h, w = image_grid(arch, width, height, min_pixels, max_pixels)
    return -(-frames // arch.temporal_patch_size), h, w


@dataclass(frozen=True)
class Media:
    """One benchmark media item: a still image (``frames == 0``) or a video of ``frames`` frames, ``width`` x
    ``height`` pixels each. Its label is the key in the result files: ``896x504`` or ``16f@224x224``."""

    width: int
    height: int
    frames: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1 or self.frames < 0:
            raise ValueError(f"bad media size {self.width}x{self.height}, {self.frames} frames")

    @property
    def kind(self) -> str:
        return "video" if self.frames else "image"

    @property
    def label(self) -> str:
        size = f"{self.width}x{self.height}"
        return f"{self.frames}f@{size}" if self.frames else size

    @classmethod
    def parse(cls, label: str) -> Media:
        """Inverse of :attr:`label`."""
        frames, _, size = label.strip().rpartition("f@")
        w, sep, h = size.partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or (frames and not frames.isdigit()):
            raise ValueError(f"media label must look like 896x504 or 16f@224x224, got {label!r}")
        return cls(int(w), int(h), int(frames or 0))

    def grid(self, arch: QwenVLArch, min_pixels: int = 56 * 56,
             max_pixels: int = 28 * 28 * 1280) -> tuple[int, int, int]:
        if self.frames:
            return video_grid(arch, self.width, self.height, self.frames, min_pixels, max_pixels)
        return image_grid(arch, self.width, self.height, min_pixels, max_pixels)

    def tokens(self, arch: QwenVLArch, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> int:
        """Visual tokens the LLM sees unpruned (N)."""
        return math.prod(self.grid(arch, min_pixels, max_pixels)) // arch.spatial_merge_size**2


def _window_extents(length: int, window: int) -> list[int]:
    full, rest = divmod(length, window)
    return [window] * full + ([rest] if rest else [])


def window_sizes(arch: QwenVLArch, grid_thw: Sequence[int]) -> list[int]:
    """Patch counts of the ViT's attention windows for one image or video (partial windows at the edges)."""
    t, h, w = (int(v) for v in grid_thw)
    m = arch.spatial_merge_size
    if h % m or w % m:
        raise ValueError(f"grid {grid_thw} is not divisible by the merge size {m}")
    win = arch.window_size // m // arch.patch_size  # window side on the merged grid
    rows = _window_extents(h // m, win)
    cols = _window_extents(w // m, win)
    return [r * c * m * m for _ in range(t) for r in rows for c in cols]


def vision_flops(arch: QwenVLArch, grid_thw: Sequence[int]) -> dict[str, float]:
    """FLOPs of the vision tower (patch embedding, blocks, merger) for one image or video with patch grid ``(t, h, w)``
    (attention groups never span temporal slices, so a video costs ``t`` times one slice)."""
    t, h, w = (int(v) for v in grid_thw)
    p = t * h * w
    hv, iv = arch.vision_hidden, arch.vision_intermediate
    m2 = arch.spatial_merge_size**2
    patch_in = arch.in_channels * arch.temporal_patch_size * arch.patch_size**2
    patch_embed = 2 * p * patch_in * hv
    per_block_linear = 2 * p * (3 * hv * hv + hv * hv + 3 * hv * iv)  # qkv, proj, SwiGLU gate/up/down
    full_sq = t * (h * w) ** 2  # one attention group per frame
    window_sq = sum(n * n for n in window_sizes(arch, grid_thw))
    n_full = sum(1 for i in range(arch.vision_depth) if i in set(arch.fullatt_block_indexes))
    n_window = arch.vision_depth - n_full
    attention = 4 * hv * (n_full * full_sq + n_window * window_sq)
    merged = p // m2
    merger = 2 * merged * ((m2 * hv) ** 2 + m2 * hv * arch.text_hidden)
    linear = arch.vision_depth * per_block_linear
    return {
        "patch_embed": float(patch_embed),
        "linear": float(linear),
        "attention": float(attention),
        "merger": float(merger),
        "total": float(patch_embed + linear + attention + merger),
    }


def llm_flops(arch: QwenVLArch, text_before: int, visual: int, text_after: int,
              lm_head_tokens: int = 1) -> dict[str, float]:
    """LLM prefill FLOPs of a prompt laid out as [text_before, visual tokens, text_after], split by token kind.

    Linear layers cost the same per token; causal attention is charged to the query token (query i sees i + 1 keys).
    """
    if min(text_before, visual, text_after) < 0:
        raise ValueError("token counts must be >= 0")
    d, dq, dkv = arch.text_hidden, arch.text_heads * arch.head_dim, arch.text_kv_heads * arch.head_dim
    per_token_linear = 2 * arch.text_layers * (d * dq + 2 * d * dkv + dq * d + 3 * d * arch.text_intermediate)

    def keys(start: int, count: int) -> int:  # sum_{i=start}^{start+count-1} (i + 1)
        return count * (2 * start + count + 1) // 2

    per_key = 4 * arch.text_layers * dq  # QK^T + AV, 2 FLOPs per MAC
    visual_attn = per_key * keys(text_before, visual)
    text_attn = per_key * (keys(0, text_before) + keys(text_before + visual, text_after))
    lm_head = 2 * lm_head_tokens * d * arch.vocab_size
    text_total = per_token_linear * (text_before + text_after) + text_attn + lm_head
    visual_total = per_token_linear * visual + visual_attn
    return {
        "visual": float(visual_total),
        "text": float(text_total),
        "attention": float(visual_attn + text_attn),
        "per_token_linear": float(per_token_linear),
        "total": float(visual_total + text_total),
    }


@dataclass(frozen=True)
class FlopSplit:
    """Prefill FLOPs of one request: vision tower, LLM on the visual tokens, LLM on the text tokens."""

    vision: float
    llm_visual: float
    llm_text: float
    visual_tokens: int
    text_tokens: int

    @property
    def total(self) -> float:
        return self.vision + self.llm_visual + self.llm_text

    def shares(self) -> dict[str, float]:
        t = self.total
        return {"vision": self.vision / t, "llm_visual": self.llm_visual / t, "llm_text": self.llm_text / t}


def prefill_split(arch: QwenVLArch, grid_thw: Sequence[int], text_tokens: int, *, keep: int | None = None,
                  text_before: int | None = None) -> FlopSplit:
    """The FLOP split of one single-image (or single-video: ``grid_thw`` from :func:`video_grid`) request with
    ``text_tokens`` text tokens and ``keep`` visual tokens kept (default: all). The image sits after ``text_before`` text tokens (default: all but 10 of the text, as in a chat
    template with a system prompt: the question follows the image)."""
    m2 = arch.spatial_merge_size**2
    n = int(math.prod(grid_thw)) // m2
    k = n if keep is None else int(keep)
    if not 0 <= k <= n:
        raise ValueError(f"keep must be in [0, {n}], got {keep}")
    before = max(0, text_tokens - 10) if text_before is None else text_before
    if not 0 <= before <= text_tokens:
        raise ValueError("text_before must be in [0, text_tokens]")
    llm = llm_flops(arch, before, k, text_tokens - before)
    return FlopSplit(vision_flops(arch, grid_thw)["total"], llm["visual"], llm["text"], k, text_tokens)


def flop_ceiling(arch: QwenVLArch, grid_thw: Sequence[int], text_tokens: int, keep: int,
                 include_vision: bool = True) -> float:
    """Prefill speedup bound from FLOPs alone: FLOPs(all visual tokens) / FLOPs(``keep`` kept).

    ``include_vision=False`` is the encoder-cache-hit case (the ViT term is gone on both sides)."""
    full = prefill_split(arch, grid_thw, text_tokens)
    pruned = prefill_split(arch, grid_thw, text_tokens, keep=keep)
    if include_vision:
        return full.total / pruned.total
    return (full.llm_visual + full.llm_text) / (pruned.llm_visual + pruned.llm_text)


def amdahl_ceiling(t_enc: float, t_llm: float, visual_tokens: int, keep: int, text_tokens: int,
                   t_full: float | None = None, overhead: float = 0.0) -> float:
    """Amdahl ceiling of the TTFT speedup when only the LLM prefill shrinks with the kept tokens:

        TTFT_full / (overhead + T_enc + T_llm * (K + text) / (N + text))

    ``t_full`` defaults to ``overhead + t_enc + t_llm`` (the unpruned prefill built from the same parts); ``overhead``
    is any fixed per-request cost that pruning cannot touch (preprocessing, scheduling)."""
    if visual_tokens < 1 or not 0 <= keep <= visual_tokens or text_tokens < 0:
        raise ValueError(f"need 0 <= keep <= visual_tokens (>= 1) and text_tokens >= 0, got {keep}, "
                         f"{visual_tokens}, {text_tokens}")
    if t_enc < 0 or t_llm < 0 or overhead < 0:
        raise ValueError("times must be >= 0")
    full = overhead + t_enc + t_llm if t_full is None else t_full
    pruned = overhead + t_enc + t_llm * (keep + text_tokens) / (visual_tokens + text_tokens)
    return full / pruned
