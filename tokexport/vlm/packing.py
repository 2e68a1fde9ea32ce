"""LLaVA-NeXT's packing of visual tokens, applied to any kept subset: kept positions + their features →
the sequence the language model reads (with ``image_newline``), in numpy or torch, no model needed.

The visual-token graph (model.onnx, :mod:`tokexport.vlm.graph`) returns ``visual_tokens [B, K, D]`` and
``positions [B, K]``: for each token, its index in the flattened V·P patch sequence (view-major: view 0
= the full image resized, views 1.. = the rows×cols anyres tiles in row-major order; raster order inside
a view), ascending; -1 for a prefix (CLS) token kept by ``feature_select: full``. That is *not* the
order LLaVA-NeXT feeds its language model. ``LlavaNextModel.pack_image_features`` (transformers 5.24)
builds, per image:

1. the base view's tokens (view 0), in raster order, with no newline after them;
2. the tiles stitched into one (rows·gh) × (cols·gw) grid — stitched row ``R = tile_row·gh + y``,
   column ``C = tile_col·gw + x`` — then *unpadded* to the original aspect ratio (``unpad_image``:
   a centred band of rows or columns is cut away when the image was letterboxed into the anyres
   resolution), then read row-major with ``image_newline`` appended after every stitched row.

(A single view — never the case for anyres, which always adds the base view — is its tokens plus one
trailing newline. LLaVA-1.5 has no newline: its tokens go in as they are, CLS first with ``full``.)

:func:`packing_order` reproduces that order for any kept subset; :func:`pack` gathers the features
(and the newline embedding) into it. With every position kept, the result equals
``pack_image_features`` exactly (tests/test_llava_packing.py). For a subset:

- kept base-view tokens first, ascending; kept tile tokens in stitched row-major order;
- tile tokens inside the band ``unpad_image`` removes are dropped (the model drops every token there);
- ``empty_rows="newline"`` (default): every stitched row of the unpadded grid ends with a newline,
  also a row whose tokens were all dropped. This is what HiRED's reference code does when its
  ``image_newline`` is switched on (``pack_HiRED_image_features`` marks the newline column kept for
  every row; the released code passes ``image_newline=None`` and drops all newlines), it keeps the row
  count visible to the LLM, and it makes the packed length ``K + rows`` — fixed for a given image size,
  so an LLM engine can be built for it. ``empty_rows="drop"``: a newline only after rows that keep at
  least one token.

Everything here is index arithmetic on Python ints / numpy; :func:`pack` then gathers with the array
library the features come in (numpy or torch), so a deploy runtime can apply it to ONNX Runtime or
TensorRT outputs directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

NEWLINE = -1  # in a packing order: the image_newline embedding
EmptyRows = Literal["newline", "drop"]


def unpad_bounds(height: int, width: int, image_size: Sequence[int] | None) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1): the rows [r0, r1) and columns [c0, c1) of a ``height × width`` stitched token
    grid that ``transformers``' ``unpad_image`` keeps for an original image of ``image_size`` = (H, W)
    pixels (same arithmetic, including its ``round(·, 7)``). None: the whole grid (no letterboxing)."""
    if image_size is None:
        return 0, height, 0, width
    oh, ow = (int(v) for v in image_size)
    if oh < 1 or ow < 1:
        raise ValueError(f"image_size must be two positive ints (H, W), got {tuple(image_size)}")
    if ow / oh > width / height:
        new_h = int(round(oh * (width / ow), 7))
        pad = (height - new_h) // 2
        return pad, height - pad, 0, width
    new_w = int(round(ow * (height / oh), 7))
    pad = (width - new_w) // 2
    return 0, height, pad, width - pad


def _check_positions(positions, total: int) -> np.ndarray:
    pos = np.asarray(positions.detach().cpu() if hasattr(positions, "detach") else positions)
    if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"positions must be a 1-D integer array (one image), got {pos.dtype} {pos.shape}")
    pos = pos.astype(np.int64)
    if pos.size and (pos.min() < -1 or pos.max() >= total):
        raise ValueError(
            f"positions must lie in [0, {total}) (or -1 for a prefix token), got {int(pos.min())}..{int(pos.max())}"
        )
    patch = pos[pos >= 0]
    if len(np.unique(patch)) != len(patch):
        raise ValueError("positions hold a position twice")
    return pos


def packing_order(
    positions,
    views: int,
    grid: tuple[int, int],
    sub_grid: tuple[int, int] | None,
    newline: bool = True,
    image_size: Sequence[int] | None = None,
    empty_rows: EmptyRows = "newline",
) -> np.ndarray:
    """int64 [L]: the packed sequence as indices into the K given tokens, ``NEWLINE`` (-1) for the
    newline embedding.

    positions: [K] ints, one image (model.onnx's ``positions`` row, any order); ``views``, ``grid`` =
    (gh, gw) patches per view, ``sub_grid`` = (rows, cols) of the anyres tiles (None for one view) —
    the fields of :class:`tokexport.vlm.select.VisualLayout`. ``newline``: whether the model has an
    ``image_newline`` (LLaVA-NeXT yes, LLaVA-1.5 no). ``image_size``: the original (H, W) for
    unpadding (None = no letterbox band). ``empty_rows``: see the module docstring."""
    gh, gw = (int(g) for g in grid)
    p = gh * gw
    pos = _check_positions(positions, views * p)
    if empty_rows not in ("newline", "drop"):
        raise ValueError(f"empty_rows must be 'newline' or 'drop', got {empty_rows!r}")
    idx = np.arange(len(pos), dtype=np.int64)
    prefix = idx[pos < 0]
    if sub_grid is None:
        if views != 1:
            raise ValueError(f"{views} views need sub_grid=(rows, cols)")
        body = idx[pos >= 0][np.argsort(pos[pos >= 0], kind="stable")]
        order = np.concatenate([prefix, body])
        return np.concatenate([order, [NEWLINE]]) if newline else order
    rows, cols = (int(s) for s in sub_grid)
    if views != 1 + rows * cols:
        raise ValueError(f"views={views} does not match sub_grid={tuple(sub_grid)} (expected {1 + rows * cols})")
    if len(prefix):
        raise ValueError(
            "LLaVA-NeXT packing needs patch tokens only (feature_select 'default'): the model cannot "
            "stitch tiles that carry a CLS token"
        )
    base_mask = pos < p
    base = idx[base_mask][np.argsort(pos[base_mask], kind="stable")]
    tile_idx = idx[~base_mask]
    t, q = np.divmod(pos[~base_mask] - p, p)  # tile (row-major over rows×cols), patch inside the tile
    tr, tc = np.divmod(t, cols)
    y, x = np.divmod(q, gw)
    r, c = tr * gh + y, tc * gw + x  # stitched row, column
    r0, r1, c0, c1 = unpad_bounds(rows * gh, cols * gw, image_size)
    inside = (r >= r0) & (r < r1) & (c >= c0) & (c < c1)
    tile_idx, r, c = tile_idx[inside], r[inside], c[inside]
    srt = np.lexsort((c, r))  # by row, then column
    tile_idx, r = tile_idx[srt], r[srt]
    out = [base]
    starts = np.searchsorted(r, np.arange(r0, r1 + 1))
    for i in range(r1 - r0):
        kept = tile_idx[starts[i] : starts[i + 1]]
        out.append(kept)
        if newline and (len(kept) or empty_rows == "newline"):
            out.append(np.array([NEWLINE], dtype=np.int64))
    return np.concatenate(out).astype(np.int64)


def pack(
    tokens,
    positions,
    views: int,
    grid: tuple[int, int],
    sub_grid: tuple[int, int] | None,
    image_newline=None,
    image_size: Sequence[int] | None = None,
    empty_rows: EmptyRows = "newline",
):
    """[L, D]: one image's kept tokens [K, D] in the model's packed order, ``image_newline`` [D] where
    the model puts it (None: a model without one, e.g. LLaVA-1.5). numpy in → numpy out, torch in →
    torch out (the newline cast to the tokens' dtype and device)."""
    if tokens.ndim != 2 or tokens.shape[0] != len(positions):
        raise ValueError(f"tokens must be [K, D] with K = len(positions) = {len(positions)}, got {tuple(tokens.shape)}")
    order = packing_order(positions, views, grid, sub_grid, image_newline is not None, image_size, empty_rows)
    k = tokens.shape[0]
    src_idx = np.where(order == NEWLINE, k, order)
    if hasattr(tokens, "detach"):  # torch
        import torch

        extra = (
            image_newline.to(device=tokens.device, dtype=tokens.dtype)[None]
            if image_newline is not None
            else tokens.new_zeros((1, tokens.shape[1]))
        )
        return torch.cat([tokens, extra])[torch.as_tensor(src_idx, device=tokens.device)]
    extra = (
        np.asarray(image_newline, dtype=tokens.dtype)[None]
        if image_newline is not None
        else np.zeros((1, tokens.shape[1]), tokens.dtype)
    )
    return np.concatenate([tokens, extra])[src_idx]


def packed_length(
    positions,
    views: int,
    grid: tuple[int, int],
    sub_grid: tuple[int, int] | None,
    newline: bool = True,
    image_size: Sequence[int] | None = None,
    empty_rows: EmptyRows = "newline",
) -> int:
    """How many embeddings :func:`pack` returns (= the image placeholders the prompt must hold)."""
    return len(packing_order(positions, views, grid, sub_grid, newline, image_size, empty_rows))


__all__ = ["NEWLINE", "pack", "packed_length", "packing_order", "unpad_bounds"]
