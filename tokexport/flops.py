"""Analytic FLOPs of a ViT-family encoder from the tokens each block processes.

Per block with N tokens, width D, MLP width M: q/k/v/o projections 4·N·D², attention scores and
weighted sum 2·N²·D, MLP 2·N·D·M multiply-accumulates. Patch embedding: N_patches·C·p²·D. Linear
heads/poolers outside the blocks run once per image. Methods that score with attention add the
recomputed scores (N²·D) and their PageRank iterations (H·N² each) at every pruning layer.
LayerNorm, softmax, GELU and residual adds are left out (linear in N, <2% here). FLOPs = 2 × MACs.
"""
from __future__ import annotations

from .adapters import Dims
from .reduce.schedule import Stage, tokens_per_layer


def block_macs(n: int, d: Dims) -> int:
    return 4 * n * d.hidden ** 2 + 2 * n * n * d.hidden + 2 * n * d.hidden * d.mlp


def encoder_flops(d: Dims, n_tokens: int, n_prefix: int, stages: list[Stage], head_macs: int,
                  attention_scored: bool = False, iterations: list[int] | None = None) -> dict:
    """FLOPs per image, with a per-block breakdown of token counts."""
    counts = tokens_per_layer(stages, n_tokens, d.layers)
    patches = n_tokens - n_prefix
    macs = patches * d.channels * d.patch ** 2 * d.hidden + sum(block_macs(n, d) for n in counts) + head_macs
    overhead = 0
    if attention_scored:
        for i, s in enumerate(stages):
            overhead += s.tokens_in ** 2 * d.hidden
            if iterations:
                overhead += (iterations[i] + 1) * d.heads * s.tokens_in ** 2
    return {"flops": 2 * (macs + overhead), "selection_flops": 2 * overhead, "tokens_per_block": counts}
