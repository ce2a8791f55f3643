"""Scorer checkpoints: a small safetensors side file, and extraction from original VisionSelector checkpoints.

The side file holds exactly the four tensors of the original layout::

    visual.importance_scorer.q_proj.weight  [H, D]
    visual.importance_scorer.q_proj.bias    [H]
    visual.importance_scorer.k_proj.weight  [H, D]
    visual.importance_scorer.k_proj.bias    [H]

plus metadata ``{"format": "vs-vllm-scorer", "in_features": D, "hidden_dim": H}``. Readers also accept the
``model.visual.importance_scorer.*`` spelling (newer transformers layouts and LLaVA-OV-1.5), so an original full-model
``model.safetensors`` can be passed straight to :func:`load_scorer`. Only the scorer tensors are ever read: safetensors
files are memory-mapped and read tensor by tensor, so converting a 16 GB checkpoint touches ~25 MB.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vs_vllm.selection.scorer import TransformerScorer

__all__ = [
    "FORMAT_NAME",
    "SCORER_KEYS",
    "SCORER_PREFIX",
    "ScorerKeyError",
    "convert_checkpoint",
    "load_scorer",
    "save_scorer",
]

SCORER_PREFIX = "visual.importance_scorer."
#: Prefixes accepted when reading, in order of preference.
ACCEPTED_PREFIXES = (SCORER_PREFIX, "model." + SCORER_PREFIX)
_PARAMS = ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")
SCORER_KEYS = tuple(SCORER_PREFIX + p for p in _PARAMS)
FORMAT_NAME = "vs-vllm-scorer"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ScorerKeyError(KeyError):
    """A scorer tensor is missing. A KeyError whose message prints without KeyError's quoting."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _as_dtype(dtype: object) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(sorted(set(_DTYPES)))} or None")


def _resolve_keys(available: set[str] | Mapping[str, object], source: str) -> dict[str, str]:
    """Map each short parameter name to the key under which ``source`` stores it (either accepted prefix)."""
    present = [prefix for prefix in ACCEPTED_PREFIXES if any(prefix + p in available for p in _PARAMS)]
    if len(present) > 1:
        raise ValueError(
            f"{source} holds scorer tensors under both {present[0]!r} and {present[1]!r}; refusing to guess which"
        )
    prefix = present[0] if present else SCORER_PREFIX
    mapping = {}
    for param in _PARAMS:
        key = prefix + param
        if key not in available:
            spellings = " or ".join(repr(p + param) for p in ACCEPTED_PREFIXES)
            raise ScorerKeyError(
                f"scorer tensor {key!r} not found in {source} (looked for {spellings}); "
                "is this a VisionSelector checkpoint?"
            )
        mapping[param] = key
    return mapping


def _validate(tensors: Mapping[str, torch.Tensor], in_features: int | None, source: str) -> tuple[int, int]:
    """Check dtypes and shapes of the four tensors (short names); return (in_features D, hidden_dim H)."""
    canon = {param: SCORER_PREFIX + param for param in _PARAMS}
    for param, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"{canon[param]} in {source} has dtype {t.dtype}, expected a floating dtype")
    qw = tensors["q_proj.weight"]
    if qw.dim() != 2 or min(qw.shape) < 1:
        raise ValueError(f"{canon['q_proj.weight']} in {source} has shape {list(qw.shape)}, expected [H, D]")
    hidden, d = qw.shape
    if in_features is not None and d != in_features:
        raise ValueError(
            f"{canon['q_proj.weight']} in {source} has shape {list(qw.shape)}, expected {[hidden, in_features]} "
            f"(in_features={in_features})"
        )
    expected = {
        "q_proj.weight": [hidden, d],
        "k_proj.weight": [hidden, d],
        "q_proj.bias": [hidden],
        "k_proj.bias": [hidden],
    }
    for param, shape in expected.items():
        got = list(tensors[param].shape)
        if got != shape:
            raise ValueError(
                f"{canon[param]} in {source} has shape {got}, expected {shape} "
                f"(from {canon['q_proj.weight']} of shape {list(qw.shape)})"
            )
    return int(d), int(hidden)


def _write(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, dtype: torch.dtype | None) -> str:
    d, hidden = _validate(tensors, None, "scorer")
    out = {}
    for param in _PARAMS:
        t = tensors[param].detach().to("cpu")
        if dtype is not None:
            t = t.to(dtype)
        out[SCORER_PREFIX + param] = t.contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"format": FORMAT_NAME, "in_features": str(d), "hidden_dim": str(hidden)})
    return str(path)


def save_scorer(scorer: TransformerScorer, path: str | os.PathLike, dtype: torch.dtype | str | None = None) -> str:
    """Write ``scorer`` to ``path`` (safetensors, the four original key names). ``dtype=None`` keeps the parameters'
    dtype. Returns the path as str."""
    tensors = {
        "q_proj.weight": scorer.q_proj.weight,
        "q_proj.bias": scorer.q_proj.bias,
        "k_proj.weight": scorer.k_proj.weight,
        "k_proj.bias": scorer.k_proj.bias,
    }
    return _write(tensors, path, _as_dtype(dtype))


def _read_file(path: Path, keys: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Read only the scorer tensors of one safetensors file (short names -> tensors)."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        if keys is None:
            keys = _resolve_keys(set(f.keys()), str(path))
        return {param: f.get_tensor(key) for param, key in keys.items()}


def load_scorer(
    path: str | os.PathLike,
    in_features: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = torch.float32,
) -> TransformerScorer:
    """Load a scorer from a safetensors file (a vs-vllm side file, or an original single-file full checkpoint).

    ``in_features`` (the LLM hidden size D), when given, must match the weights. ``dtype=None`` keeps the file's
    dtype (that of q_proj.weight). Missing tensors raise KeyError, wrong shapes or dtypes ValueError, naming the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scorer file not found: {path}")
    tensors = _read_file(path)
    d, hidden = _validate(tensors, in_features, str(path))
    target = _as_dtype(dtype) or tensors["q_proj.weight"].dtype
    scorer = TransformerScorer(d, hidden).to(dtype=target)
    with torch.no_grad():
        for param, t in tensors.items():
            module, name = param.split(".")
            getattr(getattr(scorer, module), name).copy_(t)
    return scorer.to(device=device)


def convert_checkpoint(
    src_dir: str | os.PathLike, out_file: str | os.PathLike, dtype: torch.dtype | str | None = None
) -> str:
    """Extract the scorer from an original VisionSelector checkpoint into ``out_file``; return its path as str.

    ``src_dir`` holds ``model.safetensors.index.json`` plus shards, or a single ``model.safetensors`` (a path to a
    ``.safetensors`` file is accepted too). Only the four scorer tensors are read. ``dtype=None`` keeps the
    checkpoint's dtype.
    """
    target = _as_dtype(dtype)
    src = Path(src_dir)
    if src.is_file() and src.suffix == ".safetensors":
        tensors = _read_file(src)
        source = str(src)
    elif not src.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {src}")
    elif (src / INDEX_FILE).is_file():
        index_path = src / INDEX_FILE
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index_path} is not a safetensors index (no 'weight_map'): {exc}") from None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path}: 'weight_map' must map tensor names to shard files")
        source = str(index_path)
        keys = _resolve_keys(weight_map, source)
        by_shard: dict[str, dict[str, str]] = {}
        for param, key in keys.items():
            by_shard.setdefault(weight_map[key], {})[param] = key
        tensors = {}
        for shard, shard_keys in by_shard.items():
            shard_path = src / shard
            if not shard_path.is_file():
                raise FileNotFoundError(f"shard {shard} listed in {index_path} not found")
            tensors.update(_read_file(shard_path, shard_keys))
    elif (src / SINGLE_FILE).is_file():
        tensors = _read_file(src / SINGLE_FILE)
        source = str(src / SINGLE_FILE)
    else:
        raise FileNotFoundError(f"no {INDEX_FILE} or {SINGLE_FILE} in {src}")
    _validate(tensors, None, source)
    return _write(tensors, out_file, target)
