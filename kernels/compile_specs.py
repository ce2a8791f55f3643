"""Compile-only descriptions of the selection kernels (score, top-K select, gather): what
``tests/kernels/compile_check.py`` hands to ``triton.compile`` for sm_80 / sm_90 without a GPU."""

from __future__ import annotations

from .config import GPU_CONFIG, KernelConfig
from .gather import _gather_kernel
from .score import (
    _gemv_blocks,
    gemv_buckets,
    _kbar_partial_kernel,
    _mean_finalize_kernel,
    _mean_partial_kernel,
    _score_partial_kernel,
    _u_partial_kernel,
)
from .topk_select import _select_kernel, _select_warps

__all__ = ["KERNELS", "aligned_attrs", "compile_specs", "unspecialized_args"]

KERNELS = {
    "mean_partial": _mean_partial_kernel,
    "mean_finalize": _mean_finalize_kernel,
    "kbar_partial": _kbar_partial_kernel,
    "u_partial": _u_partial_kernel,
    "score_partial": _score_partial_kernel,
    "select": _select_kernel,
    "gather": _gather_kernel,
}


def compile_specs(dtype: str = "bf16", cfg: KernelConfig = GPU_CONFIG) -> dict:
    """(kernel, signature, constexprs, num_warps) of every kernel variant the host code launches, for compile-only
    checks with ``triton.compile(ASTSource(...), target=GPUTarget(...))``. ``dtype`` is the element type of x.
    Use ``aligned_attrs`` for the attributes the JIT adds when pointers and sizes are multiples of 16."""
    X = f"*{dtype}"
    i64p, f32p = "*i64", "*fp32"
    nw = cfg.num_warps
    specs = {
        "mean_partial": (
            _mean_partial_kernel,
            {
                "x_ptr": X,
                "cu_ptr": i64p,
                "part_ptr": f32p,
                "D": "i32",
                "stride_x": "i32",
                "tile_rows": "i32",
                "n_tiles": "i32",
            },
            {"BLOCK_N": cfg.block_n, "BLOCK_D": cfg.block_d},
            nw,
        ),
        "mean_finalize": (
            _mean_finalize_kernel,
            {"part_ptr": f32p, "cu_ptr": i64p, "xbar_ptr": f32p, "D": "i32", "n_tiles": "i32"},
            {"BLOCK_D": cfg.block_d},
            nw,
        ),
        "score_partial": (
            _score_partial_kernel,
            {
                "x_ptr": X,
                "cu_ptr": i64p,
                "u_ptr": f32p,
                "part_ptr": f32p,
                "D": "i32",
                "stride_x": "i32",
                "total": "i32",
                "d_per_split": "i32",
            },
            {"BLOCK_N": cfg.block_n, "BLOCK_D": cfg.block_d},
            nw,
        ),
    }
    kbar_sig = {
        "wk_ptr": X,
        "xbar_ptr": f32p,
        "part_ptr": f32p,
        "H": "i32",
        "D": "i32",
        "stride_w": "i32",
        "d_per_split": "i32",
        "B": "i32",
    }
    u_sig = {
        "wq_ptr": X,
        "bq_ptr": X,
        "bk_ptr": X,
        "kpart_ptr": f32p,
        "upart_ptr": f32p,
        "cpart_ptr": f32p,
        "H": "i32",
        "D": "i32",
        "stride_w": "i32",
        "h_per_split": "i32",
        "B": "i32",
        "n_ksplits": "i32",
    }
    for images in gemv_buckets(cfg):  # one variant per image-block bucket (score._gemv_blocks)
        block_b, kbar_step, u_step = _gemv_blocks(images, cfg)
        specs[f"kbar_partial_b{block_b}"] = (
            _kbar_partial_kernel,
            kbar_sig,
            {"BLOCK_B": block_b, "BLOCK_H": cfg.gemv_block_h, "BLOCK_D": kbar_step},
            nw,
        )
        specs[f"u_partial_b{block_b}"] = (
            _u_partial_kernel,
            u_sig,
            {"BLOCK_B": block_b, "BLOCK_H": u_step, "BLOCK_D": cfg.gemv_block_d},
            nw,
        )
    sel_sig = {
        "spart_ptr": f32p,
        "cpart_ptr": f32p,
        "cu_ptr": i64p,
        "cuk_ptr": i64p,
        "scores_ptr": f32p,
        "idx_ptr": i64p,
        "total": "i32",
        "n_ssplits": "i32",
        "n_csplits": "i32",
        "B": "i32",
        "sqrt_h": "fp32",
    }
    blocks = sorted({min(b, cfg.sel_one_chunk_max) for b in (256, 1024, 2048, cfg.sel_one_chunk_max)})
    for block, one in [(b, True) for b in blocks] + [(cfg.sel_block_max, False)]:
        specs[f"select_{block}_{'one' if one else 'chunked'}"] = (
            _select_kernel,
            sel_sig,
            {"BLOCK": block, "ONE_CHUNK": one, "RADIX_BITS": cfg.radix_bits},
            _select_warps(block, one),
        )
    gather_sig = {
        "x_ptr": X,
        "stride_x": "i32",
        "cu_ptr": i64p,
        "cuk_ptr": i64p,
        "idx_ptr": i64p,
        "grid_ptr": i64p,
        "tcu_ptr": i64p,
        "toff_ptr": i64p,
        "out_ptr": X,
        "pos_ptr": i64p,
        "D": "i32",
        "d_per_split": "i32",
    }
    for has_pos, channels, wide in ((True, False, False), (False, False, False), (True, False, True),
                                    (True, True, False), (True, True, True)):
        name = f"gather_{'pos' if has_pos else 'nopos'}{'_channels' if channels else ''}{'_wide' if wide else ''}"
        specs[name] = (
            _gather_kernel,
            gather_sig,
            {"HAS_POS": has_pos, "CHANNELS": channels, "WIDE": wide, "BLOCK_R": cfg.gather_block_r,
             "BLOCK_D": cfg.gather_block_d},
            nw,
        )
    return specs


def unspecialized_args(fn) -> frozenset[str]:
    """The arguments a kernel declares ``do_not_specialize`` (per-request counts: the JIT compiles one variant for
    every value), for a JIT-compiled or an interpreted kernel."""
    names = getattr(fn, "do_not_specialize", None)
    if names is None:  # triton's InterpretedFunction keeps the decorator's arguments in .kwargs
        names = getattr(fn, "kwargs", {}).get("do_not_specialize")
    arg_names = list(fn.arg_names)
    return frozenset(arg_names[a] if isinstance(a, int) else str(a) for a in (names or ()))


def aligned_attrs(fn, signature: dict) -> dict:
    """ASTSource attrs marking every pointer and every int argument divisible by 16, as the JIT does when a call's
    pointers are 16-byte aligned and its sizes/strides are multiples of 16 (the usual case: D = 2048, 3584, ...);
    ``do_not_specialize`` arguments get no hint, as from the JIT."""
    out = {}
    skip = unspecialized_args(fn)
    for name, ty in signature.items():
        if name in skip:
            continue
        if ty.startswith("*") or ty in ("i32", "i64"):
            out[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return out
