"""Hypothesis strategies for the plugin's request surface (every body a client may send): shared by the middleware
fuzz test (a fake app), the fuzz test against a real server, and the committed fuzz run (``vs-vllm bench fuzz``).

Any JSON value in the selection options, at the top level and inside ``mm_processor_kwargs`` (plus foreign keys and
``media_io_kwargs``), on every POST path the middleware guards and on others. Needs ``hypothesis`` (the ``dev`` extra).
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from vs_vllm.selection.methods import list_methods
from vs_vllm.vllm_plugin.middleware import MEDIA_IO_KWARGS, MM_KWARGS
from vs_vllm.vllm_plugin.options import LAMBDA, METHOD, OPTION_NAMES, RATIO, SEED, VIDEO_RATIO

__all__ = ["GUARDED_PATHS", "PATHS", "bodies", "for_path", "json_values", "raw_bodies"]

#: POST paths the middleware rewrites, then paths it passes on untouched.
GUARDED_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses"]
PATHS = [*GUARDED_PATHS, "/tokenize", "/v1/embeddings", "/render"]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["0.5", "1", "nan", "inf", "-0.0", "1e-320", "visionselector", "uniform", "VisionSelector", ""]),
    st.sampled_from([0, 1, 1.0, 0.0, -0.0, 0.3, 1e-300, 5e-324, 1.0000000000000002, 2**53, -1, True, False]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)
_ratios = st.one_of(st.sampled_from([1.0, 0.5, 0.3, 0.1, 0.01, 1]), st.floats(min_value=1e-6, max_value=1.0))
#: Values each option accepts, so that bodies also get through to the engine (any JSON value alone would make nearly
#: every body with two options a 400).
valid_values = {
    RATIO: _ratios, VIDEO_RATIO: _ratios, METHOD: st.sampled_from(list_methods()),
    SEED: st.integers(min_value=0, max_value=2**31 - 1), LAMBDA: st.floats(min_value=0.0, max_value=1.0),
}
_option_names = st.sampled_from(list(OPTION_NAMES))
_keys = st.one_of(_option_names, st.sampled_from(["max_pixels", "fps", "messages", "model"]), st.text(max_size=8))


def bodies(model: str = "m", messages: list | None = None, **fixed) -> st.SearchStrategy[dict]:
    """Request bodies: ``model``, a one-message text chat (or, as often, ``messages``) and ``fixed`` fields, plus any
    subset of the options (a valid value or any JSON value), ``mm_processor_kwargs`` (any JSON value, or a dict of
    option names / foreign keys to valid or any JSON values) and ``media_io_kwargs``."""
    text = [{"role": "user", "content": "hi"}]
    any_or_valid = {name: st.one_of(valid_values[name], json_values) for name in OPTION_NAMES}
    nested = st.one_of(
        st.fixed_dictionaries({}, optional=any_or_valid),
        st.dictionaries(_keys, json_values, max_size=4),
        json_values,
    )
    return st.fixed_dictionaries(
        {"model": st.just(model), "messages": st.sampled_from([text, messages or text]),
         **{k: st.just(v) for k, v in fixed.items()}},
        optional={**any_or_valid, MM_KWARGS: nested, MEDIA_IO_KWARGS: st.one_of(st.none(), st.just({}), json_values)},
    )


#: Any bytes as a body: binary, text, or JSON that is not an object.
raw_bodies = st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode),
                       json_values.map(lambda v: json.dumps(v).encode()))


#: The prompt field each path reads (other paths get a chat's ``messages``).
_PROMPT_FIELD = {"/v1/completions": "prompt", "/v1/responses": "input"}


def for_path(path: str, body: dict, max_tokens: int = 1) -> dict:
    """``body`` (drawn with a chat's ``messages``) shaped for ``path``: completions get ``prompt`` and responses
    ``input`` ("hi") in place of ``messages``, and generation is capped at ``max_tokens``, so that bodies with valid
    options reach the engine on every generating path."""
    body = dict(body)
    field = _PROMPT_FIELD.get(path)
    if field is not None:
        body.pop("messages", None)
        body[field] = "hi"
    body["max_output_tokens" if path == "/v1/responses" else "max_tokens"] = max_tokens
    body.setdefault("temperature", 0)
    return body
