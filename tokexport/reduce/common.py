"""Static-shape building blocks shared by the reduction methods."""

from __future__ import annotations

from tokexport.lazy import torch

from .margins import note_boundary


def keep_topk(scores: torch.Tensor, n_keep: int, n_prefix: int) -> torch.Tensor:
    """Top-``n_keep`` of per-token scores over the non-prefix tokens.

    scores: [B, N - n_prefix] (already excluding prefix tokens). Returns int64 [B, n_keep] absolute
    positions (offset by ``n_prefix``) sorted ascending, so kept tokens stay in their original order.
    ``n_keep`` is a Python int and becomes an ONNX constant.
    """
    if not 1 <= n_keep <= scores.shape[-1]:
        raise ValueError(f"n_keep={n_keep} outside [1, {scores.shape[-1]}]")
    idx = torch.topk(scores, n_keep, dim=-1, largest=True, sorted=True).indices
    note_boundary(scores, n_keep)
    return sort_positions(idx) + n_prefix


def sort_positions(idx: torch.Tensor) -> torch.Tensor:
    """Sort token positions ascending with a constant-K TopK.

    ``torch.sort`` exports (TorchScript exporter) as a TopK whose K is ``Gather(Shape(x))``, which
    TensorRT 8.5 rejects (K must be an initializer). TopK runs on float32 (exact for positions
    < 2**24; TensorRT's TopK does not take int64) with K = the static number of positions.
    """
    k = int(idx.shape[-1])
    return torch.topk(idx.to(torch.float32), k, dim=-1, largest=False, sorted=True).values.to(torch.int64)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Prefix tokens followed by the tokens at ``idx`` (absolute positions). x: [B, N, ...]."""
    index = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return torch.cat([x[:, :n_prefix], torch.gather(x, 1, index)], dim=1)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float, temperature: float = 1.0) -> torch.Tensor:
    """softmax(q k^T * scale / temperature). q, k: [B, H, N, dh] -> [B, H, N, N]."""
    logits = torch.matmul(q, k.transpose(-1, -2)) * (scale / temperature)
    return torch.softmax(logits, dim=-1)
