"""M-RoPE positions of a pruned Qwen2/2.5-VL prompt — the one place this logic lives.

VisionSelector keeps the original (t, h, w) positions of the kept visual tokens (with gaps) and gives the text after an
image the positions it had in the *unpruned* sequence. So the positions of a pruned prompt can be computed by walking
the pruned token list while counting positions for the virtual unpruned sequence:

- text token: (p, p, p), then p += 1;
- an image with LLM grid (t, h, w) starting at base p: kept flat index j sits at
  (p + j // (h*w), p + (j // w) % h, p + j % w); after the image p = base + max(h, w)
  (transformers' ``get_rope_index`` for still images: the temporal step is 1 and the text resumes after the larger of
  the two spatial extents).

The decode delta is ``P_max + 1 - len(pruned prompt)``: generated token j sits at ``P_max + 1 + j``.

vLLM sizes placeholders before the vision tower runs, so it first needs positions whose *text* entries are exact while
the image entries are provisional (``kept=None``); it fills the image slots later from the kept indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["grid_coordinates", "mrope_positions"]


def grid_coordinates(indices: torch.Tensor, grid_thw: Sequence[int]) -> torch.Tensor:
    """(t, h, w) of flat raster indices within one image's LLM grid: LongTensor [3, K]."""
    t, h, w = (int(v) for v in grid_thw)
    idx = indices.to(torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t * h * w):
        raise ValueError(f"indices out of range for grid {tuple(grid_thw)}: [{int(idx.min())}, {int(idx.max())}]")
    return torch.stack([idx // (h * w), (idx // w) % h, idx % w])


def mrope_positions(
    input_ids: Sequence[int] | torch.Tensor,
    image_token_id: int,
    image_grids: Sequence[Sequence[int]],
    kept: Sequence[torch.Tensor | None] | None = None,
    start: int = 0,
) -> tuple[torch.Tensor, int]:
    """Positions [3, L] for the (possibly pruned) prompt ``input_ids`` and the decode delta.

    ``image_grids[i]`` is image i's LLM grid (t, h, w) — the patch grid divided by the spatial merge size.
    ``kept[i]`` holds the ascending flat indices of image i's kept tokens; each image's run of ``image_token_id``
    in ``input_ids`` must have exactly that many tokens. ``kept=None`` (or a None entry) means "not known yet": the
    run length is taken from ``input_ids`` and the image entries are provisional (``base`` on all three axes); the
    text entries are exact either way. Consecutive images must be separated by at least one other token (Qwen's
    chat format puts ``<|vision_end|><|vision_start|>`` between them).
    """
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    n = len(ids)
    out = torch.empty(3, n, dtype=torch.long)
    pos = start
    image = 0
    i = 0
    while i < n:
        if ids[i] != image_token_id:
            out[:, i] = pos
            pos += 1
            i += 1
            continue
        run_end = i
        while run_end < n and ids[run_end] == image_token_id:
            run_end += 1
        if image >= len(image_grids):
            raise ValueError(f"prompt has more image-token runs than the {len(image_grids)} grids given")
        t, h, w = (int(v) for v in image_grids[image])
        run = run_end - i
        idx = None if kept is None else kept[image]
        if idx is not None:
            if idx.numel() != run:
                raise ValueError(f"image {image}: {run} image tokens in the prompt but {idx.numel()} kept indices")
            out[:, i:run_end] = grid_coordinates(idx, (t, h, w)) + pos
        else:
            if run > t * h * w:
                raise ValueError(f"image {image}: {run} image tokens exceed its grid {(t, h, w)}")
            out[:, i:run_end] = pos
        pos += max(h, w)
        image += 1
        i = run_end
    if image != len(image_grids):
        raise ValueError(f"prompt has {image} image-token runs but {len(image_grids)} grids were given")
    p_max = int(out.max()) if n else start - 1
    return out, p_max + 1 - n
