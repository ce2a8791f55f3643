"""Public entry points: pick the Triton kernels or the torch reference for each call.

Backend rule (first match wins):

1. ``backend="torch"`` or ``backend="triton"`` passed explicitly (an explicit "triton" never falls back: it raises).
2. ``VS_VLLM_FORCE_TORCH_SELECT=1`` in the environment: torch.
3. Automatic: CUDA (and ROCm) tensors use Triton when it is installed (except bf16 on CUDA devices below sm_80);
   CPU tensors use Triton only when ``TRITON_INTERPRET=1`` (tests); every other case uses torch.
4. Automatic calls with more than 65535 images use torch (CUDA grid limit). ``select_tokens_mmr`` uses torch on
   automatic calls unless ``VS_VLLM_MMR_TRITON=1`` (its Gram-route kernel is not yet timed on a GPU; see the
   function). On the CPU its torch path is the deferred loop of ``vs_vllm.selection.mmr``, the fastest there.
5. If the automatic Triton path of one operation (``select``, ``gather`` or ``select_mmr``) fails before it ever
   succeeded for that (operation, device type, dtype), that combination uses torch from then on. The fallback is
   loud: the first failure logs one ERROR line with the cause (exception type and message, traceback attached) on
   the ``vllm.plugins.vs_vllm.kernels`` logger and emits one RuntimeWarning; every call the torch fallback answers is
   counted (:func:`fallback_counts`) and reported to the functions registered with :func:`add_fallback_listener`
   (the vLLM plugin turns them into ``vs_vllm:kernel_fallbacks_total`` and ``vs_vllm_kernels_healthy`` on
   ``/metrics``). The other operations keep their Triton kernels: one kernel that cannot run on a device (its shared
   memory, say) does not slow the others down. A failure after the combination once succeeded is raised, not
   hidden. With ``VS_VLLM_STRICT_KERNELS=1`` (strict mode, which every test session and ``make gpu-check`` use)
   every failure raises, so a broken kernel can never pass a test as the torch fallback.

Test hook: ``VS_VLLM_INJECT_KERNEL_FAULT=select`` (a comma-separated list of operations, or ``all``) makes the Triton
path of those operations raise before it launches anything, exactly where a real launch failure would, so the
fallback, its log line and its metrics can be checked on a real server. It is read on every Triton attempt; never
set it outside tests.

Importing this module does not import triton; the first Triton call does.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Callable

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
    "INJECT_FAULT_ENV",
    "OPS",
    "STRICT_ENV",
    "PositionChannels",
    "Selection",
    "add_fallback_listener",
    "fallback_counts",
    "fallback_reason",
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
#: Test hook: operations whose Triton path raises on purpose (see the module docstring).
INJECT_FAULT_ENV = "VS_VLLM_INJECT_KERNEL_FAULT"
#: The operations with a Triton kernel, as named in logs and in the ``op`` label of the fallback metric.
OPS = ("select", "gather", "select_mmr")
_BACKENDS = ("torch", "triton")

logger = logging.getLogger("vllm.plugins.vs_vllm.kernels")  # a child of vLLM's logger: its handler and format

_Key = tuple[str, str, torch.dtype]  # (operation, device type, dtype)
_lock = threading.Lock()
_failed: dict[_Key, str] = {}  # -> why the Triton path was given up ("RuntimeError: ...")
_succeeded: set[_Key] = set()
_fallback_calls: dict[_Key, int] = {}  # calls the torch fallback answered
_listeners: list[Callable[[str, str, str], None]] = []


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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _choose(x: torch.Tensor, backend: str | None, op: str) -> tuple[str, bool]:
    """(backend, whether it is torch only because ``op``'s Triton path failed on this device type and dtype)."""
    _check_op(op)
    if backend is not None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS} or None, got {backend!r}")
        return backend, False
    if _env_flag(FORCE_TORCH_ENV):
        return "torch", False
    choice = _auto_backend(x)
    if choice == "triton" and (op, x.device.type, x.dtype) in _failed and not is_strict():
        return "torch", True
    return choice, False


def resolve_backend(x: torch.Tensor, backend: str | None = None, op: str = "select") -> str:
    """``"torch"`` or ``"triton"``: the backend a call of ``op`` (one of :data:`OPS`; ``select_tokens``' by default)
    with these arguments would use now. ``select_mmr`` is answered without its opt-in rule (see
    :func:`select_tokens_mmr`)."""
    return _choose(x, backend, op)[0]


def fallback_reason(op: str, device_type: str, dtype: torch.dtype) -> str | None:
    """Why ``op``'s Triton path was given up on this device type and dtype, or None while it has not been."""
    with _lock:
        return _failed.get((op, device_type, dtype))


def fallback_counts() -> dict[tuple[str, str, str], int]:
    """(operation, device type, dtype name) -> calls the torch fallback answered so far (the failing call included)."""
    with _lock:
        return {(op, dev, _dtype_name(dt)): n for (op, dev, dt), n in _fallback_calls.items()}


def add_fallback_listener(listener: Callable[[str, str, str], None]) -> None:
    """Call ``listener(op, device_type, dtype_name)`` after every call the torch fallback answers (once per
    listener, however often it is added). A listener that raises is logged, never lets the call fail."""
    with _lock:
        if listener not in _listeners:
            _listeners.append(listener)


def reset_fallbacks() -> None:
    """Forget every recorded Triton failure, success and fallback count (tests); listeners stay."""
    with _lock:
        _failed.clear()
        _succeeded.clear()
        _fallback_calls.clear()


def _injected_fault(op: str) -> None:
    """The test hook: raise where a launch failure would if ``VS_VLLM_INJECT_KERNEL_FAULT`` names ``op``."""
    wanted = {name.strip() for name in os.environ.get(INJECT_FAULT_ENV, "").split(",")}
    if op in wanted or "all" in wanted:
        raise RuntimeError(f"fault injected by {INJECT_FAULT_ENV}={os.environ[INJECT_FAULT_ENV]} (a test hook)")


def _answered_by_fallback(key: _Key) -> None:
    op, device, dtype = key[0], key[1], _dtype_name(key[2])
    with _lock:
        _fallback_calls[key] = _fallback_calls.get(key, 0) + 1
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(op, device, dtype)
        except Exception:  # reporting must not turn a working fallback into a failed request
            logger.exception("vs-vllm: a kernel-fallback listener failed")


_MAX_TRITON_IMAGES = 65535  # CUDA grid-dimension limit (images are on grid axis 1)


def _run(op: str, x: torch.Tensor, backend: str | None, triton_fn, torch_fn, num_images: int):
    choice, fell_back = _choose(x, backend, op)
    key = (op, x.device.type, x.dtype)
    if fell_back:
        _answered_by_fallback(key)
    if choice == "torch" or (backend is None and num_images > _MAX_TRITON_IMAGES):
        return torch_fn()
    if backend == "triton" or is_strict():
        _injected_fault(op)
        return triton_fn()
    try:
        _injected_fault(op)
        out = triton_fn()
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"
        with _lock:
            if key in _succeeded:
                raise
            first = key not in _failed
            _failed[key] = cause
        if first:
            where = f"{key[1]} {_dtype_name(key[2])}"
            logger.error("vs-vllm: the Triton %s kernel failed on %s (%s); %s calls on %s use the torch "
                         "implementation from now on", op, where, cause, op, where, exc_info=exc)
            warnings.warn(f"vs_vllm.kernels: the Triton {op} kernel failed on {where} ({cause}); using the torch "
                          f"implementation for {op} on {where} from now on", RuntimeWarning, stacklevel=3)
        _answered_by_fallback(key)
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

    return _run("select", x, backend, run_triton, run_torch, plan.num_images)


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

    return _run("gather", x, backend, run_triton, run_torch, plan.num_images)


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
        # Opt-in until timed on a GPU. The Triton path routes each image by shape (kernels/mmr_select.py): images
        # whose fp32 N x N cosine matrix fits MMRConfig.gram_max_bytes run all K steps in one launch over rows of
        # that matrix (kernels/mmr_gram.py; estimated well under the torch loop's ~85 µs per step, untimed), larger
        # ones the streaming kernel (timed: slower than torch for one image of 1,196+ tokens). The torch loop on a
        # GPU is a chain of small launches per step. `make gpu-check` (bench_mmr.py) times all three per shape; the
        # default flips to Triton where those numbers say so.
        backend = "torch"
    plan = make_plan(x, cu_seqlens, keep_k, grids)
    check_scorer_weights(x, q_weight, q_bias, k_weight, k_bias)
    lams = lambdas_for(lambdas, plan.num_images, plan.keep)
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

    return _run("select_mmr", x, backend, run_triton, run_torch, plan.num_images)


__all__ += ["select_tokens_mmr"]
