"""Check the plugin's vLLM API surface (``PRIVATE_API``, ``PUBLIC_HOOKS``, the adapters' touches) against a vLLM.

Used by ``tests/vllm/test_vllm_api_surface.py`` in-process for the installed vLLM, and as
``python -m vs_vllm.vllm_plugin.patches.surface`` in a separate interpreter whose ``PYTHONPATH`` puts another
release's Python first (vLLM 0.34, unpacked by ``make setup``; no CPU build of it exists). Prints one JSON object:
the vLLM version, what was checked, and every problem found (empty when the surface matches).
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from typing import Any

from vs_vllm.vllm_plugin.patches import (
    PRIVATE_API,
    PUBLIC_HOOKS,
    ApiTouch,
    installed_vllm_version,
    touches_for,
)

__all__ = ["adapter_touches", "check_member", "check_override", "check_surface", "check_touch", "probed_touches",
           "resolve"]


def resolve(symbol: str) -> Any:
    """The object named ``module:Qualified.name``."""
    module_name, _, qualname = symbol.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        if isinstance(obj, type) and part not in dir(obj) and part in getattr(obj, "__annotations__", {}):
            return inspect.Parameter.empty  # a dataclass field declared with init=False: present as an annotation
        obj = getattr(obj, part)
    return obj


def adapter_touches(archs: list[str] | None = None) -> list[ApiTouch]:
    """The entries the adapters of ``archs`` declare (vLLM architecture names; every adapter when None)."""
    from vs_vllm.vllm_plugin.adapters import ADAPTERS, load_model_class

    touches: list[ApiTouch] = []
    for arch in ADAPTERS if archs is None else archs:
        touches.extend(load_model_class(arch).vs_adapter.private_api)
    return touches


def check_touch(touch: ApiTouch) -> str | None:
    """None when ``touch`` exists with its expected parameters, else what differs.

    For a key, and for an attribute set on instances (an entry with a ``probe``), only what a signature can show is
    checked here (the producing symbol, the owning class); :func:`check_member` checks the member on a real object.
    """
    symbol = touch.symbol
    if touch.kind == "attribute" and touch.probe is not None:
        symbol = symbol.rsplit(".", 1)[0]  # the class; the attribute itself exists only on its instances
    try:
        obj = resolve(symbol)
    except (ImportError, AttributeError) as exc:
        return f"{symbol} ({touch.where}): missing: {type(exc).__name__}: {exc}"
    if touch.params is not None:
        params = tuple(inspect.signature(obj).parameters)
        if params != touch.params:
            return f"{touch.symbol}: vLLM has {params}, vs-vllm ({touch.where}) uses {touch.params}"
    return None


def check_member(touch: ApiTouch, obj: Any) -> str | None:
    """For a probed entry: None when the real object ``obj`` (the call's result, or the instance) has the entry's
    attribute, or its key path (``mm_kwargs.video.0.timestamps``: keys, and list indices where digits), else what
    is missing."""
    if touch.kind == "attribute":
        name = touch.symbol.rsplit(".", 1)[1]
        return None if hasattr(obj, name) else f"{touch.symbol} ({touch.where}): the {type(obj).__name__} has no {name!r}"
    path: list[str] = []
    for part in (touch.member or "").split("."):
        path.append(part)
        try:
            obj = obj[int(part)] if part.isdigit() else obj[part]
        except (KeyError, IndexError, TypeError):
            return f"{touch.symbol} ({touch.where}): no {'.'.join(path)!r} in what it returned"
    return None


def probed_touches(probe: str, version: str, runner: str | None, archs: list[str] | None = None) -> list[ApiTouch]:
    """The entries ``probe`` must check on vLLM ``version`` and ``runner``: the table's own, plus those of the
    adapters of ``archs`` (vLLM architecture names; all adapters when None)."""
    touches = [*PRIVATE_API, *PUBLIC_HOOKS, *adapter_touches(archs)]
    seen: set[tuple[str, str | None]] = set()
    out = []
    for touch in touches_for(touches, version, runner):
        if touch.probe == probe and (touch.symbol, touch.member) not in seen:
            seen.add((touch.symbol, touch.member))
            out.append(touch)
    return out


def check_override(touch: ApiTouch) -> str | None:
    """For an "override" entry: our mixin's method accepts every argument vLLM's declares."""
    from vs_vllm.vllm_plugin.media_connector import ClientErrorMediaConnector
    from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin
    from vs_vllm.vllm_plugin.pruning.processor import PruningProcessorMixin

    name = touch.symbol.rsplit(".", 1)[1]
    owners = [ClientErrorMediaConnector] if "MediaConnector" in touch.symbol else [PruningProcessorMixin,
                                                                                    PruningModelMixin]
    ours = next((vars(cls)[name] for cls in owners if name in vars(cls)), None)
    if ours is None:
        return f"{name} is listed as overridden but no mixin defines it"
    theirs = inspect.signature(resolve(touch.symbol))
    bound = [p for p in theirs.parameters.values() if p.kind is not p.VAR_KEYWORD and p.name != "self"]
    try:
        inspect.signature(ours).bind(None, *[object() for p in bound if p.kind is not p.KEYWORD_ONLY],
                                     **{p.name: object() for p in bound if p.kind is p.KEYWORD_ONLY})
    except TypeError as exc:
        return f"{touch.symbol}: our override cannot take vLLM's arguments: {exc}"
    return None


def check_surface(version: str | None = None) -> dict[str, Any]:
    """Every entry that matters on ``version`` (default: the installed vLLM), checked; JSON-ready."""
    version = version or installed_vllm_version()
    problems: list[str] = []
    checked: list[str] = []
    touches = touches_for([*PRIVATE_API, *PUBLIC_HOOKS, *adapter_touches()], version)
    for touch in touches:
        checked.append(touch.symbol)
        problem = check_touch(touch)
        if problem is None and touch.kind == "override":
            problem = check_override(touch)
        if problem is not None:
            problems.append(problem)
    return {"vllm": version, "checked": checked, "problems": problems}


if __name__ == "__main__":
    print(json.dumps(check_surface()))
    sys.exit(0)
