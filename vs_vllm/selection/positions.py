"""M-RoPE positions of a pruned Qwen2/2.5-VL prompt — the one place this logic lives.

VisionSelector keeps the original (t, h, w) positions of the kept visual tokens (with gaps) and gives the text after an
image the positions it had in the *unpruned* sequence. So the positions of a pruned prompt are computed by walking it
while counting positions for the virtual unpruned sequence:

- text token: (p, p, p), then p += 1;
- a media span (image or video) with LLM grid (t, h, w) starting at base p: token with flat index j sits at
  (p + t_j * t_factor, p + h_j, p + w_j) with t_j = j // (h*w), h_j = (j // w) % h, w_j = j % w (``t_factor`` is 1
  for images, seconds-per-grid * tokens-per-second for videos); after the span, p = 1 + the largest position the
  *unpruned* span would have used (for an image: base + max(h, w), as transformers' ``get_rope_index`` does).

The decode delta is ``P_max + 1 - len(prompt)``: generated token j sits at ``P_max + 1 + j``.

Two users:
- the HF reference knows the kept indices up front (:func:`mrope_positions`);
- vLLM sizes the prompt before the vision tower runs, so it first computes positions whose *text* entries are exact and
  whose pruned-image entries are provisional (:func:`mrope_positions_for_spans` with ``kept=None``), then, once the
  encoder has chosen, writes the kept tokens' coordinates into the image slots (:func:`fill_media_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["MediaSpan", "fill_frame_positions", "fill_media_positions", "token_runs", "grid_coordinates", "mrope_positions", "mrope_positions_for_spans",
           "scaled_temporal", "video_t_factors"]


@dataclass(frozen=True)
class MediaSpan:
    """One image or video in a prompt: ``length`` placeholder tokens from ``offset``."""

    offset: int
    length: int
    grid: tuple[int, int, int]  # LLM grid (t, h, w): the patch grid divided by the spatial merge size
    t_factor: float = 1.0
    kept: torch.Tensor | None = None  # ascending flat indices of the kept tokens, when known
    # A frame of a pruned per-frame video (Qwen3-VL): its item's kept tokens are all placed in the first frame's run
    # (any count, provisional positions) and the other frames' runs are empty (length 0); each still advances the
    # positions by one frame's extent, so the text between frames keeps its unpruned positions.
    lumped: bool = False

    @property
    def total(self) -> int:
        t, h, w = self.grid
        return t * h * w


def grid_coordinates(indices: torch.Tensor, grid_thw: Sequence[int], validate: bool = True) -> torch.Tensor:
    """(t, h, w) of flat raster indices within one LLM grid: LongTensor [3, K], on the device of ``indices``.

    ``grid_thw`` must be host ints (or a host tensor). With ``validate`` (the default) indices outside the grid raise
    ``ValueError``; that check reads the indices' min/max on the host, a device sync, so the serving path passes
    ``validate=False`` (out-of-range indices then give meaningless coordinates).
    """
    t, h, w = (int(v) for v in grid_thw)
    idx = indices.to(torch.long)
    if validate and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t * h * w):
        raise ValueError(f"indices out of range for grid {tuple(grid_thw)}: [{int(idx.min())}, {int(idx.max())}]")
    return torch.stack([idx // (h * w), (idx // w) % h, idx % w])


def video_t_factors(second_per_grid_ts, vision_config, count: int) -> list[float]:
    """Per video, the factor its temporal index is scaled by: seconds per temporal patch x the vision config's
    ``tokens_per_second`` (Qwen2/2.5-VL, as vLLM's ``iter_mm_grid_thw`` computes it), 1 without seconds. Host values
    (vLLM keeps ``second_per_grid_ts`` on the CPU)."""
    if second_per_grid_ts is None:
        return [1.0] * count
    tokens_per_second = getattr(vision_config, "tokens_per_second", 1.0)
    return [float(s) * tokens_per_second for s in torch.as_tensor(second_per_grid_ts).flatten().tolist()]


def scaled_temporal(t: torch.Tensor, t_factor: float) -> torch.Tensor:
    """Temporal M-RoPE offsets of temporal indices ``t``: ``int(t * t_factor)``, in float64 as vLLM (numpy) and
    transformers compute it, so the three agree bit for bit. No host sync."""
    if t_factor == 1.0:
        return t.to(torch.long)
    return (t.to(torch.float64) * t_factor).to(torch.long)


def _span_extent(span: MediaSpan) -> int:
    """Positions the unpruned span occupies past its base: the next token starts at base + extent."""
    t, h, w = span.grid
    return max(int((t - 1) * span.t_factor), h - 1, w - 1) + 1


def mrope_positions_for_spans(
    num_tokens: int, spans: Sequence[MediaSpan], start: int = 0
) -> tuple[torch.Tensor, int]:
    """Positions [3, num_tokens] and the decode delta for a prompt whose media spans are ``spans``.

    Unpruned spans (``length == t*h*w``) get their full-grid positions; pruned spans with ``kept`` get the kept
    tokens' original positions; pruned spans without ``kept`` get provisional positions (``base`` on every axis).
    Text is exact in every case.
    """
    out = torch.empty(3, num_tokens, dtype=torch.long)
    pos = start
    cursor = 0
    for span in sorted(spans, key=lambda s: s.offset):
        if span.offset < cursor or span.offset + span.length > num_tokens:
            raise ValueError(f"media span at {span.offset} (+{span.length}) overlaps or leaves the prompt")
        if not span.lumped and (span.length > span.total or span.length < 1):
            raise ValueError(f"media span at {span.offset}: {span.length} tokens for grid {span.grid}")
        if span.lumped and (span.length < 0 or span.kept is not None):
            raise ValueError(f"lumped media span at {span.offset}: {span.length} tokens, kept indices given")
        text = span.offset - cursor
        out[:, cursor : span.offset] = torch.arange(pos, pos + text)
        pos += text
        kept = span.kept
        if kept is None and span.length == span.total and not span.lumped:
            kept = torch.arange(span.total)
        if kept is not None:
            if kept.numel() != span.length:
                raise ValueError(f"media span at {span.offset}: {span.length} tokens but {kept.numel()} kept indices")
            coords = grid_coordinates(kept.cpu(), span.grid)
            coords[0] = scaled_temporal(coords[0], span.t_factor)
            out[:, span.offset : span.offset + span.length] = coords + pos
        else:
            out[:, span.offset : span.offset + span.length] = pos
        pos += _span_extent(span)
        cursor = span.offset + span.length
    out[:, cursor:] = torch.arange(pos, pos + num_tokens - cursor)
    p_max = int(out.max()) if num_tokens else start - 1
    return out, p_max + 1 - num_tokens


def token_runs(tokens: Sequence[int], token: int, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(offset, length) of each maximal run of ``token`` in ``tokens[start:end]``."""
    end = len(tokens) if end is None else end
    runs: list[tuple[int, int]] = []
    i = start
    while i < end:
        if tokens[i] != token:
            i += 1
            continue
        j = i
        while j < end and tokens[j] == token:
            j += 1
        runs.append((i, j - i))
        i = j
    return runs


def image_spans(
    input_ids: Sequence[int] | torch.Tensor,
    image_token_id: int,
    image_grids: Sequence[Sequence[int]],
    kept: Sequence[torch.Tensor | None] | None = None,
) -> list[MediaSpan]:
    """The runs of ``image_token_id`` in ``input_ids`` as spans, matched in order with ``image_grids``.

    Consecutive images must be separated by at least one other token (Qwen's chat format puts
    ``<|vision_end|><|vision_start|>`` between them).
    """
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    runs = token_runs(ids, image_token_id)
    if len(runs) > len(image_grids):
        raise ValueError(f"prompt has more image-token runs than the {len(image_grids)} grids given")
    spans = [
        MediaSpan(offset=offset, length=length, grid=tuple(int(v) for v in image_grids[k]),
                  kept=None if kept is None else kept[k])
        for k, (offset, length) in enumerate(runs)
    ]
    if len(spans) != len(image_grids):
        raise ValueError(f"prompt has {len(spans)} image-token runs but {len(image_grids)} grids were given")
    return spans


def mrope_positions(
    input_ids: Sequence[int] | torch.Tensor,
    image_token_id: int,
    image_grids: Sequence[Sequence[int]],
    kept: Sequence[torch.Tensor | None] | None = None,
    start: int = 0,
) -> tuple[torch.Tensor, int]:
    """Positions [3, L] and decode delta of a (possibly pruned) image prompt; see the module docstring."""
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    return mrope_positions_for_spans(len(ids), image_spans(ids, image_token_id, image_grids, kept), start)


def _media_window(positions, input_ids, media_token_ids, coords, start, validate):
    """(ids, is_media, window, rank, row) shared by the fill functions: the media slots at index >= ``start``, each
    slot's rank among them and the coordinate row it takes. Sync-free unless ``validate``."""
    num_rows = coords.shape[0]
    device = positions.device
    length = positions.shape[1]
    ids = input_ids.to(device=device, dtype=torch.long)
    rows = coords.to(device=device, dtype=torch.long)
    is_media = torch.zeros_like(ids, dtype=torch.bool)
    for token in media_token_ids:  # Python scalars: no host-to-device copy of the token list
        is_media |= ids == int(token)
    index = torch.arange(length, device=device)
    window = is_media & (index >= start)
    rank = torch.cumsum(window, 0) - 1  # rank of each window media slot among the window's media slots
    if validate is None:
        validate = device.type == "cpu"
    if validate:
        slots = int(rank[-1]) + 1 if length else 0
        if slots < num_rows:
            raise ValueError(f"{num_rows} media rows but only {slots} media slots from index {start}")
    row = rows.index_select(0, rank.clamp(0, num_rows - 1))  # [L, 3]: the row each slot would take
    return ids, is_media, window & (rank < num_rows) & (row[:, 0] >= 0), row


def fill_media_positions(
    positions: torch.Tensor,
    input_ids: torch.Tensor,
    media_token_ids: Sequence[int],
    coords: torch.Tensor,
    start: int = 0,
    validate: bool | None = None,
) -> torch.Tensor:
    """Write media coordinates into the media slots of ``positions`` at index >= ``start``; returns a new tensor.

    ``coords`` [R, 3] holds the (t, h, w) offsets of R media tokens, in prompt order; they map onto the first R media
    slots (tokens in ``media_token_ids``) at index >= ``start`` — this is how vLLM hands over the media rows scheduled in
    one prefill chunk. Each slot gets ``base + coords``, where ``base`` is one past the position of the token just
    before its media span (text positions are already exact). Rows whose t is negative leave their slot as it is
    (media that was not pruned and is already positioned exactly).

    Sync-free on a device: fixed-shape ops only, no ``nonzero``, boolean-mask indexing or host reads (R and
    ``start`` are host values). ``input_ids`` and ``coords`` should already be on the device of ``positions``;
    host ones are copied there, which is itself a (blocking) transfer.

    ``validate``: check that there are at least R media slots from ``start`` and raise ``ValueError`` otherwise. The
    check reads a device count on the host, so ``None`` (the default) runs it only when ``positions`` lives on the
    CPU; on a device the rows without a slot are dropped silently.
    """
    if coords.numel() == 0:
        return positions
    _, is_media, write, row = _media_window(positions, input_ids, media_token_ids, coords, start, validate)
    index = torch.arange(positions.shape[1], device=positions.device)
    # The token before a slot's media span is the last non-media token at or before it (-1: the span opens the prompt).
    before = torch.cummax(torch.where(is_media, -1, index), 0).values
    base = torch.where(before >= 0, positions[0].gather(0, before.clamp_min(0)).to(torch.long) + 1, 0)
    return torch.where(write, (base[:, None] + row).T.to(positions.dtype), positions)


def fill_frame_positions(
    positions: torch.Tensor,
    input_ids: torch.Tensor,
    media_token_ids: Sequence[int],
    coords: torch.Tensor,
    start: int = 0,
    validate: bool | None = None,
    *,
    frame_anchor_id: int,
) -> torch.Tensor:
    """:func:`fill_media_positions` for layouts where every image and video frame is a (1, h, w) grid placed one
    past its own anchor token (Qwen3-VL: ``<|vision_start|>``), with text (timestamps) between a video's frames.

    A row's t is its frame's index within its item, and its slot may sit in another frame's run: a pruned video's
    kept tokens are all placed in its first frame's run. So a slot's base is one past the anchor t anchors after the
    last anchor at or before the slot, and the slot gets (base, base + h, base + w). Rows with t < 0 leave their slot
    alone. Sync-free like :func:`fill_media_positions` (``searchsorted`` over the anchor counts, no ``nonzero``).
    """
    if coords.numel() == 0:
        return positions
    ids, _, write, row = _media_window(positions, input_ids, media_token_ids, coords, start, validate)
    anchors_upto = torch.cumsum(ids == int(frame_anchor_id), 0)  # anchors at or before each index (non-decreasing)
    # the first index whose count reaches (own count + t) is that anchor
    anchor = torch.searchsorted(anchors_upto, anchors_upto + row[:, 0].clamp_min(0)).clamp_max(positions.shape[1] - 1)
    base = positions[0].gather(0, anchor).to(torch.long) + 1
    placed = torch.stack([base, base + row[:, 1], base + row[:, 2]])
    return torch.where(write, placed.to(positions.dtype), positions)
