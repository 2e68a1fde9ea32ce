"""DART, embedding-level variant: duplication-aware selection of K visual tokens against a few pivot
tokens, on the visual tokens the graph outputs. This is the variant NVIDIA TensorRT Edge-LLM ships as
its default visual-token pruner (``DartPruner``), not the paper's method.

The paper (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More", arXiv 2502.11494) prunes INSIDE the LLM, before decoder layer 2: pivots are the image
tokens (and text tokens) whose layer-1 keys have the largest L1 norm; for each pivot the image tokens
least cosine-similar to it, on the final-RMSNorm'd layer-2 hidden states, are kept. Edge-LLM cannot see
layer-2 states inside its monolithic engine and runs the same selection on the LLM's INPUT embeddings;
tokexport has no LLM at all and runs it on the visual tokens it outputs (after the projector when there
is one — the LLM input embeddings of those tokens).

Per image (one visual span), with K kept tokens and p = min(``pivots``, K) pivots:
1. pivots: the p tokens with the largest L1 norm (ties: lower index), kept, in that order;
2. for pivot i = 0..p-1 in that order: take c_i = ceil(remaining / (p − i)) tokens (remaining = K minus
   those kept so far) with the LOWEST cosine similarity to the pivot (ties: lower index) from the tokens
   not kept yet; they join the kept set. The counts c_i depend only on K and p, so they are export-time
   constants and exactly K tokens come out (the remainder goes to the first pivots).

Static form: one TopK for the pivots, then per pivot a MatMul row of cosines, a Where masking the tokens
already kept (no scatter: kept positions are accumulated as a one-hot sum), one TopK(c_i); finally the
K positions sorted by a TopK. p + 2 TopKs, no Loop.

Differences from the paper's method (docs/methods/dart.md): no LLM layers before the selection (no
layer-2 hidden states, no layer-1 keys: norms and cosines of the visual tokens themselves); no text
pivots (the graph sees no text; Edge-LLM adds 4 text-token pivots from the prompt's embeddings); the
kept count is exactly K (the paper keeps p + (p + p_text)·⌊budget/(p + p_text)⌋ tokens); pivots are
processed in a fixed order (largest L1 norm first; the paper's code iterates a Python set); positions
carry the tokens' places so the LLM side can keep their original RoPE positions, as the paper and
Edge-LLM do. Several views (LLaVA-NeXT anyres): one selection over all V·P tokens of the image, as
Edge-LLM selects per image.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from tokexport.lazy import torch

from ..bounds import Count
from ..reduce.common import gather_tokens, sort_positions
from .diversity import gather_vec, mask_out, one_hot
from .select import VISUAL_METHODS, VisualLayout, VisualReductionConfig, VisualSelector

COSINE_EPS = 1e-8  # the cosine's denominator floor (torch.nn.functional.cosine_similarity's, Edge-LLM's)


class DartConfig(VisualReductionConfig):
    """DART (embedding-level variant, as TensorRT Edge-LLM ships it): pivots by L1 norm, then per pivot
    the tokens least similar to it, on the tokens the graph outputs; no text pivots."""

    method: Literal["dart"] = Field(default="dart", description="Method name.")
    pivots: Count(1, 64) = Field(
        default=4,
        description="Image pivot tokens (largest L1 norm), 1..64; DART's and Edge-LLM's default 4. Capped at K.",
    )


def pivot_counts(k: int, pivots: int) -> list[int]:
    """Tokens taken for each pivot after the p pivots themselves: ceil(remaining / pivots left)."""
    p = min(pivots, k)
    remaining, out = k - p, []
    for i in range(p):
        c = math.ceil(remaining / (p - i)) if remaining > 0 else 0
        out.append(c)
        remaining -= c
    return out


def dart_positions(tokens: torch.Tensor, k: int, pivots: int, order=-1.0) -> torch.Tensor:
    """int64 [B, k]: DART's kept positions, ascending. ``order`` -1 keeps the tokens LEAST similar to each
    pivot (DART); the negative control in tests passes +1 (the most similar)."""
    n = int(tokens.shape[1])
    x = tokens.to(torch.float32)
    p = min(pivots, k)
    piv = torch.topk(x.abs().sum(dim=-1), p, dim=-1, largest=True, sorted=True).indices  # [B, p]
    norms = x.norm(dim=-1)  # [B, N]
    kept = one_hot(piv, n)
    picks = [piv]
    for i, c in enumerate(pivot_counts(k, pivots)):
        if c == 0:
            continue
        j = piv[:, i]
        pv = gather_vec(x, j)  # [B, D]
        dots = torch.matmul(x, pv.unsqueeze(-1))[..., 0]  # [B, N]
        cos = dots / (gather_vec(norms.unsqueeze(-1), j) * norms).clamp_min(COSINE_EPS)
        idx = torch.topk(mask_out(order * cos, kept), c, dim=-1, largest=True, sorted=True).indices
        picks.append(idx)
        kept = kept + one_hot(idx, n)
    return sort_positions(torch.cat(picks, dim=1))


@VISUAL_METHODS.register
class Dart(VisualSelector):
    name = "dart"
    config_cls = DartConfig
    needs = frozenset({"tokens"})
    on = "projected"
    config: DartConfig

    def reduce(self, tokens, signals, layout: VisualLayout, k: int):
        k = self.check_budget(layout, k)
        if tokens.dim() != 3 or int(tokens.shape[1]) != layout.total:
            raise ValueError(f"dart needs tokens [B, {layout.total}, D], got {tuple(tokens.shape)}")
        idx = dart_positions(tokens, k, self.config.pivots)
        return gather_tokens(tokens, idx, 0), idx

    def resolved(self, layout, k):
        return {
            "variant": "embedding-level (TensorRT Edge-LLM DartPruner): on the tokens the graph outputs, no LLM "
            "layers, no text pivots",
            "pivots_used": min(self.config.pivots, k),
            "per_pivot": pivot_counts(k, self.config.pivots),
            "scope": "global over all V·P tokens of an image",
        }


__all__ = ["COSINE_EPS", "Dart", "DartConfig", "dart_positions", "pivot_counts"]
