"""LLaVA-style conversation data for training the scorer on a frozen Qwen2.5-VL.

Accepted records (a JSON list, or JSON Lines with one record per line)::

    {"image": "a.jpg" | ["a.jpg", "b.jpg"],            # also "images"; optional (text-only records are allowed)
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"},
                       {"from": "gpt", "value": "Answer"}, ...]}

    {"images": [...], "messages": [{"role": "user", "content": "<image>\\nQuestion" | [{"type": "image"},
                                                                                      {"type": "text", "text": ...}]},
                                   {"role": "assistant", "content": "Answer"}, ...]}

Relative image paths resolve against ``image_root`` (default: the data file's directory). Each ``<image>`` tag (or
``{"type": "image"}`` item) takes the next image in order; a record whose text has no tag at all gets its images put
in front of the first user turn (the LLaVA convention). Tags and images must otherwise match one to one.

The prompt is rendered with the processor's chat template and tokenised by the processor itself (images ->
``pixel_values``, ``image_grid_thw``, expanded ``<|image_pad|>`` runs, ``mm_token_type_ids``). Labels are -100 except
on the assistant answers and the ``<|im_end|>`` closing each: the answer spans are found by rendering the conversation
prefix up to each assistant turn (with and without that turn), and mapped onto tokens through the tokenizer's
character offsets (adjusted for the image-token expansion).

Problems in the data raise ValueError naming the file, the record index (0-based) and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TAG",
    "ConversationDataset",
    "Record",
    "collate_batch",
    "load_records",
    "parse_record",
]

IGNORE_INDEX = -100
IMAGE_TAG = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Record:
    """One parsed conversation: chat-template messages (content as item lists) and resolved image paths."""

    index: int
    messages: list[dict[str, Any]]
    images: list[Path] = field(default_factory=list)
    image_field: str = "image"  # the record's key for its images, for error messages


def _err(source: str, index: int, fieldname: str, msg: str) -> ValueError:
    return ValueError(f"{source}: record {index}: field {fieldname!r}: {msg}")


def load_records(path: str | os.PathLike) -> list[Any]:
    """Raw records from a ``.json`` file (a list of records) or a ``.jsonl`` file (one record per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if path.suffix.lower() == ".json":
                raise ValueError(f"{path}: not valid JSON ({exc})") from None
            data = None  # neither suffix: fall back to JSON Lines
        if data is not None:
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
            return data
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {lineno} (record {len(records)}): not valid JSON ({exc})") from None
    return records


def _split_tags(text: str) -> list[dict[str, Any]]:
    """Text with ``<image>`` tags -> content items (text kept verbatim, as the reference does)."""
    items: list[dict[str, Any]] = []
    for i, part in enumerate(text.split(IMAGE_TAG)):
        if i > 0:
            items.append({"type": "image"})
        if part:
            items.append({"type": "text", "text": part})
    return items


def _content_items(content: Any, where: str, err) -> tuple[list[dict[str, Any]], list[str]]:
    """Normalise one message's content; also return image paths given inline in the items."""
    if isinstance(content, str):
        return _split_tags(content), []
    if not isinstance(content, list):
        raise err(where, f"content must be a string or a list of items, got {type(content).__name__}")
    items: list[dict[str, Any]] = []
    inline: list[str] = []
    for j, item in enumerate(content):
        if isinstance(item, str):
            items.extend(_split_tags(item))
            continue
        if not isinstance(item, Mapping):
            raise err(where, f"content item {j} must be an object, got {type(item).__name__}")
        kind = item.get("type")
        if kind == "image" or (kind is None and "image" in item):
            items.append({"type": "image"})
            if isinstance(item.get("image"), str):
                inline.append(item["image"])
        elif kind == "text" or (kind is None and "text" in item):
            text = item.get("text")
            if not isinstance(text, str):
                raise err(where, f"content item {j} has no string 'text'")
            items.extend(_split_tags(text))
        else:
            raise err(where, f"content item {j} has unsupported type {kind!r} (images and text only)")
    return items, inline


def parse_record(raw: Any, index: int, image_root: str | os.PathLike, source: str = "data") -> Record:
    """Validate one raw record and turn it into chat messages plus image paths (ValueError names the field)."""

    def err(fieldname: str, msg: str) -> ValueError:
        return _err(source, index, fieldname, msg)

    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: record {index}: expected an object, got {type(raw).__name__}")

    # Conversation.
    if "conversations" in raw:
        key, turns, role_key, text_key = "conversations", raw["conversations"], "from", "value"
    elif "messages" in raw:
        key, turns, role_key, text_key = "messages", raw["messages"], "role", "content"
    else:
        raise err("conversations", "missing (expected 'conversations' with from/value or 'messages' with role/content)")
    if not isinstance(turns, list) or not turns:
        raise err(key, "must be a non-empty list of turns")
    messages: list[dict[str, Any]] = []
    inline_images: list[str] = []
    for t, turn in enumerate(turns):
        where = f"{key}[{t}]"
        if not isinstance(turn, Mapping):
            raise err(where, f"must be an object, got {type(turn).__name__}")
        if role_key not in turn:
            raise err(f"{where}.{role_key}", "missing")
        role = _ROLES.get(str(turn[role_key]).lower())
        if role is None:
            raise err(f"{where}.{role_key}", f"unknown role {turn[role_key]!r} (use one of {sorted(_ROLES)})")
        if text_key not in turn:
            raise err(f"{where}.{text_key}", "missing")
        items, inline = _content_items(turn[text_key], f"{where}.{text_key}", err)
        if role != "user" and any(it["type"] == "image" for it in items):
            raise err(f"{where}.{text_key}", f"images are only supported in user turns, not {role}")
        if role == "assistant" and not any(it["type"] == "text" and it["text"].strip() for it in items):
            raise err(f"{where}.{text_key}", "assistant answer is empty")
        inline_images.extend(inline)
        messages.append({"role": role, "content": items})
    if not any(m["role"] == "assistant" for m in messages):
        raise err(key, "has no assistant answer to train on")

    # Images.
    img_key = "image" if "image" in raw else ("images" if "images" in raw else None)
    paths: list[str]
    if img_key is None:
        paths = inline_images
        img_key = "image"
    else:
        value = raw[img_key]
        if value is None:
            paths = []
        elif isinstance(value, str):
            paths = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            paths = list(value)
        else:
            raise err(img_key, "must be a path string or a list of path strings")
        if inline_images and inline_images != paths:
            raise err(img_key, "conflicts with the image paths given inside the messages")
    n_tags = sum(it["type"] == "image" for m in messages for it in m["content"])
    if n_tags == 0 and paths:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise err(key, "has images but no user turn to attach them to")
        first_user["content"] = [{"type": "image"} for _ in paths] + first_user["content"]
    elif n_tags != len(paths):
        raise err(img_key, f"{len(paths)} image(s) given but the conversation has {n_tags} {IMAGE_TAG} tag(s)")
    root = Path(image_root)
    resolved = []
    for p in paths:
        path = Path(p).expanduser()
        resolved.append(path if path.is_absolute() else root / path)
    return Record(index=index, messages=messages, images=resolved, image_field=img_key)


def _open_image(path: Path, source: str, index: int, fieldname: str):
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise _err(source, index, fieldname, f"cannot read image {str(path)!r}: {exc}") from None


class ConversationDataset(torch.utils.data.Dataset):
    """Tokenised training samples: ``input_ids``, ``attention_mask``, ``labels``, ``mm_token_type_ids`` ([L] each),
    ``pixel_values`` ([P, C] or None) and ``image_grid_thw`` ([n_images, 3] or None).

    Records are validated (fields, image count, image files exist) when the dataset is built; images are decoded and
    tokenised lazily in ``__getitem__`` (an unreadable image raises ValueError there). ``min_pixels``/``max_pixels``
    override the processor's resize bounds (the reference trains with at most 50,176 pixels, i.e. 64 tokens, per image).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        processor: Any,
        image_root: str | os.PathLike | None = None,
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        check_files: bool = True,
    ) -> None:
        self.path = Path(path)
        self.source = str(self.path)
        self.processor = processor
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        raws = load_records(self.path)
        if not raws:
            raise ValueError(f"{self.path}: no records")
        self.records = [parse_record(r, i, self.image_root, self.source) for i, r in enumerate(raws)]
        if check_files:
            for rec in self.records:
                for j, img in enumerate(rec.images):
                    if not img.is_file():
                        raise _err(self.source, rec.index, rec.image_field, f"image {j} not found: {str(img)!r}")
        self.image_token = getattr(processor, "image_token", "<|image_pad|>")
        merge = getattr(processor.image_processor, "merge_size", 2)
        self.merge_length = int(merge) ** 2
        self.images_kwargs: dict[str, Any] = {}
        if min_pixels is not None or max_pixels is not None:
            size = dict(getattr(processor.image_processor, "size", None) or {})
            lo = min_pixels if min_pixels is not None else size.get("shortest_edge")
            hi = max_pixels if max_pixels is not None else size.get("longest_edge")
            if lo is not None and hi is not None and int(lo) > int(hi):
                raise ValueError(f"min_pixels ({lo}) must not exceed max_pixels ({hi})")
            self.images_kwargs["size"] = {"shortest_edge": int(lo), "longest_edge": int(hi)}

    def __len__(self) -> int:
        return len(self.records)

    def _render(self, messages: Sequence[Mapping[str, Any]], generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt
        )

    def answer_spans(self, record: Record) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans [start, end) of each assistant answer + end marker."""
        text = self._render(record.messages)
        spans = []
        for i, msg in enumerate(record.messages):
            if msg["role"] != "assistant":
                continue
            prefix = self._render(record.messages[:i], generation_prompt=True)
            upto = self._render(record.messages[: i + 1])
            if not (upto.startswith(prefix) and text.startswith(upto)):
                raise _err(
                    self.source, record.index, "conversations",
                    "the chat template does not render conversation prefixes consistently; cannot locate answer "
                    f"{i} for the labels",
                )
            end = len(upto.rstrip())
            if end > len(prefix):
                spans.append((len(prefix), end))
        return text, spans

    def __getitem__(self, idx: int) -> dict[str, Any]:
        record = self.records[idx]
        text, spans = self.answer_spans(record)
        images = [_open_image(p, self.source, record.index, record.image_field) for p in record.images]
        kwargs: dict[str, Any] = dict(text=[text], return_tensors="pt", return_offsets_mapping=True)
        if images:
            kwargs["images"] = images
            kwargs.update(self.images_kwargs)
        try:
            out = self.processor(**kwargs)
        except Exception as exc:  # surface which record broke the processor
            raise ValueError(f"{self.source}: record {record.index}: processor failed: {exc}") from exc
        input_ids = out["input_ids"][0]
        offsets = out["offset_mapping"][0].tolist()

        # Character offsets refer to the text after each image token became N_j copies: shift the spans accordingly.
        counts = []
        if images:
            counts = (out["image_grid_thw"].prod(-1) // self.merge_length).tolist()
        pads = []
        start = text.find(self.image_token)
        while start != -1:
            pads.append(start)
            start = text.find(self.image_token, start + len(self.image_token))
        if len(pads) != len(counts):
            raise ValueError(
                f"{self.source}: record {record.index}: rendered prompt has {len(pads)} image token(s) for "
                f"{len(counts)} image(s)"
            )
        width = len(self.image_token)

        def expand(pos: int) -> int:
            return pos + sum((n - 1) * width for p, n in zip(pads, counts) if p < pos)

        exp_spans = [(expand(a), expand(b)) for a, b in spans]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for t, (a, b) in enumerate(offsets):
            if b > a and any(s <= a < e for s, e in exp_spans):
                labels[t] = input_ids[t]
        if not bool((labels != IGNORE_INDEX).any()):
            raise ValueError(f"{self.source}: record {record.index}: no answer tokens found for the labels")

        mm = out.get("mm_token_type_ids")
        if mm is None:
            mm = (input_ids == self.processor.image_token_id).long()[None]
        return {
            "input_ids": input_ids,
            "attention_mask": out["attention_mask"][0],
            "labels": labels,
            "mm_token_type_ids": mm[0].long(),
            "pixel_values": out["pixel_values"] if images else None,
            "image_grid_thw": out["image_grid_thw"] if images else None,
            "index": record.index,
        }


def collate_batch(samples: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch. Images are concatenated in sample order (the order of their tokens in the batch);
    ``images_per_sample`` says how many belong to each sample."""
    if not samples:
        raise ValueError("empty batch")
    length = max(int(s["input_ids"].shape[0]) for s in samples)
    bsz = len(samples)
    input_ids = torch.full((bsz, length), int(pad_token_id), dtype=torch.long)
    attention = torch.zeros((bsz, length), dtype=torch.long)
    labels = torch.full((bsz, length), IGNORE_INDEX, dtype=torch.long)
    mm_types = torch.zeros((bsz, length), dtype=torch.long)
    pixels, grids, per_sample = [], [], []
    for b, s in enumerate(samples):
        n = int(s["input_ids"].shape[0])
        input_ids[b, :n] = s["input_ids"]
        attention[b, :n] = s["attention_mask"]
        labels[b, :n] = s["labels"]
        mm_types[b, :n] = s["mm_token_type_ids"]
        if s.get("image_grid_thw") is not None:
            pixels.append(s["pixel_values"])
            grids.append(s["image_grid_thw"])
            per_sample.append(int(s["image_grid_thw"].shape[0]))
        else:
            per_sample.append(0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "mm_token_type_ids": mm_types,
        "pixel_values": torch.cat(pixels) if pixels else None,
        "image_grid_thw": torch.cat(grids) if grids else None,
        "images_per_sample": per_sample,
        "indices": [int(s["index"]) for s in samples],
    }
