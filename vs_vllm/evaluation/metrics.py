"""Answer metrics: normalised exact match, yes/no accuracy, ANLS; and the relative-to-unpruned score table.

- **Exact match** compares answers after :func:`normalize_answer` (lowercase, punctuation removed, the articles
  a/an/the dropped, whitespace collapsed), against any of the reference answers.
- **Yes/no accuracy** is defined only for samples whose reference is "yes" or "no": the prediction's first yes/no word
  must match it (so "Yes, it is." counts as yes).
- **ANLS** (average normalised Levenshtein similarity, DocVQA): per reference, ``1 - dist / max(len)`` on lowercased,
  whitespace-collapsed strings, zeroed when the normalised distance is >= the threshold (0.5); the best reference counts.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "METRICS",
    "anls",
    "exact_match",
    "levenshtein",
    "normalize_answer",
    "relative_scores",
    "yes_no",
    "yes_no_accuracy",
]

METRICS = ("em", "anls", "yesno")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile("[" + re.escape(string.punctuation + "\u2018\u2019\u201c\u201d") + "]")
_WS = re.compile(r"\s+")


def normalize_answer(text: Any) -> str:
    """Lowercase, replace punctuation by spaces, drop articles, collapse whitespace."""
    s = str(text).lower()
    s = _PUNCT.sub(" ", s)
    s = _ARTICLES.sub(" ", s)
    return _WS.sub(" ", s).strip()


def _as_list(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else [str(a) for a in answers]


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in _as_list(answers)))


def yes_no(text: str) -> str | None:
    """The first "yes" or "no" word of the normalised text, or None."""
    for word in normalize_answer(text).split():
        if word in ("yes", "no"):
            return word
    return None


def yes_no_accuracy(prediction: str, answers: str | Sequence[str]) -> float | None:
    """1.0/0.0 when the (first) reference is yes or no; None (not a yes/no sample) otherwise."""
    refs = [normalize_answer(a) for a in _as_list(answers)]
    gold = next((r for r in refs if r in ("yes", "no")), None)
    if gold is None:
        return None
    return float(yes_no(prediction) == gold)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _anls_norm(text: str) -> str:
    return _WS.sub(" ", str(text).lower()).strip()


def anls(prediction: str, answers: str | Sequence[str], threshold: float = 0.5) -> float:
    """Best over the references of ``1 - NL`` if ``NL < threshold`` else 0, with NL the normalised edit distance."""
    pred = _anls_norm(prediction)
    best = 0.0
    for ans in _as_list(answers):
        gold = _anls_norm(ans)
        longest = max(len(pred), len(gold))
        if longest == 0:
            return 1.0
        nl = levenshtein(pred, gold) / longest
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def score_prediction(prediction: str, answers: str | Sequence[str]) -> dict[str, float | None]:
    return {
        "em": exact_match(prediction, answers),
        "anls": anls(prediction, answers),
        "yesno": yes_no_accuracy(prediction, answers),
    }


def relative_scores(
    rows: Iterable[Mapping[str, Any]], *, metric: str = "score", baseline_ratio: float = 1.0
) -> list[dict[str, Any]]:
    """Add ``relative`` (score / score at ``baseline_ratio``) to each row of ``{"method", "ratio", metric, ...}``.

    The baseline is the same method's row at the baseline ratio; if that method has none, the mean over all methods
    at that ratio (the unpruned model is the same for every method). ``relative`` is None when there is no baseline
    or it is 0.
    """
    rows = [dict(r) for r in rows]
    at_base = [r for r in rows if abs(float(r["ratio"]) - baseline_ratio) < 1e-9 and r.get(metric) is not None]
    per_method = {r["method"]: float(r[metric]) for r in at_base}
    shared = sum(float(r[metric]) for r in at_base) / len(at_base) if at_base else None
    for r in rows:
        base = per_method.get(r["method"], shared)
        value = r.get(metric)
        r["relative"] = (float(value) / base) if (base and value is not None) else None
    return rows
