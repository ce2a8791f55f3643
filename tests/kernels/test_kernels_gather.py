"""gather_selected: the Triton gather (interpreter on CPU) against the torch reference, bit for bit."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("numpy")

from kernel_testlib import bits, factor_grid, poisoned_buffers
from vs_vllm.kernels import PositionChannels, gather_selected
from vs_vllm.kernels import config as kconfig
from vs_vllm.kernels import gather as kgather
from vs_vllm.kernels import select as ksel
from vs_vllm.kernels.common import make_gather_plan
from vs_vllm.kernels.position_channels import NUM_POSITION_CHANNELS, decode_position_channels
from vs_vllm.kernels.reference import gather_selected_ref, gather_with_plan_ref

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


# ---------------------------------------------------------------------------------------------------------------
# The engine's packed layout: rows + position channels written by the gather itself
# ---------------------------------------------------------------------------------------------------------------


def expected_channels(idx, cuk, grids, factors):
    """(int(t * factor), h, w) per kept index, in plain Python (float64 products, truncation), independent of both
    implementations."""
    out = []
    for b, (_, h_n, w_n) in enumerate(grids):
        for j in idx[cuk[b] : cuk[b + 1]].tolist():
            t, h, w = j // (h_n * w_n), (j // w_n) % h_n, j % w_n
            out.append((int(t * factors[b]), h, w))
    return torch.tensor(out, dtype=torch.long).reshape(-1, 3)


def compare_packed(x, cu, idx, cuk, grids, factors, config=None):
    x_dev, idx_dev = x.to(DEVICE), idx.to(DEVICE)
    plan = make_gather_plan(x_dev, cu, idx_dev, cuk, grids)
    channels = PositionChannels(tuple(factors))
    with poisoned_buffers(kconfig):
        got = ksel.gather_with_plan_triton(x_dev, plan, idx_dev, config=config, channels=channels)
    ref = gather_with_plan_ref(x, make_gather_plan(x, cu, idx, cuk, grids), idx, channels=channels)
    d = x.shape[1]
    assert got.packed.shape == (cuk[-1], d + NUM_POSITION_CHANNELS) and got.packed.dtype == x.dtype
    assert got.packed.is_contiguous() and got.rows.data_ptr() == got.packed.data_ptr()
    assert torch.equal(bits(got.packed.cpu()), bits(ref.packed))
    assert torch.equal(bits(got.rows.cpu()), bits(x[idx + torch.repeat_interleave(torch.tensor(cu[:-1]),
                                                                                   torch.tensor(cuk).diff())]))
    assert torch.equal(got.positions.cpu(), ref.positions)
    assert torch.equal(decode_position_channels(got.packed[:, d:].cpu()), expected_channels(idx, cuk, grids, factors))
    return got


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("d", [33, 257])
def test_gather_into_packed_layout(d, dtype):
    """Videos with non-integer temporal factors (the M-RoPE offset int(t * f)), images, an image keeping nothing."""
    lengths, keep = [577, 60, 7, 300], [115, 59, 0, 300]
    grids = [(1, 577, 1), (5, 3, 4), (1, 1, 7), (4, 5, 15)]
    x, cu, idx, cuk = random_case(lengths, keep, d, dtype, seed=d + 1)
    compare_packed(x, cu, idx, cuk, grids, [1.0, 2.5, 1.0, 1.0 / 3.0])


def test_packed_layout_coordinates_past_one_channel():
    """Coordinates >= 256 need both channels of a pair: h up to 299, w up to 260, t offsets up to 4 * 97.3."""
    lengths, keep = [600, 520, 5], [200, 519, 5]
    grids = [(1, 300, 2), (2, 1, 260), (5, 1, 1)]
    x, cu, idx, cuk = random_case(lengths, keep, 40, torch.bfloat16, seed=13)
    got = compare_packed(x, cu, idx, cuk, grids, [1.0, 1.0, 97.3])
    assert float(got.packed[:, -NUM_POSITION_CHANNELS:].max()) == 255.0


def test_packed_layout_small_tiles_and_wide_offsets(monkeypatch):
    """GPU-sized tiles with D splits (channels written once, by the first D slice), and the 64-bit offset variant."""
    cfg = ksel.KernelConfig(**{**ksel.GPU_CONFIG.__dict__, "gather_block_r": 16, "gather_block_d": 32, "sm_count": 4})
    lengths, keep = [300, 41], [77, 40]
    grids = [(3, 10, 10), (1, 41, 1)]
    x, cu, idx, cuk = random_case(lengths, keep, 100, torch.bfloat16, seed=15)
    compare_packed(x, cu, idx, cuk, grids, [0.5, 1.0], config=cfg)
    monkeypatch.setattr(kgather, "_WIDE_LIMIT", 0)
    compare_packed(x, cu, idx, cuk, grids, [0.5, 1.0], config=cfg)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_packed_layout_validation(backend):
    x = torch.randn(12, 4).to(DEVICE)
    idx = torch.tensor([0, 1]).to(DEVICE)
    with pytest.raises(ValueError, match="grids"):
        gather_selected(x, [0, 6, 12], idx, [0, 1, 2], backend=backend, channels=PositionChannels())
    with pytest.raises(ValueError, match="t_factors has 1 entries for 2 images"):
        gather_selected(x, [0, 6, 12], idx, [0, 1, 2], [(1, 2, 3), (2, 3, 1)], backend=backend,
                        channels=PositionChannels((1.0,)))
    with pytest.raises(ValueError, match="t_factors must be finite"):
        gather_selected(x, [0, 6, 12], idx, [0, 1, 2], [(1, 2, 3), (2, 3, 1)], backend=backend,
                        channels=PositionChannels((1.0, -2.0)))
    with pytest.raises(ValueError, match="too large for the position channels"):
        gather_selected(x, [0, 6, 12], idx, [0, 1, 2], [(1, 2, 3), (2, 3, 1)], backend=backend,
                        channels=PositionChannels((1.0, 70000.0)))
    with pytest.raises(ValueError, match="PositionChannels"):
        gather_selected(x, [0, 6, 12], idx, [0, 1, 2], [(1, 2, 3), (2, 3, 1)], backend=backend, channels=(1.0,))
    empty = gather_selected(x[:0], [0], idx[:0], [0], [], backend=backend, channels=PositionChannels())
    assert empty.packed.shape == (0, 4 + NUM_POSITION_CHANNELS)
