"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): keep the K visual tokens that are most
diverse — the greedy max–min answer to the Max-Min Diversity Problem over cosine distances.

What the official code does (LLaVA, at the LLM's layer 0): on the projected visual tokens X [N, d],
D = 1 − cos(X, X); the first pick is the token whose nearest OTHER token is farthest (the second
smallest entry of its column of D); then, K − 1 times, the token whose minimum distance to the tokens
picked so far is largest. Features only: no attention, no text.

tokexport's static form (docs/methods/divprune.md): the same picks, unrolled over the K steps in the
incremental form — keep m_j = min over picked t of D[t, j] and update it with one row of D per step
(min is exact, so the picks equal the official re-computation) — with ArgMax, GatherElements, Min and a
Where, no Loop, no scatter. Deviation: a picked token is masked out of later steps; the official code
does not guard it and could pick a token twice when fewer than K tokens are distinct (blank images),
returning fewer distinct tokens. Everything else is the official choice: cosine distance on the tokens
the graph outputs (``on = "projected"``: after the projector when there is one), first-index ties (ONNX
ArgMax's default; TensorRT may break exact ties differently), global over all V·P tokens of an image
(as the official code runs on all tokens of a LLaVA-1.6 image).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tokexport.lazy import torch

from ..reduce.common import gather_tokens, sort_positions
from .diversity import MASKED, gather_row, one_hot, unit_rows
from .select import VISUAL_METHODS, VisualLayout, VisualReductionConfig, VisualSelector


class DivPruneConfig(VisualReductionConfig):
    """DivPrune: greedy max–min cosine-distance selection of K of all V·P visual tokens (global over the
    views), on the tokens the graph outputs (after the projector when there is one)."""

    method: Literal["divprune"] = Field(default="divprune", description="Method name.")


def cosine_distances(tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, N] float32: 1 − cosine similarity between every pair of tokens [B, N, D]."""
    x = unit_rows(tokens)
    return 1.0 - torch.matmul(x, x.transpose(1, 2))


def first_pick(dist: torch.Tensor) -> torch.Tensor:
    """int64 [B]: the token whose nearest other token is farthest — per column j of D, the second
    smallest entry (the smallest is D[j, j] ≈ 0), then the first argmax."""
    nearest_other = torch.topk(dist, 2, dim=1, largest=False, sorted=True).values[:, 1, :]
    return torch.argmax(nearest_other, dim=-1)


def divprune_positions(tokens: torch.Tensor, k: int, choose=None) -> torch.Tensor:
    """int64 [B, k]: DivPrune's K picks, ascending. ``choose`` is the per-step pick (the greedy's
    argmax; the negative control in tests swaps it)."""
    dist = cosine_distances(tokens)
    n = int(dist.shape[-1])
    j = first_pick(dist)
    picks = [j]
    # m[b, t]: distance of token t to the nearest token picked so far; picked tokens masked out
    m = torch.where(one_hot(j, n) > 0, torch.full_like(dist[:, 0], MASKED), gather_row(dist, j))
    for _ in range(k - 1):  # static unroll: K is an export-time constant
        j = (choose or torch.argmax)(m, dim=-1)  # default: argmax (looked up when called: lazy torch)
        picks.append(j)
        m = torch.where(one_hot(j, n) > 0, torch.full_like(m, MASKED), torch.minimum(m, gather_row(dist, j)))
    return sort_positions(torch.stack(picks, dim=1))


@VISUAL_METHODS.register
class DivPrune(VisualSelector):
    name = "divprune"
    config_cls = DivPruneConfig
    needs = frozenset({"tokens"})
    on = "projected"

    def reduce(self, tokens, signals, layout: VisualLayout, k: int):
        k = self.check_budget(layout, k)
        if tokens.dim() != 3 or int(tokens.shape[1]) != layout.total:
            raise ValueError(f"divprune needs tokens [B, {layout.total}, D], got {tuple(tokens.shape)}")
        idx = divprune_positions(tokens, k)
        return gather_tokens(tokens, idx, 0), idx

    def resolved(self, layout, k):
        return {
            "scope": "global over all V·P tokens of an image",
            "distance": "1 - cosine on the tokens the graph outputs (after the projector when there is one)",
            "unrolled_steps": k,
        }


__all__ = ["DivPrune", "DivPruneConfig", "cosine_distances", "divprune_positions", "first_pick"]
