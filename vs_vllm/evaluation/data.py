"""Evaluation samples from JSONL, validated up front so a bad file fails before any request is sent.

One JSON object per line, in either form:

- eval records: ``{"image": PATH_OR_URL, "question": TEXT, "answer": TEXT}`` or ``"answers": [TEXT, ...]``
  (optional ``"id"``, ``"meta"``);
- LLaVA records: ``{"image": PATH, "conversations": [{"from": "human", "value": "<image>\\nQUESTION"},
  {"from": "gpt", "value": ANSWER}]}`` (the first human/gpt pair is used).

Relative image paths resolve against ``image_root`` (default: the JSONL file's directory). ``http(s)://`` and
``data:`` URLs are passed to the server unchanged; local files must open as images.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vs_vllm.evaluation.errors import EvalError

__all__ = ["EvalSample", "load_samples"]

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}


@dataclass
class EvalSample:
    id: str
    image: str  # the resolved path or URL, as given
    question: str
    answers: list[str]
    image_url: str = ""  # what goes into the request (a data URL for local files)
    meta: dict[str, Any] = field(default_factory=dict)


def _question_answer(rec: dict[str, Any], where: str) -> tuple[str, list[str]]:
    if "conversations" in rec:
        conv = rec["conversations"]
        if not isinstance(conv, list):
            raise EvalError(f"{where}: 'conversations' must be a list")
        human = next((t for t in conv if isinstance(t, dict) and t.get("from") in ("human", "user")), None)
        gpt = next((t for t in conv if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")), None)
        if human is None or not isinstance(human.get("value"), str):
            raise EvalError(f"{where}: 'conversations' has no human turn with a 'value'")
        if gpt is None or not isinstance(gpt.get("value"), str):
            raise EvalError(f"{where}: 'conversations' has no gpt turn with a 'value' (the answer)")
        question = human["value"].replace("<image>", "").strip()
        return question, [gpt["value"].strip()]
    if not isinstance(rec.get("question"), str) or not rec["question"].strip():
        raise EvalError(f"{where}: missing field 'question' (or 'conversations')")
    if "answers" in rec:
        answers = rec["answers"]
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, (str, int, float)) for a in answers):
            raise EvalError(f"{where}: 'answers' must be a non-empty list of strings")
        return rec["question"], [str(a) for a in answers]
    if "answer" in rec and isinstance(rec["answer"], (str, int, float)):
        return rec["question"], [str(rec["answer"])]
    raise EvalError(f"{where}: missing field 'answer' (or 'answers')")


def _image_url(path: Path, where: str) -> str:
    """A data URL of the file's own bytes, after checking that it decodes as an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EvalError(f"{where}: cannot read image {path}: {exc.strerror or exc}") from None
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise EvalError(f"{where}: cannot read image {path}: {exc}") from None
    mime = _MIME.get(fmt or "", "image/png")
    if fmt not in _MIME:  # re-encode anything a server may not know as PNG
        buf = io.BytesIO()
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def load_samples(
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    encode_images: bool = True,
) -> list[EvalSample]:
    """Read and validate ``path``; raises :class:`EvalError` with ``FILE:LINE: what is wrong`` on bad input."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"data file not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    if image_root is not None and not root.is_dir():
        raise EvalError(f"--image-root is not a directory: {root}")
    samples: list[EvalSample] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read data file {path}: {exc}") from None
    for line_no, line in enumerate(lines, 1):
        if limit is not None and len(samples) >= limit:
            break
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise EvalError(f"{where}: expected a JSON object")
        image = rec.get("image")
        if isinstance(image, list) and len(image) == 1:
            image = image[0]
        if not isinstance(image, str) or not image:
            raise EvalError(f"{where}: missing field 'image'")
        question, answers = _question_answer(rec, where)
        if image.startswith(("http://", "https://", "data:")):
            resolved, url = image, image
        else:
            file = Path(image) if os.path.isabs(image) else root / image
            resolved = str(file)
            url = _image_url(file, where) if encode_images else ""
        samples.append(EvalSample(
            id=str(rec.get("id", f"{path.stem}-{line_no}")), image=resolved, question=question, answers=answers,
            image_url=url, meta=rec.get("meta") if isinstance(rec.get("meta"), dict) else {},
        ))
    if not samples:
        raise EvalError(f"no samples in {path}")
    return samples


def parse_list(text: str, kind: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise EvalError(f"--{kind} is empty")
    return items


def parse_ratios(text: str) -> list[float]:
    out: list[float] = []
    for item in parse_list(text, "ratios"):
        try:
            r = float(item)
        except ValueError:
            raise EvalError(f"--ratios: {item!r} is not a number") from None
        if not 0.0 < r <= 1.0:
            raise EvalError(f"--ratios: {r} is outside (0, 1]")
        if r not in out:
            out.append(r)
    return out


def dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))
