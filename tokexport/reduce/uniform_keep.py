"""Uniform keep: a 2-D lattice of the patch grid, the same positions for every image (an ONNX constant).

Which positions. The h×w patch grid gets one fixed *spread ordering* (:func:`lattice_order`); a stage
keeping n tokens keeps the first n positions of that ordering. The ordering is built coarse to fine from
nested lattices — the square lattice of stride s (rows and columns ≡ 0 mod s), then its quincunx
(adding the cell centres s/2, s/2), then the square lattice of stride s/2, and so on down to every
cell — and within one such level the new cells are taken by greedy farthest-point order (each next cell
is the one farthest from the level's cells already taken; ties: nearest the grid centre, then lowest
index). So:

* whenever n is the size of a level the kept set IS that lattice: 1/2 of a 16×16 grid is the
  quincunx (checkerboard), 1/4 the stride-2 square lattice, 1/8 the stride-2 quincunx, …;
* in between, the coarser lattice is complete and the next level's cells are spread over the whole grid
  (not filled in one region);
* prefixes are nested, so a later stage (fewer tokens) keeps a subset of what the earlier stage kept,
  chosen by the tokens' ORIGINAL 2-D positions: the survivors of earlier uniform stages are exactly
  the first M positions of the ordering, in ascending original order (``gather`` keeps order), so the
  method knows every candidate's original position without tracking it per image.

Why not an exact lattice per stage: the lattice for n_keep at stage 2 is in general not a subset of the
lattice kept at stage 1, and a static graph can only keep tokens that survived. Why not the 1-D stride
this method used before: at keep 0.5 on a 16×16 grid it kept every other column (stripes); it was a
lattice only on the flattened token order.

The grid is the square of the patch tokens entering block 0 (``LayerInputs.grid``, set by the patch);
the position arithmetic happens in Python at trace time, so the exported graph holds constant indices.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

from pydantic import Field

from tokexport.lazy import np, torch

from .base import METHODS, LayerInputs, Method, ReductionConfig


def uniform_positions(n_candidates: int, n_keep: int) -> list[int]:
    """1-D helper (used along one axis by the visual-token lattices): the centres of n_keep equal bins
    of ``range(n_candidates)``, ``((2i + 1) * M) // (2 * n_keep)``; distinct and ascending."""
    if not 1 <= n_keep <= n_candidates:
        raise ValueError(f"n_keep={n_keep} outside [1, {n_candidates}]")
    return [((2 * i + 1) * n_candidates) // (2 * n_keep) for i in range(n_keep)]


def _levels(h: int, w: int) -> np.ndarray:
    """Level of each cell (row-major): 0 = coarsest square lattice, then its quincunx, then the next finer
    square lattice, …; every cell gets the first (coarsest) level that contains it."""
    r, c = np.divmod(np.arange(h * w), w)
    s = 1
    while 2 * s <= max(h, w):
        s *= 2
    level = np.full(h * w, -1)
    k = 0
    while s >= 1:
        for mask in [(r % s == 0) & (c % s == 0)] + ([(r % s == s // 2) & (c % s == s // 2)] if s > 1 else []):
            level[mask & (level < 0)] = k
            k += 1
        s //= 2
    return level


@lru_cache(maxsize=32)
def lattice_order(h: int, w: int) -> tuple[int, ...]:
    """The fixed 2-D spread ordering of the h×w grid's cells (row-major indices); see the module doc."""
    if h < 1 or w < 1:
        raise ValueError(f"grid {h}x{w}: both sides must be >= 1")
    r, c = np.divmod(np.arange(h * w), w)
    pos = np.stack([r, c], 1).astype(np.float64)
    centre = ((pos - [(h - 1) / 2, (w - 1) / 2]) ** 2).sum(1)
    level = _levels(h, w)
    order: list[int] = []
    for lv in np.unique(level):
        cells = np.flatnonzero(level == lv)
        q = pos[cells]
        dmin = np.full(len(cells), np.inf)
        done = np.zeros(len(cells), dtype=bool)
        for _ in range(len(cells)):
            d = np.where(done, -1.0, dmin)
            cand = np.flatnonzero(d == d.max())
            j = int(cand[np.lexsort((cells[cand], centre[cells[cand]]))[0]])
            done[j] = True
            order.append(int(cells[j]))
            dmin = np.minimum(dmin, ((q - q[j]) ** 2).sum(1))
    return tuple(order)


def grid_of(x: LayerInputs, n_candidates: int) -> tuple[int, int]:
    """The original patch grid. Without ``x.grid`` (a caller outside the patch, or a token count that is
    not a square) the candidates are taken as the whole grid: a square when their count is one, else a
    single row (a 1-D spread ordering)."""
    if x.grid is not None:
        return x.grid
    side = math.isqrt(n_candidates)
    return (side, side) if side * side == n_candidates else (1, n_candidates)


def lattice_select(h: int, w: int, n_candidates: int, n_keep: int) -> list[int]:
    """0-based candidate indices to keep when the candidates are the first ``n_candidates`` positions of
    :func:`lattice_order` (all of the grid at the first stage) in ascending original order."""
    total = h * w
    if not 1 <= n_keep <= n_candidates <= total:
        raise ValueError(f"n_keep={n_keep}, candidates={n_candidates}: need 1 <= n_keep <= candidates <= {total}")
    order = lattice_order(h, w)
    candidates = sorted(order[:n_candidates])  # survivors of earlier uniform stages, original order
    keep = set(order[:n_keep])  # nested: a subset of the candidates
    return [i for i, p in enumerate(candidates) if p in keep]


class UniformKeepConfig(ReductionConfig):
    """A 2-D lattice of the patch grid (nested across stages); no parameters beyond the schedule."""

    method: Literal["uniform"] = Field(default="uniform", description="Method name.")


@METHODS.register
class UniformKeep(Method):
    name = "uniform"
    config_cls = UniformKeepConfig
    needs_attention = False

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        b, n = x.hidden.shape[0], int(x.hidden.shape[1]) - x.n_prefix  # batch may be dynamic, tokens are static
        h, w = grid_of(x, n)
        pos = [p + x.n_prefix for p in lattice_select(h, w, n, n_keep)]
        idx = torch.tensor(pos, dtype=torch.int64, device=x.hidden.device)  # an ONNX constant
        return idx.expand(b, n_keep)

    def describe(self) -> dict:
        d = super().describe()
        d["subset"] = (
            "2-D lattice of the patch grid, nested across stages (coarse-to-fine square/quincunx "
            "lattices, farthest-point within a level), identical for every image"
        )
        return d
