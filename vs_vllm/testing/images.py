"""Deterministic test images (no files, no network)."""

from __future__ import annotations

import base64
import io

__all__ = ["noise_image", "shape_image", "to_data_url"]


def noise_image(width: int, height: int, seed: int = 0):
    """RGB uniform noise: every patch differs, so vision outputs (and greedy tokens) depend on the image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def shape_image(width: int = 224, height: int = 224, colour: tuple[int, int, int] = (220, 30, 30)):
    """A coloured disc on a grey background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    r = min(width, height) // 4
    cx, cy = width // 2, height // 2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    return img


def to_data_url(image, fmt: str = "PNG") -> str:
    """``data:image/png;base64,...`` URL for an OpenAI ``image_url`` content part."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
