"""The private-API layer (vs_vllm.vllm_plugin.patches): version gate, per-instance pruning switch, CPU-runner backport,
enabling semantics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vs_vllm.testing.server import cpu_env


def _run(code: str, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cpu_env(**env),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_version_gate() -> None:
    from vs_vllm.vllm_plugin.patches import UnsupportedVLLMVersion, check_vllm_version

    for ok in ("0.32.0", "0.32.0+cpu", "0.32.7", "0.33.0", "0.33.2+cu130", "0.34.0", "0.34.1+cu130"):
        assert check_vllm_version(ok) == ok
    for bad in ("0.31.2", "0.35.0", "1.0.0", "0.3.32"):
        with pytest.raises(UnsupportedVLLMVersion) as info:
            check_vllm_version(bad)
        message = str(info.value)
        assert bad in message and "0.32" in message and "0.34" in message and "<0.35" in message
        assert "VS_VLLM_ENABLE" in message


def test_runtime_patches_are_armed_by_version_and_platform(monkeypatch) -> None:
    import vs_vllm.vllm_plugin.patches.post_import as post_import
    from vs_vllm.vllm_plugin.patches import install_runtime_patches

    armed = []
    monkeypatch.setattr(post_import, "run_after_import", lambda module, fn: armed.append(module))
    on_032_cpu = install_runtime_patches("0.32.0+cpu", is_cpu=True)
    assert armed == ["vllm.renderers.base", "vllm.v1.worker.gpu_model_runner", "vllm.v1.worker.cpu_model_runner"]
    assert all(status.startswith("armed") for status in on_032_cpu.values())
    armed.clear()
    on_033_gpu = install_runtime_patches("0.33.1", is_cpu=False)
    assert armed == ["vllm.renderers.base", "vllm.v1.worker.gpu_model_runner"]
    assert on_033_gpu["cpu_runner"].startswith("not needed")
    armed.clear()
    on_034 = install_runtime_patches("0.34.0", is_cpu=True)
    assert armed == ["vllm.renderers.base"]  # 0.34 deleted the V1 runner both other patches target
    assert "not needed on vLLM 0.34" in on_034["media_steps"] and "not needed on vLLM 0.34" in on_034["cpu_runner"]


@pytest.mark.parametrize("patcher,symbol", [
    ("renderer_context:propagate_context_to_renderer", "vllm.renderers.base:make_async"),
    ("media_steps:patch_media_steps", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings"),
    ("cpu_runner:patch_cpu_runner", "vllm.v1.worker.cpu_model_runner:CPUModelRunner.load_model"),
])
def test_a_patch_whose_target_moved_fails_naming_the_symbol(patcher, symbol) -> None:
    """Never a silent return: the error names the vLLM symbol and how to serve without the plugin."""
    import importlib
    import types

    from vs_vllm.vllm_plugin.patches import PatchTargetMissing

    module, _, func = patcher.partition(":")
    patch = getattr(importlib.import_module(f"vs_vllm.vllm_plugin.patches.{module}"), func)
    empty = types.SimpleNamespace(GPUModelRunner=type("GPUModelRunner", (), {}),
                                  CPUModelRunner=type("CPUModelRunner", (), {}))
    with pytest.raises(PatchTargetMissing, match="VS_VLLM_ENABLE") as info:
        patch(empty)
    assert symbol in str(info.value)


def test_post_import_hook_runs_once_after_the_module_executes(tmp_path, monkeypatch) -> None:
    from vs_vllm.vllm_plugin.patches.post_import import run_after_import

    (tmp_path / "vs_hook_probe.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    run_after_import("vs_hook_probe", lambda m: seen.append(m.VALUE + 1))
    run_after_import("vs_hook_probe", lambda m: seen.append(-1))  # a second registration for the same module: no-op
    assert seen == []
    import vs_hook_probe  # noqa: F401

    assert seen == [42]
    run_after_import("vs_hook_probe", lambda m: seen.append(m.VALUE))  # already imported: runs at once
    assert seen == [42, 41]
    sys.modules.pop("vs_hook_probe", None)


@pytest.mark.slow
def test_enabling_is_explicit_and_scoped() -> None:
    code = r"""
import json
from vllm import ModelRegistry
from vllm.config.multimodal import MultiModalConfig
from vllm.plugins import load_general_plugins
load_general_plugins()
out = {}
for arch in ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration"):
    cls = ModelRegistry._try_load_model_cls(arch)
    out[arch] = f"{cls.__module__}.{cls.__name__}"
from vllm.v1.worker import cpu_model_runner
out["cpu_runner_patched"] = getattr(cpu_model_runner.CPUModelRunner.load_model, "__vs_vllm_patched__", False)
out["media_steps_patched"] = getattr(
    cpu_model_runner.CPUModelRunner._gather_mm_embeddings, "__vs_vllm_patched__", False)
from vs_vllm.vllm_plugin.patches.pruning_flag import enable_pruning_for
class Cfg: pass
cfg = Cfg(); cfg.multimodal_config = MultiModalConfig()
enable_pruning_for(cfg)
out["instance"] = cfg.multimodal_config.is_multimodal_pruning_enabled()
out["class"] = MultiModalConfig().is_multimodal_pruning_enabled()
print(json.dumps(out))
"""
    stock = _run(code)
    assert stock["Qwen2_5_VLForConditionalGeneration"] == \
        "vllm.model_executor.models.qwen2_5_vl.Qwen2_5_VLForConditionalGeneration"
    assert stock["Qwen2VLForConditionalGeneration"] == "vllm.model_executor.models.qwen2_vl.Qwen2VLForConditionalGeneration"
    assert stock["cpu_runner_patched"] is False
    assert stock["media_steps_patched"] is False
    enabled = _run(code, VS_VLLM_ENABLE="1")
    assert enabled["Qwen2_5_VLForConditionalGeneration"] == \
        "vs_vllm.vllm_plugin.adapters.qwen2_5_vl.VsQwen2_5_VLForConditionalGeneration"
    assert enabled["Qwen2VLForConditionalGeneration"] == \
        "vs_vllm.vllm_plugin.adapters.qwen2_vl.VsQwen2VLForConditionalGeneration"
    assert enabled["cpu_runner_patched"] is True
    assert enabled["media_steps_patched"] is True
    assert enabled["instance"] is True and enabled["class"] is False
