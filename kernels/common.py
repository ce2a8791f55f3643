"""Host-side pieces shared by the Triton selection kernels and their torch reference.

Everything here runs on the host and never synchronises with the device as long as the caller passes the sizes
(``cu_seqlens``, ``keep_k``, ``cu_keep``) as Python lists or CPU tensors, which is how an engine knows them anyway.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from vs_vllm.selection.topk import validate_k

from .position_channels import NUM_POSITION_CHANNELS, PositionChannels, check_coordinates

__all__ = [
    "SUPPORTED_DTYPES",
    "host_ints_on",
    "require_powers_of_two",
    "Plan",
    "Selection",
    "check_channels",
    "check_gather_source",
    "check_scorer_weights",
    "empty_selection",
    "make_gather_plan",
    "make_plan",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

IntList = Sequence[int] | torch.Tensor
Grids = Sequence[Sequence[int]] | torch.Tensor | None


class Selection(NamedTuple):
    """Kept tokens of a packed batch of B images.

    rows:      [sum K_i, D] in x.dtype, the kept rows of each image, in ascending original order, image after image.
    indices:   [sum K_i] int64, index of each kept row *within its image* (0 <= j < N_i).
    positions: [sum K_i, 3] int64 (t, h, w) of each kept row on its image's LLM grid, or None without grids.
    cu_keep:   [B + 1] int64 cumulative kept counts (image i owns rows cu_keep[i]:cu_keep[i+1]), on x.device.
    packed:    with ``PositionChannels``: [sum K_i, D + 6], each kept row followed by its position channels
               (``position_channels.py``), and ``rows`` is the view packed[:, :D]; otherwise None.
    """

    rows: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor | None
    cu_keep: torch.Tensor
    packed: torch.Tensor | None = None


@dataclass(frozen=True)
class Plan:
    """Validated host-side sizes of one call."""

    cu_seqlens: tuple[int, ...]  # [B + 1]
    cu_keep: tuple[int, ...]  # [B + 1]
    grids: tuple[tuple[int, int, int], ...] | None  # host grids, or None (absent, or given on the device)
    grids_tensor: torch.Tensor | None  # grids given as a device tensor (not validated: that would sync)

    @property
    def num_images(self) -> int:
        return len(self.cu_seqlens) - 1

    @property
    def lengths(self) -> list[int]:
        return [b - a for a, b in zip(self.cu_seqlens[:-1], self.cu_seqlens[1:])]

    @property
    def keep(self) -> list[int]:
        return [b - a for a, b in zip(self.cu_keep[:-1], self.cu_keep[1:])]

    @property
    def total_keep(self) -> int:
        return self.cu_keep[-1]

    @property
    def has_grids(self) -> bool:
        return self.grids is not None or self.grids_tensor is not None


def require_powers_of_two(config: object, names: Sequence[str]) -> None:
    """Block sizes of a kernel configuration must be powers of two (Triton's tl.arange)."""
    for name in names:
        v = getattr(config, name)
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two, got {v}")


def host_ints_on(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """Host integers as an int64 tensor on ``device`` without making the host wait for the device.

    On CUDA the copy goes through pinned memory and is non-blocking (a pageable copy waits for the stream).
    """
    t = torch.tensor(list(values), dtype=torch.long)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def host_segments_on(segments: Sequence[Sequence[int]], device: torch.device) -> list[torch.Tensor]:
    """Several host int lists as int64 tensors on ``device``, in ONE host-to-device copy (``host_ints_on``), each
    starting 16 bytes apart from the buffer's start: a kernel specialises on its pointers' 16-byte alignment, so a
    segment at an odd int64 offset (e.g. cu_keep after B + 1 cu_seqlens) would compile another variant for odd B."""
    flat: list[int] = []
    bounds = []
    for seg in segments:
        start = len(flat)
        flat.extend(int(v) for v in seg)
        bounds.append((start, len(flat)))
        if len(flat) % 2:
            flat.append(0)  # padding: the next segment starts 16-byte aligned
    t = host_ints_on(flat, device)
    return [t[a:b] for a, b in bounds]


def _host_ints(value: IntList, name: str) -> list[int]:
    """A list of Python ints from a list/tuple or a tensor (a device tensor costs one sync: pass host sizes)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got dtype {value.dtype}")
        if value.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(value.shape)}")
        return [int(v) for v in value.tolist()]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        kind = type(value).__name__
        raise ValueError(f"{name} must be a list of ints or a 1-D integer tensor, got {kind}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must hold ints, got {v!r}")
        out.append(int(v))
    return out


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a [tokens, hidden] tensor, got {getattr(x, 'shape', type(x))}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError("x must have at least one hidden column")


def _cu_from(cu_seqlens: IntList, total: int, name: str) -> list[int]:
    cu = _host_ints(cu_seqlens, name)
    if len(cu) < 1 or cu[0] != 0 or cu[-1] != total:
        raise ValueError(f"{name} must start at 0 and end at {total}, got {cu}")
    if any(b < a for a, b in itertools.pairwise(cu)):
        raise ValueError(f"{name} must be non-decreasing, got {cu}")
    return cu


def _grids_from(grids: Grids, lengths: list[int]) -> tuple[tuple | None, torch.Tensor | None]:
    if grids is None:
        return None, None
    b = len(lengths)
    if isinstance(grids, torch.Tensor):
        if grids.dim() != 2 or grids.shape[0] != b or grids.shape[1] != 3:
            raise ValueError(f"grids must have shape [{b}, 3], got {tuple(grids.shape)}")
        if grids.is_floating_point():
            raise ValueError(f"grids must hold integers, got {grids.dtype}")
        if grids.device.type != "cpu":
            return None, grids  # validating would sync with the device
        rows = [tuple(int(v) for v in r) for r in grids.tolist()]
    else:
        rows = [tuple(_host_ints(list(g), "grids row")) for g in grids]
    if len(rows) != b:
        raise ValueError(f"grids must have one (t, h, w) per image ({b}), got {len(rows)}")
    for i, (g, n) in enumerate(zip(rows, lengths)):
        if len(g) != 3 or min(g) < 1 or math.prod(g) != n:
            raise ValueError(f"grid {g} of image {i} does not describe its {n} tokens (need t*h*w == N_i, all >= 1)")
    return tuple(rows), None


def make_plan(x: torch.Tensor, cu_seqlens: IntList, keep_k: IntList | int, grids: Grids = None) -> Plan:
    """Validate the sizes of a ``select_tokens`` call on the host: 1 <= K_i <= N_i for every image."""
    _check_x(x)
    cu = _cu_from(cu_seqlens, x.shape[0], "cu_seqlens")
    lengths = [b - a for a, b in itertools.pairwise(cu)]
    if isinstance(keep_k, numbers.Integral) and not isinstance(keep_k, bool):
        ks = [int(keep_k)] * len(lengths)
    else:
        ks = _host_ints(keep_k, "keep_k")
    if len(ks) != len(lengths):
        raise ValueError(f"keep_k has {len(ks)} entries for {len(lengths)} images")
    ks = [validate_k(k, n) for k, n in zip(ks, lengths)]
    cu_keep = [0]
    for k in ks:
        cu_keep.append(cu_keep[-1] + k)
    g_host, g_dev = _grids_from(grids, lengths)
    return Plan(tuple(cu), tuple(cu_keep), g_host, g_dev)


def make_gather_plan(
    x: torch.Tensor, cu_seqlens: IntList, indices: torch.Tensor, cu_keep: IntList, grids: Grids = None
) -> Plan:
    """Validate a ``gather_selected`` call. Index ranges are checked only for CPU ``indices`` (no device sync)."""
    _check_x(x)
    cu = _cu_from(cu_seqlens, x.shape[0], "cu_seqlens")
    lengths = [b - a for a, b in itertools.pairwise(cu)]
    ck = _host_ints(cu_keep, "cu_keep")
    if len(ck) != len(cu) or ck[0] != 0 or any(b < a for a, b in itertools.pairwise(ck)):
        raise ValueError(f"cu_keep must be non-decreasing, start at 0 and have {len(cu)} entries, got {ck}")
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1 or indices.is_floating_point():
        raise ValueError("indices must be a 1-D integer tensor")
    if indices.shape[0] != ck[-1]:
        raise ValueError(f"indices has {indices.shape[0]} entries, cu_keep says {ck[-1]}")
    for i, (a, b, n) in enumerate(zip(ck[:-1], ck[1:], lengths)):
        if b - a > n:
            raise ValueError(f"image {i} keeps {b - a} rows of {n}")
    if indices.device.type == "cpu" and indices.numel():
        idx = indices.long()
        limit = torch.repeat_interleave(
            torch.tensor(lengths, dtype=torch.long), torch.tensor([b - a for a, b in itertools.pairwise(ck)])
        )
        bad = (idx < 0) | (idx >= limit)
        if bool(bad.any()):
            j = int(bad.nonzero()[0, 0])
            raise ValueError(f"indices[{j}] = {int(idx[j])} is outside its image (length {int(limit[j])})")
    g_host, g_dev = _grids_from(grids, lengths)
    return Plan(tuple(cu), tuple(ck), g_host, g_dev)


def check_scorer_weights(
    x: torch.Tensor, q_weight: torch.Tensor, q_bias: torch.Tensor, k_weight: torch.Tensor, k_bias: torch.Tensor
) -> int:
    """Check the scorer's shapes against x; return the hidden size H."""
    d = x.shape[1]
    if q_weight.dim() != 2 or q_weight.shape[1] != d:
        raise ValueError(f"q_weight must be [H, {d}], got {tuple(q_weight.shape)}")
    h = q_weight.shape[0]
    if tuple(k_weight.shape) != (h, d):
        raise ValueError(f"k_weight must be [{h}, {d}], got {tuple(k_weight.shape)}")
    for name, bias in (("q_bias", q_bias), ("k_bias", k_bias)):
        if tuple(bias.shape) != (h,):
            raise ValueError(f"{name} must be [{h}], got {tuple(bias.shape)}")
    for name, t in (("q_weight", q_weight), ("q_bias", q_bias), ("k_weight", k_weight), ("k_bias", k_bias)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    return h


def check_gather_source(x: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """The tensor kept rows are gathered from: ``source`` (the same tokens as ``x``, possibly wider: a model whose
    vision output carries more columns than the scorer reads) or ``x`` itself."""
    if source is None:
        return x
    _check_x(source)
    if source.shape[0] != x.shape[0] or source.device != x.device:
        raise ValueError(f"source must hold the {x.shape[0]} rows of x on {x.device}, got {tuple(source.shape)} on "
                         f"{source.device}")
    return source


def check_channels(plan: Plan, channels: PositionChannels | None) -> None:
    """Host-side checks of a request for the packed layout: host grids, factors, coordinates that fit."""
    if channels is None:
        return
    if not isinstance(channels, PositionChannels):
        raise ValueError(f"channels must be a PositionChannels or None, got {type(channels).__name__}")
    if plan.grids is None:
        raise ValueError("position channels need the (t, h, w) grids as host values (a list or a CPU tensor)")
    for grid, factor in zip(plan.grids, channels.factors_for(plan.num_images)):
        check_coordinates(grid, factor)


def empty_selection(x: torch.Tensor, plan: Plan, channels: PositionChannels | None = None) -> Selection:
    """The result for a batch with no images."""
    dev = x.device
    pos = torch.empty(0, 3, dtype=torch.long, device=dev) if plan.has_grids else None
    packed = x.new_empty(0, x.shape[1] + NUM_POSITION_CHANNELS) if channels is not None else None
    return Selection(
        packed[:, : x.shape[1]] if packed is not None else x.new_empty(0, x.shape[1]),
        torch.empty(0, dtype=torch.long, device=dev),
        pos,
        torch.zeros(1, dtype=torch.long, device=dev),
        packed,
    )
