"""Public entry points: pick the Triton kernels or the torch reference for each call.

Backend rule (first match wins):

1. ``backend="torch"`` or ``backend="triton"`` passed explicitly (an explicit "triton" never falls back: it raises).
2. ``VS_VLLM_FORCE_TORCH_SELECT=1`` in the environment: torch.
3. Automatic: CUDA (and ROCm) tensors use Triton when it is installed (except bf16 on CUDA devices below sm_80);
   CPU tensors use Triton only when ``TRITON_INTERPRET=1`` (tests); every other case uses torch.
4. Automatic calls with more than 65535 images use torch (CUDA grid limit). ``select_tokens_mmr`` uses torch on
   automatic calls unless ``VS_VLLM_MMR_TRITON=1`` (its kernel is not yet measured on a GPU; see the function).
5. If the automatic Triton path fails before it ever succeeded for that (device type, dtype), one RuntimeWarning
   says why and that combination uses torch from then on — unless ``VS_VLLM_STRICT_KERNELS=1`` (strict mode, which
   every test session and ``make gpu-check`` use): then the failure raises, so a broken kernel can never pass a test
   as the torch fallback.

Importing this module does not import triton; the first Triton call does.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings

import torch

from .common import (
    Selection,
    check_channels,
    check_gather_source,
    check_scorer_weights,
    empty_selection,
    make_gather_plan,
    make_plan,
)
from .position_channels import PositionChannels
from .reference import gather_with_plan_ref, select_with_scores_ref

__all__ = [
    "FORCE_TORCH_ENV",
    "STRICT_ENV",
    "PositionChannels",
    "Selection",
    "gather_selected",
    "is_strict",
    "reset_fallbacks",
    "resolve_backend",
    "select_tokens",
]

FORCE_TORCH_ENV = "VS_VLLM_FORCE_TORCH_SELECT"
#: Strict mode: an automatic Triton call that fails raises instead of falling back to torch.
STRICT_ENV = "VS_VLLM_STRICT_KERNELS"
#: Opt-in for the MMR Triton kernel on automatic calls (``select_tokens_mmr``); torch otherwise.
MMR_TRITON_ENV = "VS_VLLM_MMR_TRITON"
_BACKENDS = ("torch", "triton")

_lock = threading.Lock()
_failed: dict[tuple[str, torch.dtype], str] = {}  # (device type, dtype) -> why the Triton path was given up
_succeeded: set[tuple[str, torch.dtype]] = set()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "off", "no")


def _triton_available() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def _auto_backend(x: torch.Tensor) -> str:
    """The backend an automatic call would use for ``x``, before any fallback."""
    if not _triton_available():
        return "torch"
    if x.device.type == "cuda":
        if x.dtype == torch.bfloat16 and torch.version.hip is None:
            major, _ = torch.cuda.get_device_capability(x.device)
            if major < 8:
                return "torch"
        return "triton"
    if x.device.type == "cpu" and _env_flag("TRITON_INTERPRET"):
        return "triton"
    return "torch"


def is_strict() -> bool:
    """Whether automatic Triton failures raise (``VS_VLLM_STRICT_KERNELS=1``) instead of falling back to torch."""
    return _env_flag(STRICT_ENV)


def resolve_backend(x: torch.Tensor, backend: str | None = None) -> str:
    """``"torch"`` or ``"triton"``: the backend a call with these arguments would use now."""
    if backend is not None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS} or None, got {backend!r}")
        return backend
    if _env_flag(FORCE_TORCH_ENV):
        return "torch"
    choice = _auto_backend(x)
    if choice == "triton" and (x.device.type, x.dtype) in _failed and not is_strict():
        return "torch"
    return choice


def reset_fallbacks() -> None:
    """Forget every recorded Triton failure and success (tests)."""
    with _lock:
        _failed.clear()
        _succeeded.clear()


_MAX_TRITON_IMAGES = 65535  # CUDA grid-dimension limit (images are on grid axis 1)


def _run(x: torch.Tensor, backend: str | None, triton_fn, torch_fn, num_images: int):
    choice = resolve_backend(x, backend)
    if choice == "torch" or (backend is None and num_images > _MAX_TRITON_IMAGES):
        return torch_fn()
    key = (x.device.type, x.dtype)
    if backend == "triton" or is_strict():
        return triton_fn()
    try:
        out = triton_fn()
    except Exception as exc:
        with _lock:
            if key in _succeeded:
                raise
            first = key not in _failed
            _failed[key] = f"{type(exc).__name__}: {exc}"
        if first:
            warnings.warn(
                f"vs_vllm.kernels: the Triton selection kernels failed on {key[0]} {key[1]} "
                f"({type(exc).__name__}: {exc}); using the torch implementation for {key[0]} {key[1]} from now on",
                RuntimeWarning,
                stacklevel=3,
            )
        return torch_fn()
    if key not in _succeeded:
        with _lock:
            _succeeded.add(key)
    return out


def select_tokens(
    x: torch.Tensor,
    cu_seqlens,
    keep_k,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    grids=None,
    backend: str | None = None,
    *,
    source: torch.Tensor | None = None,
    channels: PositionChannels | None = None,
) -> Selection:
    """VisionSelector hard selection of K_i tokens per image of a packed batch.

    x:           [sum N_i, D] float32 / float16 / bfloat16 (rows may be strided; columns must be dense or are copied).
    cu_seqlens:  [B + 1] cumulative token counts, a list or CPU tensor (a device tensor costs one host sync).
    keep_k:      K_i per image (list or int64 CPU tensor, or one int for every image); 1 <= K_i <= N_i.
    q_weight, k_weight: [H, D]; q_bias, k_bias: [H]  (the scorer's two linear maps, any float dtype).
    grids:       optional (t, h, w) per image (list, or [B, 3] int tensor) with t*h*w == N_i.
    source:      optional [sum N_i, D_src] tensor holding the same tokens as ``x`` (any width, e.g. the full vision
                 output when the scorer reads only its first D columns): the kept rows are gathered from it.
    channels:    ``PositionChannels`` to get the engine's packed layout: ``Selection.packed`` [sum K_i, D_src + 6],
                 each kept row followed by its position channels, written in the same pass (needs host ``grids``).
    Returns a ``Selection``: per image, the K_i highest-scoring rows (ties to the lowest index) in ascending order.
    """
    plan = make_plan(x, cu_seqlens, keep_k, grids)
    check_scorer_weights(x, q_weight, q_bias, k_weight, k_bias)
    source = check_gather_source(x, source)
    check_channels(plan, channels)
    if plan.num_images == 0:
        return empty_selection(source, plan, channels)
    out = {"source": None if source is x else source, "channels": channels}

    def run_torch():
        return select_with_scores_ref(x, plan, q_weight, q_bias, k_weight, k_bias, **out)[0]

    def run_triton():
        from .select import select_with_scores_triton

        return select_with_scores_triton(x, plan, q_weight, q_bias, k_weight, k_bias, **out)[0]

    return _run(x, backend, run_triton, run_torch, plan.num_images)


def gather_selected(
    x: torch.Tensor,
    cu_seqlens,
    indices: torch.Tensor,
    cu_keep,
    grids=None,
    backend: str | None = None,
    *,
    channels: PositionChannels | None = None,
) -> Selection:
    """Gather kept rows given per-image local indices (the shared back end of every selection method).

    indices: [sum K_i] integer tensor, image after image, each 0 <= j < N_i (range-checked only for CPU tensors).
    cu_keep: [B + 1] cumulative K_i, a list or CPU tensor.  Rows come out in the order of ``indices``.
    channels: as for :func:`select_tokens` (``Selection.packed``).
    """
    plan = make_gather_plan(x, cu_seqlens, indices, cu_keep, grids)
    check_channels(plan, channels)
    if plan.num_images == 0:
        return empty_selection(x, plan, channels)

    def run_torch():
        return gather_with_plan_ref(x, plan, indices, channels=channels)

    def run_triton():
        from .select import gather_with_plan_triton

        return gather_with_plan_triton(x, plan, indices, channels=channels)

    return _run(x, backend, run_triton, run_torch, plan.num_images)


def select_tokens_mmr(
    x: torch.Tensor,
    cu_seqlens,
    keep_k,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    lambdas,
    grids=None,
    backend: str | None = None,
    *,
    source: torch.Tensor | None = None,
    channels: PositionChannels | None = None,
) -> Selection:
    """VisionSelector scores + diversity by maximal marginal relevance: K_i tokens per image of a packed batch.

    Same arguments and result contract as :func:`select_tokens`, plus ``lambdas``: one float in [0, 1] for every
    image or one per image (host floats; see :mod:`vs_vllm.selection.mmr`); ``source`` and ``channels`` as for
    :func:`select_tokens`. Per image the K_i tokens are chosen
    greedily by ``lam * minmax(score) - (1 - lam) * max cosine similarity to the tokens already kept`` (ties to the
    lowest index) and come back in ascending order; ``lam == 1`` is exactly :func:`select_tokens`' top-K.
    Scores come from the same score pass as :func:`select_tokens`, rows and positions from the shared gather.
    Automatic calls use torch unless ``VS_VLLM_MMR_TRITON=1`` (see below); an explicit ``backend="triton"`` never
    falls back, as for the other entries.
    """
    from .mmr_reference import lambdas_for, select_mmr_with_plan_ref

    if backend is None and not _env_flag(MMR_TRITON_ENV):
        # Opt-in until measured on a GPU: the kernel runs one program per image, so every greedy step streams the
        # image's N x D rows through a single SM; the torch path spreads each step's mat-vec over the whole device
        # (and never waits for it). benchmarks/kernels/bench_mmr.py compares both wherever a GPU is available.
        backend = "torch"
    plan = make_plan(x, cu_seqlens, keep_k, grids)
    check_scorer_weights(x, q_weight, q_bias, k_weight, k_bias)
    lams = lambdas_for(lambdas, plan.num_images)
    source = check_gather_source(x, source)
    check_channels(plan, channels)
    if plan.num_images == 0:
        return empty_selection(source, plan, channels)
    out = {"source": None if source is x else source, "channels": channels}

    def run_torch():
        return select_mmr_with_plan_ref(x, plan, q_weight, q_bias, k_weight, k_bias, lams, **out)[0]

    def run_triton():
        from .mmr_select import select_mmr_with_plan_triton

        return select_mmr_with_plan_triton(x, plan, q_weight, q_bias, k_weight, k_bias, lams, **out)[0]

    return _run(x, backend, run_triton, run_torch, plan.num_images)


__all__ += ["select_tokens_mmr"]
