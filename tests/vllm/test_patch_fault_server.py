"""A runtime patch whose vLLM target is missing stops a real ``vs-vllm serve`` at start-up, naming the symbol, instead
of serving without it (the renderer-context patch carries the per-request visual-token counts to usage, headers and
metrics; without it they would silently vanish). The fault is injected with ``VS_VLLM_INJECT_PATCH_FAULT``, which
hands the patch a stand-in module without any of vLLM's symbols."""

from __future__ import annotations

import sys

import pytest

from vs_vllm.vllm_plugin.patches import INJECT_PATCH_FAULT_ENV, RUNTIME_PATCHES

pytestmark = [pytest.mark.slow, pytest.mark.runner_matrix]

TARGETS = {p.name: p.target for p in RUNTIME_PATCHES}


@pytest.mark.parametrize("patch", [
    "renderer_context",  # the API server's process
    pytest.param("cpu_runner", marks=pytest.mark.runner_only("v1", why="the V1 CPU runner's patch; MRv2 needs none")),
])
def test_a_patch_that_cannot_apply_stops_the_server_naming_the_symbol(patch, tiny_model_dir, scorer_file,
                                                                      tmp_path) -> None:
    from vs_vllm.testing.server import VLLMServer, cpu_env, tiny_serve_args

    server = VLLMServer(tiny_model_dir, ["--scorer", str(scorer_file), *tiny_serve_args(max_images=1)],
                        env=cpu_env(**{INJECT_PATCH_FAULT_ENV: patch}), command=[sys.executable, "-m", "vs_vllm", "serve"],
                        log_path=tmp_path / "server.log", startup_timeout=300)
    try:
        with pytest.raises(RuntimeError, match="exited with code"):
            server.start()
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    symbol = TARGETS[patch]
    assert f"PatchTargetMissing: vs-vllm cannot patch {symbol}" in log, server.failure_summary()
    assert "not supported by this vs-vllm; unset VS_VLLM_ENABLE to serve without the plugin" in log
