"""vLLM finds the vs_vllm entry point and loads it without error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vs_vllm.testing.server import cpu_env


@pytest.mark.slow
def test_vllm_loads_the_general_plugin() -> None:
    code = (
        "import json, importlib.metadata as md\n"
        "from vllm.plugins import load_general_plugins\n"
        "import vs_vllm.vllm_plugin as plugin\n"
        "before = plugin.is_registered()\n"
        "load_general_plugins()\n"
        "eps = [ep.value for ep in md.entry_points(group='vllm.general_plugins')]\n"
        "print(json.dumps({'before': before, 'after': plugin.is_registered(), 'entry_points': eps}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cpu_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Failed to load plugin" not in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "vs_vllm.vllm_plugin:register" in result["entry_points"]
    assert result["before"] is False and result["after"] is True


def test_register_is_idempotent() -> None:
    import vs_vllm.vllm_plugin as plugin

    plugin.register()
    plugin.register()
    assert plugin.is_registered()
