"""Every vLLM symbol the plugin relies on beyond the documented surface exists, with the signature we use.

The table lives in ``vs_vllm.vllm_plugin.patches`` (PRIVATE_API + PUBLIC_HOOKS) and each adapter's ``private_api``;
a new vLLM minor that moves or re-shapes one of them fails here, by name, instead of at serve time.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from vs_vllm.vllm_plugin.patches import PRIVATE_API, PUBLIC_HOOKS, SUPPORTED_VLLM, ApiTouch, installed_vllm_version


def _adapter_touches() -> list[ApiTouch]:
    from vs_vllm.vllm_plugin.adapters import ADAPTERS, load_model_class

    touches = []
    for arch in ADAPTERS:
        touches.extend(load_model_class(arch).vs_adapter.private_api)
    return touches


def _resolve(symbol: str):
    module_name, _, qualname = symbol.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        if isinstance(obj, type) and part not in dir(obj) and part in getattr(obj, "__annotations__", {}):
            return inspect.Parameter.empty  # a dataclass field declared with init=False: present as an annotation
        obj = getattr(obj, part)
    return obj


def _minor() -> str:
    return ".".join(installed_vllm_version().split("+")[0].split(".")[:2])


ALL = [*PRIVATE_API, *PUBLIC_HOOKS]


@pytest.mark.parametrize("touch", ALL, ids=[t.symbol.split(":")[1] for t in ALL])
def test_symbol_exists_with_expected_signature(touch: ApiTouch) -> None:
    if _minor() not in touch.versions:
        pytest.skip(f"{touch.symbol} is only used on vLLM {touch.versions}")
    obj = _resolve(touch.symbol)
    if touch.params is not None:
        params = tuple(inspect.signature(obj).parameters)
        assert params == touch.params, f"{touch.symbol}: vLLM has {params}, vs-vllm ({touch.where}) uses {touch.params}"


def test_adapter_protected_calls_exist() -> None:
    touches = _adapter_touches()
    assert touches, "the adapters declare the protected model methods they call"
    for touch in touches:
        params = tuple(inspect.signature(_resolve(touch.symbol)).parameters)
        assert params == touch.params, f"{touch.symbol}: vLLM has {params}, {touch.where} uses {touch.params}"


def test_installed_vllm_is_supported_and_table_is_documented() -> None:
    assert _minor() in SUPPORTED_VLLM
    for touch in ALL:
        assert touch.kind in ("patch", "override", "call") and touch.why and touch.where


def test_overrides_keep_the_base_signatures() -> None:
    """Our mixins' overrides of protected hooks accept what vLLM passes."""
    from vs_vllm.vllm_plugin.media_connector import ClientErrorMediaConnector
    from vs_vllm.vllm_plugin.pruning.model import PruningModelMixin
    from vs_vllm.vllm_plugin.pruning.processor import PruningProcessorMixin

    for touch in ALL:
        if touch.kind != "override":
            continue
        name = touch.symbol.rsplit(".", 1)[1]
        owners = [ClientErrorMediaConnector] if "MediaConnector" in touch.symbol else [PruningProcessorMixin,
                                                                                        PruningModelMixin]
        ours = next((vars(cls)[name] for cls in owners if name in vars(cls)), None)
        assert ours is not None, f"{name} is listed as overridden but no mixin defines it"
        theirs = inspect.signature(_resolve(touch.symbol))
        bound = [p for p in theirs.parameters.values() if p.kind is not p.VAR_KEYWORD and p.name != "self"]
        # every positional/keyword parameter vLLM declares can be bound to ours
        inspect.signature(ours).bind(None, *[object() for p in bound if p.kind is not p.KEYWORD_ONLY],
                                     **{p.name: object() for p in bound if p.kind is p.KEYWORD_ONLY})
