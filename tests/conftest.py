"""Shared test setup: offline environment, Triton interpreter on CPU, one tiny model and one vLLM server per session."""

from __future__ import annotations

import os

# Before anything imports triton: on a machine without CUDA the kernels run in Triton's interpreter. @triton.jit picks
# interpreter vs compiler when the decorator runs, so this cannot be set later.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny Qwen2.5-VL (seed 0), built once per test session."""
    from vs_vllm.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2_5_vl"), arch="qwen2_5_vl", seed=0)


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real ``vllm serve`` of the tiny model on a free loopback port, shared by the whole session.

    Started on first use, stopped by PID at session end (also when tests fail).
    """
    from vs_vllm.testing.server import VLLMServer, tiny_serve_args

    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    server = VLLMServer(tiny_model_dir, tiny_serve_args(max_images=4), log_path=log)
    server.start()
    try:
        yield server
    finally:
        server.stop()
