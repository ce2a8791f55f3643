"""The ``temporal`` selection method: the first frame first, then the tokens least like the previous frame's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vs_vllm.selection.methods import select

ODD_VIDEO_GRIDS = [(2, 3, 5), (3, 5, 3), (4, 1, 7), (5, 3, 3), (2, 7, 1), (3, 1, 1)]
ODD_WIDTH = 13


def random_video(grid: tuple[int, int, int], d: int = ODD_WIDTH, seed: int = 0) -> torch.Tensor:
    t, h, w = grid
    return torch.randn(t * h * w, d, generator=torch.Generator().manual_seed(seed))


def similarity_to_previous_frame(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """[N] in float64: cos(token, same token one frame earlier); the first frame gets +inf (never compared)."""
    t, h, w = grid
    unit = F.normalize(x.double(), dim=-1).reshape(t, h * w, -1)
    later = (unit[1:] * unit[:-1]).sum(-1).reshape(-1)
    return torch.cat([torch.full((h * w,), float("inf"), dtype=torch.float64), later])


def assert_ascending_unique(idx: torch.Tensor, n: int, k: int) -> None:
    assert idx.dtype == torch.long and idx.shape == (k,)
    values = idx.tolist()
    assert values == sorted(set(values)) and 0 <= values[0] and values[-1] < n


@pytest.mark.parametrize("grid", ODD_VIDEO_GRIDS, ids=str)
def test_returns_k_ascending_unique_indices(grid) -> None:
    t, h, w = grid
    n = t * h * w
    x = random_video(grid, seed=n)
    for k in range(1, n + 1):
        assert_ascending_unique(select("temporal", x, grid, k), n, k)


@pytest.mark.parametrize("grid", ODD_VIDEO_GRIDS, ids=str)
def test_first_frame_is_kept_whole_once_k_covers_it(grid) -> None:
    t, h, w = grid
    frame = h * w
    x = random_video(grid, seed=1)
    for k in range(frame, t * frame + 1):
        kept = select("temporal", x, grid, k).tolist()
        assert kept[:frame] == list(range(frame))


def test_a_repeated_frame_is_dropped_before_a_novel_one() -> None:
    t, h, w = 3, 3, 5
    frame = h * w
    x = random_video((t, h, w), seed=7)
    x[frame : 2 * frame] = x[:frame]  # frame 1 repeats frame 0 exactly; frame 2 is new
    kept = select("temporal", x, (t, h, w), 2 * frame).tolist()
    assert kept == list(range(frame)) + list(range(2 * frame, 3 * frame))
    # With room for only part of the novel frame, nothing of the repeated frame is kept either.
    kept = select("temporal", x, (t, h, w), frame + 4).tolist()
    assert kept[:frame] == list(range(frame)) and all(i >= 2 * frame for i in kept[frame:])


def test_only_the_changed_tokens_of_a_frame_survive() -> None:
    t, h, w = 2, 5, 5
    frame = h * w
    x = random_video((t, h, w), seed=3)
    x[frame:] = x[:frame]
    changed = [frame + 2, frame + 12, frame + 23]
    x[changed] = torch.randn(len(changed), ODD_WIDTH, generator=torch.Generator().manual_seed(99))
    assert select("temporal", x, (t, h, w), frame + len(changed)).tolist() == list(range(frame)) + changed


def test_ties_go_to_the_lower_index() -> None:
    t, h, w = 3, 1, 5
    x = torch.ones(t * h * w, 3)  # every later token has similarity 1 to its predecessor
    assert select("temporal", x, (t, h, w), 8).tolist() == list(range(8))


def test_less_than_a_frame_is_uniforms_lattice_of_the_first_frame() -> None:
    grid = (4, 5, 7)
    x = random_video(grid, seed=5)
    for k in range(1, 5 * 7 + 1):
        want = select("uniform", x[: 5 * 7], (1, 5, 7), k)
        assert torch.equal(select("temporal", x, grid, k), want)


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 3, 5), (1, 7, 9), (1, 1, 13)], ids=str)
def test_an_image_is_exactly_uniform(grid) -> None:
    n = grid[1] * grid[2]
    x = random_video(grid, seed=n)
    for k in range(1, n + 1):
        assert torch.equal(select("temporal", x, grid, k), select("uniform", x, grid, k))


def test_ignores_seed_lambda_and_norms() -> None:
    grid = (3, 3, 3)
    x = random_video(grid, seed=8)
    base = select("temporal", x, grid, 12)
    assert torch.equal(select("temporal", x, grid, 12, seed=5, selection_lambda=0.1), base)
    # Cosine similarity ignores norms (a power of two scales exactly, so not even rounding changes).
    assert torch.equal(select("temporal", x * 8.0, grid, 12), base)


@settings(max_examples=60, deadline=None)
@given(
    t=st.integers(2, 5),
    h=st.integers(0, 3).map(lambda i: 2 * i + 1),
    w=st.integers(0, 3).map(lambda i: 2 * i + 1),
    d=st.sampled_from([3, 5, 9]),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_property_keeps_the_least_redundant_tokens(t: int, h: int, w: int, d: int, seed: int, data) -> None:
    grid = (t, h, w)
    n, frame = t * h * w, h * w
    k = data.draw(st.integers(1, n), label="k")
    x = random_video(grid, d, seed)
    if data.draw(st.booleans(), label="repeat a frame"):
        f = data.draw(st.integers(1, t - 1), label="repeated frame")
        x[f * frame : (f + 1) * frame] = x[(f - 1) * frame : f * frame]
    kept = select("temporal", x, grid, k)
    assert_ascending_unique(kept, n, k)
    if k < frame:
        assert kept.tolist() == select("uniform", x[:frame], (1, h, w), k).tolist()
        return
    assert kept.tolist()[:frame] == list(range(frame))
    # Every kept later token is at most as similar to its predecessor as any dropped one (float64 check, fp32 method:
    # a tolerance covers the rounding of near ties).
    sim = similarity_to_previous_frame(x, grid)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[kept] = True
    mask[:frame] = False
    dropped = ~mask
    dropped[:frame] = False
    if mask.any() and dropped.any():
        assert sim[mask].max() <= sim[dropped].min() + 1e-5


@pytest.mark.parametrize("grid", [(2, 3, 5), (4, 5, 3), (5, 3, 7), (3, 9, 1)], ids=str)
@pytest.mark.parametrize("q", [0.0, 0.3, 0.55, 0.8])
def test_matches_vllm_evs_when_k_covers_the_first_frame(grid, q: float) -> None:
    """Same ranking as vLLM's own EVS (``--video-pruning-rate q``) on the same embeddings, for EVS's token count."""
    evs = pytest.importorskip("vllm.multimodal.video_prune.evs")
    t, h, w = grid
    x = random_video(grid, seed=t * 100 + h * 10 + w)
    mask = evs.compute_retention_mask(x, (t, h, w), spatial_merge_size=1, q=q)
    k = evs.compute_retained_tokens_count(tokens_per_frame=h * w, num_frames=t, q=q)
    assert int(mask.sum()) == k
    assert select("temporal", x, grid, k).tolist() == mask.nonzero().flatten().tolist()


@pytest.mark.parametrize(("grid", "k"), [((3, 5, 7), 80), ((3, 5, 7), 20), ((2, 3, 3), 9), ((1, 5, 7), 12)], ids=str)
def test_no_host_device_sync_on_a_device_tensor(grid, k: int) -> None:
    """The serving path reads nothing back: both the ranked path (k > one frame) and the lattice path."""
    from vs_vllm.testing.sync_guard import as_device, sync_guard, to_host

    x = random_video(grid, seed=k)
    want = select("temporal", x, grid, k)
    with sync_guard():
        got = select("temporal", as_device(x), grid, k, check_output=False)
    assert torch.equal(to_host(got), want)
