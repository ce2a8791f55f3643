"""Property-based fuzz of the plugin's request surface, through RetentionMiddleware around a fake app.

Any JSON value in the selection options, at the top level and inside ``mm_processor_kwargs`` (plus foreign keys and
``media_io_kwargs``), on every POST path the middleware guards and on others: the answer is either the app's (the
body rewritten to exactly the validated options) or a 400 with an OpenAI-style body naming the field; never another
status from the middleware, never a traceback, and the next request is served as before.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_middleware import FakeApp, post, received_json
from vs_vllm.testing.fuzz import GUARDED_PATHS, PATHS, bodies, raw_bodies
from vs_vllm.vllm_plugin.middleware import MEDIA_IO_KWARGS, MM_KWARGS
from vs_vllm.vllm_plugin.options import OPTION_NAMES, parse_options

TARGETS = set(GUARDED_PATHS)


def _check(app: FakeApp, path: str, body: dict) -> None:
    calls = app.calls
    resp = post(app, path, json.dumps(body, allow_nan=True))
    assert "Traceback" not in resp.text
    if resp.status_code == 400 and app.calls == calls:  # answered by the middleware
        err = resp.json()["error"]
        assert err["code"] == 400 and err["type"] == "BadRequestError"
        field = err["param"].split(".")[0]
        assert field in (*OPTION_NAMES, MM_KWARGS, MEDIA_IO_KWARGS), err
        assert err["message"]
        return
    assert resp.status_code == 200 and app.calls == calls + 1, resp.text
    sent = received_json(app)
    if path not in TARGETS:
        assert sent == json.loads(json.dumps(body, allow_nan=True))  # other paths: passed on, never rewritten
        return
    assert not any(name in sent for name in OPTION_NAMES)  # top-level options moved into mm_processor_kwargs
    mm = sent.get(MM_KWARGS)
    if mm is not None:
        assert isinstance(mm, dict) and set(mm) <= set(OPTION_NAMES)
        parse_options(mm)  # exactly the validated options: they parse again
        for value in mm.values():
            assert not (isinstance(value, float) and not math.isfinite(value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), body=bodies())
def test_any_option_value_is_served_or_refused_with_400_naming_the_field(path, body) -> None:
    app = FakeApp()
    _check(app, path, body)
    # the server keeps serving: a plain request right after goes through unchanged
    plain = {"model": "m", "messages": [{"role": "user", "content": "again"}]}
    resp = post(app, path, json.dumps(plain))
    assert resp.status_code == 200 and received_json(app) == plain


@settings(max_examples=100, deadline=None)
@given(raw=raw_bodies)
def test_any_body_bytes_never_break_the_middleware(raw) -> None:
    app = FakeApp()
    resp = post(app, "/v1/chat/completions", raw)
    assert "Traceback" not in resp.text
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 400:
        assert set(resp.json()) == {"error"}
