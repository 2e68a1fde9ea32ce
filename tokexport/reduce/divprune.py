"""DivPrune-style selection inside a ViT (Alvar et al., CVPR 2025, arXiv 2503.02175): keep the most diverse
tokens, by the greedy max–min rule, as a pruning step after a block. See docs/methods/vit-selectors.md.

DivPrune prunes the projected visual tokens before a VLM's language model; here the same selection runs on
the output tokens of a ViT block (the non-prefix ones; CLS, distillation token and registers always stay):

1. D = 1 − cos between every pair of tokens (M × M);
2. the first pick is the most isolated token: the largest distance to its nearest OTHER token (for each
   token, the second-smallest entry of its column of D, the smallest being itself);
3. every next pick is the token farthest from the picks so far: argmax_j min_{s picked} D[s, j].

Static form: step 3 in its incremental form — m = D[s₀]; then n_keep − 1 times: j = ArgMax(m);
m = min(m, D[j]) — unrolled (ArgMax, GatherElements, Min; no Loop), the picks sorted into ascending positions
with one constant-K TopK. D is made exactly symmetric, so the two tokens of a mutual-nearest pair (which share
the first pick's score by construction) tie exactly and the lower index wins everywhere, as in the official
torch.argmax. Deviation from the official greedy: D's diagonal is set to −1 instead of
≈ 0, so a picked token's own row removes it from the candidates (the official code can pick a token twice when
every remaining token duplicates a picked one, and keeps fewer distinct tokens then); the first pick is the
same (the second-smallest entry of a column is still the nearest other token).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tokexport.lazy import torch

from .base import METHODS, LayerInputs, Method, ReductionConfig
from .common import sort_positions
from .margins import note_boundary

_EPS = 1e-12


class DivPruneConfig(ReductionConfig):
    """DivPrune-style pruning steps: prune_layers with keep_rate/keep, nothing else to set."""

    method: Literal["divprune"] = Field(default="divprune", description="Method name.")


def cosine_distance(h: torch.Tensor) -> torch.Tensor:
    """1 − cos between the rows of ``h`` [B, M, D] -> [B, M, M], exactly symmetric (the two halves of the MatMul
    may differ in the last bit; averaged with the transpose they are equal, so a mutual nearest pair ties exactly
    and the lower index wins, as it does in the official code's torch.argmax)."""
    hn = h / h.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    dist = 1.0 - torch.matmul(hn, hn.transpose(-1, -2))
    return (dist + dist.transpose(-1, -2)) * 0.5


def max_min_picks(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max–min picks on a distance matrix [B, M, M] -> int64 [B, k] in pick order (unrolled). Every
    argmax takes the first maximum (ONNX ArgMax, select_last_index 0), as torch.argmax does."""
    m_tokens = int(dist.shape[-1])
    if not 1 <= k <= m_tokens:
        raise ValueError(f"n_keep={k} outside [1, {m_tokens}]")
    eye = torch.eye(m_tokens, dtype=dist.dtype, device=dist.device)
    guarded = dist - 2.0 * eye  # self distance ≈ 0 -> ≈ -1: a pick removes itself from the candidates
    nearest_other = torch.topk(guarded, 2, dim=1, largest=False, sorted=True).values[:, 1, :]  # [B, M]
    first = torch.argmax(nearest_other, dim=-1, keepdim=True)  # [B, 1]
    _note_pair_boundary(nearest_other)
    picks = [first]
    m = _row(guarded, first)
    for _ in range(k - 1):
        j = torch.argmax(m, dim=-1, keepdim=True)
        note_boundary(m, 1)
        picks.append(j)
        m = torch.minimum(m, _row(guarded, j))
    return torch.cat(picks, dim=1)


def _note_pair_boundary(nearest_other: torch.Tensor) -> None:
    """The first pick's decision margin. The two tokens of the most isolated mutual-nearest pair tie exactly by
    construction (the lower index wins, in every runtime); what could flip is which PAIR wins: the gap between
    the maximum and the largest value below it."""
    top = nearest_other.amax(dim=-1, keepdim=True)
    below = torch.where(nearest_other == top, torch.full_like(top, -1e9), nearest_other).amax(dim=-1, keepdim=True)
    note_boundary(torch.cat([top, below], dim=-1), 1)


def _row(dist: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """dist[b, j[b, 0], :] as [B, M] (one GatherElements)."""
    m = int(dist.shape[-1])
    return torch.gather(dist, 1, j[:, :, None].expand(-1, 1, m))[:, 0, :]


@METHODS.register
class DivPrune(Method):
    """Greedy max–min cosine diversity on the block's output tokens."""

    name = "divprune"
    config_cls = DivPruneConfig
    needs_attention = False

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        picks = max_min_picks(cosine_distance(x.hidden[:, x.n_prefix :]), n_keep)
        return sort_positions(picks) + x.n_prefix

    def selection_macs(self, stage, d, n_prefix: int) -> int:
        """Pairwise cosines (M²·D) and the greedy updates (M per pick)."""
        m = stage.tokens_in - n_prefix
        return m * m * d.hidden + stage.n_keep * m

    def describe(self) -> dict:
        d = super().describe()
        d["metric"] = "cosine distance of the block's output tokens (non-prefix)"
        d["first_pick"] = "the token farthest from its nearest other token"
        return d
