"""Prometheus counters for visual-token pruning, exported on vLLM's ``/metrics`` next to the ``vllm:`` series.

    vs_vllm:visual_tokens_kept_total    visual tokens kept (placeholders emitted) over all images and videos
    vs_vllm:visual_tokens_total         visual tokens the unpruned model would have used for the same media
    vs_vllm:images_total                images sized by the processor
    vs_vllm:images_pruned_total         images that lost at least one token (kept < total)
    vs_vllm:videos_total                videos sized by the processor
    vs_vllm:videos_pruned_total         videos that lost at least one token

(prometheus_client appends ``_total`` to counter names that lack it, so the counter created as
``vs_vllm:visual_tokens_total`` is exposed under that very name.) The kept fraction over a window is
``rate(vs_vllm:visual_tokens_kept_total[5m]) / rate(vs_vllm:visual_tokens_total[5m])``.

Kernel health, for the Triton selection kernels' torch fallback (``vs_vllm.kernels.dispatch``):

    vs_vllm:kernel_fallbacks_total{op,device,dtype}  selection calls the torch fallback answered because that
                                                     operation's Triton kernel failed on that device type and dtype
                                                     (the failing call and every later one)
    vs_vllm_kernels_healthy                          1 while no kernel has fallen back, 0 after any fallback

The kernels run in vLLM's engine processes (EngineCore, or its workers), but ``/metrics`` is served by the API-server
process from its own default registry; a plain ``vllm serve`` has no shared metrics store (vLLM turns on
prometheus_client's multiprocess mode only for several API servers), so a counter incremented in the engine would
never be seen. Instead the process that runs the kernels (:func:`watch_kernel_fallbacks`, called at model load)
writes its fallback counts to a small JSON file in ``STATE_DIR`` whenever one changes (only on the degraded path),
naming the chain of processes it descends from; the collector registered here (in every process that imports this
module, the API server included: it imports the model class, and with it this module, while vLLM resolves the
architecture) sums, at scrape time, the files written by itself or by its descendants. Each server therefore reports
its own engines only, however many servers run on the machine, and files of processes that are gone are deleted. With
several API servers (``--api-server-count`` > 1, data parallel's default) vLLM serves only its multiprocess files and
these two series are missing; the ERROR log line of each fallback remains.

The multimodal processor in the API-server process calls :func:`observe_visual_tokens` once per image or video (through
:func:`vs_vllm.vllm_plugin.request_stats.record_visual_tokens`). The counters live in prometheus_client's default
``REGISTRY``, which vLLM's ``/metrics`` serves (with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client's
multiprocess mode picks them up from the value files instead). Importing this module only creates the counters and
the kernel-health collector; a second import under another name, or a reload, reuses the ones already registered.
"""

from __future__ import annotations

import atexit
import json
import os
import tempfile
import threading
from pathlib import Path

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["IMAGES", "IMAGES_PRUNED", "KERNEL_FALLBACKS", "KERNELS_HEALTHY", "STATE_DIR", "VIDEOS", "VIDEOS_PRUNED",
           "VISUAL_TOKENS_KEPT", "VISUAL_TOKENS_TOTAL", "kernel_health", "observe_visual_tokens",
           "watch_kernel_fallbacks"]


def _registered(name: str, kind: type, make):
    """``make()``, registered in the default registry; the collector already registered under ``name`` when this
    module is reloaded or imported twice."""
    try:
        return make()
    except ValueError:  # already registered: reuse it
        existing = REGISTRY._names_to_collectors.get(name)  # no public lookup by name
        if type(existing).__qualname__ == kind.__qualname__:  # the same class (a reload redefines ours)
            return existing
        raise


def _counter(name: str, documentation: str) -> Counter:
    """The counter ``name`` in the default registry, created on first use in this process."""
    return _registered(name, Counter, lambda: Counter(name, documentation))


VISUAL_TOKENS_KEPT = _counter(
    "vs_vllm:visual_tokens_kept", "Visual tokens kept by VisionSelector pruning (placeholders sent to the LLM)."
)
VISUAL_TOKENS_TOTAL = _counter(
    "vs_vllm:visual_tokens_total", "Visual tokens the unpruned model would have used for the same images and videos."
)
IMAGES = _counter("vs_vllm:images", "Images sized by the vs-vllm multimodal processor.")
IMAGES_PRUNED = _counter("vs_vllm:images_pruned", "Images that kept fewer visual tokens than the unpruned model.")
VIDEOS = _counter("vs_vllm:videos", "Videos sized by the vs-vllm multimodal processor.")
VIDEOS_PRUNED = _counter("vs_vllm:videos_pruned", "Videos that kept fewer visual tokens than the unpruned model.")


def observe_visual_tokens(kept: int, total: int, modality: str = "image") -> None:
    """Count one image or video: ``kept`` of its ``total`` visual tokens survived."""
    VISUAL_TOKENS_KEPT.inc(kept)
    VISUAL_TOKENS_TOTAL.inc(total)
    items, pruned = (VIDEOS, VIDEOS_PRUNED) if modality == "video" else (IMAGES, IMAGES_PRUNED)
    items.inc()
    if kept < total:
        pruned.inc()


# ---- kernel health --------------------------------------------------------------------------------------------------

KERNEL_FALLBACKS = "vs_vllm:kernel_fallbacks"  # exposed as vs_vllm:kernel_fallbacks_total
KERNELS_HEALTHY = "vs_vllm_kernels_healthy"
#: Where the processes that run the kernels leave their fallback counts (one ``<pid>.json`` each), per user.
STATE_DIR = Path(tempfile.gettempdir()) / f"vs_vllm-kernel-health-{os.getuid()}"

_write_lock = threading.Lock()
_lineage: list[list] = []  # [[pid, start time], ...] of this process and its ancestors, computed once


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (rounded: it names the process together with its pid), None if it is gone."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


def _my_lineage() -> list[list]:
    if not _lineage:
        import psutil

        me = psutil.Process()
        _lineage.extend([p.pid, round(p.create_time(), 2)] for p in [me, *me.parents()])
    return _lineage


def _publish(*_fallback: str) -> None:
    """Write this process's fallback counts to its file in ``STATE_DIR`` (a dispatch fallback listener, called with
    the (op, device, dtype) of the call; the file holds all of them)."""
    from vs_vllm.kernels.dispatch import fallback_counts

    path = STATE_DIR / f"{os.getpid()}.json"
    with _write_lock:  # one snapshot after another: a slower thread never writes older counts last
        counts = sorted(fallback_counts().items())
        state = {"lineage": _my_lineage(), "fallbacks": [[*key, n] for key, n in counts]}
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)  # readers see the old or the new counts, never half a file


def _forget_own_file() -> None:
    (STATE_DIR / f"{os.getpid()}.json").unlink(missing_ok=True)


_watching = False


def watch_kernel_fallbacks() -> None:
    """Report this process's kernel fallbacks to the ``/metrics`` of the server it belongs to (see the module
    docstring). Call it in the process that runs the kernels; calling it again does nothing."""
    global _watching
    from vs_vllm.kernels.dispatch import add_fallback_listener

    if _watching:
        return
    _watching = True
    add_fallback_listener(_publish)
    atexit.register(_forget_own_file)


def kernel_health() -> dict[tuple[str, str, str], int]:
    """(op, device, dtype) -> fallback calls, summed over the files of this process and its descendants; files of
    processes that are gone are deleted on the way."""
    me = [os.getpid(), _start_time(os.getpid())]
    totals: dict[tuple[str, str, str], int] = {}
    try:
        paths = list(STATE_DIR.glob("*.json"))
    except OSError:
        return totals
    for path in paths:
        try:
            state = json.loads(path.read_text())
            writer = state["lineage"][0]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue  # removed meanwhile, or not ours
        if _start_time(writer[0]) != writer[1]:  # its writer is gone (a pid reused later starts at another time)
            path.unlink(missing_ok=True)
            continue
        if me not in state["lineage"]:
            continue  # another server's engine
        for op, device, dtype, n in state["fallbacks"]:
            totals[(op, device, dtype)] = totals.get((op, device, dtype), 0) + int(n)
    return totals


class _KernelHealthCollector:
    """``vs_vllm:kernel_fallbacks_total`` and ``vs_vllm_kernels_healthy``, read from the state files at scrape time."""

    def _families(self, counts: dict[tuple[str, str, str], int]):
        fallbacks = CounterMetricFamily(
            KERNEL_FALLBACKS, "Selection calls answered by the torch fallback because the operation's Triton kernel "
            "failed on that device type and dtype.", labels=["op", "device", "dtype"])
        for labels, n in sorted(counts.items()):
            fallbacks.add_metric(list(labels), n)
        healthy = GaugeMetricFamily(
            KERNELS_HEALTHY, "0 once a selection kernel has failed and fallen back to torch; 1 until then.",
            value=0 if counts else 1)
        return [fallbacks, healthy]

    def describe(self):
        return self._families({})

    def collect(self):
        return self._families(kernel_health())


def _register_kernel_health() -> _KernelHealthCollector:
    collector = _KernelHealthCollector()
    REGISTRY.register(collector)
    return collector


_KERNEL_HEALTH = _registered(KERNELS_HEALTHY, _KernelHealthCollector, _register_kernel_health)
