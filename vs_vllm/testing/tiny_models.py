"""Deterministic random-weight multimodal checkpoints, built offline.

``build_tiny_model(out_dir, arch="qwen2_5_vl", seed=0)`` writes a checkpoint that transformers and vLLM load from a
local directory: ``config.json``, ``generation_config.json``, ``model.safetensors``, tokenizer files (a byte-level BPE
trained in-process with the model family's special tokens), ``preprocessor_config.json`` and the chat template. The
same seed gives byte-identical files.

Each architecture is one builder function registered in ``ARCH_BUILDERS``: qwen2_5_vl and qwen2_vl (which share the
tokenizer, the M-RoPE LLM config, the image processor and the saving code, and differ only in the vision config), and
the text-only qwen2, and qwen3_vl / qwen3_vl_moe (Qwen3 LLM with interleaved M-RoPE, a dense or MoE MLP, 16-px
patches, a learned position-embedding table and DeepStack levels, as the released configs have).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["ARCH_BUILDERS", "QwenVLSizes", "build_tiny_model", "list_archs"]

_Builder = Callable[[Path, int, Mapping[str, Any]], None]
ARCH_BUILDERS: dict[str, _Builder] = {}


def _register(name: str) -> Callable[[_Builder], _Builder]:
    def deco(fn: _Builder) -> _Builder:
        ARCH_BUILDERS[name] = fn
        return fn

    return deco


def list_archs() -> list[str]:
    return sorted(ARCH_BUILDERS)


@dataclass(frozen=True)
class QwenVLSizes:
    """Sizes of a Qwen2.5-VL or Qwen2-VL checkpoint. The defaults make a ~2.5M-parameter model that runs on vLLM's CPU
    backend.

    Constraints that matter: the text head_dim (hidden / heads) must be one vLLM's CPU attention supports (32, 64, 80,
    96, 112, 128, ...); ``mrope_section`` must sum to head_dim / 2; the vision head_dim (``vision_hidden /
    vision_heads``) likewise; the merger output (``out_hidden_size`` in Qwen2.5-VL, ``hidden_size`` in Qwen2-VL)
    equals the text hidden size. ``max_pixels`` caps the image at ``max_pixels / 28**2`` LLM tokens.

    Qwen2-VL maps ``vision_hidden`` to ``embed_dim`` and ``vision_intermediate`` to ``mlp_ratio = vision_intermediate
    / vision_hidden`` (which must divide evenly); it has no window attention, so ``window_size`` and
    ``fullatt_block_indexes`` only apply to Qwen2.5-VL.
    """

    text_hidden: int = 256
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 512
    mrope_section: tuple[int, int, int] = (8, 12, 12)
    max_position_embeddings: int = 4096
    vision_depth: int = 2
    vision_hidden: int = 128
    vision_heads: int = 2
    vision_intermediate: int = 256
    fullatt_block_indexes: tuple[int, ...] = (1,)
    window_size: int = 112
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 64
    initializer_range: float = 0.02
    # Qwen2.5-VL: temporal M-RoPE positions per second of video. The released configs say 2; 25 here makes a short test
    # video's temporal positions (index x seconds per patch x this) span more than its height and width, so tests
    # exercise the temporal scaling and the "text after a video continues past its largest position" rule.
    tokens_per_second: int = 25
    # Qwen3-VL only: vision blocks whose outputs feed DeepStack levels (one LLM layer each), the learned position
    # embedding table (a square grid), and the MoE LLM of qwen3_vl_moe.
    deepstack_visual_indexes: tuple[int, ...] = (0, 1)
    num_position_embeddings: int = 256
    num_experts: int = 4
    num_experts_per_tok: int = 2
    moe_intermediate: int = 64  # 2 * moe_intermediate != text_hidden: see _write_released_moe_layout
    extra: dict[str, Any] = field(default_factory=dict)


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    arch: str = "qwen2_5_vl",
    seed: int = 0,
    sizes: Mapping[str, Any] | None = None,
) -> Path:
    """Write a deterministic random-weight checkpoint of ``arch`` to ``out_dir`` and return its path.

    ``sizes`` overrides fields of the architecture's size dataclass (e.g. ``QwenVLSizes``), so benchmarks can build a
    larger model with the same code.
    """
    if arch not in ARCH_BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; available: {', '.join(list_archs())}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Never reach for a hub while building.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    ARCH_BUILDERS[arch](out, seed, dict(sizes or {}))
    return out


def _resolve_sizes(overrides: Mapping[str, Any]) -> QwenVLSizes:
    unknown = set(overrides) - set(QwenVLSizes.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown size fields {sorted(unknown)}; known: {sorted(QwenVLSizes.__dataclass_fields__)}")
    return replace(QwenVLSizes(), **overrides)


def _qwen2_text_config(sizes: QwenVLSizes, vocab_size: int) -> dict[str, Any]:
    """The Qwen2 LLM part shared by every Qwen-family builder."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_intermediate,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_kv_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        initializer_range=sizes.initializer_range,
        tie_word_embeddings=False,
    )


def _padded_vocab(tokenizer: Any) -> int:
    return -(-len(tokenizer) // 64) * 64  # a multiple of 64, as real checkpoints do


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_tokenizer(tokenizer: Any, out: Path, processor_class: str | None) -> None:
    tokenizer.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # The fast tokenizer is what every loader uses; naming the Qwen2 class makes AutoTokenizer pick Qwen2Tokenizer.
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    if processor_class:
        cfg["processor_class"] = processor_class
    _write_json(cfg_path, cfg)
    template = tokenizer.chat_template
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    _write_json(out / "chat_template.json", {"chat_template": template})


_QWEN_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
                   "<|im_start|>", "<|im_end|>", "<|endoftext|>")


def _qwen_vl_tokenizer() -> tuple[Any, dict[str, int]]:
    """The shared Qwen BPE tokenizer and the ids of the special tokens the VL configs name."""
    from vs_vllm.testing.tokenizer import build_bpe_tokenizer

    tokenizer = build_bpe_tokenizer()
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_VL_TOKENS}


def _qwen_vl_text_config(sizes: QwenVLSizes, vocab_size: int, ids: Mapping[str, int]) -> dict[str, Any]:
    """The M-RoPE Qwen2 LLM of Qwen2-VL and Qwen2.5-VL (same fields in both)."""
    head_dim = sizes.text_hidden // sizes.text_heads
    if sum(sizes.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {sizes.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    return dict(
        _qwen2_text_config(sizes, vocab_size),
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(sizes.mrope_section)},
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _qwen_vl_config_kwargs(ids: Mapping[str, int], sizes: QwenVLSizes) -> dict[str, Any]:
    """Top-level kwargs common to Qwen2-VL and Qwen2.5-VL configs."""
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        **sizes.extra,
    )


def _save_qwen_vl(
    out: Path,
    *,
    arch: str,
    seed: int,
    sizes: QwenVLSizes,
    config: Any,
    model_cls: Any,
    tokenizer: Any,
    ids: Mapping[str, int],
    processor_class: str,
    save_processor: Callable[[Path, QwenVLSizes], None] | None = None,
) -> None:
    """Instantiate ``model_cls(config)`` under ``seed`` and write weights, tokenizer, processor config and model card."""
    import torch

    config.architectures = [model_cls.__name__]
    # Top-level copies of the ids: vLLM and older loaders read them from the root config.
    config.bos_token_id = ids["<|endoftext|>"]
    config.eos_token_id = ids["<|im_end|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    config.vision_token_id = ids["<|vision_pad|>"]

    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    model.save_pretrained(str(out), safe_serialization=True)

    _save_tokenizer(tokenizer, out, processor_class=processor_class)
    if save_processor is not None:
        save_processor(out, sizes)
        _write_json(out / "vs_vllm_tiny_model.json", {"arch": arch, "seed": seed, "sizes": to_jsonable(asdict(sizes))})
        return
    # Qwen2-VL and Qwen2.5-VL share the image processor (14px patches, 2x2 merge, 2-frame temporal patches).
    _write_json(
        out / "preprocessor_config.json",
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": processor_class,
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "rescale_factor": 1 / 255,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "min_pixels": sizes.min_pixels,
            "max_pixels": sizes.max_pixels,
            "size": {"shortest_edge": sizes.min_pixels, "longest_edge": sizes.max_pixels},
        },
    )
    _write_json(out / "vs_vllm_tiny_model.json", {"arch": arch, "seed": seed, "sizes": to_jsonable(asdict(sizes))})


@_register("qwen2_5_vl")
def _build_qwen2_5_vl(out: Path, seed: int, overrides: Mapping[str, Any]) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    sizes = _resolve_sizes(overrides)
    tokenizer, ids = _qwen_vl_tokenizer()
    vision_config = dict(
        depth=sizes.vision_depth,
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_intermediate,
        num_heads=sizes.vision_heads,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=sizes.window_size,
        fullatt_block_indexes=list(sizes.fullatt_block_indexes),
        out_hidden_size=sizes.text_hidden,
        tokens_per_second=sizes.tokens_per_second,
        initializer_range=sizes.initializer_range,
    )
    config = Qwen2_5_VLConfig(
        text_config=_qwen_vl_text_config(sizes, _padded_vocab(tokenizer), ids),
        vision_config=vision_config,
        **_qwen_vl_config_kwargs(ids, sizes),
    )
    _save_qwen_vl(out, arch="qwen2_5_vl", seed=seed, sizes=sizes, config=config,
                  model_cls=Qwen2_5_VLForConditionalGeneration, tokenizer=tokenizer, ids=ids,
                  processor_class="Qwen2_5_VLProcessor")


@_register("qwen2_vl")
def _build_qwen2_vl(out: Path, seed: int, overrides: Mapping[str, Any]) -> None:
    """Qwen2-VL: the same LLM and processor as Qwen2.5-VL; the vision tower has no window attention, LayerNorm and a
    GELU MLP of width ``embed_dim * mlp_ratio``. Its ``hidden_size`` is the merger output (= the LLM hidden size) and
    ``embed_dim`` the tower width, so ``vision_hidden`` maps to ``embed_dim`` and ``vision_intermediate`` must be a
    multiple of it (``window_size`` and ``fullatt_block_indexes`` are ignored)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    sizes = _resolve_sizes(overrides)
    if sizes.vision_intermediate % sizes.vision_hidden:
        raise ValueError(f"qwen2_vl needs vision_intermediate ({sizes.vision_intermediate}) to be a multiple of "
                         f"vision_hidden ({sizes.vision_hidden}): its MLP width is embed_dim * mlp_ratio")
    tokenizer, ids = _qwen_vl_tokenizer()
    vision_config = dict(
        depth=sizes.vision_depth,
        embed_dim=sizes.vision_hidden,
        hidden_size=sizes.text_hidden,
        mlp_ratio=sizes.vision_intermediate // sizes.vision_hidden,
        num_heads=sizes.vision_heads,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        initializer_range=sizes.initializer_range,
    )
    config = Qwen2VLConfig(
        text_config=_qwen_vl_text_config(sizes, _padded_vocab(tokenizer), ids),
        vision_config=vision_config,
        **_qwen_vl_config_kwargs(ids, sizes),
    )
    _save_qwen_vl(out, arch="qwen2_vl", seed=seed, sizes=sizes, config=config,
                  model_cls=Qwen2VLForConditionalGeneration, tokenizer=tokenizer, ids=ids,
                  processor_class="Qwen2VLProcessor")


@_register("qwen2")
def _build_qwen2(out: Path, seed: int, overrides: Mapping[str, Any]) -> None:
    """A text-only Qwen2 LLM with the same tokenizer: an architecture vs-vllm does not prune (tests that an enabled
    plugin leaves it alone)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vs_vllm.testing.tokenizer import build_bpe_tokenizer

    sizes = _resolve_sizes(overrides)
    tokenizer = build_bpe_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        **_qwen2_text_config(sizes, _padded_vocab(tokenizer)),
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = [eos, pad]
    model.generation_config.pad_token_id = pad
    model.generation_config.do_sample = False
    model.save_pretrained(str(out), safe_serialization=True)
    _save_tokenizer(tokenizer, out, processor_class=None)
    _write_json(out / "vs_vllm_tiny_model.json", {"arch": "qwen2", "seed": seed, "sizes": to_jsonable(asdict(sizes))})


def _qwen3_vision_config(sizes) -> dict[str, Any]:
    """The vision tower of Qwen3-VL and Qwen3.5 (16-px patches, 2x2 merge, learned position table); Qwen3-VL adds
    its DeepStack levels."""
    return dict(
        depth=sizes.vision_depth,
        hidden_size=sizes.vision_hidden,
        hidden_act="gelu_pytorch_tanh",
        intermediate_size=sizes.vision_intermediate,
        num_heads=sizes.vision_heads,
        in_channels=3,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=sizes.text_hidden,
        num_position_embeddings=sizes.num_position_embeddings,
        initializer_range=sizes.initializer_range,
    )


_QWEN3_VL_PIXEL_DEFAULTS = {"min_pixels": 32 * 32 * 4, "max_pixels": 32 * 32 * 64}  # 16-px patches, 2x2 merge


def _qwen3_vl_config(arch: str, overrides: Mapping[str, Any]):
    """(sizes, config, tokenizer, ids) of a Qwen3-VL (dense or MoE) checkpoint."""
    sizes = _resolve_sizes({**_QWEN3_VL_PIXEL_DEFAULTS, **overrides})
    head_dim = sizes.text_hidden // sizes.text_heads
    if sum(sizes.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {sizes.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    levels = tuple(sizes.deepstack_visual_indexes)
    if not levels or max(levels) >= sizes.vision_depth or len(levels) > sizes.text_layers:
        raise ValueError(f"deepstack_visual_indexes {levels} must name vision blocks (< vision_depth "
                         f"{sizes.vision_depth}), at most one per LLM layer ({sizes.text_layers})")
    side = int(round(sizes.num_position_embeddings ** 0.5))
    if side * side != sizes.num_position_embeddings:
        raise ValueError(f"num_position_embeddings ({sizes.num_position_embeddings}) must be a square")
    tokenizer, ids = _qwen_vl_tokenizer()
    text_config = dict(
        _qwen2_text_config(sizes, _padded_vocab(tokenizer)),
        head_dim=head_dim,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": list(sizes.mrope_section),
                         "mrope_interleaved": True},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if arch == "qwen3_vl_moe":
        text_config.update(num_experts=sizes.num_experts, num_experts_per_tok=sizes.num_experts_per_tok,
                           moe_intermediate_size=sizes.moe_intermediate, decoder_sparse_step=1, mlp_only_layers=[],
                           norm_topk_prob=True)  # transformers always renormalises the top-k weights; vLLM reads it
    vision_config = dict(_qwen3_vision_config(sizes), deepstack_visual_indexes=list(levels))
    if arch == "qwen3_vl_moe":
        from transformers import Qwen3VLMoeConfig as config_cls
    else:
        from transformers import Qwen3VLConfig as config_cls
    config = config_cls(text_config=text_config, vision_config=vision_config, **_qwen_vl_config_kwargs(ids, sizes))
    if arch == "qwen3_vl_moe":
        config.text_config.norm_topk_prob = True
    return sizes, config, tokenizer, ids


def _save_qwen3_vl_processor(out: Path, sizes: QwenVLSizes) -> None:
    """Qwen3-VL's processor files: the Qwen2-VL image processor with 16-px patches and the Qwen3-VL video processor."""
    common = {
        "processor_class": "Qwen3VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    _write_json(out / "preprocessor_config.json", {
        **common, "image_processor_type": "Qwen2VLImageProcessorFast", "resample": 3,
        "size": {"shortest_edge": sizes.min_pixels, "longest_edge": sizes.max_pixels},
    })
    _write_json(out / "video_preprocessor_config.json", {
        **common, "video_processor_type": "Qwen3VLVideoProcessor", "fps": 2, "min_frames": 4, "max_frames": 16,
        "do_sample_frames": True, "size": {"shortest_edge": sizes.min_pixels, "longest_edge": 16 * sizes.max_pixels},
    })


def _build_qwen3_vl_family(out: Path, seed: int, overrides: Mapping[str, Any], arch: str) -> None:
    if arch == "qwen3_vl_moe":
        from transformers import Qwen3VLMoeForConditionalGeneration as model_cls
    else:
        from transformers import Qwen3VLForConditionalGeneration as model_cls
    sizes, config, tokenizer, ids = _qwen3_vl_config(arch, overrides)
    if arch == "qwen3_vl_moe" and 2 * sizes.moe_intermediate == sizes.text_hidden:
        raise ValueError("qwen3_vl_moe needs 2 * moe_intermediate != text_hidden: transformers tells the released "
                         "expert layout from its own by shape alone")
    _save_qwen_vl(out, arch=arch, seed=seed, sizes=sizes, config=config, model_cls=model_cls, tokenizer=tokenizer,
                  ids=ids, processor_class="Qwen3VLProcessor", save_processor=_save_qwen3_vl_processor)
    if arch == "qwen3_vl_moe":
        _write_released_moe_layout(out / "model.safetensors")


def _write_released_moe_layout(path: Path) -> None:
    """Store the fused expert weights as the released Qwen3-VL-MoE checkpoints do.

    transformers 5 keeps ``experts.gate_up_proj`` as [E, 2I, H] and ``experts.down_proj`` as [E, H, I] in memory and
    saves them that way; the released checkpoints (and vLLM's loader, ``is_fused_checkpoint_transposed``) have
    [E, H, 2I] and [E, I, H]. transformers transposes on load only when the shape differs from its own, hence
    2I != H.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    for name in list(tensors):
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            tensors[name] = tensors[name].transpose(1, 2).contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


@_register("qwen3_vl")
def _build_qwen3_vl(out: Path, seed: int, overrides: Mapping[str, Any]) -> None:
    """Qwen3-VL (dense): Qwen3 LLM (q/k norms, explicit head_dim, interleaved M-RoPE), vision tower with 16-px
    patches, a learned position-embedding table and DeepStack mergers after ``deepstack_visual_indexes``."""
    _build_qwen3_vl_family(out, seed, overrides, "qwen3_vl")


@_register("qwen3_vl_moe")
def _build_qwen3_vl_moe(out: Path, seed: int, overrides: Mapping[str, Any]) -> None:
    """Qwen3-VL-MoE: qwen3_vl with a sparse MoE MLP in every LLM layer (``num_experts``, top ``num_experts_per_tok``)."""
    _build_qwen3_vl_family(out, seed, overrides, "qwen3_vl_moe")


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


# ---- Qwen3.5 -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Qwen3_5Sizes(QwenVLSizes):
    """Sizes of a tiny Qwen3.5 (``Qwen3_5ForConditionalGeneration``): the Qwen3-VL vision tower without DeepStack and
    a hybrid LLM whose layers are gated-delta-net ("linear_attention") or gated full attention ("full_attention").

    The full-attention layers have their own ``text_head_dim`` (not hidden / heads; q_proj is 2 * heads * head_dim
    because of the output gate) and rotate only ``partial_rotary_factor`` of it, so ``mrope_section`` must sum to
    ``text_head_dim * partial_rotary_factor / 2`` (vLLM asserts it in ``MRotaryEmbedding``). The defaults mirror the
    released checkpoints' ratios: head_dim 64 (one vLLM's CPU attention supports) x 0.25 = 16 rotary dims, sections
    [3, 3, 2] interleaved like the released [11, 11, 10] (every channel of T/H/W is reached, none past the end), and
    three linear layers before each full one (``full_attention_interval`` 4).

    ``text_kv_heads`` is the full-attention KV head count; the linear layers have ``linear_num_key_heads`` /
    ``linear_num_value_heads`` heads of ``linear_key_head_dim`` / ``linear_value_head_dim``.
    """

    text_layers: int = 4
    text_head_dim: int = 64
    mrope_section: tuple[int, int, int] = (3, 3, 2)
    partial_rotary_factor: float = 0.25
    layer_types: tuple[str, ...] = ("linear_attention", "linear_attention", "linear_attention", "full_attention")
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 64
    linear_value_head_dim: int = 64
    linear_conv_kernel_dim: int = 4
    deepstack_visual_indexes: tuple[int, ...] = ()  # Qwen3.5 has no DeepStack; kept empty so nothing reads it
    min_pixels: int = _QWEN3_VL_PIXEL_DEFAULTS["min_pixels"]
    max_pixels: int = _QWEN3_VL_PIXEL_DEFAULTS["max_pixels"]


_QWEN3_5_LAYER_TYPES = ("linear_attention", "full_attention")


def _qwen3_5_config(overrides: Mapping[str, Any]):
    """(sizes, config, tokenizer, ids) of a tiny Qwen3.5 checkpoint."""
    from transformers import Qwen3_5Config

    unknown = set(overrides) - set(Qwen3_5Sizes.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown size fields {sorted(unknown)}; known: {sorted(Qwen3_5Sizes.__dataclass_fields__)}")
    sizes = replace(Qwen3_5Sizes(), **overrides)
    layer_types = tuple(sizes.layer_types)
    if len(layer_types) != sizes.text_layers or set(layer_types) - set(_QWEN3_5_LAYER_TYPES):
        raise ValueError(f"layer_types {layer_types} must name {sizes.text_layers} layers, each one of "
                         f"{_QWEN3_5_LAYER_TYPES}")
    if "full_attention" not in layer_types:
        # vLLM sizes the hybrid KV-cache pages from the attention layers; a GDN-only stack is a different model.
        raise ValueError("layer_types needs at least one full_attention layer")
    rotary_dim = int(sizes.text_head_dim * sizes.partial_rotary_factor)
    if rotary_dim % 2 or sum(sizes.mrope_section) * 2 != rotary_dim:
        raise ValueError(f"mrope_section {sizes.mrope_section} must sum to text_head_dim * partial_rotary_factor / 2 "
                         f"= {rotary_dim / 2}")
    if sizes.deepstack_visual_indexes:
        raise ValueError("Qwen3.5 has no DeepStack: deepstack_visual_indexes must be empty")
    side = int(round(sizes.num_position_embeddings ** 0.5))
    if side * side != sizes.num_position_embeddings:
        raise ValueError(f"num_position_embeddings ({sizes.num_position_embeddings}) must be a square")
    tokenizer, ids = _qwen_vl_tokenizer()
    text_config = dict(
        _qwen2_text_config(sizes, _padded_vocab(tokenizer)),
        head_dim=sizes.text_head_dim,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_bias=False,
        layer_types=list(layer_types),
        linear_num_key_heads=sizes.linear_num_key_heads,
        linear_num_value_heads=sizes.linear_num_value_heads,
        linear_key_head_dim=sizes.linear_key_head_dim,
        linear_value_head_dim=sizes.linear_value_head_dim,
        linear_conv_kernel_dim=sizes.linear_conv_kernel_dim,
        # partial_rotary_factor lives in rope_parameters: that is where transformers' rotary init and vLLM's get_rope
        # read it (a top-level copy is standardised into it by transformers as well).
        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "mrope_section": list(sizes.mrope_section),
                         "mrope_interleaved": True, "partial_rotary_factor": sizes.partial_rotary_factor},
        partial_rotary_factor=sizes.partial_rotary_factor,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = _qwen3_vision_config(sizes)
    config = Qwen3_5Config(text_config=text_config, vision_config=vision_config, **_qwen_vl_config_kwargs(ids, sizes))
    return sizes, config, tokenizer, ids


@_register("qwen3_5")
def _build_qwen3_5(out: Path, seed: int, overrides: Mapping[str, Any]) -> None:
    """Qwen3.5 (dense): the Qwen3-VL vision tower (16-px patches, learned position table) without DeepStack, and a
    hybrid LLM (gated delta net + gated full attention with partial, interleaved M-RoPE). Processor files are
    Qwen3-VL's."""
    from transformers import Qwen3_5ForConditionalGeneration

    sizes, config, tokenizer, ids = _qwen3_5_config(overrides)
    _save_qwen_vl(out, arch="qwen3_5", seed=seed, sizes=sizes, config=config,
                  model_cls=Qwen3_5ForConditionalGeneration, tokenizer=tokenizer, ids=ids,
                  processor_class="Qwen3VLProcessor", save_processor=_save_qwen3_vl_processor)
