"""select_tokens / gather_selected: backend choice, kill switch, one-time fallback, input validation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import vs_vllm.kernels as K
from kernel_testlib import bits, make_problem
from vs_vllm.kernels import dispatch
from vs_vllm.kernels.reference import select_tokens_ref

HAS_TRITON = dispatch._triton_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
needs_triton_path = pytest.mark.skipif(
    not (HAS_TRITON and (torch.cuda.is_available() or INTERPRETED)), reason="no Triton backend for this machine"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _fresh_fallbacks(monkeypatch):
    monkeypatch.delenv(dispatch.FORCE_TORCH_ENV, raising=False)
    dispatch.reset_fallbacks()
    yield
    dispatch.reset_fallbacks()


def problem(dtype=torch.float32, seed=0):
    x, cu, w = make_problem([37, 7], 33, dtype, seed)
    return x.to(DEVICE), cu, [9, 7], tuple(t.to(DEVICE) for t in w), [(1, 37, 1), (1, 1, 7)]


def test_public_exports():
    assert set(K.__all__) >= {"select_tokens", "gather_selected", "Selection", "PositionChannels"}
    assert K.Selection._fields == ("rows", "indices", "positions", "cu_keep", "packed")


@pytest.mark.slow  # a fresh interpreter (subprocess)
def test_cpu_without_interpreter_uses_torch_and_never_imports_triton():
    """A fresh process without TRITON_INTERPRET: CPU tensors take the torch path; triton is not even imported."""
    code = textwrap.dedent(
        """
        import sys, torch
        import vs_vllm.kernels as K
        from vs_vllm.kernels.dispatch import resolve_backend
        x = torch.randn(20, 8)
        w = torch.randn(4, 8)
        b = torch.randn(4)
        assert resolve_backend(x) == "torch", resolve_backend(x)
        sel = K.select_tokens(x, [0, 12, 20], [3, 8], w, b, w, b, grids=[(1, 3, 4), (2, 2, 2)])
        assert sel.rows.shape == (11, 8) and sel.positions.shape == (11, 3)
        assert "triton" not in sys.modules, "triton was imported on the torch path"
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", dispatch.FORCE_TORCH_ENV)}
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


def test_resolve_backend_rules(monkeypatch):
    x = torch.zeros(2, 2)
    assert dispatch.resolve_backend(x, "torch") == "torch"
    assert dispatch.resolve_backend(x, "triton") == "triton"
    with pytest.raises(ValueError, match="backend"):
        dispatch.resolve_backend(x, "cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dispatch.resolve_backend(x) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve_backend(x) == ("triton" if HAS_TRITON else "torch")
    monkeypatch.setenv(dispatch.FORCE_TORCH_ENV, "1")
    assert dispatch.resolve_backend(x) == "torch"
    assert dispatch.resolve_backend(x, "triton") == "triton"  # an explicit argument wins
    monkeypatch.setattr(dispatch, "_triton_available", lambda: False)
    monkeypatch.delenv(dispatch.FORCE_TORCH_ENV)
    assert dispatch.resolve_backend(x) == "torch"


def test_force_torch_env_skips_triton(monkeypatch):
    from vs_vllm.kernels import select as ksel

    def boom(*a, **k):
        raise AssertionError("the Triton path must not run")

    monkeypatch.setattr(ksel, "select_with_scores_triton", boom, raising=False)
    monkeypatch.setenv(dispatch.FORCE_TORCH_ENV, "1")
    x, cu, keep, w, grids = problem()
    sel = K.select_tokens(x, cu, keep, *w, grids=grids)
    ref = select_tokens_ref(x, cu, keep, *w, grids=grids)
    assert torch.equal(sel.indices, ref.indices) and torch.equal(sel.rows, ref.rows)


@needs_triton_path
def test_strict_mode_raises_instead_of_falling_back(monkeypatch):
    """What every test session runs with: a failing kernel fails the call, it is never replaced by torch."""
    from vs_vllm.kernels import select as ksel

    def failing(*a, **k):
        raise RuntimeError("simulated launch failure")

    monkeypatch.setenv(dispatch.STRICT_ENV, "1")
    monkeypatch.setattr(ksel, "select_with_scores_triton", failing)
    x, cu, keep, w, grids = problem()
    assert dispatch.is_strict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):  # and again: strict mode never records a fallback
            with pytest.raises(RuntimeError, match="simulated launch failure"):
                K.select_tokens(x, cu, keep, *w, grids=grids)
    assert dispatch.resolve_backend(x) == "triton"


@needs_triton_path
def test_failed_launch_warns_once_then_uses_torch(monkeypatch):
    from vs_vllm.kernels import select as ksel

    monkeypatch.delenv(dispatch.STRICT_ENV, raising=False)  # the production behaviour
    calls = []

    def failing(*a, **k):
        calls.append(1)
        raise RuntimeError("simulated launch failure")

    monkeypatch.setattr(ksel, "select_with_scores_triton", failing)
    x, cu, keep, w, grids = problem()
    ref = select_tokens_ref(x, cu, keep, *w, grids=grids)
    with pytest.warns(RuntimeWarning, match="simulated launch failure") as rec:
        sel = K.select_tokens(x, cu, keep, *w, grids=grids)
    assert len([r for r in rec if issubclass(r.category, RuntimeWarning)]) == 1
    assert torch.equal(sel.indices, ref.indices) and torch.equal(sel.positions, ref.positions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel2 = K.select_tokens(x, cu, keep, *w, grids=grids)  # no second warning, no second Triton attempt
    assert torch.equal(sel2.rows, ref.rows) and len(calls) == 1
    assert dispatch.resolve_backend(x) == "torch"
    # the fallback is per (device type, dtype): another dtype still tries Triton
    assert dispatch.resolve_backend(x.to(torch.bfloat16)) == "triton"
    # an explicit backend="triton" never falls back
    with pytest.raises(RuntimeError, match="simulated"):
        K.select_tokens(x, cu, keep, *w, grids=grids, backend="triton")


@needs_triton_path
def test_failure_after_success_is_raised(monkeypatch):
    from vs_vllm.kernels import select as ksel

    x, cu, keep, w, _grids = problem()
    K.select_tokens(x, cu, keep, *w)  # succeeds on Triton

    def failing(*a, **k):
        raise RuntimeError("later failure")

    monkeypatch.setattr(ksel, "select_with_scores_triton", failing)
    with pytest.raises(RuntimeError, match="later failure"):
        K.select_tokens(x, cu, keep, *w)


@needs_triton_path
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_select_tokens_auto_equals_torch(dtype):
    x, cu, keep, w, grids = problem(dtype, seed=4)
    a = K.select_tokens(x, cu, keep, *w, grids=grids)
    b = K.select_tokens(x, cu, keep, *w, grids=grids, backend="torch")
    assert torch.equal(a.indices.cpu(), b.indices.cpu())
    assert torch.equal(bits(a.rows.cpu()), bits(b.rows.cpu()))
    assert torch.equal(a.positions.cpu(), b.positions.cpu())
    assert torch.equal(a.cu_keep.cpu(), b.cu_keep.cpu())
    assert a.cu_keep.device == x.device


@needs_triton_path
def test_gather_selected_auto_equals_torch():
    x = torch.randn(50, 24).to(DEVICE)
    idx = torch.tensor([1, 4, 5, 0, 3]).to(DEVICE)
    a = K.gather_selected(x, [0, 30, 50], idx, [0, 3, 5], grids=[(1, 5, 6), (1, 4, 5)])
    b = K.gather_selected(x, [0, 30, 50], idx, [0, 3, 5], grids=[(1, 5, 6), (1, 4, 5)], backend="torch")
    assert torch.equal(a.rows, b.rows) and torch.equal(a.positions, b.positions)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton_path)])
def test_keep_k_forms_and_grid_tensor(backend):
    x, cu, keep, w, grids = problem()
    a = K.select_tokens(x, cu, keep, *w, backend=backend)
    b = K.select_tokens(x, torch.tensor(cu), torch.tensor(keep, dtype=torch.long), *w, backend=backend)
    c = K.select_tokens(x, cu, keep, *w, grids=torch.tensor(grids), backend=backend)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.indices, c.indices)
    assert c.positions.shape == (sum(keep), 3)
    one = K.select_tokens(x, cu, 7, *w, backend=backend)  # one int for every image
    assert one.cu_keep.tolist() == [0, 7, 14]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton_path)])
def test_empty_batch(backend):
    x = torch.empty(0, 16, device=DEVICE)
    w, b = torch.randn(8, 16, device=DEVICE), torch.randn(8, device=DEVICE)
    sel = K.select_tokens(x, [0], [], w, b, w, b, backend=backend)
    assert sel.rows.shape == (0, 16) and sel.indices.shape == (0,) and sel.cu_keep.tolist() == [0]


def test_validation_errors():
    x, cu, keep, w, _grids = problem()
    with pytest.raises(ValueError, match="k must satisfy"):
        K.select_tokens(x, cu, [0, 7], *w)
    with pytest.raises(ValueError, match="k must satisfy"):
        K.select_tokens(x, cu, [9, 8], *w)
    with pytest.raises(ValueError, match="entries"):
        K.select_tokens(x, cu, [9], *w)
    with pytest.raises(ValueError, match="cu_seqlens"):
        K.select_tokens(x, [0, 37, 43], keep, *w)
    with pytest.raises(ValueError, match="grid"):
        K.select_tokens(x, cu, keep, *w, grids=[(1, 6, 6), (1, 1, 7)])
    with pytest.raises(ValueError, match="q_weight"):
        K.select_tokens(x, cu, keep, w[0][:, :5], *w[1:])
    with pytest.raises(ValueError, match="k_bias"):
        K.select_tokens(x, cu, keep, *w[:3], w[3][:3])
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        K.select_tokens(x.double(), cu, keep, *w)
    with pytest.raises(ValueError, match="must hold ints"):
        K.select_tokens(x, cu, [9.0, 7.0], *w)
