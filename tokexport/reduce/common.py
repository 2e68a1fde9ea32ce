"""Static-shape building blocks shared by the reduction methods."""
from __future__ import annotations

import torch


def keep_topk(scores: torch.Tensor, n_keep: int, n_prefix: int) -> torch.Tensor:
    """Top-``n_keep`` of per-token scores over the non-prefix tokens.

    scores: [B, N - n_prefix] (already excluding prefix tokens). Returns int64 [B, n_keep] absolute
    positions (offset by ``n_prefix``) sorted ascending, so kept tokens stay in their original order.
    ``n_keep`` is a Python int and becomes an ONNX constant.
    """
    if not 1 <= n_keep <= scores.shape[-1]:
        raise ValueError(f"n_keep={n_keep} outside [1, {scores.shape[-1]}]")
    idx = torch.topk(scores, n_keep, dim=-1, largest=True, sorted=True).indices
    idx, _ = torch.sort(idx, dim=-1)
    return idx + n_prefix


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Prefix tokens followed by the tokens at ``idx`` (absolute positions). x: [B, N, ...]."""
    index = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return torch.cat([x[:, :n_prefix], torch.gather(x, 1, index)], dim=1)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float, temperature: float = 1.0) -> torch.Tensor:
    """softmax(q k^T * scale / temperature). q, k: [B, H, N, dh] -> [B, H, N, N]."""
    logits = torch.matmul(q, k.transpose(-1, -2)) * (scale / temperature)
    return torch.softmax(logits, dim=-1)
