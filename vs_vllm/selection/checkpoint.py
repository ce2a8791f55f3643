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

:func:`load_scorer` also reads a checkpoint *directory*: an original full-model checkpoint, or a standalone scorer
directory as other projects publish them (e.g. Tencent AngelSlim): ``config.json`` plus ``*.safetensors`` (or a
``model.safetensors.index.json`` and shards) whose keys are bare (``q_proj.weight``, ...) or carry either prefix above.
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
    "ACCEPTED_PREFIXES",
    "FORMAT_NAME",
    "INDEX_FILE",
    "SCORER_KEYS",
    "SCORER_PARAMS",
    "SCORER_PREFIX",
    "ScorerKeyError",
    "convert_checkpoint",
    "index_weight_map",
    "load_scorer",
    "safetensors_keys",
    "save_scorer",
]

SCORER_PREFIX = "visual.importance_scorer."
#: Prefixes under which a full-model checkpoint stores the scorer, in order of preference.
ACCEPTED_PREFIXES = (SCORER_PREFIX, "model." + SCORER_PREFIX)
#: :func:`load_scorer` also accepts bare keys (standalone scorer files and directories).
_LOAD_PREFIXES = (*ACCEPTED_PREFIXES, "")
#: The scorer's parameter names, relative to a prefix.
SCORER_PARAMS = ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")
SCORER_KEYS = tuple(SCORER_PREFIX + p for p in SCORER_PARAMS)
FORMAT_NAME = "vs-vllm-scorer"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: safetensors refuses headers above 100 MB; so does :func:`safetensors_keys`.
_MAX_HEADER_BYTES = 100_000_000

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


def _resolve_keys(
    available: set[str] | Mapping[str, object], source: str, prefixes: tuple[str, ...] = ACCEPTED_PREFIXES
) -> dict[str, str]:
    """Map each short parameter name to the key under which ``source`` stores it (any one of ``prefixes``)."""
    present = [prefix for prefix in prefixes if any(prefix + p in available for p in SCORER_PARAMS)]
    if len(present) > 1:
        raise ValueError(
            f"{source} holds scorer tensors under both {present[0]!r} and {present[1]!r}; refusing to guess which"
        )
    prefix = present[0] if present else SCORER_PREFIX
    mapping = {}
    for param in SCORER_PARAMS:
        key = prefix + param
        if key not in available:
            spellings = " or ".join(repr(p + param) for p in prefixes)
            raise ScorerKeyError(
                f"scorer tensor {key!r} not found in {source} (looked for {spellings}); "
                "is this a VisionSelector checkpoint?"
            )
        mapping[param] = key
    return mapping


def _validate(tensors: Mapping[str, torch.Tensor], in_features: int | None, source: str) -> tuple[int, int]:
    """Check dtypes and shapes of the four tensors (short names); return (in_features D, hidden_dim H)."""
    canon = {param: SCORER_PREFIX + param for param in SCORER_PARAMS}
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
    for param in SCORER_PARAMS:
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


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    """Tensor names of one safetensors file, parsed from its header alone: no tensor data is read or mapped.

    Raises OSError when the file cannot be read, ValueError when it is not a safetensors file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < size <= _MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (no valid header length)")
        raw = f.read(size)
    if len(raw) != size:
        raise ValueError(f"{path} is not a safetensors file (header truncated: {len(raw)} of {size} bytes)")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{path} is not a safetensors file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not a JSON object)")
    return [name for name in header if name != "__metadata__"]


def index_weight_map(index_path: str | os.PathLike) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name, relative to the index's directory) of a safetensors index.

    Raises OSError when the file cannot be read, ValueError when it holds no valid ``weight_map``.
    """
    index_path = Path(index_path)
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{index_path} is not a safetensors index (no 'weight_map'): {exc}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index_path}: 'weight_map' must map tensor names to shard files")
    return weight_map


def _read_file(
    path: Path, keys: Mapping[str, str] | None = None, prefixes: tuple[str, ...] = ACCEPTED_PREFIXES
) -> dict[str, torch.Tensor]:
    """Read only the scorer tensors of one safetensors file (short names -> tensors)."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        if keys is None:
            keys = _resolve_keys(set(f.keys()), str(path), prefixes)
        return {param: f.get_tensor(key) for param, key in keys.items()}


def _read_keys(
    keys: Mapping[str, str], base: Path, files: Mapping[str, str], listed_in: Path
) -> dict[str, torch.Tensor]:
    """Read the scorer tensors ``keys`` (short name -> key) from the files holding them (key -> name under ``base``,
    as listed in ``listed_in``), opening each file once."""
    by_file: dict[str, dict[str, str]] = {}
    for param, key in keys.items():
        by_file.setdefault(files[key], {})[param] = key
    tensors = {}
    for name, file_keys in by_file.items():
        file = base / name
        if not file.is_file():
            raise FileNotFoundError(f"shard {name} listed in {listed_in} not found")
        tensors.update(_read_file(file, file_keys))
    return tensors


def _is_scorer_key(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix + param for prefix in prefixes for param in SCORER_PARAMS)


def _directory_tensors(src: Path) -> tuple[dict[str, str], Path]:
    """Tensor names of checkpoint directory ``src`` -> the file (relative to ``src``) holding each, and the path
    that listed them. The index, when there is one, is authoritative (as for transformers and vLLM: files it does not
    list are ignored); otherwise the headers of every ``*.safetensors`` file in ``src`` are read."""
    index = src / INDEX_FILE
    if index.is_file():
        return index_weight_map(index), index
    files = sorted(p for p in src.glob("*.safetensors") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no *.safetensors files or {INDEX_FILE} in {src}")
    names: dict[str, str] = {}
    for file in files:
        for name in safetensors_keys(file):
            if name in names and _is_scorer_key(name, _LOAD_PREFIXES):
                raise ValueError(
                    f"{src}: scorer tensor {name!r} is in both {names[name]} and {file.name}; "
                    "pass the file to load from instead of the directory"
                )
            names.setdefault(name, file.name)
    return names, src


def _read_directory(src: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read the scorer tensors of a checkpoint directory (full model or standalone scorer, any accepted key
    spelling); return them (short names -> tensors) and the source to name in messages."""
    names, listed_in = _directory_tensors(src)
    if not any(_is_scorer_key(name, _LOAD_PREFIXES) for name in names):
        where = f"tensors listed in {INDEX_FILE}" if listed_in != src else "the *.safetensors files"
        prefixes = " or ".join(repr(p) for p in ACCEPTED_PREFIXES)
        raise ScorerKeyError(
            f"no scorer tensors in {src} (searched {where}): expected {', '.join(SCORER_PARAMS)}, "
            f"bare (e.g. 'q_proj.weight') or under {prefixes} (e.g. '{SCORER_PREFIX}q_proj.weight'); "
            "is this a VisionSelector checkpoint?"
        )
    keys = _resolve_keys(names, str(listed_in), _LOAD_PREFIXES)
    return _read_keys(keys, src, names, listed_in), str(listed_in)


def _check_config(config_path: Path, d: int, hidden: int) -> None:
    """Check the size fields of a checkpoint directory's ``config.json`` against the scorer tensors (D, H).

    Lenient: a missing file, missing fields and non-integer values are ignored. Checked: ``in_features`` (D) and
    ``hidden_dim`` (H), the constructor arguments of the original scorer, which standalone scorer configs carry; and
    ``hidden_size`` as D (the usual meaning of the field) only in a standalone scorer config without ``in_features``.
    A full-model config (one with ``vision_config`` or ``text_config``) describes the backbone, so its
    ``hidden_size`` is not checked here: the caller's ``in_features`` covers it.
    """
    if not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
    expected = {"in_features": d, "hidden_dim": hidden}
    full_model = "vision_config" in config or "text_config" in config
    if not full_model and "in_features" not in config:
        expected["hidden_size"] = d
    for field, want in expected.items():
        got = config.get(field)
        if isinstance(got, int) and not isinstance(got, bool) and got != want:
            raise ValueError(
                f"{config_path}: {field}={got} disagrees with the scorer tensors ({SCORER_PREFIX}q_proj.weight has "
                f"shape {[hidden, d]}, so {field} should be {want})"
            )


def load_scorer(
    path: str | os.PathLike,
    in_features: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = torch.float32,
) -> TransformerScorer:
    """Load a scorer from a safetensors file or a checkpoint directory.

    A file: a vs-vllm side file, an original single-file full checkpoint, or a standalone scorer file with bare keys
    (``q_proj.weight``, ...). A directory: an original full-model checkpoint or a standalone scorer directory, i.e.
    ``model.safetensors.index.json`` plus shards (the index is authoritative), else every ``*.safetensors`` file in
    it; keys bare or under either accepted prefix. A ``config.json`` in the directory whose size fields
    (``in_features``, ``hidden_dim``; ``hidden_size`` as D in a standalone scorer config) disagree with the tensors is
    a ValueError; a missing one, or one without such fields, is fine. Only the four scorer tensors are read.

    ``in_features`` (the LLM hidden size D), when given, must match the weights. ``dtype=None`` keeps the file's
    dtype (that of q_proj.weight). Missing tensors raise KeyError, wrong shapes or dtypes ValueError, naming the key.
    """
    path = Path(path)
    if path.is_dir():
        tensors, source = _read_directory(path)
    elif path.is_file():
        tensors, source = _read_file(path, prefixes=_LOAD_PREFIXES), str(path)
    else:
        raise FileNotFoundError(f"scorer file not found: {path}")
    d, hidden = _validate(tensors, in_features, source)
    if path.is_dir():
        _check_config(path / CONFIG_FILE, d, hidden)
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
        weight_map = index_weight_map(index_path)
        source = str(index_path)
        keys = _resolve_keys(weight_map, source)
        tensors = _read_keys(keys, src, weight_map, index_path)
    elif (src / SINGLE_FILE).is_file():
        tensors = _read_file(src / SINGLE_FILE)
        source = str(src / SINGLE_FILE)
    else:
        raise FileNotFoundError(f"no {INDEX_FILE} or {SINGLE_FILE} in {src}")
    _validate(tensors, None, source)
    return _write(tensors, out_file, target)
