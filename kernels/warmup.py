"""Compile every Triton selection-kernel variant a server can launch, at model load, so no request waits for the JIT.

The kernels' per-request counts are ``do_not_specialize`` (``score.py``, ``topk_select.py``), so what still picks
a variant is the model (D, H, strides, dtypes: fixed) and the block buckets of the host code: the select kernel's
BLOCK by the largest image (``_select_params``: 256, 512, ... ``sel_one_chunk_max`` register-resident, then chunked),
the gather's 64-bit path for images past 2**31 elements, and the scorer mat-vecs' images per program by the batch
size (``score._gemv_blocks``: 1, 2, 4, ... ``gemv_block_b``). :func:`warmup_sizes` is one image size per bucket up
to the largest image the server admits; :func:`warm_up_selection` runs the serving calls once per size (the
VisionSelector chain and the gather of the other methods, both writing the engine's packed layout with position
channels, and the MMR kernels when they are switched on), through the same dispatch as serving, and returns what it
compiled, which operations failed (and why) and how long it took; :meth:`WarmUp.describe` says so in one line.
A kernel that fails here takes dispatch's fallback like one that fails on a request: logged at ERROR, counted, and
that operation runs the torch implementation from then on (strict mode raises instead).
tests/kernels/test_kernels_no_recompile.py checks that a sweep of request shapes hits no variant outside this set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

__all__ = ["WarmUp", "warm_up_selection", "warmup_sizes"]


@dataclass(frozen=True)
class WarmUp:
    backend: str  # the backend the calls resolved to ("torch": nothing to compile)
    sizes: tuple[int, ...]  # image sizes run, one per bucket
    seconds: float
    compiled: tuple[tuple[str, str], ...] = ()  # (operation, variant: "256 tokens" / "4 images") that ran on Triton
    failed: tuple[tuple[str, str], ...] = ()  # (operation, cause) whose Triton kernel failed: torch from now on
    skipped: tuple[str, ...] = ()  # operations already on the torch fallback before the warm-up (nothing to compile)

    def describe(self) -> str:
        """One line for the log: what was compiled per operation, and what failed or was skipped, and why."""
        if self.backend != "triton":
            return "nothing compiled: the selection runs the torch implementation"
        ops: dict[str, list[str]] = {}
        for op, variant in self.compiled:
            ops.setdefault(op, []).append(variant)
        parts = [f"compiled {op} for {', '.join(variants)}" for op, variants in ops.items()]
        parts += [f"FAILED {op} ({cause}): {op} runs the torch implementation" for op, cause in self.failed]
        parts += [f"skipped {op}: already on the torch fallback" for op in self.skipped]
        return "; ".join(parts) + f" ({self.seconds:.1f} s)"


def warmup_sizes(max_tokens: int, row_stride: int, config=None) -> tuple[int, ...]:
    """One image size per kernel bucket an image of up to ``max_tokens`` tokens (rows ``row_stride`` elements
    apart) can fall in, ascending."""
    from .config import get_config
    from .gather import _WIDE_LIMIT

    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    cfg = config if config is not None else get_config()
    sizes = []
    block = 256  # the select kernel's smallest BLOCK (max(256, next power of two))
    while block <= cfg.sel_one_chunk_max:
        lowest = 1 if block == 256 else block // 2 + 1
        if lowest <= max_tokens:
            sizes.append(min(block, max_tokens))
        block *= 2
    if max_tokens > cfg.sel_one_chunk_max:
        sizes.append(cfg.sel_one_chunk_max + 1)
        wide = -(-_WIDE_LIMIT // max(row_stride, 1))  # the first image size whose gather needs 64-bit offsets
        if wide <= max_tokens:
            sizes.append(wide)
    return tuple(sorted(set(sizes)))


def warm_up_selection(
    width: int,
    dtype: torch.dtype,
    device: torch.device | str,
    scorer_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    max_tokens: int,
    *,
    mmr: bool = False,
    backend: str | None = None,
) -> WarmUp:
    """Run the selection calls a server makes once per kernel bucket (see the module docstring).

    ``width``: the columns the scorer reads; ``scorer_weights``: (q_weight, q_bias, k_weight, k_bias). A model that
    gathers wider rows than it scores (Qwen3-VL's DeepStack levels) runs the same gather variant when both widths are
    multiples of 16 (the JIT's only distinction between them). ``backend``: as for the calls themselves (None:
    automatic, i.e. nothing to do off CUDA; tests pass "triton" to run the interpreter).
    """
    from .config import get_config
    from .dispatch import fallback_reason, gather_selected, resolve_backend, select_tokens, select_tokens_mmr
    from .position_channels import PositionChannels
    from .score import gemv_buckets

    device = torch.device(device)
    probe = torch.empty(0, dtype=dtype, device=device)
    ops = ("select", "gather", "select_mmr") if mmr else ("select", "gather")
    backends = {op: resolve_backend(probe, backend, op) for op in ops}
    if "triton" not in backends.values():
        return WarmUp(backends["select"], (), 0.0)
    t0 = time.perf_counter()
    sizes = warmup_sizes(max_tokens, width)
    gen = torch.Generator(device=device).manual_seed(0)
    channels = PositionChannels()  # the serving calls' packed layout
    compiled: list[tuple[str, str]] = []
    failed: dict[str, str] = {}

    def attempt(op: str, variant: str, call, *args, **kwargs) -> None:
        """``call(*args, **kwargs)`` if ``op`` is still on Triton; note whether it compiled or took the fallback."""
        if op in failed or resolve_backend(probe, backend, op) != "triton":
            return
        call(*args, backend=backend, channels=channels, **kwargs)
        if resolve_backend(probe, backend, op) == "triton":
            compiled.append((op, variant))
        else:  # dispatch caught the failure (and logged it): say which operation and why
            failed[op] = fallback_reason(op, device.type, dtype) or "unknown"

    for n in sizes:
        x = torch.randn((n, width), generator=gen, device=device, dtype=torch.float32).to(dtype)
        keep = max(1, n // 4)
        grids = [(1, 1, n)]
        attempt("select", f"{n} tokens", select_tokens, x, [0, n], [keep], *scorer_weights, grids=grids)
        # the other methods' shared back end (indices from the host-side selection methods)
        attempt("gather", f"{n} tokens", gather_selected, x, [0, n], torch.arange(keep, device=device), [0, keep],
                grids=grids)
        if mmr:
            attempt("select_mmr", f"{n} tokens", select_tokens_mmr, x, [0, n], [keep], *scorer_weights, [0.5],
                    grids=grids)
    for images in gemv_buckets(get_config())[1:]:  # batches of several images: the mat-vecs' image-block variants
        x = torch.randn((images, width), generator=gen, device=device, dtype=torch.float32).to(dtype)
        attempt("select", f"{images} images", select_tokens, x, list(range(images + 1)), [1] * images,
                *scorer_weights, grids=[(1, 1, 1)] * images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    skipped = tuple(op for op in ops if backends[op] != "triton")
    return WarmUp("triton", sizes, time.perf_counter() - t0, tuple(compiled), tuple(failed.items()), skipped)
