"""vs_vllm.vllm_plugin.media_connector: unreachable media hosts and refused file:// URLs become ValueError (400)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("vllm")

from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.image import ImageMediaIO

from vs_vllm.vllm_plugin.media_connector import CONNECTOR_NAME, ClientErrorMediaConnector, MediaFetchError

UNREACHABLE = "http://127.0.0.1:1/x.jpg"  # port 1: connection refused at once


def _connector(**kw) -> MediaConnector:
    return MEDIA_CONNECTOR_REGISTRY.load(CONNECTOR_NAME, **kw)


def test_registered_under_its_name() -> None:
    assert isinstance(_connector(), ClientErrorMediaConnector)


@pytest.mark.slow  # waits out two 5 s fetch timeouts
def test_unreachable_host_is_a_client_error_sync_and_async() -> None:
    connector = _connector()
    with pytest.raises(MediaFetchError, match="127.0.0.1:1"):
        connector.load_from_url(UNREACHABLE, ImageMediaIO(), fetch_timeout=5)
    with pytest.raises(MediaFetchError, match="127.0.0.1:1"):
        asyncio.run(connector.load_from_url_async(UNREACHABLE, ImageMediaIO(), fetch_timeout=5))


def test_file_urls_without_an_allowed_path_or_missing_files(tmp_path) -> None:
    with pytest.raises(MediaFetchError, match="--allowed-local-media-path"):
        _connector().load_from_url("file:///etc/hostname", ImageMediaIO())
    with pytest.raises(MediaFetchError, match="Cannot read"):
        _connector(allowed_local_media_path=str(tmp_path)).load_from_url(f"file://{tmp_path}/missing.png",
                                                                         ImageMediaIO())
    # vLLM's own ValueError for a path outside the allowed directory is left as it is
    with pytest.raises(ValueError, match="subpath"):
        _connector(allowed_local_media_path=str(tmp_path)).load_from_url("file:///etc/hostname", ImageMediaIO())


def test_other_failures_keep_vllms_behaviour() -> None:
    with pytest.raises(Exception) as info:  # undecodable bytes in a data URL: vLLM's own error, not ours
        _connector().load_from_url("data:image/png;base64,AAAA", ImageMediaIO())
    assert not isinstance(info.value, MediaFetchError)
