"""No recompiles while serving: request shapes never pick a new Triton kernel variant, and the warm-up has them all.

Triton's JIT compiles one variant per specialisation key: the constexpr values and launch options, plus, for every
runtime argument not declared ``do_not_specialize``, its class -- an int equal to 1, divisible by 16, or neither
(and whether it needs 64 bits); a tensor's dtype and whether its pointer is 16-byte aligned (``specialize_impl`` in
triton/runtime/jit.py). These tests record every launch the host code makes (the kernels themselves are not run:
the launch arguments do not depend on kernel results), compute that key, and check that

1. over a sweep of request shapes (batch sizes, image sizes and keep counts that put every count at 1, at multiples
   of 16 and elsewhere), each kernel and constexpr configuration is launched with ONE runtime key;
2. the variants the model-load warm-up (``vs_vllm.kernels.warmup``) launches cover every variant of the sweep;
3. the key model is not vacuous: ignoring ``do_not_specialize``, the same sweep hits several keys per configuration.

The GPU block configuration and an H200's SM count are used, so the host code splits as it would on a GPU.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch

pytest.importorskip("triton")

from vs_vllm.kernels import PositionChannels, gather_selected, select_tokens, select_tokens_mmr
from vs_vllm.kernels import mmr_select as kmmr
from vs_vllm.kernels import select as ksel
from vs_vllm.kernels.compile_specs import unspecialized_args
from vs_vllm.kernels.score import gemv_buckets
from vs_vllm.kernels.warmup import warm_up_selection, warmup_sizes

D, H = 3584, 1792  # Qwen2.5-VL-7B's width; the scorer's hidden size
MAX_TOKENS = 16385
EDGE_SIZES = [1, 2, 15, 16, 17, 31, 32, 33, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 8192, 16384, 16385]


def _int_class(value: int) -> str:
    wide = "" if -(2**31) <= value < 2**31 else "/i64"
    if value == 1:
        return "one" + wide
    return ("d16" if value % 16 == 0 else "i") + wide


def _arg_class(value, unspecialized: bool):
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), "a16" if value.data_ptr() % 16 == 0 else "a1")
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        wide = "i64" if not -(2**31) <= value < 2**31 else "i32"
        return wide if unspecialized else _int_class(value)
    if isinstance(value, float):
        return "fp32"
    return type(value).__name__


class LaunchRecorder:
    """Replaces the kernels' ``run``: records (kernel, constexpr kwargs, runtime key) and runs nothing."""

    def __init__(self, honour_do_not_specialize: bool = True) -> None:
        self.honour = honour_do_not_specialize
        self.keys: dict[tuple, set] = defaultdict(set)

    def __call__(self, kernel, *args, grid, warmup, **kwargs):
        skip = unspecialized_args(kernel) if self.honour else frozenset()
        names = list(kernel.arg_names)
        runtime = tuple(_arg_class(v, names[i] in skip) for i, v in enumerate(args))
        config = (kernel.__name__, tuple(sorted(kwargs.items())))
        self.keys[config].add(runtime)

    def variants(self) -> set[tuple]:
        return {(config, key) for config, keys in self.keys.items() for key in keys}


@pytest.fixture
def gpu_configs():
    old = ksel.set_config(ksel.GPU_CONFIG, sm_count=132)
    old_mmr = kmmr.set_mmr_config(kmmr.GPU_MMR_CONFIG)
    yield
    ksel.set_config(old)
    kmmr.set_mmr_config(old_mmr)


def _record(monkeypatch, recorder: LaunchRecorder) -> None:
    kernel_types = {type(k) for k in (*ksel.KERNELS.values(), *kmmr.MMR_KERNELS.values())}
    for cls in kernel_types:
        monkeypatch.setattr(cls, "run", lambda self, *a, **kw: recorder(self, *a, **kw))


def _weights():
    return (torch.empty(H, D), torch.empty(H), torch.empty(H, D), torch.empty(H))


def _sweep(calls: int = 40, seed: int = 0) -> None:
    """Serving-like calls with fresh shapes: packed VisionSelector selection, MMR, gathers of other methods."""
    rng = random.Random(seed)
    weights = _weights()
    for c in range(calls):
        b = rng.choice([1, 1, 2, 3, 4, 6, 16, 17])
        lengths = [rng.choice(EDGE_SIZES) if rng.random() < 0.6 else rng.randint(1, MAX_TOKENS) for _ in range(b)]
        while sum(lengths) > 4 * MAX_TOKENS:
            lengths.pop()
        keep = [rng.choice([1, 16, n, max(1, n // 3), rng.randint(1, n)]) for n in lengths]
        keep = [min(k, n) for k, n in zip(keep, lengths)]
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + n)
        cu_keep = [0]
        for k in keep:
            cu_keep.append(cu_keep[-1] + k)
        x = torch.empty(cu[-1], D, dtype=torch.bfloat16)  # never read: the kernels are not run
        grids = [(1, 1, n) for n in lengths]
        # the serving path: the engine's packed layout (position channels; videos scale their temporal index)
        channels = PositionChannels(tuple(rng.choice([1.0, 0.5, 2.0]) for _ in lengths))
        select_tokens(x, cu, keep, *weights, grids=grids, backend="triton", channels=channels)
        gather_selected(x, cu, torch.zeros(cu_keep[-1], dtype=torch.long), cu_keep, grids=grids, backend="triton",
                        channels=channels)
        if c % 3 == 0:
            lams = [rng.choice([0.0, 0.5, 1.0]) for _ in lengths]
            select_tokens_mmr(x, cu, keep, *weights, lams, grids=grids, backend="triton", channels=channels)


def _warm_up() -> None:
    warm_up_selection(D, torch.bfloat16, "cpu", _weights(), MAX_TOKENS, mmr=True, backend="triton")


def test_request_shapes_never_respecialise(monkeypatch, gpu_configs):
    recorder = LaunchRecorder()
    _record(monkeypatch, recorder)
    _sweep()
    assert {config[0] for config in recorder.keys} >= {
        "_mean_partial_kernel", "_mean_finalize_kernel", "_kbar_partial_kernel", "_u_partial_kernel",
        "_score_partial_kernel", "_select_kernel", "_gather_kernel", "_mmr_inv_norm_kernel", "_mmr_kernel",
    }
    several = {config: keys for config, keys in recorder.keys.items() if len(keys) > 1}
    assert not several, "\n".join(f"{config}: {sorted(keys)}" for config, keys in several.items())


def test_warm_up_compiles_every_variant_the_sweep_hits(monkeypatch, gpu_configs):
    warm = LaunchRecorder()
    _record(monkeypatch, warm)
    _warm_up()
    served = LaunchRecorder()
    _record(monkeypatch, served)
    _sweep(seed=1)
    missing = served.variants() - warm.variants()
    assert not missing, "\n".join(map(str, sorted(missing)))
    # bounded: one select variant per bucket (256 ... 4096 one-chunk, then chunked: 6), mean / finalize / score (3),
    # each mat-vec once per image-block bucket (1, 2, 4, 8), the gather into the packed layout and the MMR score
    # pass's plain gather (2), the two MMR kernels (2)
    bound = 6 + 3 + 2 * len(gemv_buckets(ksel.get_config())) + 2 + 2
    assert len(warm.variants()) <= bound == 21, sorted(warm.variants())


def test_the_key_model_sees_respecialisation_without_do_not_specialize(monkeypatch, gpu_configs):
    recorder = LaunchRecorder(honour_do_not_specialize=False)
    _record(monkeypatch, recorder)
    _sweep(calls=20)
    select = [keys for config, keys in recorder.keys.items() if config[0] == "_select_kernel"]
    assert max(len(keys) for keys in select) > 1


def test_warmup_sizes_one_per_bucket():
    cfg = ksel.GPU_CONFIG  # select buckets: BLOCK 256, 512, 1024, 2048, 4096 register-resident, then chunked
    assert warmup_sizes(100, D, cfg) == (100,)
    assert warmup_sizes(300, D, cfg) == (256, 300)
    assert warmup_sizes(4096, D, cfg) == (256, 512, 1024, 2048, 4096)
    assert warmup_sizes(MAX_TOKENS, D, cfg) == (256, 512, 1024, 2048, 4096, 4097)
    wide = 2**31 // 4096  # an image this long needs the gather's 64-bit offsets at row stride 4096
    assert warmup_sizes(10**6, 4096, cfg)[-2:] == (4097, wide)
    with pytest.raises(ValueError, match="max_tokens"):
        warmup_sizes(0, D, cfg)
