"""Kernel tests run the Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is first imported (triton picks interpreter vs compiler when a
``@triton.jit`` decorator runs); tests/conftest.py does the same, this guard only keeps this folder runnable alone.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VS_VLLM_STRICT_KERNELS", "1")
