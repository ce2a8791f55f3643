"""The benchmark-size random-weight Qwen2.5-VL and its image sizes.

Proportions follow Qwen2.5-VL-7B (anchors.md §6), scaled so one request prefills in about a second on one CPU core:

- LLM: hidden 512, 6 layers, 8 query / 2 KV heads (head_dim 64), SwiGLU 2816 (7B: 3584, 28, 28/4 (128), 18944);
- ViT: depth 8, hidden 160, 2 heads (head_dim 80 as in 7B), SwiGLU 432 (2.7x hidden as in 7B), full attention in the
  last block only (7B: one block in 8), 112-px windows, patch 14, 2x2 merge.

At the main image (896x504, 0.7x a 1280x720 frame: 576 visual tokens) with ~60 text tokens the ViT is ~30% of prefill
FLOPs and the LLM ~70%, as for the 7B at 1280x720 (28.5% / 71.5%). ``max_pixels`` is large enough that no benchmark
image is resized, so the token count follows the image size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_QUESTION",
    "BENCH_SIZES",
    "IMAGE_SIZES",
    "MAIN_IMAGE",
    "TEXT_BEFORE",
    "TEXT_TOKENS",
    "bench_arch",
    "ensure_bench_model",
]

BENCH_SIZES: dict[str, Any] = dict(
    text_hidden=512,
    text_layers=6,
    text_heads=8,
    text_kv_heads=2,
    text_intermediate=2816,
    mrope_section=(8, 12, 12),
    max_position_embeddings=8192,
    vision_depth=8,
    vision_hidden=160,
    vision_heads=2,
    vision_intermediate=432,
    fullatt_block_indexes=(7,),
    window_size=112,
    min_pixels=28 * 28 * 4,
    max_pixels=28 * 28 * 1024,
)

#: (width, height) in pixels, all multiples of 28 so the processor keeps them as they are: 0.35x, 0.5x and 0.7x a
#: 1280x720 frame (144, 299 and 576 visual tokens).
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((448, 252), (644, 364), (896, 504))
MAIN_IMAGE: tuple[int, int] = (896, 504)

#: The question after the image: with the chat template the text is 62 tokens (anchors.md §6 assumes 60).
BENCH_QUESTION = "Describe this picture in detail: list the objects, their colours, the layout of the scene and any text in it."
#: Text tokens of a benchmark prompt with the tiny tokenizer and the Qwen2-VL chat template (system prompt, role
#: markers, vision start/end, question, generation prompt), and how many come before the image.
TEXT_TOKENS = 62
TEXT_BEFORE = 15


def bench_arch():
    """The :class:`~vs_vllm.benchmarking.flops.QwenVLArch` of the benchmark model (vocab of the tiny tokenizer)."""
    from vs_vllm.benchmarking.flops import QwenVLArch

    return QwenVLArch.from_sizes(BENCH_SIZES, vocab_size=768)


def ensure_bench_model(model_dir: str | Path, seed: int = 0, log=print) -> tuple[Path, Path]:
    """Build (once) the benchmark model in ``model_dir`` and a scorer file ``<model_dir>-scorer.safetensors``.

    Returns ``(model_dir, scorer_path)``. An existing directory is reused only if it was built with the same sizes
    and seed; otherwise it is rebuilt. The scorer has non-trivial random weights (std 0.05), so ``visionselector``
    produces a real, data-dependent ranking (its cost is what matters here, not its choices).
    """
    from vs_vllm.testing.tiny_models import QwenVLSizes, build_tiny_model, to_jsonable

    model_dir = Path(model_dir)
    # Beside the directory, not in it: vLLM loads every *.safetensors file of a model directory as weights.
    scorer = model_dir.with_name(model_dir.name + "-scorer.safetensors")
    marker = model_dir / "vs_vllm_tiny_model.json"
    from dataclasses import asdict, replace

    want = {"arch": "qwen2_5_vl", "seed": seed, "sizes": to_jsonable(asdict(replace(QwenVLSizes(), **BENCH_SIZES)))}
    if marker.exists() and scorer.exists() and (model_dir / "model.safetensors").exists():
        try:
            if json.loads(marker.read_text()) == want:
                return model_dir, scorer
        except (OSError, ValueError):
            pass
    log(f"[bench] building the benchmark model in {model_dir} ...")
    build_tiny_model(model_dir, arch="qwen2_5_vl", seed=seed, sizes=BENCH_SIZES)
    _write_scorer(model_dir, scorer, seed)
    return model_dir, scorer


def _write_scorer(model_dir: Path, path: Path, seed: int) -> None:
    import torch

    from vs_vllm.selection.checkpoint import save_scorer
    from vs_vllm.selection.scorer import TransformerScorer

    hidden = json.loads((model_dir / "config.json").read_text())["text_config"]["hidden_size"]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(10_000 + seed)
        scorer = TransformerScorer(hidden)
        scorer.reset_parameters(init_std=0.05)
    finally:
        torch.random.set_rng_state(state)
    save_scorer(scorer, path)
