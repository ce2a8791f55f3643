"""Shared helpers of the kernel tests: random scorer problems, poisoned buffers, comparisons."""

from __future__ import annotations

import contextlib
import math

import torch

from vs_vllm.selection.topk import select_topk

SCORE_RTOL = 1e-5
SCORE_ATOL = 1e-4


def make_problem(lengths, d, dtype, seed, hidden=None, dup_pool=None, strided=False):
    """Random packed images, scorer weights and biases (fresh per case, never zeros).

    dup_pool: if set, every row is a copy of one of ``dup_pool`` random rows per image, so scores tie exactly.
    strided: x is a column slice of a wider tensor (row stride > D).
    """
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    h = hidden or max(1, d // 2)
    if dup_pool:
        parts = []
        for n in lengths:
            pool = torch.randn(dup_pool, d, generator=g)
            parts.append(pool[torch.randint(0, dup_pool, (n,), generator=g)])
        x = torch.cat(parts) if parts else torch.empty(0, d)
    else:
        x = torch.randn(total, d, generator=g)
    if strided:
        wide = torch.randn(total, d + 11, generator=g)
        wide[:, :d] = x
        x = wide.to(dtype)[:, :d]
    else:
        x = x.to(dtype)
    scale = 1.0 / math.sqrt(d)
    wq = torch.randn(h, d, generator=g) * scale
    wk = torch.randn(h, d, generator=g) * scale
    bq = torch.randn(h, generator=g) * 0.1
    bk = torch.randn(h, generator=g) * 0.1
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return x, cu, (wq, bq, wk, bk)


def keep_counts(n):
    """K in {1, small, N-1, N} (deduplicated, all valid)."""
    return sorted({1, max(1, n // 7), max(1, n - 1), n})


def factor_grid(n, seed=0):
    """A (t, h, w) with t*h*w == n and, where possible, t > 1 and h != w."""
    for t in (3, 2, 1):
        if n % t == 0:
            m = n // t
            for h in range(math.isqrt(m), 0, -1):
                if m % h == 0:
                    return (t, h, m // h)
    return (1, 1, n)


def own_topk(scores, cu, keep):
    """select_topk applied per image to the given scores (the index oracle for the kernel's own scores)."""
    out = [select_topk(scores[cu[i] : cu[i + 1]], k) for i, k in enumerate(keep)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def assert_same_selection_up_to_near_ties(idx, ref_idx, ref_scores, cu, keep, atol=SCORE_ATOL):
    """Indices equal to the reference's, or differing only where the reference scores are within atol of the
    K-th largest score of the image (summation order may flip near-ties)."""
    if torch.equal(idx, ref_idx):
        return
    off = 0
    for i, k in enumerate(keep):
        a, b = idx[off : off + k], ref_idx[off : off + k]
        off += k
        if torch.equal(a, b):
            continue
        s = ref_scores[cu[i] : cu[i + 1]]
        kth = torch.sort(s, descending=True).values[k - 1]
        diff = set(a.tolist()) ^ set(b.tolist())
        for j in diff:
            assert abs(float(s[j]) - float(kth)) <= atol, f"image {i}: index {j} differs and is not a near-tie"


def bits(t):
    """A view that compares bit patterns (NaN-safe equality for rows)."""
    if t.dtype in (torch.float32,):
        return t.view(torch.int32)
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16)
    return t


@contextlib.contextmanager
def poisoned_buffers(module):
    """Make every buffer the Triton path allocates start as NaN (floats) or a sentinel (ints)."""

    original = module._empty

    def poisoned(*args, **kwargs):
        t = original(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        else:
            t.fill_(-123456789)
        return t

    module._empty = poisoned
    try:
        yield
    finally:
        module._empty = original
