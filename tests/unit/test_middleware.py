"""RetentionMiddleware around a fake ASGI app (no vLLM server): request rewriting, validation, allowlist, stats."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from vs_vllm.vllm_plugin.middleware import HEADER_KEPT, HEADER_TOTAL, RetentionMiddleware
from vs_vllm.vllm_plugin.request_stats import record_visual_tokens

CHAT = "/v1/chat/completions"
JSON_HEADERS = {"content-type": "application/json"}


class FakeApp:
    """Echoes what it received. Plays the multimodal processor too: a body field ``images`` (a list of visual-token
    counts N_i) makes it record ``int(N_i * r)`` kept tokens per image, r from ``mm_processor_kwargs``."""

    def __init__(self) -> None:
        self.calls = 0
        self.received: bytes | None = None
        self.scope: dict | None = None

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        self.scope = scope
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.received = body
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        status = 200
        if isinstance(parsed, dict):
            ratio = (parsed.get("mm_processor_kwargs") or {}).get("retention_ratio", 1.0)
            for n in parsed.get("images", []):
                record_visual_tokens(max(1, int(n * ratio)), n)
            for n in parsed.get("videos", []):
                record_visual_tokens(max(1, int(n * ratio)), n, "video")
            status = parsed.get("status", 200)
        headers = dict(scope["headers"])
        payload = json.dumps(
            {
                "echo": base64.b64encode(body).decode(),
                "content_length": headers.get(b"content-length", b"").decode(),
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        # Two body messages, so the middleware's buffering of a JSON answer is exercised.
        await send({"type": "http.response.body", "body": payload[:10], "more_body": True})
        await send({"type": "http.response.body", "body": payload[10:], "more_body": False})


def post(app, path: str, content: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=RetentionMiddleware(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=content, headers=JSON_HEADERS if headers is None else headers)

    return asyncio.run(go())


def received_json(app: FakeApp) -> dict:
    assert app.received is not None
    return json.loads(app.received)


def assert_error(resp: httpx.Response, param: str) -> dict:
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(resp.content)
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "BadRequestError"
    assert err["code"] == 400
    assert err["param"] == param
    assert isinstance(err["message"], str) and err["message"]
    return err


# --- request rewriting -------------------------------------------------------------------------------------------


def test_top_level_fields_move_into_mm_processor_kwargs() -> None:
    app = FakeApp()
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi ü"}],
        "retention_ratio": 0.25,
        "selection_method": "uniform",
        "selection_seed": 7,
        "selection_lambda": 0,
        "video_retention_ratio": 1,
        "temperature": 0.0,
    }
    resp = post(app, CHAT, json.dumps(body))
    assert resp.status_code == 200
    got = received_json(app)
    assert got == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi ü"}],
        "temperature": 0.0,
        "mm_processor_kwargs": {"retention_ratio": 0.25, "selection_method": "uniform", "selection_seed": 7,
                                "selection_lambda": 0.0, "video_retention_ratio": 1.0},
    }
    # The app saw a content-length that matches the rewritten body.
    assert resp.json()["content_length"] == str(len(app.received))


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/responses"])
def test_other_target_paths_are_rewritten_too(path: str) -> None:
    app = FakeApp()
    assert post(app, path, json.dumps({"prompt": "x", "retention_ratio": 0.5})).status_code == 200
    assert received_json(app) == {"prompt": "x", "mm_processor_kwargs": {"retention_ratio": 0.5}}


def test_options_inside_mm_processor_kwargs_are_kept_and_normalised() -> None:
    app = FakeApp()
    resp = post(app, CHAT, '{"model":"m","mm_processor_kwargs":{"retention_ratio":1,"selection_seed":null}}')
    assert resp.status_code == 200
    # int 1 -> float 1.0 (one cache key per ratio), a null seed means "no seed" and is dropped.
    assert received_json(app) == {"model": "m", "mm_processor_kwargs": {"retention_ratio": 1.0}}
    assert b'"retention_ratio":1.0' in app.received


@pytest.mark.parametrize("where", ["top", "mm"])
def test_video_retention_ratio_alone_reaches_the_processor(where: str) -> None:
    app = FakeApp()
    body = {"model": "m", "video_retention_ratio": 0.125}
    if where == "mm":
        body = {"model": "m", "mm_processor_kwargs": {"video_retention_ratio": 0.125}}
    assert post(app, CHAT, json.dumps(body)).status_code == 200
    assert received_json(app) == {"model": "m", "mm_processor_kwargs": {"video_retention_ratio": 0.125}}


def test_same_value_in_both_places_is_accepted() -> None:
    app = FakeApp()
    body = {"retention_ratio": 0.5, "mm_processor_kwargs": {"retention_ratio": 0.5, "selection_method": "random"}}
    assert post(app, CHAT, json.dumps(body)).status_code == 200
    assert received_json(app) == {"mm_processor_kwargs": {"retention_ratio": 0.5, "selection_method": "random"}}


def test_empty_or_null_mm_processor_kwargs_is_dropped() -> None:
    for raw in ('{"model":"m","mm_processor_kwargs":{}}', '{"model":"m","selection_seed":null}'):
        app = FakeApp()
        assert post(app, CHAT, raw).status_code == 200
        assert received_json(app) == {"model": "m"}


def test_no_options_passes_body_byte_identical() -> None:
    app = FakeApp()
    raw = '{ "model" : "m",\n "messages": [{"role": "user", "content": "caf\\u00e9 ü"}], "top_p": 1.00000 }'
    resp = post(app, CHAT, raw)
    assert resp.status_code == 200
    assert app.received == raw.encode()
    assert resp.json()["content_length"] == str(len(raw.encode()))


def test_null_mm_processor_kwargs_without_options_is_untouched() -> None:
    app = FakeApp()
    raw = '{"model": "m", "mm_processor_kwargs": null}'
    assert post(app, CHAT, raw).status_code == 200
    assert app.received == raw.encode()


@pytest.mark.parametrize(
    ("raw", "headers"),
    [
        ('{"retention_ratio": 5, broken', JSON_HEADERS),  # malformed JSON: vLLM answers it
        ('["retention_ratio", 5]', JSON_HEADERS),  # not an object
        ('{"retention_ratio": 5}', {"content-type": "text/plain"}),  # not JSON: vLLM refuses the media type
        (b'{"retention_ratio": 0.5, "x": "\xff"}', JSON_HEADERS),  # not UTF-8
    ],
)
def test_non_json_bodies_pass_through_unchanged(raw, headers) -> None:
    app = FakeApp()
    assert post(app, CHAT, raw, headers=headers).status_code == 200
    assert app.received == (raw.encode() if isinstance(raw, str) else raw)


def test_multiple_request_messages_are_joined() -> None:
    app = FakeApp()
    body = json.dumps({"model": "m", "retention_ratio": 0.5, "pad": "x" * 1000}).encode()
    parts = [body[:3], body[3:500], b"", body[500:]]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    asyncio.run(RetentionMiddleware(app)(scope, receive, send))
    assert received_json(app) == {"model": "m", "pad": "x" * 1000, "mm_processor_kwargs": {"retention_ratio": 0.5}}
    assert dict(app.scope["headers"])[b"content-length"] == str(len(app.received)).encode()
    assert sent[0]["status"] == 200


def test_receive_after_replay_reaches_the_client() -> None:
    """vLLM's cancellation watcher keeps calling receive() after the body; it must see the real disconnect."""
    seen: list[str] = []

    async def app(scope, receive, send):
        first = await receive()
        assert first["more_body"] is False
        seen.append((await receive())["type"])

    messages = [{"type": "http.request", "body": b'{"retention_ratio": 0.5}', "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        raise AssertionError("nothing is sent")

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(RetentionMiddleware(app)(scope, receive, send))
    assert seen == ["http.disconnect"]


def test_client_disconnect_while_sending_body_stops_quietly() -> None:
    app = FakeApp()
    messages = [{"type": "http.request", "body": b'{"retention', "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    async def send(message):
        raise AssertionError("nothing is sent")

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(RetentionMiddleware(app)(scope, receive, send))
    assert app.calls == 0


# --- validation ----------------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("retention_ratio", "0"),
    ("retention_ratio", "-0.1"),
    ("retention_ratio", "1.5"),
    ("retention_ratio", "NaN"),
    ("retention_ratio", "Infinity"),
    ("retention_ratio", '"0.5"'),
    ("retention_ratio", "true"),
    ("retention_ratio", "null"),
    ("selection_method", '"no-such-method"'),
    ("selection_method", "3"),
    ("selection_seed", "-1"),
    ("selection_seed", "1.5"),
    ("selection_seed", '"7"'),
    ("selection_seed", "true"),
    ("selection_lambda", "-0.01"),
    ("selection_lambda", "1.5"),
    ("selection_lambda", "NaN"),
    ("selection_lambda", '"0.5"'),
    ("selection_lambda", "false"),
    ("selection_lambda", "null"),
    ("selection_lambda", "[0.5]"),
    ("video_retention_ratio", "0"),
    ("video_retention_ratio", "-0.5"),
    ("video_retention_ratio", "1.01"),
    ("video_retention_ratio", "NaN"),
    ("video_retention_ratio", "-Infinity"),
    ("video_retention_ratio", '"0.5"'),
    ("video_retention_ratio", "false"),
    ("video_retention_ratio", "null"),
    ("video_retention_ratio", "{}"),
]


@pytest.mark.parametrize("where", ["top", "mm"])
@pytest.mark.parametrize(("field", "raw_value"), BAD_VALUES)
def test_bad_values_are_400_naming_the_field(field: str, raw_value: str, where: str) -> None:
    app = FakeApp()
    pair = f'"{field}": {raw_value}'
    raw = f'{{"model": "m", {pair}}}' if where == "top" else f'{{"model": "m", "mm_processor_kwargs": {{{pair}}}}}'
    assert_error(post(app, CHAT, raw), field)
    assert app.calls == 0


def test_foreign_mm_processor_kwargs_key_is_refused() -> None:
    app = FakeApp()
    body = {"model": "m", "mm_processor_kwargs": {"retention_ratio": 0.5, "max_pixels": 12544}}
    err = assert_error(post(app, CHAT, json.dumps(body)), "mm_processor_kwargs.max_pixels")
    assert "max_pixels" in err["message"]
    assert app.calls == 0


def test_escaped_key_cannot_sneak_past_the_allowlist() -> None:
    app = FakeApp()
    raw = '{"model": "m", "mm_processor_kwarg\\u0073": {"max_pixels": 1}}'
    assert json.loads(raw)["mm_processor_kwargs"] == {"max_pixels": 1}
    assert_error(post(app, CHAT, raw), "mm_processor_kwargs.max_pixels")
    assert app.calls == 0


@pytest.mark.parametrize("value", ["[]", '"retention_ratio=0.5"', "0.5"])
def test_mm_processor_kwargs_must_be_an_object(value: str) -> None:
    app = FakeApp()
    assert_error(post(app, CHAT, f'{{"mm_processor_kwargs": {value}}}'), "mm_processor_kwargs")
    assert app.calls == 0


def test_media_io_kwargs_is_refused() -> None:
    app = FakeApp()
    assert_error(post(app, CHAT, '{"media_io_kwargs": {"video": {"num_frames": 1000}}}'), "media_io_kwargs")
    assert app.calls == 0


@pytest.mark.parametrize(
    ("top", "inner", "field"),
    [
        ({"retention_ratio": 0.3}, {"retention_ratio": 0.5}, "retention_ratio"),
        ({"selection_method": "uniform"}, {"selection_method": "random"}, "selection_method"),
        ({"selection_seed": 1}, {"selection_seed": 2}, "selection_seed"),
        ({"selection_seed": None}, {"selection_seed": 2}, "selection_seed"),
        ({"video_retention_ratio": 0.2}, {"video_retention_ratio": 0.25}, "video_retention_ratio"),
    ],
)
def test_conflicting_duplicates_are_400(top: dict, inner: dict, field: str) -> None:
    app = FakeApp()
    assert_error(post(app, CHAT, json.dumps({**top, "mm_processor_kwargs": inner})), field)
    assert app.calls == 0


# --- other paths and scopes ----------------------------------------------------------------------------------------


def test_other_paths_are_not_rewritten() -> None:
    for path in ("/tokenize", "/v1/chat/completions/render", "/v1/chat/completions/", "/v1/embeddings"):
        app = FakeApp()
        raw = ('{"model": "m", "retention_ratio": 0.5, '
               '"mm_processor_kwargs": {"selection_method": "uniform", "video_retention_ratio": 0.5}}')
        resp = post(app, path, raw)
        assert resp.status_code == 200
        assert app.received == raw.encode(), path


@pytest.mark.parametrize("path", ["/tokenize", "/v1/chat/completions/render", "/pooling", "/v1/chat/completions/batch"])
def test_other_paths_still_enforce_the_allowlist(path: str) -> None:
    """--trust-request-mm-kwargs opens every endpoint, so the allowlist holds everywhere."""
    app = FakeApp()
    assert_error(post(app, path, '{"mm_processor_kwargs": {"max_pixels": 99999999}}'), "mm_processor_kwargs.max_pixels")
    assert_error(post(app, path, '{"mm_processor_kwargs": {"retention_ratio": 7}}'), "retention_ratio")
    assert_error(post(app, path, '{"mm_processor_kwargs": {"video_retention_ratio": 0}}'), "video_retention_ratio")
    assert_error(post(app, path, '{"media_io_kwargs": {"image": {"x": 1}}}'), "media_io_kwargs")
    assert app.calls == 0


def test_get_requests_and_root_path() -> None:
    app = FakeApp()

    async def go(method: str, path: str, root_path: str = "") -> httpx.Response:
        transport = httpx.ASGITransport(app=RetentionMiddleware(app), root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, content='{"retention_ratio": 0.5}', headers=JSON_HEADERS)

    assert asyncio.run(go("GET", CHAT)).status_code == 200
    assert app.received == b'{"retention_ratio": 0.5}'  # only POST is rewritten
    assert asyncio.run(go("POST", "/api" + CHAT, root_path="/api")).status_code == 200
    assert received_json(app) == {"mm_processor_kwargs": {"retention_ratio": 0.5}}


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
def test_non_http_scopes_pass_through(kind: str) -> None:
    calls: list[tuple] = []

    async def app(scope, receive, send):
        calls.append((scope, receive, send))

    async def receive():
        raise AssertionError("the middleware must not read")

    async def send(message):
        raise AssertionError("the middleware must not send")

    scope = {"type": kind, "path": CHAT}
    asyncio.run(RetentionMiddleware(app)(scope, receive, send))
    assert calls == [(scope, receive, send)]


# --- response side -------------------------------------------------------------------------------------------------


def test_usage_visual_tokens_and_headers_for_json_response() -> None:
    app = FakeApp()
    resp = post(app, CHAT, json.dumps({"model": "m", "retention_ratio": 0.5, "images": [100, 51]}))
    assert resp.status_code == 200
    assert int(resp.headers["content-length"]) == len(resp.content)
    body = resp.json()
    assert body["usage"]["visual_tokens"] == {"kept": 75, "total": 151, "images": 2, "videos": 0}
    assert body["usage"]["prompt_tokens"] == 7
    assert resp.headers[HEADER_KEPT] == "75"
    assert resp.headers[HEADER_TOTAL] == "151"


def test_videos_count_with_images_and_alone() -> None:
    app = FakeApp()
    resp = post(app, CHAT, json.dumps({"model": "m", "retention_ratio": 0.5, "images": [100], "videos": [400, 31]}))
    assert resp.json()["usage"]["visual_tokens"] == {"kept": 265, "total": 531, "images": 1, "videos": 2}
    assert resp.headers[HEADER_KEPT] == "265" and resp.headers[HEADER_TOTAL] == "531"
    resp = post(app, CHAT, json.dumps({"model": "m", "retention_ratio": 0.25, "videos": [400]}))
    assert resp.json()["usage"]["visual_tokens"] == {"kept": 100, "total": 400, "images": 0, "videos": 1}


def test_images_at_server_default_ratio_are_reported_too() -> None:
    app = FakeApp()
    resp = post(app, CHAT, json.dumps({"model": "m", "images": [64]}))  # no options: body untouched
    assert resp.json()["usage"]["visual_tokens"] == {"kept": 64, "total": 64, "images": 1, "videos": 0}
    assert resp.headers[HEADER_KEPT] == "64"


def test_no_images_no_stats() -> None:
    app = FakeApp()
    resp = post(app, CHAT, json.dumps({"model": "m", "retention_ratio": 0.5}))
    assert "visual_tokens" not in resp.json()["usage"]
    assert HEADER_KEPT not in resp.headers and HEADER_TOTAL not in resp.headers
    assert int(resp.headers["content-length"]) == len(resp.content)


def test_error_responses_get_headers_but_body_untouched() -> None:
    app = FakeApp()
    resp = post(app, CHAT, json.dumps({"retention_ratio": 0.5, "images": [10], "status": 500}))
    assert resp.status_code == 500
    assert "visual_tokens" not in resp.json()["usage"]
    assert resp.headers[HEADER_KEPT] == "5"


def test_stats_do_not_leak_between_requests_or_to_other_paths() -> None:
    app = FakeApp()
    post(app, CHAT, json.dumps({"retention_ratio": 0.5, "images": [10]}))
    resp = post(app, CHAT, json.dumps({"retention_ratio": 0.5, "images": [20]}))
    assert resp.json()["usage"]["visual_tokens"] == {"kept": 10, "total": 20, "images": 1, "videos": 0}
    resp = post(app, "/v1/chat/completions/render", json.dumps({"images": [20]}))
    assert "visual_tokens" not in resp.json()["usage"] and HEADER_KEPT not in resp.headers


def test_streaming_is_not_buffered_and_gets_headers() -> None:
    """The app only sends its second chunk after the client got the first: buffering would deadlock (timeout)."""
    first_chunk_delivered = asyncio.Event()
    chunks = [b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"]

    async def app(scope, receive, send):
        await receive()
        record_visual_tokens(30, 120)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": chunks[0], "more_body": True})
        await first_chunk_delivered.wait()
        await send({"type": "http.response.body", "body": chunks[1], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)
        if message.get("body") == chunks[0]:
            first_chunk_delivered.set()

    messages = [{"type": "http.request", "body": b'{"stream": true, "retention_ratio": 0.25}', "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": [(b"content-type", b"application/json")]}

    async def go():
        await asyncio.wait_for(RetentionMiddleware(app)(scope, receive, send), timeout=5)

    asyncio.run(go())
    headers = dict(sent[0]["headers"])
    assert headers[HEADER_KEPT.encode()] == b"30" and headers[HEADER_TOTAL.encode()] == b"120"
    assert b"content-length" not in headers
    assert [m.get("body") for m in sent[1:]] == [chunks[0], chunks[1], b""]


def test_installed_on_fastapi_like_vllm_does() -> None:
    """``app.add_middleware(RetentionMiddleware)`` (what ``--middleware`` does) around real FastAPI routes."""
    api = FastAPI()
    api.add_middleware(RetentionMiddleware)
    seen: list[dict] = []

    @api.post(CHAT)
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        record_visual_tokens(4, 16)
        if body.get("stream"):

            async def gen():
                yield "data: 1\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(gen(), media_type="text/event-stream")
        return JSONResponse({"id": "x", "usage": {"prompt_tokens": 3}})

    async def go(payload: dict) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as client:
            return await client.post(CHAT, json=payload)

    resp = asyncio.run(go({"model": "m", "retention_ratio": 0.25}))
    assert seen[-1] == {"model": "m", "mm_processor_kwargs": {"retention_ratio": 0.25}}
    assert resp.json() == {
        "id": "x",
        "usage": {"prompt_tokens": 3, "visual_tokens": {"kept": 4, "total": 16, "images": 1, "videos": 0}},
    }
    assert int(resp.headers["content-length"]) == len(resp.content)
    resp = asyncio.run(go({"model": "m", "stream": True}))
    assert resp.text == "data: 1\n\ndata: [DONE]\n\n"
    assert resp.headers[HEADER_KEPT] == "4" and resp.headers[HEADER_TOTAL] == "16"
    resp = asyncio.run(go({"model": "m", "mm_processor_kwargs": {"max_pixels": 1}}))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "mm_processor_kwargs.max_pixels"
