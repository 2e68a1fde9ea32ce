"""DART-style selection inside a ViT (Wen et al., arXiv 2502.11494, "Stop Looking for Important Tokens in
Multimodal Language Models: Duplication Matters More"): keep a few pivot tokens and, for each pivot, the
tokens LEAST similar to it (the ones it does not duplicate), as a pruning step after a block. See
docs/methods/vit-selectors.md.

DART prunes a VLM's image tokens inside the language model (before layer 2, from the layer-1 keys and the
final-normed hidden states, with text pivots too). Here, on the non-prefix output tokens of a ViT block:

1. pivots: the ``pivots`` tokens with the largest L1 norm of the block's keys (all heads concatenated);
2. for each pivot, in a FIXED order — descending key norm, the order the TopK of step 1 returns (the official
   code iterates a Python set, whose order is arbitrary) — the t_i not-yet-kept tokens with the smallest
   cosine similarity to the pivot (on the block's output tokens) join the kept set;
3. keep count: exactly the stage's n_keep. The official code keeps p + p·⌊budget/p⌋ (4 more than its nominal
   budget); here t_i = ⌊(n_keep − p)/p⌋ and the first (n_keep − p) mod p pivots (in the order of step 2) take
   one more each. With n_keep < p, the n_keep highest-norm tokens are the pivots and nothing else is kept.

Static form: one constant-K TopK for the pivots, then per pivot a MatMul row of cosines, the kept tokens pushed
below every candidate (score −cos − 4·kept), a constant-K TopK, and the kept mask updated with Equal/ReduceSum
(no scatter); the p rounds are unrolled, the kept positions sorted with one constant-K TopK.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tokexport.bounds import Count
from tokexport.lazy import torch

from .base import METHODS, LayerInputs, Method, ReductionConfig
from .common import sort_positions
from .margins import note_boundary

_EPS = 1e-12


class DartConfig(ReductionConfig):
    """DART-style pruning steps: prune_layers with keep_rate/keep, and the number of pivots."""

    method: Literal["dart"] = Field(default="dart", description="Method name.")
    pivots: Count(1, 256) = Field(
        default=4,
        description="Pivot tokens per pruning step, 1..256 (official pivot_image_token: 4; no text pivots in a ViT).",
    )


def per_pivot(n_keep: int, pivots: int) -> list[int]:
    """Tokens each pivot adds (in pivot order): ``n_keep - pivots`` spread as evenly as possible, the first
    pivots taking one more; empty when the pivots alone fill n_keep."""
    if n_keep <= pivots:
        return []
    base, extra = divmod(n_keep - pivots, pivots)
    return [base + (1 if i < extra else 0) for i in range(pivots)]


def pivot_cosines(hp: torch.Tensor, hn: torch.Tensor) -> torch.Tensor:
    """Cosine of one normalised pivot hp [B, 1, D] with every normalised token hn [B, M, D] -> [B, M]."""
    return torch.matmul(hp, hn.transpose(-1, -2))[:, 0, :]


def dart_picks(h: torch.Tensor, keys: torch.Tensor, n_keep: int, pivots: int) -> torch.Tensor:
    """DART's selection. h: [B, M, D] tokens; keys: [B, H, M, dh] their keys. Returns int64 [B, n_keep] local
    positions in pick order (pivots first)."""
    m_tokens = int(h.shape[1])
    if not 1 <= n_keep <= m_tokens:
        raise ValueError(f"n_keep={n_keep} outside [1, {m_tokens}]")
    p = min(pivots, n_keep)
    norms = keys.abs().sum(dim=(1, 3))  # [B, M]: L1 over the concatenated heads
    piv = torch.topk(norms, p, dim=-1, largest=True, sorted=True).indices  # [B, p], descending norm
    note_boundary(norms, p)
    hn = h / h.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    positions = torch.arange(m_tokens, device=h.device)
    kept = (piv[:, :, None] == positions).to(h.dtype).sum(dim=1)  # [B, M] 1 = kept
    picks = [piv]
    for i, t in enumerate(per_pivot(n_keep, p)):
        if t == 0:
            continue
        hp = torch.gather(hn, 1, piv[:, i : i + 1, None].expand(-1, 1, int(hn.shape[-1])))  # [B, 1, D]
        cos = pivot_cosines(hp, hn)  # [B, M]
        score = -cos - 4.0 * kept  # the kept tokens fall below every candidate (-cos >= -1)
        sel = torch.topk(score, t, dim=-1, largest=True, sorted=True).indices
        note_boundary(score, t)
        kept = kept + (sel[:, :, None] == positions).to(h.dtype).sum(dim=1)
        picks.append(sel)
    return torch.cat(picks, dim=1)


@METHODS.register
class Dart(Method):
    """Pivots by key L1 norm, then per pivot the least-similar tokens (duplication-aware pruning)."""

    name = "dart"
    config_cls = DartConfig
    needs_attention = False
    needs_keys = True
    config: DartConfig

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        if x.keys is None:
            raise ValueError("dart needs the block's keys (LayerInputs.keys is None)")
        p = x.n_prefix
        picks = dart_picks(x.hidden[:, p:], x.keys[:, :, p:], n_keep, self.config.pivots)
        return sort_positions(picks) + p

    def selection_macs(self, stage, d, n_prefix: int) -> int:
        """Key L1 norms (M·D), normalising the tokens (M·D) and one row of cosines per pivot (M·D each)."""
        m = stage.tokens_in - n_prefix
        return (2 + min(self.config.pivots, stage.n_keep)) * m * d.hidden

    def describe(self) -> dict:
        d = super().describe()
        d["pivot_order"] = "descending L1 norm of the block's keys (all heads)"
        d["similarity"] = "cosine of the block's output tokens"
        return d
