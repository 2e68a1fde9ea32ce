"""HiRED (arXiv 2408.10945, with the reference code's defects fixed): a high-resolution budget split across the
views of an anyres layout by the CLS attention of an early block (largest-remainder quotas capped at one view's
tokens, ``hired_quotas``), then inside each view the tokens a later block's attention ranks highest. Static:
every quota is computed in the graph from fixed shapes, selection through TopK with constant K; see
:mod:`tokexport.vlm.select` for the layout and the static-export rules."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field

from tokexport.lazy import np, torch

from ..bounds import Count, Real
from ..reduce.common import keep_topk, sort_positions
from .select import (
    SELECT_LAYER_DESC,
    SOURCE_DESC,
    VISUAL_METHODS,
    Source,
    VisualLayout,
    VisualReductionConfig,
    VisualSelector,
    floor_count,
)


def block_of(index: int, size: int, parts: int) -> int:
    """Block (0..parts-1) of patch row/column ``index`` out of ``size`` when the axis is cut into
    ``parts`` equal sub-image spans: the block containing the patch centre (index + 1/2)/size.
    Equivalently blocks start at ceil(i·size/parts - 1/2). Divisible sizes give equal blocks."""
    return ((2 * index + 1) * parts) // (2 * size)


def block_matrix(layout: VisualLayout) -> torch.Tensor:
    """[P, rows·cols] float32 0/1: full-image (view 0) patch p lies in sub-image block i, blocks in
    (h, w) raster order i = r·cols + c, the order of the anyres sub-image views. Built in numpy, so it
    is one constant under the ONNX tracer (element assignments on a torch tensor would be traced into
    one ScatterND each)."""
    return torch.from_numpy(_block_matrix(layout.grid, layout.sub_grid).copy())


@functools.lru_cache(maxsize=64)
def _block_matrix(grid: tuple[int, int], sub_grid: tuple[int, int]) -> np.ndarray:
    gh, gw = grid
    rows, cols = sub_grid
    by = np.array([block_of(y, gh, rows) for y in range(gh)])
    bx = np.array([block_of(x, gw, cols) for x in range(gw)])
    block = (by[:, None] * cols + bx[None, :]).reshape(-1)  # [P]
    return (block[:, None] == np.arange(rows * cols)[None, :]).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _earlier(n: int) -> np.ndarray:
    """[n, n] bool, [j, m] = m < j (a constant, not traced ops)."""
    return np.tri(n, n, -1, dtype=bool)


def _rank(key: torch.Tensor) -> torch.Tensor:
    """Descending rank along the last dim, ties broken by position (a permutation of 0..n-1):
    rank_j = Σ_m [key_m > key_j] + Σ_{m<j} [key_m == key_j]. Elementwise, static, no TopK.
    Returned as float32 (exact below 2**24): TensorRT reduces float more readily than int64."""
    n = int(key.shape[-1])
    earlier = torch.from_numpy(_earlier(n).copy()).to(key.device)  # [j, m]: m < j
    kj, km = key.unsqueeze(-1), key.unsqueeze(-2)  # [..., j, 1], [..., 1, m]
    beats = (km > kj) | ((km == kj) & earlier)
    return beats.to(torch.float32).sum(dim=-1)


def hired_quotas(scores: torch.Tensor, n_sub: int, cap: int) -> torch.Tensor:
    """Integer quotas [B, n] summing exactly to ``n_sub``, each ≤ ``cap``, proportional to ``scores``.

    scores: [B, n] non-negative allocation scores (all-zero rows split evenly). Static tensor code:
    1. water-filling, unrolled n times (n = static partition count): ideal q_i = free·s_i/Σ_free s;
       partitions above ``cap`` are fixed at ``cap`` and their excess goes to the rest, proportionally;
    2. largest remainder: floor(q), then the R = n_sub - Σ floor(q) leftover units go to the R
       partitions with the largest fractional parts (ties: lower index) among those below ``cap``,
       chosen by an elementwise rank comparison.
    Requires n_sub ≤ n·cap.
    """
    n = int(scores.shape[-1])
    s = scores.clamp_min(0.0)
    capf = float(cap)
    capped = torch.zeros_like(s, dtype=torch.bool)
    q = s
    for _ in range(n):  # static unroll: each round fixes at least one more partition or changes nothing
        free_mask = ~capped
        free = float(n_sub) - capf * capped.to(s.dtype).sum(dim=-1, keepdim=True)
        w = torch.where(capped, torch.zeros_like(s), s)
        wsum = w.sum(dim=-1, keepdim=True)
        n_free = free_mask.to(s.dtype).sum(dim=-1, keepdim=True).clamp_min(1.0)
        share = torch.where(wsum > 0, w / wsum.clamp_min(1e-30), free_mask.to(s.dtype) / n_free)
        q = torch.where(capped, torch.full_like(s, capf), free * share)
        capped = capped | (q > capf)
    q = q.clamp(0.0, capf)
    fl = torch.floor(q)
    frac = q - fl
    left = float(n_sub) - fl.sum(dim=-1, keepdim=True)  # integer-valued, 0 <= left < n
    key = torch.where(fl < capf, frac, torch.full_like(frac, -1.0))
    extra = _rank(key) < left.to(torch.float32)
    return (fl + extra.to(s.dtype)).to(torch.int64)


class HiREDConfig(VisualReductionConfig):
    """HiRED (Arif et al., AAAI 2025): split the budget between the full image and the sub-images, share
    the sub-image part by early-layer CLS attention of the full image, keep the top tokens per view.

    Fixed relative to the reference code (hasanar1f/HiRED): allocation scores are attention sums over
    2-D blocks in (h, w) order (not counts over horizontal stripes), quotas sum exactly to the budget
    (largest remainder, capped at P with redistribution), layers configurable (heads are summed).
    """

    method: Literal["hired"] = Field(default="hired", description="Method name.")
    alpha: Real(0, 1) = Field(
        default=0.5,
        description="Share of the budget for the full image (view 0), in [0, 1]: N_p0 = floor(alpha·K); the sub-images share "
        "K - N_p0. Ignored with one view (all K go to view 0).",
    )
    select_layer: Count(-1024, 1023) = Field(
        default=-2,
        description=SELECT_LAYER_DESC + " HiRED: layer 22 of CLIP-L = hidden_states[-2] ('final layer').",
    )
    alloc_layer: Count(-1024, 1023) = Field(
        default=0,
        description="Tower block whose attention (of view 0, the full image) allocates the sub-image budget, "
        "-1024..1023; HiRED uses layer 0. Negative counts from the end.",
    )
    source: Source = Field(
        default="cls",
        description=SOURCE_DESC + " Used at both layers. HiRED uses 'cls'; 'received' is [unverified] for HiRED.",
    )

    def split(self, layout: VisualLayout, k: int) -> tuple[int, int]:
        """(N_p0, N_sub): tokens for view 0 and for all sub-images together."""
        if layout.n_sub == 0:
            return k, 0
        n0 = floor_count(self.alpha * k)
        return n0, k - n0

    def check_k(self, layout: VisualLayout, k: int, field: str = "k") -> None:
        p = layout.patches
        n0, n_sub = self.split(layout, k)
        if n0 > p:
            hint = "alpha" if layout.n_sub else field
            raise ValueError(
                f"{hint}: hired gives the full image (view 0) {n0} tokens (alpha={self.alpha:g}, K={k}) "
                f"but a view has only {p}; lower alpha or K"
            )
        if n_sub > layout.n_sub * p:
            raise ValueError(
                f"alpha: hired gives the {layout.n_sub} sub-images {n_sub} tokens (K={k}, "
                f"alpha={self.alpha:g}) but they have only {layout.n_sub * p}; raise alpha or lower K"
            )


@VISUAL_METHODS.register
class HiRED(VisualSelector):
    """Static HiRED.

    - View 0 keeps its N_p0 = floor(alpha·K) most significant tokens (selection layer).
    - Sub-image i gets quota N_i ∝ s_i = Σ of view 0's ALLOCATION-layer significance over the full-image
      patches inside block i (view 0's (gh, gw) grid cut into rows×cols blocks in (h, w) order; a patch
      belongs to the block containing its centre, see ``block_of``), integer quotas by largest remainder
      summing exactly to K - N_p0, each capped at P with the excess redistributed (``hired_quotas``).
    - Each view keeps the tokens whose within-view rank (``_rank``) is below its quota; one global
      TopK(K) over keep·BIG − position then gives exactly K positions, sorted ascending.
    - One view (sub_grid None): all K go to view 0, i.e. a per-view (= global) TopK; no allocation.
    - Output: positions ascending (view order). The LLM gets them in LLaVA-NeXT's packed order (base view,
      stitched tile rows, ``image_newline`` after every row, as HiRED's reference packs its mask):
      ``tokexport.vlm.packing.pack`` (tests/test_llava_packing.py checks it against transformers).
    [unverified] The block geometry ignores the padding LLaVA-NeXT adds when it resizes the image to the
    anyres resolution (view 0 is the unpadded image squashed to a square).
    """

    name = "hired"
    config_cls = HiREDConfig
    needs = frozenset({"select", "alloc"})
    config: HiREDConfig

    def quotas(self, sig_alloc: torch.Tensor, layout: VisualLayout, k: int) -> torch.Tensor:
        """int64 [B, V]: tokens kept per view (view 0 constant N_p0, sub-images data-dependent)."""
        n0, n_sub = self.config.split(layout, k)
        b = sig_alloc.shape[0]
        m = block_matrix(layout).to(device=sig_alloc.device, dtype=sig_alloc.dtype)
        scores = torch.matmul(sig_alloc[:, 0], m)  # [B, rows·cols]
        q_sub = hired_quotas(scores, n_sub, layout.patches)
        q0 = torch.full((1, 1), n0, dtype=torch.int64, device=sig_alloc.device).expand(b, 1)
        return torch.cat([q0, q_sub], dim=1)

    def _select(self, sig, sig_alloc, layout, k):
        if layout.n_sub == 0:
            return keep_topk(sig.reshape(sig.shape[0], layout.total), k, 0)
        b = sig.shape[0]
        quota = self.quotas(sig_alloc, layout, k)  # [B, V]
        keep = _rank(sig) < quota.unsqueeze(-1).to(torch.float32)  # [B, V, P], exactly quota[v] per view
        pos = torch.arange(layout.total, dtype=torch.float32, device=sig.device)
        score = keep.reshape(b, layout.total).to(torch.float32) * float(layout.total) - pos
        idx = torch.topk(score, k, dim=-1, largest=True, sorted=True).indices
        return sort_positions(idx)

    def resolved(self, layout, k):
        n0, n_sub = self.config.split(layout, k)
        return {
            "n_full_image": n0,
            "n_sub_images": n_sub,
            "allocation": "view-0 alloc-layer significance summed over 2-D blocks (patch-centre rule), "
            "largest-remainder quotas capped at P with redistribution",
        }
