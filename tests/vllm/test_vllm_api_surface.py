"""Every vLLM symbol the plugin relies on beyond the documented surface exists, with the signature we use, on the
installed vLLM (0.32, the CPU build) and on vLLM 0.34's Python (unpacked by ``make setup``; imported in a separate
interpreter, without its compiled kernels).

The table lives in ``vs_vllm.vllm_plugin.patches`` (PRIVATE_API + PUBLIC_HOOKS) and each adapter's ``private_api``;
a new vLLM minor that moves or re-shapes one of them fails here, by name, instead of at serve time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vs_vllm.envsetup.vllm_sources import PINNED_WHEELS, vllm_python_dir
from vs_vllm.vllm_plugin.patches import (
    PRIVATE_API,
    PROBES,
    PUBLIC_HOOKS,
    RUNNERS,
    RUNTIME_PATCHES,
    SUPPORTED_VLLM,
    installed_vllm_version,
    touches_for,
)
from vs_vllm.vllm_plugin.patches.surface import adapter_touches, check_override, check_touch, resolve

ALL = [*PRIVATE_API, *PUBLIC_HOOKS]


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


@pytest.mark.parametrize("touch", ALL, ids=[t.symbol.split(":")[1] + (f"[{t.member}]" if t.member else "") for t in ALL])
def test_symbol_exists_with_expected_signature(touch) -> None:
    if _minor(installed_vllm_version()) not in touch.versions:
        pytest.skip(f"{touch.symbol} is only used on vLLM {touch.versions}")
    assert check_touch(touch) is None


def test_adapter_protected_calls_exist() -> None:
    touches = touches_for(adapter_touches(), installed_vllm_version())
    assert touches, "the adapters declare the protected model methods they call"
    assert [p for p in map(check_touch, touches) if p] == []


def test_installed_vllm_is_supported_and_table_is_documented() -> None:
    assert _minor(installed_vllm_version()) in SUPPORTED_VLLM
    for touch in [*ALL, *adapter_touches()]:
        assert touch.kind in ("patch", "override", "call", "relies", "attribute", "key") and touch.why and touch.where
        # a key, or an attribute only instances have, is checked on a real object by a named probe
        assert (touch.kind == "key") == (touch.member is not None), touch
        assert touch.probe is None or touch.probe in PROBES, touch
        assert touch.kind != "key" or touch.probe is not None, touch
        assert set(touch.versions) <= set(SUPPORTED_VLLM) and set(touch.runners) <= set(RUNNERS), touch.symbol
    for patch in RUNTIME_PATCHES:
        assert any(t.symbol == patch.target and t.kind == "patch" for t in PRIVATE_API), \
            f"runtime patch {patch.name} targets {patch.target}, which PRIVATE_API does not list"


def test_overrides_keep_the_base_signatures() -> None:
    """Our mixins' overrides of protected hooks accept what vLLM passes."""
    overrides = [t for t in touches_for(ALL, installed_vllm_version()) if t.kind == "override"]
    assert overrides
    assert [p for p in map(check_override, overrides) if p] == []


def test_runtime_patch_targets_exist_where_they_are_armed() -> None:
    version = installed_vllm_version()
    for patch in RUNTIME_PATCHES:
        if _minor(version) in patch.versions:
            assert resolve(patch.target) is not None


@pytest.mark.slow
@pytest.mark.parametrize("version", sorted(PINNED_WHEELS))
def test_surface_matches_a_newer_vllm(version) -> None:
    """The same checks, in an interpreter that imports vLLM ``version``'s Python instead of the installed build."""
    root = vllm_python_dir(version)
    assert (root / "vllm" / "__init__.py").exists(), (
        f"vLLM {version}'s Python is not unpacked at {root}: run `make setup` (it downloads the pinned wheel)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("VS_VLLM_ENABLE", None)
    proc = subprocess.run([sys.executable, "-m", "vs_vllm.vllm_plugin.patches.surface"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["vllm"] == version
    assert report["problems"] == []
    # What matters only on that version was checked there: its MRv2 CPU pruner and the Qwen3.5 CUDA class.
    checked = set(report["checked"])
    assert "vllm.v1.worker.cpu.mm_pruning:maybe_create_mm_pruner" in checked
    assert any(s.startswith("vllm.models.qwen3_5.nvidia.model:") for s in checked)
    assert not any("gpu_model_runner:" in s for s in checked), "V1-runner entries must not be checked on 0.34"
