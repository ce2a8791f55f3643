"""Keep every vision-tower call within the patch budget vLLM profiled memory for.

vLLM's scheduler charges each media item its placeholder count (K_i with pruning) against the encoder compute budget,
and memory profiling sized the vision tower for that budget of *unpruned* tokens. With pruning at ratio r, one encoder
step can therefore carry ~1/r times the patches that were profiled. ``plan_micro_batches`` splits one step's items
into consecutive groups whose unpruned token total stays within the budget (an item larger than the budget — which
profiling also covered, as the largest item — runs alone), so the tower never sees more than it was profiled for.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_micro_batches"]


def plan_micro_batches(tokens_per_item: Sequence[int], budget: int | None) -> list[tuple[int, int]]:
    """Consecutive [start, end) item ranges, each with sum(tokens) <= budget or a single item.

    ``budget`` None or <= 0 means unlimited (one call).
    """
    count = len(tokens_per_item)
    if count == 0:
        return []
    if budget is None or budget <= 0:
        return [(0, count)]
    groups: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, n in enumerate(tokens_per_item):
        if i > start and total + int(n) > budget:
            groups.append((start, i))
            start, total = i, 0
        total += int(n)
    groups.append((start, count))
    return groups
