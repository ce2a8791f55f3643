"""The one keep-count rule and ratio validation.

Every place that needs to know how many visual tokens survive (the vLLM processor sizing placeholders, the model
gathering rows, the HF reference, training, benchmarks) calls :func:`keep_count`. The float is never re-derived
elsewhere: callers carry the integer K.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["keep_count", "validate_ratio"]


def validate_ratio(ratio: object, *, name: str = "retention_ratio") -> float:
    """Return ``ratio`` as a float if it is a real number in (0, 1]; otherwise raise ValueError naming it.

    Booleans are refused even though ``bool`` is an ``int`` subclass: ``True`` as a ratio is almost always a bug.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise ValueError(f"{name} must be a real number in (0, 1], got {ratio!r} ({type(ratio).__name__})")
    value = float(ratio)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number in (0, 1], got {ratio!r}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {ratio!r}")
    return value


def keep_count(n: int, ratio: object) -> int:
    """Number of visual tokens kept out of ``n`` at ``ratio``: ``max(1, floor(n * ratio))``.

    The product is taken in float64 on the host and truncated, exactly as the original VisionSelector code does
    (``int(N * r)``), so e.g. ``keep_count(100, 0.29) == 28`` (100 * 0.29 = 28.999...). Ratio 1.0 returns ``n``.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ValueError(f"token count n must be an integer, got {n!r} ({type(n).__name__})")
    n = int(n)
    if n < 1:
        raise ValueError(f"token count n must be >= 1, got {n}")
    value = validate_ratio(ratio)
    if value == 1.0:
        return n
    return max(1, int(n * value))
