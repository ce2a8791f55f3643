"""Per-item fields the processor attaches to every pruned media item, and the method-id codec.

The processor (API-server process) decides K_i, the method and the seed of each media item; the model (worker
process) reads them back as per-item tensors in ``embed_multimodal``. Field names carry the modality because vLLM's
field configs are one namespace per model (``vs_image_keep_k``, ``vs_video_keep_k``, ...).

Method ids are derived from method *names* (CRC-32), never from a position in a list: if the API server and a worker
ever run different method registries, an id either names the same method in both or fails loudly in the worker —
it can never silently select another method.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

from vs_vllm.selection.methods import list_methods

__all__ = ["NO_SEED", "UnknownMethodId", "field_names", "method_id", "method_name"]

NO_SEED = -1


def field_names(modality: str) -> tuple[str, str, str, str]:
    """(keep_k, method_id, seed, lambda) field names of one modality."""
    return (f"vs_{modality}_keep_k", f"vs_{modality}_method_id", f"vs_{modality}_seed", f"vs_{modality}_lambda")


def method_id(name: str) -> int:
    """A stable non-negative int63 id derived from the method's name alone."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


class UnknownMethodId(ValueError):
    pass


@lru_cache(maxsize=8)
def _ids(names: tuple[str, ...]) -> dict[int, str]:
    table: dict[int, str] = {}
    for name in names:
        mid = method_id(name)
        if mid in table:  # pragma: no cover - would need a CRC-32 collision between two registered names
            raise RuntimeError(f"selection methods {table[mid]!r} and {name!r} have the same id {mid}")
        table[mid] = name
    return table


def method_name(mid: int) -> str:
    """The registered method whose name derives ``mid``; :class:`UnknownMethodId` otherwise."""
    names = tuple(list_methods())
    try:
        return _ids(names)[int(mid)]
    except KeyError:
        raise UnknownMethodId(
            f"selection method id {int(mid)} names no method registered in this process ({', '.join(names)}): "
            "the API server and the engine workers must run the same vs-vllm with the same method plugins"
        ) from None
