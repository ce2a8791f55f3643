"""vLLM integration. ``register`` is the ``vllm.general_plugins`` entry point.

vLLM calls it once in every process it starts (API server, engine core, workers, the model-inspection subprocess),
for every installed plugin, so it must be idempotent, cheap, and import nothing that initialises a device.
"""

from __future__ import annotations

import logging
import os

# A child of vLLM's own logger: messages get vLLM's handler and format in every vLLM process.
logger = logging.getLogger("vllm.plugins.vs_vllm")

_registered = False


def register() -> None:
    """Entry point for ``vllm.general_plugins``."""
    global _registered
    if _registered:
        return
    _registered = True
    from vs_vllm import __version__

    logger.info("vs-vllm %s plugin loaded (pid %d)", __version__, os.getpid())


def is_registered() -> bool:
    """Whether ``register`` has run in this process."""
    return _registered
