"""Analytic FLOPs of a ViT-family encoder from the tokens each block processes.

Per block with N tokens, width D, MLP width M: q/k/v/o projections 4·N·D², attention scores and
weighted sum 2·N²·D, MLP 2·N·D·M multiply-accumulates. Patch embedding: N_patches·C·p²·D. Linear
heads/poolers outside the blocks run once per image. Each stage adds its method's selection cost
(``Method.selection_macs``: e.g. the recomputed attention scores, N²·D, of methods that score with them,
Zero-TPrune's PageRank iterations, a merge's similarities and assignment MatMul).
LayerNorm, softmax, GELU and residual adds are left out (linear in N, <2% here). FLOPs = 2 × MACs.

Merge stages (ToMe) sit between a block's attention and its MLP: the attention half runs on the tokens
entering the block, the MLP half on the merged ones. The merge itself costs the cosine similarities
between the two halves' key means (|A|·|B|·dh) and the one-hot assignment MatMul that sums the merged
tokens and their sizes into their partners (r·|B|·(D+1)). Proportional attention adds log(size) to
every attention logit of the later blocks: H·N² additions (FLOPs, not MACs) per block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .adapters import Dims
from .reduce.schedule import Stage, tokens_per_layer

if TYPE_CHECKING:
    from .reduce.base import Method


def attention_macs(n: int, d: Dims) -> int:
    return 4 * n * d.hidden**2 + 2 * n * n * d.hidden


def mlp_macs(n: int, d: Dims) -> int:
    return 2 * n * d.hidden * d.mlp


def block_macs(n: int, d: Dims) -> int:
    return attention_macs(n, d) + mlp_macs(n, d)


def merge_macs(stage: Stage, n_prefix: int, d: Dims) -> int:
    """MACs of one bipartite merge: key-mean similarities and the one-hot assignment MatMul."""
    m = stage.tokens_in - n_prefix
    n_a, n_b = (m + 1 - n_prefix % 2) // 2, (m + n_prefix % 2) // 2  # A: even positions, B: odd
    r = stage.tokens_in - stage.tokens_out
    return n_a * n_b * (d.hidden // d.heads) + r * n_b * (d.hidden + 1)


def encoder_flops(
    d: Dims, n_tokens: int, n_prefix: int, stages: list[Stage], head_macs: int, method: Method | None = None
) -> dict:
    """FLOPs per image, with a per-block breakdown of token counts.

    With ``method`` each stage's selection cost is ``method.for_stage(stage).selection_macs(...)`` (the way
    every report computes it). Without it (the honest baselines, which pay no selection): merges cost
    :func:`merge_macs`, pruning stages nothing beyond their blocks."""
    counts = tokens_per_layer(stages, n_tokens, d.layers)
    by_layer = {s.layer: s for s in stages}
    patches = n_tokens - n_prefix
    macs = patches * d.channels * d.patch**2 * d.hidden + head_macs
    overhead = 0  # MACs
    bias_flops = 0  # proportional attention: one addition per logit
    prop_from = min((s.layer for s in stages if s.kind == "merge" and s.prop_attn), default=None)
    for i, n in enumerate(counts):
        s = by_layer.get(i)
        if s is not None and s.kind == "merge":
            macs += attention_macs(n, d) + mlp_macs(s.tokens_out, d)
            if method is None:
                overhead += merge_macs(s, n_prefix, d)
        else:
            macs += block_macs(n, d)
        if prop_from is not None and i > prop_from:
            bias_flops += d.heads * n * n
    if method is not None:
        overhead += sum(method.for_stage(s).selection_macs(s, d, n_prefix) for s in stages)
    selection = 2 * overhead + bias_flops
    return {"flops": 2 * macs + selection, "selection_flops": selection, "tokens_per_block": counts}
