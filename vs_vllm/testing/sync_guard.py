"""Catch host<->device synchronisation on a CPU-only machine.

On CUDA a handful of operations make the host wait for the GPU: reading a value (``.item()``, ``int(t)``,
``float(t)``, ``bool(t)`` / ``if t``, ``.tolist()``), operations whose output size depends on device data
(``nonzero``, boolean-mask indexing ``x[mask]``, ``masked_select``, ``unique``, ``repeat_interleave`` without
``output_size``, ``bincount``), and blocking copies between host and device (``.cpu()``, ``.to("cpu")``,
``torch.tensor(data, device=dev)``, indexing a device tensor with a host index tensor or a Python list). The serving
path must do none of them. This module makes them visible in tests that run on the CPU:

.. code-block:: python

    with sync_guard():  # any sync on a device tensor raises DeviceSyncError
        out = fill_media_positions(as_device(positions), as_device(ids), (IMG,), as_device(coords), start)
    assert torch.equal(to_host(out), expected)

    with count_syncs() as log:  # records instead of raising
        ...
    assert log == ["aten._local_scalar_dense"]

How it works: :func:`as_device` wraps a CPU tensor in a :class:`DeviceTensor`, a wrapper subclass that reports
device :data:`DEVICE` and keeps its data in a CPU tensor. Inside a guard a ``TorchDispatchMode`` sees every aten op:
ops that touch a device tensor, or that create a tensor on :data:`DEVICE` (``torch.arange(n, device=x.device)``,
``torch.zeros_like``...), run on the CPU data and their results are device tensors again, so anything derived from
a device tensor is a device tensor. Before running, each such op is checked against the list of syncing ops
(:func:`sync_reason`); plain tensors are host tensors and everything on them is free.

:data:`DEVICE` is ``lazy:0``: a CPU-only PyTorch build has no device guard for ``cuda`` (every ``.item()`` or
``nonzero`` on a fake-CUDA tensor dies with "not linked with support for cuda devices") and ``meta`` makes PyTorch
create data-less scalar and index tensors internally; the lazy device has a no-op guard and no such shortcuts. So
code under test must take its device from its inputs (``x.device``), not spell ``"cuda"``.

Limits: autograd is not supported (wrapped tensors never require grad); pinned memory cannot exist without CUDA, so a
``non_blocking=True`` copy is always taken to be asynchronous (vLLM's own checker additionally requires a pinned,
densely laid out host side); only the ops listed in :func:`sync_reason` are flagged, so an op that syncs on CUDA for
another reason (e.g. error checks in ``torch.linalg``) goes unnoticed.

Syncs inside vLLM's ``vllm.utils.gpu_sync_debug.gpu_sync_allowed()`` (or this module's :func:`allow_syncs`) are
allowed: they never raise and are logged in ``SyncLog.allowed``. ``gpu_sync_allowed()`` is a no-op unless vLLM's
sync check is configured (``VLLM_GPU_SYNC_CHECK`` on a CUDA platform), so while a guard is active its module-level
``_SYNC_CHECK_MODE`` is set to ``"error"`` (the way vLLM's own tests toggle it) to make the allow regions count.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = [
    "DEVICE",
    "DeviceMismatchError",
    "DeviceSyncError",
    "DeviceTensor",
    "SyncEvent",
    "SyncLog",
    "allow_syncs",
    "as_device",
    "count_syncs",
    "is_device",
    "sync_guard",
    "sync_reason",
    "to_host",
]

DEVICE = torch.device("lazy", 0)
"""The device :class:`DeviceTensor` reports; see the module docstring for why it is not ``cuda``."""

aten = torch.ops.aten


class DeviceSyncError(RuntimeError):
    """A host-synchronising operation on a device tensor inside :func:`sync_guard`."""

    def __init__(self, op: str, reason: str, where: str | None) -> None:
        at = f" at {where}" if where else ""
        super().__init__(f"{op}: {reason}{at} (host<->device sync; wrap deliberate ones in gpu_sync_allowed())")
        self.op, self.reason, self.where = op, reason, where


class DeviceMismatchError(RuntimeError):
    """An op mixes a device tensor with a non-scalar host tensor, which CUDA refuses."""


@dataclass(frozen=True)
class SyncEvent:
    """One sync seen by a guard: the aten op (or ``Tensor`` method), why it syncs, the calling code, whether allowed."""

    op: str
    reason: str
    where: str | None
    allowed: bool


class SyncLog(list):
    """Names of the ops that synchronised outside any allow region, in order (a ``list`` of ``str``).

    ``allowed`` holds the names of those inside ``gpu_sync_allowed()`` / :func:`allow_syncs`; ``events`` the full
    :class:`SyncEvent` records of both.
    """

    def __init__(self) -> None:
        super().__init__()
        self.allowed: list[str] = []
        self.events: list[SyncEvent] = []


class DeviceTensor(torch.Tensor):
    """A "device" tensor: reports :data:`DEVICE`, holds its data in a CPU tensor, flags syncs inside a guard."""

    _elem: torch.Tensor
    _from_scalar: bool

    @staticmethod
    def __new__(cls, elem: torch.Tensor, from_scalar: bool = False) -> DeviceTensor:
        if type(elem) is not torch.Tensor or elem.device.type != "cpu":
            raise TypeError(f"DeviceTensor wraps a plain CPU tensor, got {type(elem).__name__} on {elem.device}")
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=DEVICE,
            requires_grad=False,
        )
        out._elem = elem
        out._from_scalar = from_scalar  # made by aten.scalar_tensor: how CUDA code turns a Python number into a value
        return out

    def __repr__(self) -> str:  # must not sync: pytest and hypothesis print failing arguments
        return f"DeviceTensor({self._elem!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            self = args[0]
            if func is not torch.Tensor.__format__ or self.dim() == 0:
                _report(f"Tensor.{func.__name__}", _HOST_READS[func])
                return func(self._elem, *args[1:], **kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if _STATE.get() is None:
            raise RuntimeError(
                f"{_op_name(func)} on a DeviceTensor outside sync_guard()/count_syncs(); use to_host() to read it"
            )
        return _handle(func, args, kwargs or {})


# Python-level reads that never reach the dispatcher for a tensor subclass.
_HOST_READS: dict[Callable, str] = {
    torch.Tensor.tolist: "copies device data into Python objects",
    torch.Tensor.numpy: "copies device data into a host array",
    torch.Tensor.__array__: "copies device data into a host array",
    torch.Tensor.__format__: "formats a device value on the host",
}


def as_device(value: Any) -> Any:
    """A device copy of every CPU tensor in ``value`` (a tensor or a list/tuple/dict of them); others pass through."""

    def wrap(x: Any) -> Any:
        if isinstance(x, DeviceTensor) or not isinstance(x, torch.Tensor):
            return x
        return DeviceTensor(x.detach().clone(memory_format=torch.preserve_format))

    return tree_map(wrap, value)


def to_host(value: Any) -> Any:
    """The CPU data behind every device tensor in ``value`` (no copy, never counts as a sync); others pass through.

    For assertions in tests, outside the code under test.
    """
    return tree_map(lambda x: x._elem if isinstance(x, DeviceTensor) else x, value)


def is_device(value: Any) -> bool:
    return isinstance(value, DeviceTensor)


# ---- guard state -------------------------------------------------------------------------------------------------


@dataclass
class _Guard:
    raise_on_sync: bool
    log: SyncLog


_STATE: contextvars.ContextVar[_Guard | None] = contextvars.ContextVar("vs_vllm_sync_guard", default=None)
_ALLOW_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("vs_vllm_sync_allow_depth", default=0)


@contextmanager
def allow_syncs() -> Iterator[None]:
    """Syncs inside this block are allowed (logged in ``SyncLog.allowed``), like vLLM's ``gpu_sync_allowed()``."""
    token = _ALLOW_DEPTH.set(_ALLOW_DEPTH.get() + 1)
    try:
        yield
    finally:
        _ALLOW_DEPTH.reset(token)


_VLLM_MODULE = "vllm.utils.gpu_sync_debug"
_vllm_gsd: Any = None
_vllm_probed = False
_vllm_enables = 0


def _vllm_sync_debug() -> Any:
    """vLLM's gpu_sync_debug module when vLLM is installed and importable, else None (probed once)."""
    global _vllm_gsd, _vllm_probed
    if not _vllm_probed:
        _vllm_probed = True
        try:
            if importlib.util.find_spec("vllm") is not None:
                _vllm_gsd = importlib.import_module(_VLLM_MODULE)
        except Exception:  # pragma: no cover - vLLM missing or broken: no gpu_sync_allowed() to honour
            _vllm_gsd = None
    return _vllm_gsd


@contextmanager
def _vllm_allow_regions_enabled() -> Iterator[None]:
    """Make ``gpu_sync_allowed()`` open real allow regions while a guard is active (it is a no-op off CUDA)."""
    global _vllm_enables
    gsd = _vllm_sync_debug()
    patched = False
    if gsd is not None and getattr(gsd, "_SYNC_CHECK_MODE", "") is None:
        gsd._SYNC_CHECK_MODE = "error"
        patched = True
        _vllm_enables += 1
    try:
        yield
    finally:
        if patched:
            _vllm_enables -= 1
            if _vllm_enables == 0:
                gsd._SYNC_CHECK_MODE = None


def _allowed_now() -> bool:
    if _ALLOW_DEPTH.get() > 0:
        return True
    gsd = sys.modules.get(_VLLM_MODULE)
    depth = getattr(gsd, "_allow_depth", None)
    return depth is not None and depth.get() > 0


_TORCH_DIR = os.path.dirname(torch.__file__)


def _caller() -> str | None:
    """file:line of the innermost frame outside torch, this module and contextlib."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_TORCH_DIR) or name == __file__ or name.endswith("contextlib.py")):
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _report(op: str, reason: str) -> None:
    guard = _STATE.get()
    allowed = _allowed_now()
    where = _caller()
    if guard is not None:
        guard.log.events.append(SyncEvent(op, reason, where, allowed))
        (guard.log.allowed if allowed else guard.log).append(op)
    if not allowed and (guard is None or guard.raise_on_sync):
        raise DeviceSyncError(op, reason, where)


@contextmanager
def sync_guard(*, raise_on_sync: bool = True) -> Iterator[SyncLog]:
    """Run a block where device tensors act as device tensors; syncs on them raise :class:`DeviceSyncError`.

    Yields the block's :class:`SyncLog`: allowed syncs, and the syncs that raised (so a sync whose error the code
    under test swallowed still shows). With ``raise_on_sync=False`` nothing raises and every sync is logged.
    Guards nest; the innermost one decides and logs.
    """
    log = SyncLog()
    token = _STATE.set(_Guard(raise_on_sync, log))
    only_lift = torch._C._only_lift_cpu_tensors()
    # torch.tensor(data, device=d) then builds the data on the CPU and copies it with ops the mode sees.
    torch._C._set_only_lift_cpu_tensors(True)
    try:
        with _vllm_allow_regions_enabled(), _SyncGuardMode():
            yield log
    finally:
        torch._C._set_only_lift_cpu_tensors(only_lift)
        _STATE.reset(token)


def count_syncs() -> AbstractContextManager[SyncLog]:
    """Like :func:`sync_guard` but syncs are recorded, not raised: the yielded :class:`SyncLog` lists them."""
    return sync_guard(raise_on_sync=False)


class _SyncGuardMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _handle(func, args, kwargs or {})


# ---- the op table ------------------------------------------------------------------------------------------------

_VALUE_READ = "reads a device value on the host (item(), int(), float(), bool(t), `if t`, `x in t`, t as an index)"
_DATA_DEPENDENT = "output size depends on device data"
_UNIQUE = {
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.unique_consecutive,
    aten.unique_dim_consecutive,
}
_INDEX_PUT = {aten.index_put, aten.index_put_, aten._index_put_impl_, aten._unsafe_index_put}
_HOST_TENSOR_OK = {aten.lift_fresh, aten.lift_fresh_copy, aten._to_copy, aten.copy_, aten.tensor_split}


def _op_name(func) -> str:
    return "aten." + func._schema.name.split("::", 1)[-1]


def _is_guard_device(device: Any) -> bool:
    return isinstance(device, torch.device) and device.type == DEVICE.type


def _is_host(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and not isinstance(x, DeviceTensor)


def _is_mask(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in (torch.bool, torch.uint8)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def sync_reason(func, args: tuple, kwargs: dict) -> str | None:
    """Why the aten op ``func`` would synchronise host and device on CUDA, given which arguments live on the device.

    Only called for ops that touch a device tensor or create one. ``None`` when it does not sync.
    """
    packet = func.overloadpacket
    if packet in (aten._local_scalar_dense, aten.is_nonzero, aten.item):
        return _VALUE_READ
    if packet in (aten.equal, aten.allclose):
        return "returns a Python bool computed on the device"
    if packet is aten.nonzero:
        return f"{_DATA_DEPENDENT} (nonzero / argwhere / torch.where(cond) / as_tuple indexing)"
    if packet is aten.masked_select:
        return _DATA_DEPENDENT
    if packet in _UNIQUE:
        return _DATA_DEPENDENT
    if packet is aten.repeat_interleave and func is aten.repeat_interleave.Tensor:
        if kwargs.get("output_size") is None:
            return f"{_DATA_DEPENDENT} (repeat_interleave without output_size)"
        return None
    if packet is aten.bincount:
        return "bincount sizes its output from the device maximum"
    if packet is aten.histc and float(_arg(args, kwargs, 2, "min", 0)) == float(_arg(args, kwargs, 3, "max", 0)):
        return "histc with min == max reads the range from the device"
    if packet is aten.index:
        indices = [i for i in args[1] if i is not None]
        if any(_is_mask(i) for i in indices):
            return f"{_DATA_DEPENDENT} (boolean-mask indexing)"
        if is_device(args[0]) and any(_is_host(i) for i in indices):
            return "blocking copy of a host index tensor (or Python list) to the device"
        return None
    if packet in _INDEX_PUT:
        self, indices = args[0], [i for i in args[1] if i is not None]
        value = _arg(args, kwargs, 2, "values")
        if any(_is_mask(i) for i in indices):
            # x[mask] = scalar becomes masked_fill_ (no sync) when the value is one host / Python-number element.
            fill = (
                func is aten.index_put_.default
                and len(args[1]) == 1
                and is_device(args[1][0])
                and value.numel() == 1
                and (_is_host(value) or getattr(value, "_from_scalar", False))
            )
            return None if fill else f"{_DATA_DEPENDENT} (boolean-mask assignment)"
        if is_device(self) and any(_is_host(i) for i in indices):
            return "blocking copy of a host index tensor (or Python list) to the device"
        return None
    if packet is aten._to_copy:
        src_device = is_device(args[0])
        dst_device = _is_guard_device(kwargs["device"]) if "device" in kwargs else src_device
        if src_device != dst_device and not kwargs.get("non_blocking", False):
            return "blocking device-to-host copy (.cpu() / .to('cpu'))" if src_device else (
                "blocking host-to-device copy (torch.tensor(data, device=...), .to(device) of a host tensor)"
            )
        return None
    if packet is aten.copy_:
        dst, src = args[0], args[1]
        if is_device(dst) != is_device(src) and not _arg(args, kwargs, 2, "non_blocking", False):
            return "blocking host-to-device copy_" if is_device(dst) else "blocking device-to-host copy_"
        return None
    return None


def _check_devices(func, args: tuple, kwargs: dict) -> None:
    """CUDA refuses most ops that mix a device tensor with a host tensor that is not a 0-dim scalar."""
    packet = func.overloadpacket
    if packet in _HOST_TENSOR_OK:
        return
    if packet is aten.index or packet in _INDEX_PUT:
        self = args[0]
        if _is_host(self) and any(is_device(i) for i in args[1] if i is not None):
            raise DeviceMismatchError(f"{_op_name(func)}: a host tensor indexed by a device tensor")
        value = _arg(args, kwargs, 2, "values")
        if packet in _INDEX_PUT and _is_host(value) and value.dim() > 0 and is_device(self):
            raise DeviceMismatchError(f"{_op_name(func)}: host values of shape {tuple(value.shape)} into a device tensor")
        return
    leaves, _ = tree_flatten((args, kwargs))
    for leaf in leaves:
        if _is_host(leaf) and leaf.dim() > 0:
            raise DeviceMismatchError(
                f"{_op_name(func)}: mixes device tensors with a host tensor of shape {tuple(leaf.shape)}"
            )


def _handle(func, args: tuple, kwargs: dict) -> Any:
    leaves, _ = tree_flatten((args, kwargs))
    touches_device = any(isinstance(x, DeviceTensor) for x in leaves)
    device_kwarg = kwargs.get("device")
    creates_device = _is_guard_device(device_kwarg)
    if not touches_device and not creates_device:
        return func(*args, **kwargs)
    if touches_device:
        _check_devices(func, args, kwargs)
    reason = sync_reason(func, args, kwargs)
    if reason is not None:
        _report(_op_name(func), reason)

    originals = {id(x._elem): x for x in leaves if isinstance(x, DeviceTensor)}
    originals.update({id(x): x for x in leaves if _is_host(x)})

    def unwrap(x: Any) -> Any:
        if isinstance(x, DeviceTensor):
            return x._elem
        if _is_guard_device(x):
            return torch.device("cpu")
        return x

    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
    # Results live on the device unless the op says otherwise (``device=`` a host device, or copy_ into a host tensor).
    on_device = creates_device or (device_kwarg is None and touches_device)
    from_scalar = func.overloadpacket is aten.scalar_tensor

    def rewrap(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        original = originals.get(id(x))
        if original is not None:  # in-place / out= result: hand back the caller's tensor
            if isinstance(original, DeviceTensor) and (original.shape != x.shape or original.stride() != x.stride()):
                raise NotImplementedError(f"{_op_name(func)}: in-place metadata change of a DeviceTensor")
            return original
        return DeviceTensor(x, from_scalar) if on_device else x

    return tree_map(rewrap, out)
