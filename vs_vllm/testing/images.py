"""Deterministic test images and videos (no files, no network)."""

from __future__ import annotations

import base64
import io

__all__ = ["JpegVideo", "noise_image", "noise_video", "shape_image", "to_data_url"]


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


class JpegVideo:
    """A short video as JPEG frames: what vLLM's ``data:video/jpeg;base64,<frame>,<frame>,...`` URLs carry.

    vLLM decodes each frame with PIL, so :meth:`frames` (PIL over the same bytes) gives the server's exact pixels
    to a transformers reference. ``fps`` is what vLLM assumes for such URLs unless ``media_io_kwargs`` say otherwise.
    """

    fps = 1.0

    def __init__(self, jpegs: list[bytes]) -> None:
        if not jpegs:
            raise ValueError("a video needs at least one frame")
        self.jpegs = jpegs

    def __len__(self) -> int:
        return len(self.jpegs)

    def frames(self):
        """[T, H, W, 3] uint8, decoded as vLLM decodes them."""
        import numpy as np
        from PIL import Image

        return np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in self.jpegs])

    def metadata(self) -> dict:
        """The video metadata vLLM attaches to such a URL (and hands to the HF processor with the frames); a reference
        must pass it too (with ``do_sample_frames=False``), or the processor assumes another frame rate (other
        seconds per temporal patch, other M-RoPE temporal positions, even another resized grid)."""
        return {"total_num_frames": len(self), "fps": self.fps, "duration": len(self) / self.fps,
                "frames_indices": list(range(len(self)))}

    def data_url(self) -> str:
        return "data:video/jpeg;base64," + ",".join(base64.b64encode(j).decode("ascii") for j in self.jpegs)


def noise_video(width: int, height: int, num_frames: int, seed: int = 0, *, quality: int = 95) -> JpegVideo:
    """Uniform-noise frames (every patch of every frame differs), JPEG-encoded once."""
    jpegs = []
    for i in range(num_frames):
        buf = io.BytesIO()
        noise_image(width, height, seed=seed * 1000 + i).save(buf, format="JPEG", quality=quality)
        jpegs.append(buf.getvalue())
    return JpegVideo(jpegs)
