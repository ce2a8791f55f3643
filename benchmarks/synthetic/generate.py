"""Synthetic "what colour is the striped shape?" VQA data, built to mislead training-free token-pruning heuristics.

Each image (224x224 by default, so 8x8 = 64 LLM tokens of 28 px; ``--arch qwen3_vl``: 256x256, 8x8 tokens of 32 px,
every size scaled by 8/7, see ARCH_PRESETS) holds:

- ONE target: a shape (circle, square or triangle, 34-46 px, i.e. 2-4 LLM tokens) filled with stripes that alternate
  a saturated palette colour (65% of each stripe pair) with white, at a random angle;
- several *coloured decoys*: solid shapes in palette colours drawn independently of the target's colour (repeats
  allowed), so they say nothing about the answer;
- achromatic distractors: grey shapes in many textures (stripes, checkers, dots, noise, outlines) and solid bright
  white ones with a dark rim, on a textured grey background.

The benchmark question is always "What colour is the striped shape?" and the answer is one colour word (every palette
word is a single token of the tiny tokenizer). Only the tokens covering the target carry the answer, and the scene is
built so that a question-agnostic heuristic has many better-looking candidates:

- ``norm``: the saturated solid decoys and the white distractors have the most extreme pixel values, the usual source
  of large-norm tokens;
- ``divprune`` / ``dart``: decoys in up to eight hues plus many grey textures give a diversity criterion a dozen
  distinct candidates besides the target;
- ``uniform`` / ``random``: the target's position is uniform over the image.

A learned scorer can single out "coloured AND striped" from a token's own embedding; the heuristics cannot know that
the question cares about stripes. ``target_style="solid"`` with ``coloured_decoys=0`` gives the earlier, easier scene
(one solid coloured shape among grey distractors, "What colour is the coloured shape?"), in which the target is also
the most salient token, so the heuristics keep it.

The train split draws its number of coloured decoys per image (``train_coloured_decoys``, 0-6 by default) so that a
model trained from scratch can start on images where the target is the only coloured object (see train_base.py's
``--curriculum``); the test split always has ``coloured_decoys`` (6).

Mixed question types (``*_mixed*.jsonl``) for multi-task experiments: "What shape is the striped shape?", "Is there a
red square?" (about the coloured shapes, balanced yes/no), "Is there a white triangle?", "Is there a checkered
circle?".

The data is deterministic per seed: the same arguments give byte-identical PNGs and JSONL files.

Files written under ``out_dir``::

    images/{split}_{i:05d}.png
    {split}.jsonl        LLaVA-style records: {"id", "image", "conversations": [{"from": "human", "value":
                         "<image>\\nQUESTION"}, {"from": "gpt", "value": ANSWER}]} (what `vs-vllm train` reads)
    {split}_eval.jsonl   {"id", "image", "question", "answer", "meta"} (what `vs-vllm eval` reads; it reads the LLaVA
                         files too); meta has the target's colour, shape, bbox and the LLM-token cells it covers
    {split}_mixed.jsonl, {split}_mixed_eval.jsonl   the same with one record per image and question type
    dataset.json         the generation arguments, counts, palette, the question and GENERATOR_VERSION

Usage: python benchmarks/synthetic/generate.py OUT_DIR --train 4000 --test 500 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vs_vllm.testing.tiny_models import to_jsonable

__all__ = [
    "ARCH_PRESETS",
    "DEFAULT_TASKS",
    "GENERATOR_VERSION",
    "PALETTE",
    "QUESTIONS",
    "SyntheticConfig",
    "TASKS",
    "config_from_info",
    "generate_dataset",
    "make_question",
    "render_sample",
    "sample_rng",
]

#: Bumped whenever the same arguments would draw different images (run_benchmark.py regenerates stale data).
GENERATOR_VERSION = 2

#: The benchmark question per target style.
QUESTIONS = {
    "striped": "What colour is the striped shape?",
    "solid": "What colour is the coloured shape?",
}
TARGET_STYLES = tuple(QUESTIONS)

#: Well-separated saturated hues (about 45 degrees apart), each a single token in the tiny tokenizer.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (35, 175, 55),
    "cyan": (30, 205, 215),
    "blue": (40, 70, 230),
    "purple": (140, 50, 210),
    "pink": (245, 105, 185),
}

SHAPES = ("circle", "square", "triangle")
TEXTURES = ("solid", "hstripes", "vstripes", "dstripes", "checker", "dots", "noise", "outline")

#: Pixels per LLM token side for Qwen2.5-VL (14 px patches, 2x2 merge); the default of ``SyntheticConfig.token_px``.
TOKEN_PX = 28

#: A target token needs this many of the target's coloured pixels in a 28-px cell (scaled by area for other cells).
TOKEN_MIN_PIXELS = 20

#: Generator settings per base-model architecture (``--arch``). Qwen3-VL reads 16-px patches with a 2x2 merge, i.e.
#: 32 px per LLM token: 256x256 images give the same 8x8 = 64 LLM tokens as 224x224 gives Qwen2.5-VL, and every size
#: is scaled by 256/224 = 8/7 (rounded), so each object covers the same share of the token grid (the target 1-4 LLM
#: tokens) and the scene is the same task in the same token geometry.
ARCH_PRESETS: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {},
    "qwen3_vl": {
        "image_size": 256,
        "token_px": 32,
        "object_size": (39, 53),
        "stripe_period": (7, 10),
        "decoy_size": (30, 46),
        "distractor_size": (30, 50),
    },
}

#: Texture kinds a question can name (the others have no word).
TEXTURE_WORDS = {"hstripes": "striped", "vstripes": "striped", "dstripes": "striped", "checker": "checkered",
                 "dots": "dotted", "white": "white"}

#: Question types of the mixed (multi-task) files. Only "colour" is benchmarked; the others make a general model
#: encode the rest of the scene too (the target's shape, the coloured decoys, the grey distractors' textures), as a
#: real VLM encodes everything in an image.
TASKS = ("colour", "shape", "decoy", "white", "texture")

#: The mixed files' default: the benchmark question plus one about the coloured decoys.
DEFAULT_TASKS = ("colour", "decoy")


@dataclass(frozen=True)
class SyntheticConfig:
    """Generation knobs. Sizes are in pixels of the written image."""

    image_size: int = 224
    token_px: int = TOKEN_PX  # pixels per LLM token side (28 for Qwen2.5-VL, 32 for Qwen3-VL): target_tokens' cells
    target_style: str = "striped"  # "striped" (colour/white stripes) or "solid" (the earlier scene)
    object_size: tuple[int, int] = (34, 46)  # target side / diameter range (inclusive)
    stripe_period: tuple[int, int] = (6, 9)  # pixels per colour + white stripe pair
    stripe_duty: float = 0.65  # coloured share of each stripe pair
    coloured_decoys: int = 6  # per test image
    # Per train image, drawn uniformly from LO..HI: the images with few decoys teach a model from scratch the
    # "striped" cue (with none, the only coloured thing is the target); at a fixed 6 it stays at chance for
    # thousands of steps. None = coloured_decoys for the train split too.
    train_coloured_decoys: tuple[int, int] | None = (0, 6)
    decoy_size: tuple[int, int] = (26, 40)
    distractor_count: int = 4
    distractor_size: tuple[int, int] = (26, 44)
    white_fraction: float = 0.35  # share of achromatic distractors that are solid bright white
    texture_strength: float = 0.5  # 0 = flat background, 1 = strong grey texture
    colour_jitter: int = 12  # +- per channel on every palette colour
    colours: tuple[str, ...] = tuple(PALETTE)
    question: str = ""  # "" = QUESTIONS[target_style]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.question or QUESTIONS[self.target_style]

    def validate(self) -> None:
        if self.image_size < 56:
            raise ValueError(f"image_size must be >= 56, got {self.image_size}")
        if not 1 <= self.token_px <= self.image_size:
            raise ValueError(f"token_px must be in 1..image_size, got {self.token_px}")
        if self.target_style not in TARGET_STYLES:
            raise ValueError(f"target_style must be one of {list(TARGET_STYLES)}, got {self.target_style!r}")
        for name in ("object_size", "decoy_size", "distractor_size"):
            lo, hi = getattr(self, name)
            if not 4 <= lo <= hi <= self.image_size // 2:
                raise ValueError(f"{name} {getattr(self, name)} must satisfy 4 <= lo <= hi <= image_size/2")
        plo, phi = self.stripe_period
        if not 2 <= plo <= phi <= self.object_size[0] // 2:
            raise ValueError(f"stripe_period {self.stripe_period} must satisfy 2 <= lo <= hi <= object_size[0]/2 "
                             "(at least two stripe pairs across the smallest target)")
        if not 0.0 < self.stripe_duty < 1.0:
            raise ValueError(f"stripe_duty must be in (0, 1), got {self.stripe_duty}")
        if self.distractor_count < 0 or self.coloured_decoys < 0:
            raise ValueError("distractor_count and coloured_decoys must be >= 0")
        if self.train_coloured_decoys is not None:
            lo, hi = self.train_coloured_decoys
            if not 0 <= lo <= hi:
                raise ValueError(f"train_coloured_decoys {self.train_coloured_decoys} must satisfy 0 <= lo <= hi")
        if self.target_style == "solid" and (self.coloured_decoys or any(self.train_coloured_decoys or ())):
            raise ValueError("target_style 'solid' asks for 'the coloured shape': it needs coloured_decoys=0 and "
                             "train_coloured_decoys=None or (0, 0)")
        if not 0.0 <= self.texture_strength <= 1.0:
            raise ValueError("texture_strength must be in [0, 1]")
        if not 0.0 <= self.white_fraction <= 1.0:
            raise ValueError("white_fraction must be in [0, 1]")
        unknown = [c for c in self.colours if c not in PALETTE]
        if unknown or not self.colours:
            raise ValueError(f"colours must be a non-empty subset of {list(PALETTE)}, got {list(self.colours)}")


_TUPLE_KNOBS = ("object_size", "stripe_period", "decoy_size", "distractor_size", "colours", "train_coloured_decoys")


def config_from_info(info: Mapping[str, Any]) -> SyntheticConfig:
    """The :class:`SyntheticConfig` a ``dataset.json`` was generated with (version 1 files: the solid-target scene)."""
    knobs = {k: v for k, v in info["config"].items() if k in SyntheticConfig.__dataclass_fields__}
    if int(info.get("version", 1)) == 1:
        knobs.update(target_style="solid", coloured_decoys=0, train_coloured_decoys=None)
        if knobs.get("question") == QUESTIONS["solid"]:
            knobs["question"] = ""
    for key in _TUPLE_KNOBS:
        if knobs.get(key) is not None:
            knobs[key] = tuple(knobs[key])
    cfg = SyntheticConfig(**knobs)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Drawing


def _background(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Achromatic textured background: a grey level, smooth blobs, a faint grid/stripe pattern and pixel noise."""
    base = rng.uniform(95.0, 165.0)
    img = np.full((size, size), base, dtype=np.float64)
    if strength > 0:
        # Low-frequency value noise (bilinear upsampling of a coarse random grid).
        cells = int(rng.integers(3, 8))
        coarse = rng.normal(0.0, 1.0, size=(cells + 1, cells + 1))
        xs = np.linspace(0, cells, size, endpoint=False)
        i0 = np.floor(xs).astype(int)
        f = xs - i0
        rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
        smooth = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
        img += 28.0 * strength * smooth
        # A faint periodic pattern (wood-grain-like stripes at a random angle).
        yy, xx = np.mgrid[0:size, 0:size]
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6.0, 20.0)
        img += 10.0 * strength * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        # Pixel noise.
        img += rng.normal(0.0, 9.0 * strength, size=(size, size))
    img = np.clip(img, 0, 255)
    return np.repeat(img[:, :, None], 3, axis=2)


def _shape_mask(shape: str, side: int, rotation: float) -> np.ndarray:
    """Boolean [side, side] mask of a shape filling its box (a triangle is rotated by ``rotation`` radians)."""
    m = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(m)
    if shape == "circle":
        d.ellipse((0, 0, side - 1, side - 1), fill=255)
    elif shape == "square":
        d.rectangle((0, 0, side - 1, side - 1), fill=255)
    elif shape == "triangle":
        c = (side - 1) / 2.0
        r = (side - 1) / 2.0
        pts = [(c + r * math.cos(rotation + k * 2 * math.pi / 3), c + r * math.sin(rotation + k * 2 * math.pi / 3))
               for k in range(3)]
        d.polygon(pts, fill=255)
    else:  # pragma: no cover - guarded by callers
        raise ValueError(shape)
    return np.asarray(m) > 127


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by a (2r+1) cross: a pixel stays set if its r-neighbours up/down/left/right are set."""
    padded = np.pad(mask, r)
    h, w = mask.shape
    out = mask.copy()
    for dy, dx in ((-r, 0), (r, 0), (0, -r), (0, r)):
        out &= padded[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


def _texture(rng: np.random.Generator, kind: str, side: int) -> np.ndarray:
    """A grey texture patch [side, side] in 0..255 (one of TEXTURES, with random shades and periods)."""
    lo, hi = sorted(rng.choice(np.arange(15, 256, 10), size=2, replace=False).tolist())
    yy, xx = np.mgrid[0:side, 0:side]
    period = int(rng.integers(3, 9))
    if kind == "solid":
        return np.full((side, side), float(rng.integers(20, 236)))
    if kind == "hstripes":
        pat = (yy // period) % 2
    elif kind == "vstripes":
        pat = (xx // period) % 2
    elif kind == "dstripes":
        pat = ((xx + yy) // period) % 2
    elif kind == "checker":
        pat = ((xx // period) + (yy // period)) % 2
    elif kind == "dots":
        pat = (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2) < (period / 3) ** 2
    elif kind == "noise":
        return rng.uniform(lo, hi, size=(side, side))
    elif kind == "outline":
        pat = np.zeros((side, side), dtype=int)
        w = max(2, side // 8)
        pat[:w, :] = pat[-w:, :] = pat[:, :w] = pat[:, -w:] = 1
    else:  # pragma: no cover
        raise ValueError(kind)
    return np.where(pat.astype(bool), float(hi), float(lo))


def _place(rng: np.random.Generator, side: int, size: int, boxes: list[tuple[int, int, int, int]], margin: int = 3):
    """A top-left corner for a ``side`` box not overlapping ``boxes`` (plus margin), or None after 200 tries."""
    for _ in range(200):
        x = int(rng.integers(0, size - side + 1))
        y = int(rng.integers(0, size - side + 1))
        ok = all(x + side + margin <= bx0 or bx1 + margin <= x or y + side + margin <= by0 or by1 + margin <= y
                 for bx0, by0, bx1, by1 in boxes)
        if ok:
            return x, y
    return None


def _place_object(rng: np.random.Generator, side_range: tuple[int, int], size: int, boxes: list):
    """(x, y, side, shape) of a new object that overlaps none of ``boxes``, or None when it does not fit."""
    side = int(rng.integers(side_range[0], side_range[1] + 1))
    pos = _place(rng, side, size, boxes)
    if pos is None:
        return None
    return pos[0], pos[1], side, SHAPES[int(rng.integers(len(SHAPES)))]


def token_min_pixels(token_px: int) -> int:
    """Target pixels a ``token_px`` cell needs to count as a target token: TOKEN_MIN_PIXELS per 28x28 cell, by area
    (20 at 28 px, 26 at 32 px), so the same share of a token is needed at every token size."""
    return max(1, round(TOKEN_MIN_PIXELS * token_px * token_px / (TOKEN_PX * TOKEN_PX)))


def _token_cells(mask_full: np.ndarray, token_px: int = TOKEN_PX, min_pixels: int | None = None) -> list[int]:
    """Raster indices of the ``token_px`` x ``token_px`` cells holding at least ``min_pixels`` target pixels."""
    if min_pixels is None:
        min_pixels = token_min_pixels(token_px)
    size = mask_full.shape[0]
    g = size // token_px
    cells = []
    for r in range(g):
        for c in range(g):
            if mask_full[r * token_px:(r + 1) * token_px, c * token_px:(c + 1) * token_px].sum() >= min_pixels:
                cells.append(r * g + c)
    return cells


def _jittered(rng: np.random.Generator, colour: str, jitter: int) -> np.ndarray:
    base = np.array(PALETTE[colour], dtype=np.float64)
    if jitter:
        base = base + rng.integers(-jitter, jitter + 1, size=3)
    return np.clip(base, 0, 255)


def _stripes(side: int, period: int, angle: float, phase: float, duty: float) -> np.ndarray:
    """Boolean [side, side]: True on the coloured ``duty`` share of each ``period``-pixel stripe pair at ``angle``."""
    yy, xx = np.mgrid[0:side, 0:side]
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase
    return (t - np.floor(t)) < duty


def render_sample(rng: np.random.Generator, cfg: SyntheticConfig,
                  coloured_decoys: int | None = None, target: bool = True,
                  decoy_rng: np.random.Generator | None = None) -> tuple[Image.Image, dict[str, Any]]:
    """Draw one image; returns it and its metadata (answer colour, shape, bbox, token cells, decoys, distractors).

    ``coloured_decoys`` overrides ``cfg.coloured_decoys`` (the train split draws it per image). For the video task:
    ``target=False`` draws the same scene without the target (its metadata then has no target cells), and
    ``decoy_rng`` draws the coloured decoys from another generator, so that frames rendered from equal ``rng`` states
    share background, distractors and the target's place while their decoys move."""
    size = cfg.image_size
    img = _background(rng, size, cfg.texture_strength)

    colour = str(cfg.colours[int(rng.integers(len(cfg.colours)))])
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    side = int(rng.integers(cfg.object_size[0], cfg.object_size[1] + 1))
    rot = float(rng.uniform(0, 2 * math.pi))
    tx, ty = _place(rng, side, size, [])  # the first object always fits
    boxes = [(tx, ty, tx + side, ty + side)]
    rgb = _jittered(rng, colour, cfg.colour_jitter)

    distractors = []
    for _ in range(cfg.distractor_count):
        placed = _place_object(rng, cfg.distractor_size, size, boxes)
        if placed is None:
            continue
        dx, dy, dside, dshape = placed
        white = bool(rng.random() < cfg.white_fraction)
        kind = "white" if white else TEXTURES[int(rng.integers(len(TEXTURES)))]
        mask = _shape_mask(dshape, dside, float(rng.uniform(0, 2 * math.pi)))
        if white:
            tex = np.full((dside, dside), 255.0)
            # A dark rim makes the edge maximally contrasted.
            tex[mask & ~_erode(mask, 2)] = 10.0
        else:
            tex = _texture(rng, kind, dside)
        region = img[dy:dy + dside, dx:dx + dside]
        region[mask] = tex[mask][:, None]
        boxes.append((dx, dy, dx + dside, dy + dside))
        distractors.append({"shape": dshape, "texture": kind, "bbox": [dx, dy, dx + dside, dy + dside]})

    decoys = []
    drng = rng if decoy_rng is None else decoy_rng
    for _ in range(cfg.coloured_decoys if coloured_decoys is None else coloured_decoys):
        placed = _place_object(drng, cfg.decoy_size, size, boxes)
        if placed is None:
            continue
        dx, dy, dside, dshape = placed
        dcolour = str(cfg.colours[int(drng.integers(len(cfg.colours)))])
        drgb = _jittered(drng, dcolour, cfg.colour_jitter)
        while np.array_equal(drgb, rgb):  # keep the target's exact pixel value unique to the target
            drgb = _jittered(drng, dcolour, max(cfg.colour_jitter, 1))
        mask = _shape_mask(dshape, dside, float(drng.uniform(0, 2 * math.pi)))
        img[dy:dy + dside, dx:dx + dside][mask] = drgb
        boxes.append((dx, dy, dx + dside, dy + dside))
        decoys.append({"shape": dshape, "colour": dcolour, "rgb": [int(v) for v in drgb],
                       "bbox": [dx, dy, dx + dside, dy + dside]})

    # The target last, so nothing covers it.
    tmask = _shape_mask(shape, side, rot)
    fill = np.broadcast_to(rgb, (side, side, 3)).copy()
    style: dict[str, Any] = {"style": cfg.target_style}
    if cfg.target_style == "striped":
        period = int(rng.integers(cfg.stripe_period[0], cfg.stripe_period[1] + 1))
        angle = float(rng.uniform(0, math.pi))
        on = _stripes(side, period, angle, float(rng.uniform(0, 1)), cfg.stripe_duty)
        fill[~on] = 255.0
        coloured = tmask & on
        style.update(stripe_period=period, stripe_angle=round(math.degrees(angle), 2))
    else:
        coloured = tmask
    if target:
        img[ty:ty + side, tx:tx + side][tmask] = fill[tmask]
    else:
        tmask = np.zeros_like(tmask)
        coloured = tmask

    full = np.zeros((size, size), dtype=bool)
    full[ty:ty + side, tx:tx + side] = tmask
    coloured_full = np.zeros((size, size), dtype=bool)
    coloured_full[ty:ty + side, tx:tx + side] = coloured
    out = Image.fromarray(np.rint(img).astype(np.uint8), mode="RGB")
    meta = {
        "colour": colour,
        "rgb": [int(v) for v in rgb],
        "shape": shape,
        **style,
        "bbox": [tx, ty, tx + side, ty + side],
        "token_grid": [size // cfg.token_px, size // cfg.token_px],
        # Cells with >= 20 pixels (per 28x28 px, scaled by area) of the target's colour: the tokens from which its
        # colour can be read.
        "target_tokens": _token_cells(coloured_full, cfg.token_px),
        "decoys": decoys,
        "distractors": distractors,
    }
    return out, meta


def make_question(task: str, meta: dict[str, Any], rng: np.random.Generator, question: str = QUESTIONS["striped"]):
    """(question, answer) of type ``task`` about an image's metadata; every answer is a single word.

    The existence questions ("Is there a red square?", "Is there a white triangle?", "Is there a striped square?")
    ask, with probability 1/2, about a combination present in the image (when there is one), otherwise about an
    absent one, so yes/no is balanced. "decoy" questions count the target too: a red striped square is a red square.
    """
    described = "striped" if meta.get("style", "solid") == "striped" else "coloured"
    if task == "colour":
        return question, meta["colour"]
    if task == "shape":
        return f"What shape is the {described} shape?", meta["shape"]
    if task == "decoy":
        present = {(d["colour"], d["shape"]) for d in meta.get("decoys", [])} | {(meta["colour"], meta["shape"])}
        combos = [(c, sh) for c in PALETTE for sh in SHAPES]
    elif task in ("white", "texture"):
        present = {(TEXTURE_WORDS[d["texture"]], d["shape"]) for d in meta["distractors"]
                   if d["texture"] in TEXTURE_WORDS}
        words = ["white"] if task == "white" else sorted({w for w in TEXTURE_WORDS.values() if w != "white"})
        combos = [(w, sh) for w in words for sh in SHAPES]
    else:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    have = [c for c in combos if c in present]
    absent = [c for c in combos if c not in present]
    if have and (not absent or rng.random() < 0.5):
        (word, shape), answer = have[int(rng.integers(len(have)))], "yes"
    else:
        (word, shape), answer = absent[int(rng.integers(len(absent)))], "no"
    return f"Is there a {word} {shape}?", answer


# --------------------------------------------------------------------------------------------------------------------
# Dataset


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image (or its questions) of a split: independent of every other image's."""
    split_id = {"train": 1, "test": 2, "train-questions": 3, "test-questions": 4, "train-decoys": 5}.get(
        split, sum(split.encode()) + 6)
    return np.random.default_rng(np.random.SeedSequence([int(seed), split_id, int(index)]))


def _llava(sid: str, image: str, question: str, answer: str) -> dict[str, Any]:
    return {
        "id": sid,
        "image": image,
        "conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}],
    }


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=False, separators=(", ", ": ")) + "\n")


def generate_dataset(
    out_dir: str | os.PathLike[str],
    n_train: int = 4000,
    n_test: int = 500,
    seed: int = 0,
    *,
    tasks: Sequence[str] = DEFAULT_TASKS,
    progress: bool = False,
    **knobs: Any,
) -> dict[str, Path]:
    """Write the train and test splits (PNGs + JSONL) under ``out_dir``; returns the paths of the JSONL files.

    ``knobs`` are :class:`SyntheticConfig` fields (image_size, object_size, distractor_count, texture_strength, ...).
    """
    unknown = set(knobs) - set(SyntheticConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown generator knobs {sorted(unknown)}; known: {sorted(SyntheticConfig.__dataclass_fields__)}")
    for key in _TUPLE_KNOBS:
        if key in knobs and knobs[key] is not None:
            knobs[key] = tuple(knobs[key])
    cfg = SyntheticConfig(**knobs)
    cfg.validate()
    if n_train < 0 or n_test < 0:
        raise ValueError("split sizes must be >= 0")
    tasks = tuple(tasks)
    unknown_tasks = [t for t in tasks if t not in TASKS]
    if unknown_tasks:
        raise ValueError(f"unknown tasks {unknown_tasks}; known: {', '.join(TASKS)}")

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        llava, evalrecs, mixed, mixed_eval = [], [], [], []
        it = range(n)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"generate {split}", unit="img")
        for i in it:
            decoys = None
            if split == "train" and cfg.train_coloured_decoys is not None:
                lo, hi = cfg.train_coloured_decoys
                decoys = int(sample_rng(seed, "train-decoys", i).integers(lo, hi + 1))
            img, meta = render_sample(sample_rng(seed, split, i), cfg, coloured_decoys=decoys)
            rel = f"images/{split}_{i:05d}.png"
            img.save(out / rel, format="PNG", optimize=False, compress_level=6)
            sid = f"{split}-{i:05d}"
            llava.append(_llava(sid, rel, cfg.prompt, meta["colour"]))
            evalrecs.append({"id": sid, "image": rel, "question": cfg.prompt, "answer": meta["colour"],
                             "meta": meta})
            qrng = sample_rng(seed, split + "-questions", i)
            for task in tasks:
                q, a = make_question(task, meta, qrng, cfg.prompt)
                mixed.append(_llava(f"{sid}-{task}", rel, q, a))
                mixed_eval.append({"id": f"{sid}-{task}", "image": rel, "question": q, "answer": a, "task": task})
        _write_jsonl(out / f"{split}.jsonl", llava)
        _write_jsonl(out / f"{split}_eval.jsonl", evalrecs)
        paths[split] = out / f"{split}.jsonl"
        paths[f"{split}_eval"] = out / f"{split}_eval.jsonl"
        if tasks:
            _write_jsonl(out / f"{split}_mixed.jsonl", mixed)
            _write_jsonl(out / f"{split}_mixed_eval.jsonl", mixed_eval)
            paths[f"{split}_mixed"] = out / f"{split}_mixed.jsonl"
            paths[f"{split}_mixed_eval"] = out / f"{split}_mixed_eval.jsonl"
    info = {
        "generator": "benchmarks/synthetic/generate.py",
        "version": GENERATOR_VERSION,
        "question": cfg.prompt,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "config": to_jsonable(asdict(cfg)),
        "mixed_tasks": list(tasks),
        "palette": {k: list(v) for k, v in PALETTE.items() if k in cfg.colours},
    }
    (out / "dataset.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    paths["info"] = out / "dataset.json"
    return paths


def _pair(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("expected N or LO,HI")
    return parts[0], parts[1]


#: The knobs an arch preset sets (and their command-line options override).
_GEOMETRY_KNOBS = ("image_size", "token_px", "object_size", "stripe_period", "decoy_size", "distractor_size")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=4000, help="train images (default: %(default)s)")
    p.add_argument("--test", type=int, default=500, help="test images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=sorted(ARCH_PRESETS), default="qwen2_5_vl",
                   help="base-model architecture whose token geometry the defaults below follow (qwen3_vl: 256 px "
                   "images, 32-px tokens, sizes scaled by 8/7); explicit size options override it")
    p.add_argument("--image-size", type=int, default=None, help=f"default: {SyntheticConfig.image_size} (arch preset)")
    p.add_argument("--token-px", type=int, default=None,
                   help=f"pixels per LLM token side (default: {SyntheticConfig.token_px}, arch preset)")
    p.add_argument("--target-style", choices=TARGET_STYLES, default=SyntheticConfig.target_style,
                   help="striped target among coloured decoys, or the earlier solid target (needs --coloured-decoys 0)")
    p.add_argument("--object-size", type=_pair, default=None,
                   help=f"target LO,HI pixels (default: {SyntheticConfig.object_size}, arch preset)")
    p.add_argument("--stripe-period", type=_pair, default=None,
                   help=f"LO,HI pixels per colour + white stripe pair (default: {SyntheticConfig.stripe_period}, "
                   "arch preset)")
    p.add_argument("--stripe-duty", type=float, default=SyntheticConfig.stripe_duty,
                   help="coloured share of each stripe pair (default: %(default)s)")
    p.add_argument("--coloured-decoys", type=int, default=SyntheticConfig.coloured_decoys, help="per test image")
    p.add_argument("--train-coloured-decoys", type=_pair, default=SyntheticConfig.train_coloured_decoys,
                   help="LO,HI per train image, drawn uniformly (default: %(default)s)")
    p.add_argument("--decoy-size", type=_pair, default=None,
                   help=f"LO,HI pixels (default: {SyntheticConfig.decoy_size}, arch preset)")
    p.add_argument("--distractor-count", type=int, default=SyntheticConfig.distractor_count,
                   help="achromatic distractors")
    p.add_argument("--distractor-size", type=_pair, default=None,
                   help=f"LO,HI pixels (default: {SyntheticConfig.distractor_size}, arch preset)")
    p.add_argument("--white-fraction", type=float, default=SyntheticConfig.white_fraction)
    p.add_argument("--texture-strength", type=float, default=SyntheticConfig.texture_strength)
    p.add_argument("--colour-jitter", type=int, default=SyntheticConfig.colour_jitter)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"question types of the *_mixed files (default: %(default)s; known: {','.join(TASKS)}; "
                   "empty: no mixed files)")
    args = p.parse_args(argv)
    # Geometry: the dataclass defaults, then the arch preset, then explicit options.
    geometry = {k: getattr(SyntheticConfig, k) for k in _GEOMETRY_KNOBS}
    geometry.update(ARCH_PRESETS[args.arch])
    geometry.update({k: getattr(args, k) for k in _GEOMETRY_KNOBS if getattr(args, k) is not None})
    paths = generate_dataset(
        args.out_dir, args.train, args.test, args.seed, progress=True,
        tasks=[t for t in args.tasks.split(",") if t.strip()],
        target_style=args.target_style, stripe_duty=args.stripe_duty, coloured_decoys=args.coloured_decoys,
        train_coloured_decoys=args.train_coloured_decoys, distractor_count=args.distractor_count,
        white_fraction=args.white_fraction, texture_strength=args.texture_strength, colour_jitter=args.colour_jitter,
        **geometry,
    )
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
