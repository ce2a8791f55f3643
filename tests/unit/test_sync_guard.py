"""The sync guard: ops that block the host on CUDA raise (or are counted) on device tensors; everything else computes
the same values as on plain tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vs_vllm.testing.sync_guard import (
    DEVICE,
    DeviceMismatchError,
    DeviceSyncError,
    DeviceTensor,
    allow_syncs,
    as_device,
    count_syncs,
    is_device,
    sync_guard,
    to_host,
)

X = torch.tensor([[0.5, -1.0, 2.0, 0.0, 3.5], [1.5, 0.25, -2.0, 4.0, -0.5], [0.0, 1.0, 1.0, -3.0, 2.5],
                  [2.0, -0.75, 0.5, 1.0, 0.0]])
IDX = torch.tensor([2, 0, 3])
MASK = X > 0
V = torch.tensor([3, 1, 3, 0, 2])


def _set_int(x, i):
    x[i] = 5.0
    x[:, 1] = x[:, 2]
    x[0, 0] = 9.0
    return x


def _set_mask(x, m):
    x[m] = 0.0  # a Python number: CUDA turns this into masked_fill_, no sync
    x[~m] = torch.tensor(1.0)  # so does a 0-dim host tensor
    return x


def _in_place(x):
    x += 1
    x.mul_(2)
    x[0].zero_()
    return x


# (name, fn(x, i, m, v)) — none of these syncs on CUDA.
FREE_OPS = {
    "int_index": lambda x, i, m, v: x[i],
    "int_index_dim1": lambda x, i, m, v: x[:, i],
    "int_index_2d": lambda x, i, m, v: x[i, i],
    "index_put_int": lambda x, i, m, v: x.clone().index_put_((i,), torch.zeros_like(x[i])),
    "setitem_int_and_slices": lambda x, i, m, v: _set_int(x.clone(), i),
    "setitem_mask_scalar": lambda x, i, m, v: _set_mask(x.clone(), m),
    "cumsum": lambda x, i, m, v: x.cumsum(1),
    "cumsum_bool": lambda x, i, m, v: m.cumsum(0),
    "cummax_values": lambda x, i, m, v: torch.cummax(x, 0).values,
    "cummax_indices": lambda x, i, m, v: torch.cummax(v, 0).indices,
    "where": lambda x, i, m, v: torch.where(m, x, -x),
    "where_scalar": lambda x, i, m, v: torch.where(m, x, 0.0),
    "gather": lambda x, i, m, v: x.gather(1, i[None].expand(4, 3)),
    "scatter": lambda x, i, m, v: torch.zeros(4, 5, device=x.device).scatter(1, i[None].expand(4, 3), 1.0),
    "scatter_add": lambda x, i, m, v: torch.zeros(4, device=x.device).scatter_add(0, i, x[0, :3]),
    "index_select": lambda x, i, m, v: x.index_select(1, i),
    "cat": lambda x, i, m, v: torch.cat([x, x * 2]),
    "stack": lambda x, i, m, v: torch.stack([x, x]),
    "arange_on_device": lambda x, i, m, v: torch.arange(7, device=x.device) * 2,
    "zeros_full_on_device": lambda x, i, m, v: torch.zeros(2, 3, device=x.device) + torch.full((3,), 7.0, device=x.device),
    "like_factories": lambda x, i, m, v: torch.zeros_like(x) + torch.ones_like(x) + torch.empty_like(x).fill_(2),
    "new_factories": lambda x, i, m, v: x.new_zeros(3) + x.new_full((3,), 2.0),
    "clone": lambda x, i, m, v: x.clone(),
    "comparisons": lambda x, i, m, v: ((x > 0.1) & (x <= 1)) | (x == 2) | ~(x != 0),
    "arithmetic": lambda x, i, m, v: ((x * 10).long() // 3 % 4 - 1).abs() + 2 ** v[:4, None],
    "matmul": lambda x, i, m, v: x @ x.T,
    "topk": lambda x, i, m, v: torch.stack(list(x.topk(2, dim=1))),
    "sort": lambda x, i, m, v: x.sort(1).values,
    "argsort": lambda x, i, m, v: x.argsort(dim=0, stable=True),
    "reductions": lambda x, i, m, v: torch.stack([x.sum(), x.max(), x.min(), x.mean()]),
    "any_all": lambda x, i, m, v: m.any(1) & m.all(0)[:4],
    "argmax": lambda x, i, m, v: x.argmax(1),
    "count_nonzero": lambda x, i, m, v: torch.count_nonzero(m, 1),
    "nonzero_static": lambda x, i, m, v: torch.nonzero_static(m, size=30, fill_value=-1),
    "isin": lambda x, i, m, v: torch.isin(v, i),
    "clamp": lambda x, i, m, v: x.clamp(-1, 1),
    "masked_fill": lambda x, i, m, v: x.masked_fill(m, 0.0),
    "searchsorted": lambda x, i, m, v: torch.searchsorted(x.sort(1).values, x),
    "split_stack": lambda x, i, m, v: torch.stack(x.split([2, 2])),
    "views": lambda x, i, m, v: x.T.contiguous().view(-1)[::2] + x.reshape(20)[1::2],
    "expand": lambda x, i, m, v: i[:, None].expand(3, 4) + 0,
    "flip_roll": lambda x, i, m, v: x.flip(0).roll(1, 1),
    "host_scalar_tensor": lambda x, i, m, v: x + torch.tensor(2.0),  # 0-dim host tensors are scalars, as on CUDA
    "repeat_interleave_int": lambda x, i, m, v: x.repeat_interleave(2, dim=0),
    "repeat_interleave_output_size": lambda x, i, m, v: torch.repeat_interleave(v, v, output_size=9),
    "one_hot": lambda x, i, m, v: torch.nn.functional.one_hot(i, 4),
    "in_place": lambda x, i, m, v: _in_place(x.clone()),
    "dtype_to": lambda x, i, m, v: x.to(torch.float64).to(x.device) + v.to(torch.int32),
    "to_same_device": lambda x, i, m, v: v.to(x.device, copy=True),
}


@pytest.mark.parametrize("name", sorted(FREE_OPS))
def test_non_syncing_ops_match_plain_tensors(name: str) -> None:
    fn = FREE_OPS[name]
    expected = fn(X, IDX, MASK, V)
    with sync_guard() as log:
        got = fn(*as_device((X, IDX, MASK, V)))
    assert not log
    assert is_device(got), "results derived from device tensors stay on the device"
    assert got.device == DEVICE and got.shape == expected.shape and got.dtype == expected.dtype
    assert torch.equal(to_host(got), expected)


def test_random_ops_on_device() -> None:
    with sync_guard() as log:
        perm = torch.randperm(10, device=as_device(V).device)
        noise = torch.rand(4, device=DEVICE)
    assert not log and is_device(perm) and is_device(noise)
    assert torch.equal(to_host(perm).sort().values, torch.arange(10))


# (expected op in the log, fn(x, i, m, v)) — each blocks the host on CUDA.
SYNC_OPS = {
    "item": ("aten._local_scalar_dense", lambda x, i, m, v: x[0, 0].item()),
    "int": ("aten._local_scalar_dense", lambda x, i, m, v: int(v[0])),
    "float": ("aten._local_scalar_dense", lambda x, i, m, v: float(x[0, 0])),
    "bool": ("aten._local_scalar_dense", lambda x, i, m, v: bool(m[0, 0])),
    "if": ("aten._local_scalar_dense", lambda x, i, m, v: 1 if m.any() else 0),
    "contains": ("aten._local_scalar_dense", lambda x, i, m, v: 3 in v),
    "tensor_as_slice_bound": ("aten._local_scalar_dense", lambda x, i, m, v: x[: v[1]]),
    "tensor_as_fill_value": ("aten._local_scalar_dense", lambda x, i, m, v: torch.full((2,), x[0, 0], device=x.device)),
    "tolist": ("Tensor.tolist", lambda x, i, m, v: v.tolist()),
    "numpy": ("Tensor.numpy", lambda x, i, m, v: v.numpy()),
    "np_asarray": ("Tensor.__array__", lambda x, i, m, v: np.asarray(v)),
    "format_scalar": ("Tensor.__format__", lambda x, i, m, v: f"{x[0, 0]:.2f}"),
    "nonzero": ("aten.nonzero", lambda x, i, m, v: m.nonzero()),
    "nonzero_as_tuple": ("aten.nonzero", lambda x, i, m, v: m.nonzero(as_tuple=True)),
    "argwhere": ("aten.nonzero", lambda x, i, m, v: torch.argwhere(m)),
    "where_single_arg": ("aten.nonzero", lambda x, i, m, v: torch.where(m)),
    "mask_index": ("aten.index", lambda x, i, m, v: x[m]),
    "mask_index_rows": ("aten.index", lambda x, i, m, v: x[m[:, 0]]),
    "mask_assign_tensor": ("aten.index_put_", lambda x, i, m, v: x.clone().__setitem__(m, x[0, 0])),
    "masked_select": ("aten.masked_select", lambda x, i, m, v: x.masked_select(m)),
    "unique": ("aten._unique2", lambda x, i, m, v: v.unique()),
    "unique_consecutive": ("aten.unique_consecutive", lambda x, i, m, v: v.unique_consecutive()),
    "unique_dim": ("aten.unique_dim", lambda x, i, m, v: torch.unique(x, dim=0)),
    "repeat_interleave_tensor": ("aten.repeat_interleave", lambda x, i, m, v: x[0].repeat_interleave(v)),
    "repeat_interleave_counts": ("aten.repeat_interleave", lambda x, i, m, v: torch.repeat_interleave(v)),
    "bincount": ("aten.bincount", lambda x, i, m, v: torch.bincount(v)),
    "equal": ("aten.equal", lambda x, i, m, v: torch.equal(x, x)),
    "allclose": ("aten.allclose", lambda x, i, m, v: torch.allclose(x, x)),
    "cpu": ("aten._to_copy", lambda x, i, m, v: v.cpu()),
    "to_cpu": ("aten._to_copy", lambda x, i, m, v: v.to("cpu")),
    "copy_into_host": ("aten.copy_", lambda x, i, m, v: torch.empty(5, dtype=torch.long).copy_(v)),
    "tensor_from_data": ("aten._to_copy", lambda x, i, m, v: torch.tensor([1, 2], device=x.device)),
    "host_tensor_to_device": ("aten._to_copy", lambda x, i, m, v: torch.tensor([1, 2]).to(x.device)),
    "copy_from_host": ("aten.copy_", lambda x, i, m, v: v.clone().copy_(torch.tensor([1, 2, 3, 4, 5]))),
    "list_index": ("aten._to_copy", lambda x, i, m, v: x[[0, 2]]),
    "host_index_tensor": ("aten.index", lambda x, i, m, v: x[torch.tensor([0, 2])]),
}


@pytest.mark.parametrize("name", sorted(SYNC_OPS))
def test_syncing_ops_raise(name: str) -> None:
    op, fn = SYNC_OPS[name]
    args = as_device((X, IDX, MASK, V))
    with sync_guard(), pytest.raises(DeviceSyncError, match=op.replace(".", r"\.")) as err:
        fn(*args)
    assert err.value.op == op
    assert err.value.where and __file__ in err.value.where  # names the calling code, not torch internals


@pytest.mark.parametrize("name", sorted(SYNC_OPS))
def test_syncing_ops_are_counted_and_still_compute(name: str) -> None:
    op, fn = SYNC_OPS[name]
    with count_syncs() as log:
        got = fn(*as_device((X, IDX, MASK, V)))
    assert log[0] == op
    if name not in ("tensor_from_data", "host_tensor_to_device", "copy_from_host"):
        expected = fn(X, IDX, MASK, V)
        got, expected = to_host(got), expected
        if isinstance(expected, torch.Tensor):
            assert torch.equal(got, expected)
        elif isinstance(expected, tuple):
            assert all(torch.equal(a, b) for a, b in zip(got, expected))
        elif isinstance(expected, np.ndarray):
            assert np.array_equal(got, expected)
        elif expected is not None:
            assert got == expected


def test_host_tensors_are_free() -> None:
    with sync_guard() as log:
        sizes = torch.tensor([3, 1, 2])
        total = int(sizes.sum())
        kept = sizes[sizes > 1].tolist()
        rows = torch.nonzero(sizes).flatten().cpu()
        dev = as_device(X)[:, :total]  # host ints shape device tensors freely
    assert not log and total == 6 and kept == [3, 2] and rows.tolist() == [0, 1, 2] and is_device(dev)


def test_anything_derived_from_a_device_tensor_is_a_device_tensor() -> None:
    with count_syncs() as log:
        a = as_device(V)
        b = (a * 2 + torch.arange(5, device=a.device))[1:].flip(0)
        c = b.reshape(2, 2).sum(1).max()
        assert all(is_device(t) for t in (b, c))
        int(c)
        list(b.unbind())[0].item()
    assert log == ["aten._local_scalar_dense", "aten._local_scalar_dense"]


def test_count_syncs_counts_exactly() -> None:
    a = as_device(V)
    with count_syncs() as log:
        for _ in range(3):
            a.sum().item()
        a.nonzero()
        a.to("cpu", non_blocking=True)  # asynchronous: not a sync (pinned memory cannot be checked on a CPU build)
        torch.tensor([1, 2]).to(a.device, non_blocking=True)
    assert log == ["aten._local_scalar_dense"] * 3 + ["aten.nonzero"]
    assert [e.op for e in log.events] == list(log) and not log.allowed


def test_swallowed_syncs_are_still_logged() -> None:
    with sync_guard() as log:
        try:
            as_device(V).sum().item()
        except DeviceSyncError:
            pass
    assert log == ["aten._local_scalar_dense"]


def test_allow_syncs_region() -> None:
    a = as_device(V)
    with sync_guard() as log:
        with allow_syncs():
            assert a.sum().item() == 9
            a.nonzero()
        with pytest.raises(DeviceSyncError):
            a.sum().item()
    assert log.allowed == ["aten._local_scalar_dense", "aten.nonzero"]
    assert log == ["aten._local_scalar_dense"]
    assert [e.allowed for e in log.events] == [True, True, False]


def test_vllm_gpu_sync_allowed_is_honoured() -> None:
    gsd = pytest.importorskip("vllm.utils.gpu_sync_debug")
    before = gsd._SYNC_CHECK_MODE
    a = as_device(V)
    with sync_guard() as log:
        with gsd.gpu_sync_allowed():
            assert a.max().item() == 3
        with pytest.raises(DeviceSyncError):
            a.max().item()
        with count_syncs() as inner:  # nested guards share the patch
            with gsd.gpu_sync_allowed():
                a.nonzero()
            a.nonzero()
    assert log.allowed == ["aten._local_scalar_dense"] and log == ["aten._local_scalar_dense"]
    assert inner.allowed == ["aten.nonzero"] and inner == ["aten.nonzero"]
    assert gsd._SYNC_CHECK_MODE == before  # restored when the guard ends


def test_device_tensors_outside_a_guard() -> None:
    a = as_device(V)
    assert a.device == DEVICE and a.shape == V.shape and a.dtype == V.dtype
    assert "DeviceTensor" in repr(a)  # repr never syncs: pytest and hypothesis print failing arguments
    with pytest.raises(RuntimeError, match="outside sync_guard"):
        a + 1
    with pytest.raises(DeviceSyncError):
        a.tolist()
    assert torch.equal(to_host(a), V)
    assert to_host(V) is V and as_device(a) is a and as_device(3) == 3
    x, (y,), d = as_device((X, [IDX], {"v": V}))
    assert is_device(x) and is_device(y) and is_device(d["v"])
    assert isinstance(to_host(d)["v"], torch.Tensor) and not isinstance(to_host(d)["v"], DeviceTensor)


def test_as_device_copies() -> None:
    v = V.clone()
    with sync_guard():
        a = as_device(v)
        a.add_(1)
    assert torch.equal(v, V) and torch.equal(to_host(a), V + 1)


def test_mixing_device_and_host_tensors_is_refused_like_cuda() -> None:
    a = as_device(V)
    with sync_guard():
        with pytest.raises(DeviceMismatchError):
            a + V
        with pytest.raises(DeviceMismatchError):
            torch.cat([a, V])
        with pytest.raises(DeviceMismatchError):
            V[a]
        assert torch.equal(to_host(a + torch.tensor(1)), V + 1)  # 0-dim host tensors are scalars
