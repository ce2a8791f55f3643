"""Does the served checkpoint carry ``visual.importance_scorer.*`` tensors? Answered in the vLLM API-server process.

The API server decides up front whether a request may use ``visionselector`` without a ``--scorer`` file, so it must
know whether the checkpoint has scorer weights. ``model`` (vLLM's ``--model``) is a local directory or a Hugging Face
hub id (``org/name``, optional revision); for a hub id the engine process has already put the weight files in the
local HF cache (the default cache, or vLLM's ``--download-dir``) before the API server handles requests.

Only the index json and safetensors headers are read, never tensor data, and the hub is never contacted: hub ids are
resolved through huggingface_hub's cache lookup with ``local_files_only=True``. The weight files consulted are the
ones vLLM loads: the tensors listed in ``model.safetensors.index.json`` when there is one (vLLM ignores files the
index does not list), else every ``*.safetensors`` file of the snapshot directory.

When the weight files cannot be found or read locally (a cache miss, a ``.bin``-only checkpoint, a GGUF file, an
unreadable index), :func:`checkpoint_scorer_keys` returns None and the caller leaves the decision to the worker's
weight loader.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from vs_vllm.selection.checkpoint import (
    ACCEPTED_PREFIXES,
    INDEX_FILE,
    SCORER_PARAMS,
    index_weight_map,
    safetensors_keys,
)

__all__ = ["checkpoint_scorer_keys", "has_scorer_tensors"]

logger = logging.getLogger("vllm.plugins.vs_vllm")

#: Files a hub snapshot lookup asks for (they only matter when huggingface_hub has the repo's file list cached).
_WEIGHT_PATTERNS = [INDEX_FILE, "*.safetensors"]


def has_scorer_tensors(keys: Iterable[str]) -> bool:
    """Whether ``keys`` hold all four scorer parameters (``q_proj``/``k_proj`` weight and bias) under one of the
    accepted prefixes (``visual.importance_scorer.`` or ``model.visual.importance_scorer.``)."""
    names = set(keys)
    return any(all(prefix + param in names for param in SCORER_PARAMS) for prefix in ACCEPTED_PREFIXES)


def checkpoint_scorer_keys(model: str, revision: str | None = None, download_dir: str | None = None) -> set[str] | None:
    """The scorer tensor names (those under an accepted prefix) of the checkpoint vLLM serves as ``model``.

    ``model`` is a local checkpoint directory or a hub id; ``revision`` (a branch, tag or commit; default ``main``)
    and ``download_dir`` (the HF cache directory, vLLM's ``--download-dir``; default the standard HF cache) select
    the cached snapshot of a hub id and are ignored for a local directory. Returns the names found (use
    :func:`has_scorer_tensors` to check they are complete), an empty set when the checkpoint's weight files are found
    but hold no scorer tensor, and None when they cannot be found or read locally. Never raises for a missing or
    unreadable checkpoint, never touches the network, never reads tensor data.
    """
    folder = _checkpoint_folder(model, revision, download_dir)
    if folder is None:
        return None
    names = _weight_names(folder)
    if names is None:
        return None
    return {name for name in names if name.startswith(ACCEPTED_PREFIXES)}


def _checkpoint_folder(model: str, revision: str | None, download_dir: str | None) -> Path | None:
    """The local directory holding ``model``'s files: ``model`` itself, or its cached hub snapshot; None if neither."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - vLLM depends on huggingface_hub
        return None
    try:
        folder = snapshot_download(
            model,
            revision=revision,
            cache_dir=download_dir,
            local_files_only=True,
            allow_patterns=_WEIGHT_PATTERNS,
        )
    except ValueError:  # not a repo id (huggingface_hub's HFValidationError), e.g. a local path that does not exist
        return None
    except OSError as exc:  # LocalEntryNotFoundError (not cached) and its subclasses, unreadable cache
        # IncompleteSnapshotError: the snapshot exists but files listed in the cached repo tree are missing (vLLM
        # skips some, e.g. original/*); what is there is what vLLM loaded, so read it.
        snapshot = getattr(exc, "snapshot_path", None)
        if not snapshot:
            logger.debug("no local snapshot of %s (revision %s) in %s: %s", model, revision, download_dir, exc)
            return None
        folder = snapshot
    folder = Path(folder)
    return folder if folder.is_dir() else None


def _weight_names(folder: Path) -> list[str] | None:
    """Tensor names of the checkpoint in ``folder`` as vLLM loads it (the index if any, else every ``*.safetensors``
    header); None when there are no safetensors weights or they cannot be read."""
    try:
        index = folder / INDEX_FILE
        if index.is_file():
            return list(index_weight_map(index))
        files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
        if not files:
            return None
        return [name for file in files for name in safetensors_keys(file)]
    except (OSError, ValueError) as exc:
        logger.warning(
            "cannot read the weight names of %s (%s); the weight loader will decide whether it has a scorer",
            folder,
            exc,
        )
        return None
