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
    """Entry point for ``vllm.general_plugins``.

    Installed but not enabled, the plugin changes nothing: vLLM serves exactly as stock vLLM. Enabled
    (``VS_VLLM_ENABLE=1``, which ``vs-vllm serve`` sets and child processes inherit), it checks the vLLM version,
    replaces the supported architectures' model classes (and with them their multimodal processors), and arms the
    runtime patches that apply to this vLLM version (``patches.RUNTIME_PATCHES``: the per-request visual-token counts
    reach the HTTP layer; on V1 runners, the pruning hook skips steps without media rows and the CPU runner gets the
    GPU runner's pruning flag). ``patches/`` has one file per patch, each saying what, why and for which vLLM
    versions and runners; a patch whose target is missing fails start-up naming the symbol.
    """
    global _registered
    if _registered:
        return
    _registered = True
    from vs_vllm import __version__
    from vs_vllm.vllm_plugin.options import is_enabled

    if not is_enabled():
        logger.info("vs-vllm %s plugin loaded (pid %d); not enabled (set VS_VLLM_ENABLE=1)", __version__, os.getpid())
        return
    from vs_vllm.vllm_plugin import adapters, patches

    version = patches.check_vllm_version()
    adapters.register_models()
    from vs_vllm.vllm_plugin import media_connector  # noqa: F401  (registers the "vs_vllm" media connector)

    patch_report = patches.install_runtime_patches(version, is_cpu=_is_cpu_platform())
    logger.info(
        "vs-vllm %s plugin loaded (pid %d); visual-token selection enabled for %s on vLLM %s; patches: %s",
        __version__, os.getpid(), ", ".join(adapters.served_architectures()), version,
        "; ".join(f"{name} {status}" for name, status in patch_report.items()),
    )


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def is_registered() -> bool:
    """Whether ``register`` has run in this process."""
    return _registered
