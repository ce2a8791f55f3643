"""gather_selected: the Triton gather (interpreter on CPU) against the torch reference, bit for bit."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("numpy")

from kernel_testlib import bits, factor_grid, poisoned_buffers
from vs_vllm.kernels import gather_selected
from vs_vllm.kernels import config as kconfig
from vs_vllm.kernels import gather as kgather
from vs_vllm.kernels import select as ksel
from vs_vllm.kernels.common import make_gather_plan
from vs_vllm.kernels.reference import gather_selected_ref

if not torch.cuda.is_available() and not ksel.INTERPRET:
    pytest.skip("no CUDA device and TRITON_INTERPRET was not set before triton was imported", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_case(lengths, keep, d, dtype, seed, sort=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lengths), d, generator=g).to(dtype)
    parts = []
    for n, k in zip(lengths, keep):
        p = torch.randperm(n, generator=g)[:k]
        parts.append(torch.sort(p).values if sort else p)
    idx = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    cu, cuk = [0], [0]
    for n, k in zip(lengths, keep):
        cu.append(cu[-1] + n)
        cuk.append(cuk[-1] + k)
    return x, cu, idx, cuk


def compare(x, cu, idx, cuk, grids, config=None):
    x_dev, idx_dev = x.to(DEVICE), idx.to(DEVICE)
    plan = make_gather_plan(x_dev, cu, idx_dev, cuk, grids)
    with poisoned_buffers(kconfig):
        got = ksel.gather_with_plan_triton(x_dev, plan, idx_dev, config=config)
    ref = gather_selected_ref(x, cu, idx, cuk, grids)
    assert got.rows.dtype == x.dtype and got.rows.shape == ref.rows.shape
    assert torch.equal(bits(got.rows.cpu()), bits(ref.rows))
    assert torch.equal(got.indices.cpu(), ref.indices)
    assert torch.equal(got.cu_keep.cpu(), ref.cu_keep)
    if grids is None:
        assert got.positions is None and ref.positions is None
    else:
        assert torch.equal(got.positions.cpu(), ref.positions)
    return got, ref


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("d", [33, 257])
def test_gather_matches_reference(d, dtype):
    lengths, keep = [577, 37, 7, 1], [115, 36, 7, 1]
    x, cu, idx, cuk = random_case(lengths, keep, d, dtype, seed=d)
    compare(x, cu, idx, cuk, [factor_grid(n) for n in lengths])


def test_gather_unsorted_indices_and_empty_images():
    """Any order within an image is gathered as given; images may keep nothing."""
    lengths, keep = [130, 20, 64], [0, 20, 17]
    x, cu, idx, cuk = random_case(lengths, keep, 130, torch.bfloat16, seed=2, sort=False)
    compare(x, cu, idx, cuk, [(2, 5, 13), (1, 4, 5), (4, 4, 4)])
    compare(x, cu, idx, cuk, None)


def test_gather_positions_formula():
    """(t, h, w) = (j // (h*w), (j // w) % h, j % w) on a multi-frame grid."""
    x = torch.randn(2 * 3 * 5, 16)
    idx = torch.arange(30)
    got = gather_selected(x.to(DEVICE), [0, 30], idx.to(DEVICE), [0, 30], [(2, 3, 5)], backend="triton")
    expect = torch.tensor([(t, h, w) for t in range(2) for h in range(3) for w in range(5)])
    assert torch.equal(got.positions.cpu(), expect)


def test_gather_small_tiles_and_wide_offsets(monkeypatch):
    """GPU-sized tiles with D splits, and the 64-bit in-image offset variant forced on."""
    cfg = ksel.KernelConfig(**{**ksel.GPU_CONFIG.__dict__, "gather_block_r": 16, "gather_block_d": 32, "sm_count": 4})
    lengths, keep = [300, 41], [77, 40]
    x, cu, idx, cuk = random_case(lengths, keep, 100, torch.bfloat16, seed=5)
    compare(x, cu, idx, cuk, [factor_grid(n) for n in lengths], config=cfg)
    monkeypatch.setattr(kgather, "_WIDE_LIMIT", 0)
    compare(x, cu, idx, cuk, [factor_grid(n) for n in lengths], config=cfg)


def test_gather_strided_rows():
    wide = torch.randn(90, 70).to(torch.bfloat16)
    x = wide[:, 3:51]
    lengths, keep = [50, 40], [10, 39]
    _, cu, idx, cuk = random_case(lengths, keep, 48, torch.bfloat16, seed=8)
    compare(x, cu, idx, cuk, None)


def test_gather_validation():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="outside its image"):
        gather_selected(x, [0, 6, 10], torch.tensor([0, 6]), [0, 1, 2])
    with pytest.raises(ValueError, match="cu_keep"):
        gather_selected(x, [0, 6, 10], torch.tensor([0, 1]), [0, 2])
    with pytest.raises(ValueError, match="entries"):
        gather_selected(x, [0, 6, 10], torch.tensor([0, 1, 2]), [0, 1, 2])
    with pytest.raises(ValueError, match="keeps"):
        gather_selected(x, [0, 2, 10], torch.tensor([0, 1, 1]), [0, 3, 3])
    with pytest.raises(ValueError, match="grid"):
        gather_selected(x, [0, 6, 10], torch.tensor([0, 1]), [0, 1, 2], grids=[(1, 2, 3), (1, 2, 3)])
