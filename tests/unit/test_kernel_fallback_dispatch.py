"""Loud kernel fallbacks: a Triton kernel that fails logs one ERROR with its cause, is counted per (op, device, dtype)
for ``vs_vllm:kernel_fallbacks_total`` / ``vs_vllm_kernels_healthy``, and the warm-up says what it compiled and what
failed. Faults come from the test hook ``VS_VLLM_INJECT_KERNEL_FAULT`` or a replaced kernel entry point; the Triton
path runs in the interpreter (``TRITON_INTERPRET=1``, set by the test session on machines without CUDA).

tests/vllm/test_kernel_fallback_server.py checks the same on a real ``vs-vllm serve``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from prometheus_client import REGISTRY, generate_latest

from vs_vllm.kernels import dispatch, gather_selected, select_tokens
from vs_vllm.kernels.reference import select_tokens_ref
from vs_vllm.kernels.warmup import warm_up_selection
from vs_vllm.vllm_plugin import metrics

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = "float32"
triton_path = pytest.mark.skipif(
    dispatch._auto_backend(torch.empty(0, device=DEVICE)) != "triton",
    reason="no Triton backend here (no CUDA device and TRITON_INTERPRET unset)",
)
pytestmark = triton_path
SELECT = ("select", DEVICE, DTYPE)
FALLBACK_SERIES = "vs_vllm:kernel_fallbacks_total"


@pytest.fixture(autouse=True)
def production(monkeypatch, tmp_path):
    """The production behaviour (strict mode off), a fresh fallback record, no listeners left over, and the
    kernel-health files in a folder of this test only."""
    for name in (dispatch.STRICT_ENV, dispatch.FORCE_TORCH_ENV, dispatch.INJECT_FAULT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(dispatch, "_listeners", [])
    monkeypatch.setattr(metrics, "_watching", False)
    monkeypatch.setattr(metrics, "STATE_DIR", tmp_path / "health")
    dispatch.reset_fallbacks()
    yield
    dispatch.reset_fallbacks()


@pytest.fixture
def plugin_log():
    """INFO and above of the plugin's loggers, collected by a handler of their own (vLLM's logging setup stops
    propagation to the root logger, where pytest's caplog listens, once vLLM is imported)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    log = logging.getLogger("vllm.plugins.vs_vllm")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(handler)
    log.setLevel(level)


@pytest.fixture
def errors(plugin_log):
    """``errors()``: the ERROR records among them so far."""
    return lambda: [r for r in plugin_log if r.levelno >= logging.ERROR]


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(44, 32, generator=g)
    w = (torch.randn(16, 32, generator=g), torch.randn(16, generator=g), torch.randn(16, 32, generator=g),
         torch.randn(16, generator=g))
    return x.to(DEVICE), [0, 37, 44], [9, 7], tuple(t.to(DEVICE) for t in w), [(1, 37, 1), (1, 1, 7)]


def select(x, cu, keep, w, grids, **kw):
    return select_tokens(x, cu, keep, *w, grids=grids, **kw)


# ---- dispatch ---------------------------------------------------------------------------------------------------


def test_injected_fault_logs_one_error_with_the_cause_and_counts_every_fallback_call(monkeypatch, errors):
    monkeypatch.setenv(dispatch.INJECT_FAULT_ENV, "select")
    seen = []
    dispatch.add_fallback_listener(lambda *key: seen.append(key))
    x, cu, keep, w, grids = problem()
    ref = select_tokens_ref(x, cu, keep, *w, grids=grids)
    with pytest.warns(RuntimeWarning, match="fault injected"):
        first = select(x, cu, keep, w, grids)
    second = select(x, cu, keep, w, grids)  # already on torch: counted, not logged again
    for sel in (first, second):
        assert torch.equal(sel.indices, ref.indices) and torch.equal(sel.rows, ref.rows)
    assert len(errors()) == 1, [r.getMessage() for r in errors()]
    message = errors()[0].getMessage()
    assert errors()[0].name == "vllm.plugins.vs_vllm.kernels"
    assert f"Triton select kernel failed on {DEVICE} {DTYPE}" in message
    assert "RuntimeError: fault injected by VS_VLLM_INJECT_KERNEL_FAULT=select" in message
    assert errors()[0].exc_info is not None  # the traceback goes with it
    assert dispatch.fallback_counts() == {SELECT: 2}
    assert seen == [SELECT, SELECT]
    assert dispatch.fallback_reason("select", DEVICE, torch.float32).startswith("RuntimeError: fault injected")


def test_a_failed_kernel_is_not_retried_and_the_others_keep_triton(monkeypatch, errors):
    from vs_vllm.kernels import select as ksel

    calls = []

    def failing(*a, **k):
        calls.append(1)
        raise ValueError("out of resources: shared memory")

    monkeypatch.setattr(ksel, "select_with_scores_triton", failing)
    x, cu, keep, w, grids = problem()
    with pytest.warns(RuntimeWarning):
        select(x, cu, keep, w, grids)
    select(x, cu, keep, w, grids)
    assert len(calls) == 1 and len(errors()) == 1
    assert "ValueError: out of resources: shared memory" in errors()[0].getMessage()
    assert dispatch.resolve_backend(x) == "torch"
    assert dispatch.resolve_backend(x, op="gather") == "triton"
    gather_selected(x, cu, torch.arange(5, device=x.device), [0, 3, 5])  # its own kernel, still on Triton: no log, not counted
    assert dispatch.resolve_backend(x, op="gather") == "triton"
    assert len(errors()) == 1 and dispatch.fallback_counts() == {SELECT: 2}


@pytest.mark.parametrize("value", ["gather", "select, gather", "all"])
def test_the_fault_hook_names_operations(monkeypatch, value):
    monkeypatch.setenv(dispatch.INJECT_FAULT_ENV, value)
    x, cu, keep, w, grids = problem()
    with pytest.warns(RuntimeWarning):
        gather_selected(x, cu, torch.arange(5, device=x.device), [0, 3, 5])
        select(x, cu, keep, w, grids)
    expected = {("gather", DEVICE, DTYPE): 1}
    if value != "gather":
        expected[SELECT] = 1
    assert dispatch.fallback_counts() == expected


def test_strict_mode_and_explicit_triton_raise_the_fault_and_record_nothing(monkeypatch, errors):
    monkeypatch.setenv(dispatch.INJECT_FAULT_ENV, "select")
    x, cu, keep, w, grids = problem()
    with pytest.raises(RuntimeError, match="fault injected"):
        select(x, cu, keep, w, grids, backend="triton")
    monkeypatch.setenv(dispatch.STRICT_ENV, "1")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="fault injected"):
            select(x, cu, keep, w, grids)
    assert dispatch.fallback_counts() == {} and dispatch.fallback_reason("select", DEVICE, torch.float32) is None and errors() == []
    assert dispatch.resolve_backend(x) == "triton"


def test_a_failing_listener_is_logged_and_the_call_still_answers(monkeypatch, errors):
    def broken(*key):
        raise OSError("disk full")

    dispatch.add_fallback_listener(broken)
    monkeypatch.setenv(dispatch.INJECT_FAULT_ENV, "select")
    x, cu, keep, w, grids = problem()
    with pytest.warns(RuntimeWarning):
        sel = select(x, cu, keep, w, grids)
    assert torch.equal(sel.indices, select_tokens_ref(x, cu, keep, *w, grids=grids).indices)
    assert [r.getMessage() for r in errors()][1:] == ["vs-vllm: a kernel-fallback listener failed"]


# ---- warm-up ----------------------------------------------------------------------------------------------------


def weights(width=32):
    g = torch.Generator().manual_seed(1)
    return tuple(t.to(DEVICE) for t in (torch.randn(8, width, generator=g), torch.randn(8, generator=g),
                                        torch.randn(8, width, generator=g), torch.randn(8, generator=g)))


def test_warm_up_reports_what_it_compiled_and_what_failed(monkeypatch, errors):
    monkeypatch.setenv(dispatch.INJECT_FAULT_ENV, "select")
    with pytest.warns(RuntimeWarning):
        done = warm_up_selection(32, torch.float32, DEVICE, weights(), 300)
    assert done.backend == "triton" and done.sizes == (256, 300)
    assert done.failed == (("select", "RuntimeError: fault injected by VS_VLLM_INJECT_KERNEL_FAULT=select "
                                      "(a test hook)"),)
    assert done.compiled == (("gather", "256 tokens"), ("gather", "300 tokens"))
    text = done.describe()
    assert "compiled gather for 256 tokens, 300 tokens" in text
    assert "FAILED select (RuntimeError: fault injected" in text
    assert len(errors()) == 1 and dispatch.fallback_counts() == {SELECT: 1}

    again = warm_up_selection(32, torch.float32, DEVICE, weights(), 300)  # select is already on torch
    assert again.skipped == ("select",) and again.failed == ()
    assert "skipped select: already on the torch fallback" in again.describe()


def test_warm_up_without_faults_compiles_every_operation():
    done = warm_up_selection(32, torch.float32, DEVICE, weights(), 300)
    ops = {op for op, _ in done.compiled}
    assert ops == {"select", "gather"} and done.failed == () and "FAILED" not in done.describe()
    assert ("select", "2 images") in done.compiled


def test_warm_up_in_strict_mode_raises(monkeypatch):
    monkeypatch.setenv(dispatch.STRICT_ENV, "1")
    monkeypatch.setenv(dispatch.INJECT_FAULT_ENV, "gather")
    with pytest.raises(RuntimeError, match="fault injected"):
        warm_up_selection(32, torch.float32, DEVICE, weights(), 300)


def _model_stub():
    from vs_vllm.selection.scorer import TransformerScorer

    scorer = TransformerScorer(32).to(DEVICE)
    return SimpleNamespace(visual=SimpleNamespace(importance_scorer=scorer), vs_encoder_budget=None,
                           vs_max_model_len=300, vs_dtype=torch.float32)


def _warm_up_model(plugin_log):
    """The model's load-time warm-up on a stub model; its log lines (level, message) on the model's logger."""
    from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin

    PruningModelMixin._vs_warm_up_kernels(_model_stub())
    return [(r.levelname, r.getMessage()) for r in plugin_log if r.name == "vllm.plugins.vs_vllm"]


def test_model_load_logs_a_failed_warm_up_as_an_error_not_as_warmed_up(monkeypatch, plugin_log):
    monkeypatch.setenv(dispatch.INJECT_FAULT_ENV, "select")
    with pytest.warns(RuntimeWarning):
        lines = _warm_up_model(plugin_log)
    assert len(lines) == 1, lines
    level, message = lines[0]
    assert level == "ERROR"
    assert f"warm-up on {DEVICE} float32: compiled gather" in message and "FAILED select (RuntimeError" in message
    assert metrics._watching  # the model's process now reports its fallbacks to /metrics
    assert sample(FALLBACK_SERIES, **SELECT_LABELS) == 1 and sample("vs_vllm_kernels_healthy") == 0


def test_model_load_logs_what_it_compiled(plugin_log):
    (level, message), = _warm_up_model(plugin_log)
    assert level == "INFO" and "compiled select for 256 tokens, 300 tokens, 2 images" in message
    assert "FAILED" not in message


def test_model_load_on_the_torch_path_says_so(monkeypatch, plugin_log):
    monkeypatch.setenv(dispatch.FORCE_TORCH_ENV, "1")
    (level, message), = _warm_up_model(plugin_log)
    assert level == "INFO" and "nothing compiled: the selection runs the torch implementation" in message


# ---- metrics ----------------------------------------------------------------------------------------------------


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


SELECT_LABELS = {"op": "select", "device": DEVICE, "dtype": DTYPE}


def test_metrics_before_and_after_a_fallback(monkeypatch):
    assert sample("vs_vllm_kernels_healthy") == 1
    assert sample(FALLBACK_SERIES, **SELECT_LABELS) is None
    metrics.watch_kernel_fallbacks()
    monkeypatch.setenv(dispatch.INJECT_FAULT_ENV, "select")
    x, cu, keep, w, grids = problem()
    with pytest.warns(RuntimeWarning):
        select(x, cu, keep, w, grids)
    select(x, cu, keep, w, grids)
    assert sample(FALLBACK_SERIES, **SELECT_LABELS) == 2
    assert sample("vs_vllm_kernels_healthy") == 0
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE vs_vllm:kernel_fallbacks_total counter" in text and "# TYPE vs_vllm_kernels_healthy gauge" in text
    assert f'vs_vllm:kernel_fallbacks_total{{device="{DEVICE}",dtype="float32",op="select"}} 2.0' in text
    assert "\nvs_vllm_kernels_healthy 0.0" in text
    state = json.loads((metrics.STATE_DIR / f"{os.getpid()}.json").read_text())
    assert state["fallbacks"] == [["select", DEVICE, DTYPE, 2]]


def test_files_of_other_servers_are_ignored_and_files_of_dead_processes_deleted():
    metrics.STATE_DIR.mkdir(parents=True)
    parent = [os.getppid(), metrics._start_time(os.getppid())]  # alive, but not this process nor a descendant
    other = metrics.STATE_DIR / f"{os.getppid()}.json"
    other.write_text(json.dumps({"lineage": [parent], "fallbacks": [["select", "cuda", "bfloat16", 5]]}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = metrics.STATE_DIR / f"{dead.stdout.strip()}.json"
    me = [os.getpid(), metrics._start_time(os.getpid())]
    gone.write_text(json.dumps({"lineage": [[int(dead.stdout), 12.0], me], "fallbacks": [["gather", "cpu",
                                                                                           "float32", 3]]}))
    assert metrics.kernel_health() == {}
    assert sample("vs_vllm_kernels_healthy") == 1
    assert other.exists() and not gone.exists()


CHILD = textwrap.dedent(
    """
    import sys, torch
    from vs_vllm.kernels import select_tokens
    from vs_vllm.vllm_plugin import metrics
    metrics.STATE_DIR = metrics.Path(sys.argv[1])
    metrics.watch_kernel_fallbacks()
    x = torch.randn(12, 8)
    w = torch.randn(4, 8)
    b = torch.randn(4)
    for _ in range(3):
        select_tokens(x, [0, 12], [3], w, b, w, b)
    print("ready", flush=True)
    sys.stdin.read()  # stay alive until the parent has scraped
    """
)


def test_a_child_process_fallback_reaches_the_parent_registry(tmp_path):
    """What happens in a server: the engine (a descendant) falls back, the API server's /metrics reports it."""
    env = {k: v for k, v in os.environ.items() if k != dispatch.STRICT_ENV}
    env.update({dispatch.INJECT_FAULT_ENV: "select", "TRITON_INTERPRET": "1"})  # the child's tensors are on the CPU
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(metrics.STATE_DIR)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        labels = {"op": "select", "device": "cpu", "dtype": "float32"}
        assert sample(FALLBACK_SERIES, **labels) == 3
        assert sample("vs_vllm_kernels_healthy") == 0
    finally:
        _, stderr = child.communicate("", timeout=60)
    assert child.returncode == 0, stderr
    assert "Triton select kernel failed on cpu float32 (RuntimeError: fault injected" in stderr
    # its file went with it: the counts of an engine that is gone are not reported
    assert sample(FALLBACK_SERIES, **labels) is None and sample("vs_vllm_kernels_healthy") == 1
