"""Static building blocks of the token-based visual methods (DivPrune, DART, CDPruner): cosine
matrices, one-hot rows and the "pick j, never again" mask, all as constant-shape tensor code.

Every index that a greedy step picks is compared with a float ``arange`` (positions < 2**24 are exact
in float32) instead of being scattered: ``Equal`` + ``Cast`` and a ``Where``, no ScatterND/ScatterElements
(TensorRT has no scatter with a reduction, and TensorRT 8.x parses int64 comparisons through int32
casts). Rows of a matrix are read with ``torch.gather`` (ONNX GatherElements) at the picked index.
"""

from __future__ import annotations

from tokexport.lazy import torch

#: below any score the greedy loops compare (cosines, distances and their negations lie in [-2, 2]);
#: finite, so no ``-inf * 0 = NaN`` anywhere
MASKED = -4.0


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float32); a zero row stays zero instead of turning into NaN."""
    x = x.to(torch.float32)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def positions_row(n: int, like: torch.Tensor) -> torch.Tensor:
    """float32 [1, n]: 0..n-1 (an ONNX constant)."""
    return torch.arange(n, dtype=torch.float32, device=like.device).unsqueeze(0)


def one_hot(idx: torch.Tensor, n: int) -> torch.Tensor:
    """float32 [B, n]: 1 where a position of ``idx`` [B] or [B, m] lies (a sum for [B, m])."""
    if idx.dim() == 1:
        idx = idx.unsqueeze(-1)
    return (idx.to(torch.float32).unsqueeze(-1) == positions_row(n, idx).unsqueeze(0)).to(torch.float32).sum(dim=1)


def gather_row(m: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Row ``j[b]`` of ``m[b]`` for every b: m [B, N, M], j [B] int64 → [B, M]."""
    return torch.gather(m, 1, j.reshape(-1, 1, 1).expand(-1, 1, m.shape[-1]))[:, 0]  # not squeeze: an If in ONNX


def gather_vec(x: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Token ``j[b]`` of ``x[b]``: x [B, N, D], j [B] int64 → [B, D]."""
    return gather_row(x, j)


def mask_out(score: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """``score`` with the positions where ``picked`` [B, N] (0/1 float) is set replaced by MASKED."""
    return torch.where(picked > 0, torch.full_like(score, MASKED), score)


__all__ = ["MASKED", "gather_row", "gather_vec", "mask_out", "one_hot", "positions_row", "unit_rows"]
