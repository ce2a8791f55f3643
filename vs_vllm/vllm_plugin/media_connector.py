"""A media connector that answers client mistakes in media URLs with 400 instead of vLLM's 500.

vLLM fetches the image / video URLs of a request through the connector named by ``VLLM_MEDIA_CONNECTOR`` (default
``http``), chosen from ``MEDIA_CONNECTOR_REGISTRY`` -- vLLM's documented extension point for connectors. Its own
connector lets a host that cannot be reached (connection refused, DNS failure, timeout) and a ``file://`` URL on a
server without ``--allowed-local-media-path`` escape as non-validation errors, which the OpenAI server answers with
500 InternalServerError: a client error reported as a server fault, which clients and load balancers then retry.
:class:`ClientErrorMediaConnector` (registered as ``vs_vllm``; ``vs-vllm serve`` selects it unless the environment
names another connector) raises ``ValueError`` for exactly those cases, which vLLM answers with 400 BadRequestError
and the message. Everything else (a 4xx/5xx from the media host, vLLM's own validation errors, undecodable bytes)
keeps vLLM's behaviour.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector

__all__ = ["CONNECTOR_NAME", "ClientErrorMediaConnector", "MediaFetchError"]

CONNECTOR_NAME = "vs_vllm"


class MediaFetchError(ValueError):
    """A media URL the server could not fetch for a reason the client controls (vLLM answers ValueError with 400)."""


def _unreachable(exc: BaseException) -> bool:
    """Connection-level failures to reach the URL's host: refused, DNS, reset, timeout (not an HTTP status)."""
    import aiohttp

    if isinstance(exc, (aiohttp.ClientConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    try:
        import requests
    except ImportError:  # pragma: no cover - vLLM depends on requests
        return False
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def _fetch_error(url: str, exc: BaseException) -> MediaFetchError:
    shown = url if len(url) <= 200 else url[:200] + "..."
    return MediaFetchError(f"Cannot fetch media from {shown}: {exc}")


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
class ClientErrorMediaConnector(MediaConnector):
    def load_from_url(self, url: str, media_io: Any, *, fetch_timeout: int | None = None):
        try:
            return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)
        except Exception as exc:
            if _unreachable(exc):
                raise _fetch_error(url, exc) from exc
            raise

    async def load_from_url_async(self, url: str, media_io: Any, *, fetch_timeout: int | None = None):
        try:
            return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
        except Exception as exc:
            if _unreachable(exc):
                raise _fetch_error(url, exc) from exc
            raise

    def _load_file_url(self, url_spec: Any, media_io: Any):
        try:
            return super()._load_file_url(url_spec, media_io)
        except RuntimeError as exc:  # "Cannot load local files without `--allowed-local-media-path`."
            raise MediaFetchError(str(exc)) from exc
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:  # inside the allowed directory
            raise MediaFetchError(f"Cannot read {url_spec.path}: {exc.strerror or exc}") from exc
