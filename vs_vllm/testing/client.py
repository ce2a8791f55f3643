"""OpenAI-client helpers for talking to a vLLM server with images (tests, demo, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vs_vllm.testing.images import to_data_url

__all__ = ["chat_messages", "openai_client"]


def openai_client(base_url: str, *, timeout: float = 300.0, async_client: bool = False):
    import openai

    cls = openai.AsyncOpenAI if async_client else openai.OpenAI
    return cls(base_url=f"{base_url}/v1", api_key="EMPTY", timeout=timeout, max_retries=0)


def chat_messages(images: Sequence[Any], question: str, videos: Sequence[Any] = (), *,
                  videos_first: bool = False) -> list[dict[str, Any]]:
    """One user turn: the images, then the videos (``JpegVideo``; before the images with ``videos_first``), as data
    URLs, followed by the question."""
    image_parts = [{"type": "image_url", "image_url": {"url": to_data_url(img)}} for img in images]
    video_parts = [{"type": "video_url", "video_url": {"url": video.data_url()}} for video in videos]
    content: list[dict[str, Any]] = video_parts + image_parts if videos_first else image_parts + video_parts
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]
