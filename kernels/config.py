"""Block configurations of the selection kernels and the launch-size helpers every op's host code shares.

Block sizes depend on TRITON_INTERPRET, read at import: the interpreter runs numpy per program step, so it wants few
large blocks; a GPU wants register-safe 32 x 128 tiles with 4 warps.

The splits over D / H (``_split``) exist only to give a GPU enough programs when there are few rows or few images; the
number of programs aimed at is ``programs_per_sm`` x the SM count (``_target_programs``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from .common import Plan, check_channels, host_segments_on, require_powers_of_two
from .position_channels import PositionChannels, temporal_tables

__all__ = ["GPU_CONFIG", "INTERPRET", "INTERPRETER_CONFIG", "KernelConfig", "get_config", "set_config"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off")


@dataclass(frozen=True)
class KernelConfig:
    block_n: int  # rows per step of the mean and score passes
    block_d: int  # columns per step of the mean and score passes
    gemv_block_h: int  # weight tile rows (H) of the two mat-vecs
    gemv_block_d: int  # weight tile columns (D) of the two mat-vecs
    gather_block_r: int  # kept rows per gather program
    gather_block_d: int  # columns per gather step
    num_warps: int  # warps of every kernel except the select kernel
    sel_one_chunk_max: int  # images up to this many tokens keep their keys in registers during the select
    sel_block_max: int  # chunk of the select kernel for larger images (scores re-read from L1/L2 each round)
    radix_bits: int  # digit width of the radix select (1, 2, 4 or 8)
    programs_per_sm: int  # split D / H until a pass has this many programs per SM; 0 never splits
    sm_count: int = 0  # SMs assumed when > 0 (tests: exercises the splits on CPU); 0 asks the CUDA device
    # Most images per program of the two mat-vecs: a weight tile is read once for up to this many images instead of
    # once per image. Programs take the next power of two >= B (up to this), so one image costs what it did alone;
    # 8 keeps the pass memory-bound on an H100/H200 (8 fp32 FMAs per bf16 weight read).
    gemv_block_b: int = 8


# Interpreter: every program step costs milliseconds of Python, so use few, large blocks and never split.
INTERPRETER_CONFIG = KernelConfig(
    block_n=1024,
    block_d=128,
    gemv_block_h=128,
    gemv_block_d=512,
    gather_block_r=512,
    gather_block_d=128,
    num_warps=4,
    sel_one_chunk_max=16384,
    sel_block_max=16384,
    radix_bits=8,
    programs_per_sm=0,
)
# GPU: 32 x 128 tiles, 4 warps. ptxas -v (compile-only, tests/kernels/test_kernels_compile.py), bf16, aligned:
# 25-91 registers on sm_90 and 25-89 on sm_80 for the streaming kernels, select <= 128, no spills anywhere.
GPU_CONFIG = KernelConfig(
    block_n=32,
    block_d=128,
    gemv_block_h=32,
    gemv_block_d=128,
    gather_block_r=32,
    gather_block_d=128,
    num_warps=4,
    sel_one_chunk_max=4096,
    sel_block_max=8192,
    radix_bits=4,
    programs_per_sm=8,
)

_CONFIG = INTERPRETER_CONFIG if INTERPRET else GPU_CONFIG


def get_config() -> KernelConfig:
    return _CONFIG


def set_config(config: KernelConfig | None = None, **changes) -> KernelConfig:
    """Replace the active block configuration (tests use it to run GPU-sized tiles in the interpreter)."""
    global _CONFIG
    base = config if config is not None else _CONFIG
    new = replace(base, **changes) if changes else base
    if new.radix_bits not in (1, 2, 4, 8):
        raise ValueError(f"radix_bits must be 1, 2, 4 or 8, got {new.radix_bits}")
    require_powers_of_two(new, ("block_n", "block_d", "gemv_block_b", "gemv_block_h", "gemv_block_d", "gather_block_r",
                                "gather_block_d", "sel_one_chunk_max", "sel_block_max"))
    old = _CONFIG
    _CONFIG = new
    return old


# --------------------------------------------------------------------------------------------------------------------
# Host-side helpers shared by the ops
# --------------------------------------------------------------------------------------------------------------------

_SM_COUNT: dict = {}
_empty = torch.empty  # every buffer the kernels fill comes from here (tests poison it to catch unwritten entries)
_MAX_GRID_YZ = 65535  # CUDA limit of grid dimensions y and z (images are on y)


def empty_buffer(*args, **kwargs) -> torch.Tensor:
    """A buffer for a kernel to fill, from ``_empty`` (looked up per call, so tests can poison it)."""
    return _empty(*args, **kwargs)


def _target_programs(device: torch.device, cfg: KernelConfig) -> int:
    if cfg.programs_per_sm <= 0:
        return 0
    if cfg.sm_count > 0:
        return cfg.programs_per_sm * cfg.sm_count
    if device.type != "cuda":
        return 0
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return cfg.programs_per_sm * _SM_COUNT[idx]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _split(units: int, base_programs: int, target: int) -> tuple[int, int]:
    """Cut ``units`` blocks into S slices so that base_programs * S reaches ``target``: (blocks per slice, S)."""
    if units <= 1 or target <= 0 or base_programs >= target:
        return max(units, 1), 1
    want = min(units, _cdiv(target, max(base_programs, 1)))
    per = _cdiv(units, want)
    return per, _cdiv(units, per)


class DeviceMeta(NamedTuple):
    """The host sizes of one call on the device (int64, one host-to-device copy, each segment 16-byte aligned)."""

    cu: torch.Tensor  # [B + 1] cumulative N_i
    cuk: torch.Tensor  # [B + 1] cumulative K_i
    grids: torch.Tensor | None  # [3 B] (t, h, w) per image, or None
    t_cu: torch.Tensor | None  # [B + 1] cumulative frame counts (position channels only)
    t_offsets: torch.Tensor | None  # [sum t_i] temporal M-RoPE offset of each frame (position channels only)


def _device_meta(plan: Plan, device: torch.device, channels: PositionChannels | None = None) -> DeviceMeta:
    """cu_seqlens, cu_keep, host grids and, for ``channels``, the per-frame temporal offsets on ``device``."""
    segments = [plan.cu_seqlens, plan.cu_keep]
    if plan.grids is not None:
        segments.append([v for g in plan.grids for v in g])
    if channels is not None:
        check_channels(plan, channels)
        segments += list(temporal_tables(plan.grids, channels.factors_for(plan.num_images)))
    cu, cuk, *rest = host_segments_on(segments, device)
    if plan.grids is not None:
        grids = rest[0]
    elif plan.grids_tensor is not None:
        grids = plan.grids_tensor.to(device=device, dtype=torch.long).contiguous().reshape(-1)
    else:
        grids = None
    if channels is not None:
        return DeviceMeta(cu, cuk, grids, rest[1], rest[2])
    return DeviceMeta(cu, cuk, grids, None, None)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()

