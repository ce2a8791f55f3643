"""Per-request selection options: their names, defaults and validation — shared by the HTTP layer and the processor.

A request chooses ``retention_ratio`` (0 < r <= 1, for every image and video), ``selection_method`` (a registered
method) and optionally ``selection_seed`` (for ``random``), ``selection_lambda`` (0 <= lambda <= 1, the
score/diversity trade-off of ``visionselector_mmr``; ``BY_BUDGET`` when neither the request nor the server gives
one, which selects by ``vs_vllm.selection.mmr.default_lambda`` of each image's budget) and ``video_retention_ratio`` (0 < r <= 1: videos use it instead
of ``retention_ratio``; unset, they use ``retention_ratio``; ``SelectionOptions.ratio_for(modality)`` is the rule).
Each option left out of a request falls back to its own server default, so a request that sets only
``retention_ratio`` still prunes videos at the server's ``video_retention_ratio`` when the server sets one. The
options travel to vLLM's multimodal processor inside ``mm_processor_kwargs``, which vLLM hashes into every multimodal
cache key, so different ratios never share cache entries. Server-wide defaults come from the environment that
``vs-vllm serve`` sets (and plain ``vllm serve`` users can set themselves):

    VS_VLLM_ENABLE=1                   turn the plugin on (installed but not enabled = stock vLLM)
    VS_VLLM_RETENTION_RATIO=0.3        default ratio (1.0 = keep everything)
    VS_VLLM_VIDEO_RETENTION_RATIO=0.2  default ratio for videos (unset = VS_VLLM_RETENTION_RATIO)
    VS_VLLM_SELECTION_METHOD=uniform   default method
    VS_VLLM_SELECTION_LAMBDA=0.5       default selection_lambda (visionselector_mmr; unset = by budget)
    VS_VLLM_SCORER=/path/scorer.safetensors   scorer weights (else the checkpoint's visual.importance_scorer.*)
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass

from vs_vllm.selection.budget import validate_ratio
from vs_vllm.selection.mmr import BY_BUDGET, LambdaDefault, validate_lambda

__all__ = [
    "ENV_ENABLE",
    "ENV_LAMBDA",
    "ENV_METHOD",
    "ENV_RATIO",
    "ENV_SCORER",
    "ENV_VIDEO_RATIO",
    "OPTION_NAMES",
    "OptionError",
    "SelectionOptions",
    "default_options",
    "is_enabled",
    "parse_options",
    "split_options",
]

ENV_ENABLE = "VS_VLLM_ENABLE"
ENV_RATIO = "VS_VLLM_RETENTION_RATIO"
ENV_METHOD = "VS_VLLM_SELECTION_METHOD"
ENV_SCORER = "VS_VLLM_SCORER"
ENV_LAMBDA = "VS_VLLM_SELECTION_LAMBDA"
ENV_VIDEO_RATIO = "VS_VLLM_VIDEO_RETENTION_RATIO"

RATIO = "retention_ratio"
METHOD = "selection_method"
SEED = "selection_seed"
LAMBDA = "selection_lambda"
VIDEO_RATIO = "video_retention_ratio"
OPTION_NAMES = (RATIO, METHOD, SEED, LAMBDA, VIDEO_RATIO)


class OptionError(ValueError):
    """A bad per-request option; ``param`` names the field (for OpenAI-style 400 bodies)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SelectionOptions:
    retention_ratio: float = 1.0
    selection_method: str = "visionselector"
    selection_seed: int | None = None
    selection_lambda: float | LambdaDefault = BY_BUDGET  # BY_BUDGET: default_lambda of each image's budget
    video_retention_ratio: float | None = None

    def ratio_for(self, modality: str) -> float:
        """The retention ratio of one media item: ``video_retention_ratio`` for a video when set, else
        ``retention_ratio``."""
        if modality == "video" and self.video_retention_ratio is not None:
            return self.video_retention_ratio
        return self.retention_ratio


def is_enabled(env: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(ENV_ENABLE, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _validate_method(value: object) -> str:
    from vs_vllm.selection.methods import get_method

    if not isinstance(value, str):
        raise OptionError(METHOD, f"{METHOD} must be a string, got {value!r} ({type(value).__name__})")
    try:
        get_method(value)
    except ValueError as exc:
        raise OptionError(METHOD, f"{METHOD}: {exc}") from None
    return value


def _validate_seed(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) < 2**63:
        raise OptionError(SEED, f"{SEED} must be an integer in [0, 2**63), got {value!r}")
    return int(value)


def _validate_ratio(param: str, value: object) -> float:
    # An explicit null is refused like any other non-number: leaving the field out is how a request says "default".
    try:
        return validate_ratio(value, name=param)
    except ValueError as exc:
        raise OptionError(param, str(exc)) from None


def _validate_lambda(value: object) -> float:
    try:
        return validate_lambda(value, name=LAMBDA)
    except ValueError as exc:
        raise OptionError(LAMBDA, str(exc)) from None


def _env_ratio(env: Mapping[str, str], name: str) -> float | None:
    """The ratio in environment variable ``name`` (None when unset or empty); ValueError naming the variable."""
    text = env.get(name)
    if not text:
        return None
    try:
        return validate_ratio(float(text), name=name)
    except ValueError as exc:
        raise ValueError(f"{name}={text!r}: {exc}") from None


def default_options(env: Mapping[str, str] | None = None) -> SelectionOptions:
    """Server-wide defaults from the environment; a bad value raises ValueError naming the variable."""
    env = os.environ if env is None else env
    method = env.get(ENV_METHOD) or SelectionOptions.selection_method
    ratio = _env_ratio(env, ENV_RATIO)
    video_ratio = _env_ratio(env, ENV_VIDEO_RATIO)
    try:
        method = _validate_method(method)
    except OptionError as exc:
        raise ValueError(f"{ENV_METHOD}={method!r}: {exc}") from None
    lambda_text = env.get(ENV_LAMBDA)
    try:
        lam = validate_lambda(float(lambda_text), name=ENV_LAMBDA) if lambda_text else BY_BUDGET
    except ValueError as exc:
        raise ValueError(f"{ENV_LAMBDA}={lambda_text!r}: {exc}") from None
    return SelectionOptions(
        retention_ratio=SelectionOptions.retention_ratio if ratio is None else ratio,
        selection_method=method,
        selection_lambda=lam,
        video_retention_ratio=video_ratio,
    )


def parse_options(values: Mapping[str, object], defaults: SelectionOptions | None = None) -> SelectionOptions:
    """Validate the selection options in ``values`` (other keys are ignored) over ``defaults``.

    Raises :class:`OptionError` (a ValueError) naming the offending field.
    """
    base = defaults or SelectionOptions()
    ratio = _validate_ratio(RATIO, values[RATIO]) if RATIO in values else base.retention_ratio
    video_ratio = base.video_retention_ratio
    if VIDEO_RATIO in values:
        video_ratio = _validate_ratio(VIDEO_RATIO, values[VIDEO_RATIO])
    method = _validate_method(values[METHOD]) if METHOD in values else base.selection_method
    seed = _validate_seed(values[SEED]) if SEED in values else base.selection_seed
    lam = _validate_lambda(values[LAMBDA]) if LAMBDA in values else base.selection_lambda
    return SelectionOptions(
        retention_ratio=ratio,
        selection_method=method,
        selection_seed=seed,
        selection_lambda=lam,
        video_retention_ratio=video_ratio,
    )


def split_options(kwargs: Mapping[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """(selection options, everything else) — the rest goes on to the HF processor untouched."""
    ours = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
    rest = {k: v for k, v in kwargs.items() if k not in OPTION_NAMES}
    return ours, rest
