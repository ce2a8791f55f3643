"""The one registry of visual-token selection methods.

A selection method picks which K visual tokens of ONE image (or one video) survive::

    fn(embeddings, grid, k, *, scorer=None, seed=None) -> LongTensor [k]

- ``embeddings``: [N, D] merger outputs (LLM embedding space) in raster order of the LLM-token grid;
- ``grid``: ``(t, h, w)`` of that grid after the spatial merge, so ``t * h * w == N``;
- ``k``: number of tokens kept, ``1 <= k <= N`` (callers get it from :func:`vs_vllm.selection.budget.keep_count`);
- returns ``k`` ascending, unique int64 indices in ``[0, N)`` on the embeddings' device.

``k == N`` always returns ``arange(N)`` without doing any work (ratio 1.0 is the unpruned model, so even
``visionselector`` needs no scorer there). Engines, the HF reference, and benchmarks call :func:`select`,
which also checks the output contract. Adding a method means one decorated function here.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from vs_vllm.selection.mmr import BY_BUDGET, mmr_select
from vs_vllm.selection.scorer import TransformerScorer, importance_scores
from vs_vllm.selection.topk import select_topk, validate_k

__all__ = [
    "DEFAULT_RANDOM_SEED",
    "LEARNED_METHODS",
    "METHOD_OPTIONS",
    "SelectionMethod",
    "get_method",
    "list_methods",
    "needs_scorer",
    "register_method",
    "select",
]

#: Seed of the ``random`` method when the request gives none: ``random`` is then deterministic (the same tokens for
#: the same image size on every call and every device), which keeps benchmarks reproducible.
DEFAULT_RANDOM_SEED = 0


class SelectionMethod(Protocol):
    def __call__(
        self,
        embeddings: torch.Tensor,
        grid: Sequence[int],
        k: int,
        *,
        scorer: TransformerScorer | None = None,
        seed: int | None = None,
    ) -> torch.Tensor: ...


_REGISTRY: dict[str, SelectionMethod] = {}


def register_method(name: str, *, replace: bool = False) -> Callable[[SelectionMethod], SelectionMethod]:
    """Decorator registering ``fn`` under ``name``. Re-registering a name raises unless ``replace=True``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty string, got {name!r}")

    def decorator(fn: SelectionMethod) -> SelectionMethod:
        if name in _REGISTRY and not replace:
            raise ValueError(f"selection method {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


#: Methods that read the learned scorer (a server without scorer weights refuses them).
LEARNED_METHODS = frozenset({"visionselector", "visionselector_mmr"})


def needs_scorer(name: str) -> bool:
    return name in LEARNED_METHODS


def list_methods() -> list[str]:
    """Names of the registered selection methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> SelectionMethod:
    """The method registered under ``name``; ValueError listing the known names otherwise."""
    fn = _REGISTRY.get(name) if isinstance(name, str) else None
    if fn is None:
        raise ValueError(f"unknown selection method {name!r}; known methods: {', '.join(list_methods())}")
    return fn


# --------------------------------------------------------------------------------------------------------------------
# Shared input checks.


def _check_inputs(embeddings: torch.Tensor, grid: Sequence[int], k: int) -> tuple[int, tuple[int, int, int], int]:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings must be a 2-D tensor [N, D], got {shape}")
    n = embeddings.shape[0]
    if n < 1:
        raise ValueError("embeddings must hold at least one token, got N=0")
    if isinstance(grid, torch.Tensor):
        grid = grid.tolist()
    try:
        dims = tuple(grid)
    except TypeError:
        raise ValueError(f"grid must be (t, h, w), got {grid!r}") from None
    if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in dims):
        raise ValueError(f"grid must be three positive integers (t, h, w), got {grid!r}")
    t, h, w = (int(d) for d in dims)
    if t * h * w != n:
        raise ValueError(f"grid {(t, h, w)} has {t * h * w} tokens but embeddings have N={n}")
    return n, (t, h, w), validate_k(k, n)


def _to_device(indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-made indices onto ``device`` without making the host wait for the device (pinned, non-blocking copy)."""
    if device.type == "cpu":
        return indices
    if torch.cuda.is_available():
        indices = indices.pin_memory()
    return indices.to(device, non_blocking=True)


def _identity(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.long, device=device)


# --------------------------------------------------------------------------------------------------------------------
# Methods.


@register_method("visionselector")
def visionselector(embeddings, grid, k, *, scorer=None, seed=None):
    """VisionSelector (arXiv 2510.16598): top-K of the learned importance scorer's scores, per image."""
    n, _, k = _check_inputs(embeddings, grid, k)
    if k == n:
        return _identity(n, embeddings.device)
    return select_topk(_learned_scores(embeddings, scorer, "visionselector"), k)


def _learned_scores(embeddings: torch.Tensor, scorer: TransformerScorer | None, method: str) -> torch.Tensor:
    if scorer is None:
        raise ValueError(
            f"selection method {method!r} needs a trained scorer: pass scorer=load_scorer(path) "
            "(convert an original checkpoint with `vs-vllm convert SRC_DIR OUT_FILE`)"
        )
    d = embeddings.shape[1]
    if scorer.q_proj.weight.shape[1] != d:
        raise ValueError(
            f"scorer expects embeddings of width {scorer.q_proj.weight.shape[1]}, got width {d} "
            f"(embeddings shape {tuple(embeddings.shape)})"
        )
    with torch.no_grad():
        return importance_scores(embeddings.detach(), scorer.q_proj.weight, scorer.q_proj.bias,
                                 scorer.k_proj.weight, scorer.k_proj.bias)


@register_method("visionselector_mmr")
def visionselector_mmr(embeddings, grid, k, *, scorer=None, seed=None, selection_lambda=BY_BUDGET):
    """VisionSelector scores + diversity by maximal marginal relevance (IDPruner, arXiv 2602.13315).

    Greedy: ``selection_lambda * minmax(score) - (1 - selection_lambda) * max cosine similarity to the tokens already
    kept``; ``selection_lambda = 1`` is exactly ``visionselector``; left out, ``default_lambda(k)``. See
    :mod:`vs_vllm.selection.mmr`.
    """
    n, _, k = _check_inputs(embeddings, grid, k)
    if k == n:
        return _identity(n, embeddings.device)
    return mmr_select(_learned_scores(embeddings, scorer, "visionselector_mmr"), embeddings, k, selection_lambda)


@register_method("random")
def random(embeddings, grid, k, *, scorer=None, seed=None):
    """Random selection (generic pruning baseline, no paper of its own): k tokens uniformly at random.

    Drawn with a CPU ``torch.Generator`` seeded by ``seed`` (``DEFAULT_RANDOM_SEED`` = 0 when None), so the choice is
    reproducible per request and identical on every device.
    """
    n, _, k = _check_inputs(embeddings, grid, k)
    if k == n:
        return _identity(n, embeddings.device)
    if seed is None:
        seed = DEFAULT_RANDOM_SEED
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    picked = torch.randperm(n, generator=gen)[:k]
    return _to_device(torch.sort(picked).values, embeddings.device)


def _bounds(count: int, length: int) -> list[int]:
    """Boundaries of ``count`` near-equal slices of ``range(length)`` (each slice non-empty when count <= length)."""
    return [(i * length) // count for i in range(count + 1)]


def _split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers spread evenly (differences at most 1)."""
    return [((j + 1) * total) // parts - (j * total) // parts for j in range(parts)]


@register_method("uniform")
def uniform(embeddings, grid, k, *, scorer=None, seed=None):
    """Uniform spatial sampling (generic grid-sampling baseline, no paper of its own): an even lattice over the grid.

    k is split evenly over the frames. Within a frame the rows are cut into ``a ~ sqrt(k h / w)`` near-equal bands
    (cells roughly square), each band into an even share of near-equal column slots, and one token is taken per cell:
    its centre, or, along a lattice that is a single line (one band, or one slot per band), alternately the quarter
    and three-quarter points so that a thin lattice still covers both halves of the frame. Cells are disjoint, so the
    k tokens are unique. Deterministic and content-independent.
    """
    n, (t, h, w), k = _check_inputs(embeddings, grid, k)
    if k == n:
        return _identity(n, embeddings.device)
    picked: list[int] = []
    for frame, kf in enumerate(_split(k, t)):
        if kf == 0:
            continue
        rows_needed = -(-kf // w)  # a band holds at most w cells
        a = min(max(round(math.sqrt(kf * h / w)), rows_needed, 1), h, kf)
        base = frame * h * w
        row_bounds = _bounds(a, h)
        for j, count in enumerate(_split(kf, a)):
            r_lo, r_hi = row_bounds[j], row_bounds[j + 1]
            col_bounds = _bounds(count, w)
            for i in range(count):
                c_lo, c_hi = col_bounds[i], col_bounds[i + 1]
                # Phases in quarters: 2 = centre; 1 / 3 alternate along a single-line lattice.
                row_q = 2 if a > 1 or count == 1 else 1 + 2 * (i % 2)
                col_q = 2 if count > 1 or a == 1 else 1 + 2 * (j % 2)
                row = r_lo + ((r_hi - r_lo) * row_q) // 4
                col = c_lo + ((c_hi - c_lo) * col_q) // 4
                picked.append(base + row * w + col)
    return _to_device(torch.tensor(sorted(picked), dtype=torch.long), embeddings.device)


@register_method("norm")
def norm(embeddings, grid, k, *, scorer=None, seed=None):
    """L2-norm top-K (generic baseline; the norm rule DART, arXiv 2502.11494, uses for its pivots)."""
    n, _, k = _check_inputs(embeddings, grid, k)
    if k == n:
        return _identity(n, embeddings.device)
    with torch.no_grad():
        return select_topk(embeddings.detach().float().norm(dim=-1), k)


def _unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    x = embeddings.detach().float()
    # The finiteness check reads a device value back; it runs where that is free (CPU: tests, training, the HF
    # reference), not on an accelerator's serving path.
    if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
        raise ValueError(f"embeddings contain NaN or infinite values ({int((~torch.isfinite(x)).sum())} entries)")
    return F.normalize(x, dim=-1, eps=1e-12)


@register_method("divprune")
def divprune(embeddings, grid, k, *, scorer=None, seed=None, block: int = 4096):
    """DivPrune (arXiv 2503.02175): greedy max-min diversity over cosine distance.

    First pick: the token whose nearest other token is farthest (the paper's MMDP greedy start). Then repeatedly add
    the token whose minimum cosine distance to the selected set is largest; ties go to the lowest index. The N x N
    distance matrix is never stored: the first pick is computed in row blocks and the min-distance vector is updated
    with one mat-vec per pick.
    """
    n, _, k = _check_inputs(embeddings, grid, k)
    if k == n:
        return _identity(n, embeddings.device)
    with torch.no_grad():
        x = _unit_rows(embeddings)
        nearest = torch.empty(n, dtype=torch.float32, device=x.device)
        for start in range(0, n, block):
            sim = x[start : start + block] @ x.T
            rows = torch.arange(sim.shape[0], device=x.device)
            sim[rows, rows + start] = -math.inf  # a token is not its own neighbour
            nearest[start : start + block] = 1.0 - sim.amax(dim=1)
        # Indices stay 1-element device tensors (index_select / index_fill_): a 0-d tensor used as an index would be
        # read back to the host on every pick.
        chosen = torch.empty(k, dtype=torch.long, device=x.device)
        idx = torch.argmax(nearest).view(1)  # argmax returns the first maximum: ties to the lowest index
        chosen[0:1] = idx
        min_dist = 1.0 - x @ x.index_select(0, idx)[0]
        min_dist.index_fill_(0, idx, -math.inf)
        for i in range(1, k):
            idx = torch.argmax(min_dist).view(1)
            chosen[i : i + 1] = idx
            min_dist = torch.minimum(min_dist, 1.0 - x @ x.index_select(0, idx)[0])
            min_dist.index_fill_(0, idx, -math.inf)  # stays -inf under later minimums: never picked twice
        return torch.sort(chosen).values


def _dart_pivot_count(k: int) -> int:
    # DART's default keeps a handful of pivots (e.g. 4 image pivots for ~128 kept tokens): about k/32, at least 1.
    return max(1, min(k, round(k / 32)))


@register_method("dart")
def dart(embeddings, grid, k, *, scorer=None, seed=None):
    """DART (arXiv 2502.11494), embedding-level variant: keep L2-norm pivots plus the tokens least similar to them.

    Pivots = the ``max(1, round(k / 32))`` largest-norm tokens; the other ``k - pivots`` kept tokens have the lowest
    maximum cosine similarity to any pivot (the least duplicated ones); ties go to the lowest index.
    """
    n, _, k = _check_inputs(embeddings, grid, k)
    if k == n:
        return _identity(n, embeddings.device)
    with torch.no_grad():
        x = embeddings.detach().float()
        pivots = select_topk(x.norm(dim=-1), _dart_pivot_count(k))
        unit = _unit_rows(x)
        duplication = (unit @ unit[pivots].T).amax(dim=1)  # [N]: similarity to the closest pivot
        keep_score = -duplication
        keep_score[pivots] = math.inf  # pivots are always kept
        return select_topk(keep_score, k)


@register_method("temporal")
def temporal(embeddings, grid, k, *, scorer=None, seed=None):
    """Temporal redundancy as in EVS (Efficient Video Sampling, arXiv 2510.14624): keep the most novel video tokens.

    A token of frame f >= 1 is as redundant as its cosine similarity to the token at the same (row, column) of frame
    f - 1. The first frame has nothing to repeat, so all of it is kept first; the other ``k - h*w`` kept tokens are
    those of the later frames with the lowest similarity (ties to the lowest index). This is the ranking of vLLM's
    ``compute_retention_mask``. Unlike EVS, k is never raised to a whole frame (K_i is fixed before the model runs):
    when ``k < h*w`` the k tokens come from the first frame alone, on ``uniform``'s even spatial lattice (tokens
    evenly spaced in raster order would fall on a single column whenever h*w / k is a multiple of w). An image
    (t == 1) has no previous frame: exactly ``uniform``.
    """
    n, (t, h, w), k = _check_inputs(embeddings, grid, k)
    if k == n:
        return _identity(n, embeddings.device)
    frame_size = h * w
    if t == 1:
        return uniform(embeddings, (t, h, w), k)
    if k <= frame_size:
        return uniform(embeddings[:frame_size], (1, h, w), k)
    with torch.no_grad():
        frames = _unit_rows(embeddings).reshape(t, frame_size, -1)
        # [(t - 1) * h * w] in the order of the tokens of frames 1..t-1, i.e. flat index minus frame_size.
        similarity_to_previous = (frames[1:] * frames[:-1]).sum(dim=-1).reshape(-1)
        novel = select_topk(-similarity_to_previous, k - frame_size) + frame_size
        return torch.cat([_identity(frame_size, embeddings.device), novel])


# --------------------------------------------------------------------------------------------------------------------
# The entry point engines use.


#: Per-request options only some methods take (``selection_lambda``: ``visionselector_mmr``). :func:`select` passes
#: each to the methods whose signature names it, so engines can hand every request's options to any method.
METHOD_OPTIONS = ("selection_lambda",)


@functools.lru_cache(maxsize=64)
def _accepted_options(fn: SelectionMethod) -> frozenset[str]:
    """The METHOD_OPTIONS ``fn`` takes (read once per method: select() runs per image on the serving path)."""
    return frozenset(METHOD_OPTIONS) & frozenset(inspect.signature(fn).parameters)


def _method_kwargs(fn: SelectionMethod, kwargs: dict) -> dict:
    if not any(name in kwargs for name in METHOD_OPTIONS):
        return kwargs
    accepted = _accepted_options(fn)
    return {key: value for key, value in kwargs.items() if key not in METHOD_OPTIONS or key in accepted}


def select(
    method: str | SelectionMethod,
    embeddings: torch.Tensor,
    grid: Sequence[int],
    k: int,
    *,
    check_output: bool | None = None,
    **kwargs,
) -> torch.Tensor:
    """Run ``method`` (a registered name or a callable) and check the output contract.

    Returns exactly ``k`` ascending unique int64 indices in ``[0, N)`` on the embeddings' device. Bad inputs raise
    ValueError; a method that breaks the contract raises RuntimeError (a bug in the method, not in the request).
    The value checks read the indices back to the host, which on an accelerator is a device sync: ``check_output``
    defaults to True for CPU tensors and to False otherwise (the serving path; the tests check every method on CPU).
    """
    fn = get_method(method) if isinstance(method, str) else method
    name = method if isinstance(method, str) else getattr(method, "__name__", repr(method))
    n, dims, k = _check_inputs(embeddings, grid, k)
    out = fn(embeddings, dims, k, **_method_kwargs(fn, kwargs))
    if check_output is None:
        check_output = embeddings.device.type == "cpu"
    problem = None
    if not isinstance(out, torch.Tensor):
        problem = f"returned {type(out).__name__}, not a tensor"
    elif out.dtype != torch.long or out.dim() != 1:
        problem = f"returned dtype {out.dtype} shape {tuple(out.shape)}, expected int64 [{k}]"
    elif out.numel() != k:
        problem = f"returned {out.numel()} indices, expected exactly k={k}"
    elif out.device != embeddings.device:
        problem = f"returned indices on {out.device}, expected {embeddings.device}"
    elif not check_output:
        pass
    elif k and (int(out.min()) < 0 or int(out.max()) >= n):
        problem = f"returned indices outside [0, {n}): min {int(out.min())}, max {int(out.max())}"
    elif k > 1 and not bool((out[1:] > out[:-1]).all()):
        problem = "returned indices that are not strictly ascending (unsorted or duplicated)"
    if problem is not None:
        raise RuntimeError(f"selection method {name!r} broke the output contract: {problem}")
    return out
