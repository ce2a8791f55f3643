"""ASGI middleware that turns per-request selection options into vLLM ``mm_processor_kwargs`` and reports the result.

Installed with ``vllm serve ... --trust-request-mm-kwargs --middleware
vs_vllm.vllm_plugin.middleware.RetentionMiddleware`` (``vs-vllm serve`` adds both). vLLM adds it last, so it is the
outermost layer and sees the raw request.

Requests: on ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/responses`` the JSON body may carry the
selection options (``OPTION_NAMES``: ``retention_ratio``, ``selection_method``, ``selection_seed``,
``selection_lambda``, ``video_retention_ratio``) at the top level and/or inside ``mm_processor_kwargs``. They are
validated (400 with an OpenAI-style error body naming the field on a bad value), the top-level fields are removed,
and ``mm_processor_kwargs`` is *replaced* by exactly the validated options. A body without any option is passed on
byte for byte; a body that is not a JSON object is passed on unchanged (vLLM answers it).

Allowlist: ``--trust-request-mm-kwargs`` is needed for the options to reach the processor, but it opens every
endpoint (render, tokenize, pooling, batch, ...) to arbitrary ``mm_processor_kwargs`` (``max_pixels``, ...) and
``media_io_kwargs``. So on *every* JSON POST, a ``mm_processor_kwargs`` key other than the selection options, a bad
option value there, or a non-empty ``media_io_kwargs`` is answered with 400 (other paths are otherwise untouched).

Responses (the three paths above): the downstream app runs inside
:func:`vs_vllm.vllm_plugin.request_stats.collecting`. If the multimodal processor recorded visual tokens by the time
the response starts, the headers ``x-vs-visual-tokens-kept`` and ``x-vs-visual-tokens-total`` are added (streaming
included), and a 200 JSON response with a ``usage`` object gets ``usage.visual_tokens = {"kept": K, "total": N,
"images": I, "videos": V}``. Streams (``text/event-stream``) are never buffered.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from vs_vllm.vllm_plugin import request_stats
from vs_vllm.vllm_plugin.options import OPTION_NAMES, SEED, OptionError, parse_options

__all__ = ["HEADER_KEPT", "HEADER_TOTAL", "TARGET_PATHS", "RetentionMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TARGET_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
MM_KWARGS = "mm_processor_kwargs"
MEDIA_IO_KWARGS = "media_io_kwargs"
_GUARD_NEEDLES = (MM_KWARGS.encode(), MEDIA_IO_KWARGS.encode(), b"\\u")
_TARGET_NEEDLES = tuple(name.encode() for name in OPTION_NAMES) + _GUARD_NEEDLES
HEADER_KEPT = "x-vs-visual-tokens-kept"
HEADER_TOTAL = "x-vs-visual-tokens-total"


class _BadRequest(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def _route_path(scope: Scope) -> str:
    """The path the router matches (``scope['path']`` without ``root_path``, as Starlette does)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "") or ""
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return path


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _replace_headers(headers: Any, drop: set[bytes], add: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = [(bytes(k), bytes(v)) for k, v in headers if bytes(k).lower() not in drop]
    out.extend(add)
    return out


def _is_json_media(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


def _dumps(obj: object) -> bytes:
    # Same style as Starlette's JSONResponse; NaN is allowed only so a body we did not validate never fails to encode.
    return json.dumps(obj, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode("utf-8")


def _error_body(param: str, message: str) -> bytes:
    # vLLM's ErrorResponse(error=ErrorInfo(message, type, param, code)).model_dump() for a 400.
    return _dumps({"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}})


def _check_media_io(body: dict[str, Any]) -> None:
    if body.get(MEDIA_IO_KWARGS):
        raise _BadRequest(
            MEDIA_IO_KWARGS,
            f"Per-request {MEDIA_IO_KWARGS} are not accepted by this server (the vs-vllm middleware only lets "
            f"{', '.join(OPTION_NAMES)} through)",
        )


def _mm_options(body: dict[str, Any]) -> dict[str, object] | None:
    """The options inside ``mm_processor_kwargs`` (None when absent or null); refuses any other key."""
    mm = body.get(MM_KWARGS)
    if mm is None:
        return None
    if not isinstance(mm, dict):
        raise _BadRequest(MM_KWARGS, f"{MM_KWARGS} must be a JSON object, got {type(mm).__name__}")
    foreign = [str(k) for k in mm if k not in OPTION_NAMES]
    if foreign:
        raise _BadRequest(
            f"{MM_KWARGS}.{foreign[0]}",
            f"{MM_KWARGS} may only contain {', '.join(OPTION_NAMES)}; not allowed: {', '.join(foreign)}",
        )
    return dict(mm)


def _validated(values: dict[str, object]) -> dict[str, object]:
    """``values`` (option names only) validated and normalised; raises _BadRequest naming the field."""
    try:
        opts = parse_options(values)
    except OptionError as exc:
        raise _BadRequest(exc.param, str(exc)) from None
    return {name: getattr(opts, name) for name in OPTION_NAMES if name in values}


def check_request(body: dict[str, Any]) -> None:
    """The guard for every other JSON POST: ``--trust-request-mm-kwargs`` applies to all of vLLM's endpoints
    (render, tokenize, pooling, batch, ...), so ``mm_processor_kwargs`` may hold only valid selection options and
    ``media_io_kwargs`` must be empty there too. Raises :class:`_BadRequest`; never changes the body."""
    _check_media_io(body)
    inner = _mm_options(body)
    if inner:
        _validated(inner)


def rewrite_request(body: dict[str, Any]) -> dict[str, Any] | None:
    """The rewritten body of a target request, or None when it carries no selection option (leave it untouched).

    Raises :class:`_BadRequest` for a bad option value, a foreign ``mm_processor_kwargs`` key, non-empty
    ``media_io_kwargs``, or an option given at the top level and in ``mm_processor_kwargs`` with different values.
    """
    _check_media_io(body)
    top = {name: body[name] for name in OPTION_NAMES if name in body}
    inner = _mm_options(body)
    if not top and inner is None:
        return None
    top_ok = _validated(top)
    inner_ok = _validated(inner or {})
    for name in OPTION_NAMES:
        if name in top_ok and name in inner_ok and top_ok[name] != inner_ok[name]:
            raise _BadRequest(
                name,
                f"{name} is given both at the top level ({top[name]!r}) and in {MM_KWARGS} "
                f"({(inner or {})[name]!r}) with different values",
            )
    merged = {**inner_ok, **top_ok}
    if SEED in merged and merged[SEED] is None:  # an explicit null seed means "no seed"
        del merged[SEED]
    new_body = {k: v for k, v in body.items() if k not in OPTION_NAMES and k != MM_KWARGS}
    if merged:
        new_body[MM_KWARGS] = {name: merged[name] for name in OPTION_NAMES if name in merged}
    return new_body


def _worth_parsing(body: bytes, target: bool) -> bool:
    """Cheap pre-check: can this body hold a key we act on? A JSON key can only hide behind \\u escapes."""
    needles = _TARGET_NEEDLES if target else _GUARD_NEEDLES
    return any(needle in body for needle in needles)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] == "http.request":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                return b"".join(chunks)


class RetentionMiddleware:
    """Pure ASGI middleware; see the module docstring. ``app.add_middleware(RetentionMiddleware)``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method", "").upper() != "POST":
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers", []))
        if not _is_json_media(_header(headers, b"content-type")):
            await self.app(scope, receive, send)  # vLLM refuses non-JSON bodies itself (415/400)
            return
        target = _route_path(scope) in TARGET_PATHS

        body = await _read_body(receive)
        if body is None:
            return  # the client left before it finished sending; nobody to answer
        if _worth_parsing(body, target):
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                parsed = None  # vLLM answers malformed JSON itself
            if isinstance(parsed, dict):
                try:
                    new_body = rewrite_request(parsed) if target else check_request(parsed)
                except _BadRequest as exc:
                    await _send_error(send, exc.param, exc.message)
                    return
                if new_body is not None:
                    body = _dumps(new_body)
                    scope = dict(scope)
                    scope["headers"] = _replace_headers(
                        headers,
                        {b"content-length", b"transfer-encoding"},
                        [(b"content-length", str(len(body)).encode("ascii"))],
                    )

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for http.disconnect, as vLLM's cancellation watcher expects

        if not target:
            await self.app(scope, replay, send)
            return
        with request_stats.collecting() as stats:
            await self.app(scope, replay, _StatsSender(send, stats))


async def _send_error(send: Send, param: str, message: str) -> None:
    payload = _error_body(param, message)
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class _StatsSender:
    """Wraps ``send``: adds the visual-token headers and, for a 200 JSON answer, ``usage.visual_tokens``."""

    def __init__(self, send: Send, stats: request_stats.VisualTokenStats) -> None:
        self._send = send
        self._stats = stats
        self._start: Message | None = None  # held back while buffering a JSON body
        self._chunks: list[bytes] = []
        self._snapshot: tuple[int, int, int, int] | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._on_start(message)
        elif kind == "http.response.body" and self._start is not None:
            self._chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                await self._flush()
        else:
            await self._send(message)

    async def _on_start(self, message: Message) -> None:
        stats = self._stats
        if stats.items <= 0:
            await self._send(message)
            return
        self._snapshot = (stats.kept, stats.total, stats.images, stats.videos)
        headers = list(message.get("headers", []))
        extra = [(HEADER_KEPT.encode(), str(stats.kept).encode()), (HEADER_TOTAL.encode(), str(stats.total).encode())]
        message = {
            **message,
            "headers": _replace_headers(headers, {HEADER_KEPT.encode(), HEADER_TOTAL.encode()}, extra),
        }
        if (
            message.get("status") == 200
            and _is_json_media(_header(message["headers"], b"content-type"))
            and _header(message["headers"], b"content-encoding") is None
            and not message.get("trailers", False)
        ):
            self._start = message
            return
        await self._send(message)

    async def _flush(self) -> None:
        assert self._start is not None and self._snapshot is not None
        start, self._start = self._start, None
        body = b"".join(self._chunks)
        self._chunks = []
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
            kept, total, images, videos = self._snapshot
            parsed["usage"]["visual_tokens"] = {"kept": kept, "total": total, "images": images, "videos": videos}
            body = _dumps(parsed)
        start = {
            **start,
            "headers": _replace_headers(
                start["headers"], {b"content-length"}, [(b"content-length", str(len(body)).encode())]
            ),
        }
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
