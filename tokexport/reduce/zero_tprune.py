"""Zero-TPrune (Wang et al., CVPR 2024, arXiv 2305.17328), static-shape re-implementation.

See docs/methods/zero-tprune.md. The CVPR code was never released, so several details are
readings of the paper; each such choice is marked [unverified] in the config field descriptions.

One pruning layer, given the block's attention probabilities ``A`` [B, H, N, N] and keys:

1. I' stage: one PageRank iteration on the full attention, heads aggregated (head filter + EIR,
   as configured). Nothing is pruned; it only ranks tokens for the S stage.
2. S stage (optional): the non-prefix tokens are split by I' score into the less important half
   ``A`` (floor(M/2) tokens) and the more important half ``B`` (the rest). Each ``A`` token gets its
   max cosine similarity to ``B`` (keys averaged over heads); the ``r_S`` most similar ``A`` tokens
   are dropped.
3. I stage: PageRank with the configured number of iterations on the survivors (their rows and
   columns of ``A``, rows renormalised), heads aggregated, top ``n_keep`` non-prefix survivors kept.

PageRank is ``s^t = A^T s^{t-1}`` per head, no damping. Prefix tokens (CLS, distillation token,
registers) are nodes of the graph but never candidates; with ``init="cls"`` only position 0 starts
boosted.

Static-shape form: the S stage does not gather a smaller attention matrix; it builds a 0/1 survivor
mask over the N positions and the I stage zeroes the dropped columns and renormalises the rows
(dropped tokens start at score 0 and, with their columns zeroed, stay at 0, so their rows never
contribute). That is the same computation as slicing to the survivors, with every shape fixed by
N, n_keep and r_S (Python ints). Iterations and heads are unrolled; every TopK has a constant K.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from tokexport.bounds import Count, OneOrMany, Real
from tokexport.errors import InputError
from tokexport.lazy import torch

from .base import METHODS, LayerInputs, Method, ReductionConfig
from .common import keep_topk
from .margins import note_boundary

_EPS = 1e-12


def paper_iterations(layer: int, num_layers: int) -> int:
    """The paper's iteration rule by depth: 30 in blocks 0-2, 1 in the last three blocks, 5 otherwise.

    The paper gives ranges (30-50 / 5-10 / 1); the low end is used. In models with fewer than seven
    blocks, where the first and last three overlap, the first-three rule wins.
    """
    if layer < 3:
        return 30
    if layer >= num_layers - 3:
        return 1
    return 5


class ZeroTPruneConfig(ReductionConfig):
    """Zero-TPrune recipe: PageRank importance (I stage) after an optional similarity stage (S stage)."""

    method: Literal["zero-tprune"] = Field(default="zero-tprune", description="Method name.")
    iterations: OneOrMany(Count(1, 1000)) | None = Field(
        default=None,
        description=(
            "PageRank iterations of the I stage, each 1..1000: one int for all pruning layers, a list with one value per "
            "prune_layers entry, or null for the paper's rule by depth (30 in blocks 0-2, 1 in the last three "
            "blocks, 5 otherwise; the paper gives 30-50 / 5-10 / 1, the early code a fixed 5)."
        ),
    )
    init: Literal["cls", "uniform"] = Field(
        default="cls",
        description=(
            "PageRank start: 'cls' gives position 0 sqrt(N) times the weight of every other token, then "
            "normalises to sum 1 (Zero-TPrune); 'uniform' starts every token at 1/N (Zero-TPrune-uni)."
        ),
    )
    head_filter: bool = Field(
        default=True,
        description=(
            "Variance-based head filter: per image, keep heads whose score variance over the non-prefix "
            "tokens lies in [v_min, v_max]; if no head passes, all heads are used."
        ),
    )
    v_min: Real(0, 1e6) = Field(
        default=0.01, description="Lower bound of the head filter's variance window; finite, in [0, 1000000]."
    )
    v_max: Real(0, 1e6) = Field(
        default=0.7, description="Upper bound of the head filter's variance window; finite, in [0, 1000000]."
    )
    variance_scale: Literal["n", "none"] = Field(
        default="n",
        description=(
            "[unverified] What the head filter's variance is taken of: 'n' = N * score, N the number of "
            "graph nodes (prefix included), so scores average about 1 and the paper's thresholds are "
            "meaningful; 'none' = raw scores (they sum to 1, so their variance is below 1/N)."
        ),
    )
    aggregation: Literal["eir", "mean"] = Field(
        default="eir",
        description=(
            "Head aggregation over the heads m_h kept by the filter: 'eir' (Emphasizing Informative Region) "
            "s_i = sqrt(sum_h m_h s_hi^2 / sum_h m_h); 'mean' s_i = sum_h m_h s_hi / sum_h m_h."
        ),
    )
    similarity_stage: bool = Field(
        default=True,
        description="Run the S stage (drop less important tokens whose keys duplicate more important ones) before the I stage.",
    )
    similarity_fraction: Real(0, 1) = Field(
        default=0.5,
        description=(
            "[unverified] Fraction in [0, 1] of this layer's pruned tokens (N_candidates - n_keep) removed by the S stage: "
            "r_S = floor(fraction * n_drop + 0.5) (round half up), clipped to the less important half's size. "
            "The I stage removes the rest."
        ),
    )
    temperature: Real(0, 100, lo_open=True) = Field(
        default=1.0,
        description=(
            "Softmax temperature tau, finite, in (0, 100], of the attention Zero-TPrune scores: softmax(q k^T * scale / tau). Applied by "
            "the integration when it computes the block's attention probabilities, not by this module "
            "(the early code used 0.5 or 1)."
        ),
    )

    def per_block_fields(self, fields: dict, layers: list[int]) -> dict:
        """``iterations`` given per prune layer follows its layers; a layer the recipe does not prune after
        has no value to take (an int or null, the rule by depth, covers any layer)."""
        if isinstance(self.iterations, list):
            by_layer = dict(zip(self.prune_layers, self.iterations))
            missing = [layer for layer in layers if layer not in by_layer]
            if missing:
                raise InputError(
                    f"reduction.iterations: one value per recipe prune layer, but the search prunes after "
                    f"blocks {missing} too; use an int or null (the paper's rule by depth) to search"
                )
            fields["iterations"] = [by_layer[layer] for layer in layers]
        return fields

    @model_validator(mode="after")
    def _check(self) -> ZeroTPruneConfig:
        if self.v_min > self.v_max:
            raise ValueError(f"v_min={self.v_min} is larger than v_max={self.v_max}")
        if isinstance(self.iterations, list) and len(self.iterations) != len(self.prune_layers):
            raise ValueError(
                f"iterations has {len(self.iterations)} entries but prune_layers has {len(self.prune_layers)}; "
                "give one value per pruning layer, one int, or null"
            )
        return self


# --- plain tensor functions (static shapes; exported as unrolled MatMuls) -------------------------


def pagerank(
    attn: torch.Tensor, iterations: int, init: str, n_nodes: int, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-head PageRank scores ``s^t = A^T s^{t-1}`` (no damping). attn: [B, H, N, N] -> [B, H, N].

    ``keep`` ([B, N], 1 = node of the graph, 0 = dropped) restricts the graph to the kept tokens: their
    columns are zeroed and rows renormalised, dropped tokens start (and stay) at 0. ``n_nodes`` is the
    number of kept tokens (N when ``keep`` is None), a Python int.
    """
    n = int(attn.shape[-1])
    if init == "cls":
        boost = math.sqrt(n_nodes)
        start = torch.tensor([boost] + [1.0] * (n - 1), dtype=attn.dtype, device=attn.device) / (boost + n_nodes - 1)
    else:
        start = torch.full((n,), 1.0 / n_nodes, dtype=attn.dtype, device=attn.device)
    if keep is None:
        a = attn
        s = start.expand(attn.shape[0], attn.shape[1], 1, n)
    else:
        a = attn * keep[:, None, None, :]
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(_EPS)
        s = (start * keep)[:, None, None, :].expand(-1, attn.shape[1], 1, n)
    for _ in range(iterations):
        s = torch.matmul(s, a)
    return s[..., 0, :]  # not squeeze(-2): the exporter cannot prove that dim is 1 and emits an If node


def head_mask(
    scores: torch.Tensor,
    n_prefix: int,
    n_nodes: int,
    v_min: float,
    v_max: float,
    variance_scale: str = "n",
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Variance-based head filter. scores: [B, H, N] -> float mask [B, H] (1 = head used).

    The (population) variance is taken over the non-prefix graph nodes of ``N * score`` (or of the raw
    score with ``variance_scale='none'``). An image where no head passes uses all heads.
    """
    y = scores[..., n_prefix:]
    if variance_scale == "n":
        y = y * float(n_nodes)
    count = float(n_nodes - n_prefix)
    if keep is None:
        mean = y.mean(dim=-1, keepdim=True)
        var = ((y - mean) ** 2).mean(dim=-1)
    else:
        k = keep[:, None, n_prefix:]
        mean = (y * k).sum(dim=-1, keepdim=True) / count
        var = (((y - mean) ** 2) * k).sum(dim=-1) / count
    mask = ((var >= v_min) & (var <= v_max)).to(scores.dtype)
    any_head = mask.sum(dim=-1, keepdim=True) > 0
    return torch.where(any_head, mask, torch.ones_like(mask))


def aggregate_heads(scores: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Combine per-head scores [B, H, N] over the heads in ``mask`` [B, H] -> [B, N]."""
    m = mask[:, :, None]
    den = mask.sum(dim=-1, keepdim=True)
    if aggregation == "eir":
        return torch.sqrt((m * scores * scores).sum(dim=1) / den)
    return (m * scores).sum(dim=1) / den


def similarity_drop(scores: torch.Tensor, keys: torch.Tensor, n_prefix: int, n_drop: int) -> torch.Tensor:
    """S stage. scores: [B, M] I' scores of the non-prefix tokens; keys: [B, H, N, dh].

    Returns a float survivor mask [B, N] (prefix tokens always 1) with exactly ``n_drop`` zeros: the
    tokens of the less important half (floor(M/2) lowest I' scores) whose head-averaged key has the
    highest max cosine similarity to a key of the more important half.
    """
    # int(): under torch.onnx.export's tracer a shape entry is recorded as Shape -> Gather; the TopK
    # below must get a constant K instead (token counts are static).
    m = int(scores.shape[-1])
    n = int(keys.shape[2])
    n_a = m // 2
    n_b = m - n_a
    order = torch.topk(scores, m, dim=-1, largest=True, sorted=True).indices + n_prefix  # descending
    note_boundary(scores, n_b)
    b_idx, a_idx = order[:, :n_b], order[:, n_b:]
    k = keys.to(scores.dtype).mean(dim=1)  # [B, N, dh]
    k = k / torch.sqrt((k * k).sum(dim=-1, keepdim=True)).clamp_min(_EPS)
    dh = k.shape[-1]
    ka = torch.gather(k, 1, a_idx[:, :, None].expand(-1, -1, dh))
    kb = torch.gather(k, 1, b_idx[:, :, None].expand(-1, -1, dh))
    best = torch.matmul(ka, kb.transpose(-1, -2)).amax(dim=-1)  # [B, n_a]
    drop_local = torch.topk(best, n_drop, dim=-1, largest=True, sorted=True).indices
    note_boundary(best, n_drop)
    drop = torch.gather(a_idx, 1, drop_local)  # [B, n_drop] absolute positions
    positions = torch.arange(n, device=keys.device)
    hit = (drop[:, :, None] == positions[None, None, :]).to(scores.dtype).sum(dim=1)
    return 1.0 - hit


@METHODS.register
class ZeroTPrune(Method):
    """Zero-TPrune: I' -> S -> I per pruning layer. Needs attention probabilities, and keys for the S stage."""

    name = "zero-tprune"
    config_cls = ZeroTPruneConfig
    needs_attention = True
    config: ZeroTPruneConfig

    def __init__(self, config: ZeroTPruneConfig):
        super().__init__(config)
        self._seen: dict[int, dict] = {}  # layer -> resolved parameters, recorded by select()

    def iterations_for(self, layer: int, num_layers: int) -> int:
        """I-stage PageRank iterations at ``layer`` (0-indexed block)."""
        it = self.config.iterations
        if it is None:
            return paper_iterations(layer, num_layers)
        if isinstance(it, int):
            return it
        if layer not in self.config.prune_layers:
            raise InputError(
                f"zero-tprune: layer {layer} is not in prune_layers {self.config.prune_layers}, "
                "so the per-layer iterations list has no entry for it"
            )
        return it[self.config.prune_layers.index(layer)]

    def similarity_drops(self, n_candidates: int, n_keep: int) -> int:
        """r_S: tokens the S stage drops when ``n_keep`` of ``n_candidates`` non-prefix tokens are kept."""
        if not self.config.similarity_stage:
            return 0
        n_drop = n_candidates - n_keep
        r = math.floor(self.config.similarity_fraction * n_drop + 0.5)
        return max(0, min(r, n_candidates // 2, n_drop))

    def _importance(self, attn, iterations, n_prefix, n_nodes, keep=None) -> torch.Tensor:
        c = self.config
        s = pagerank(attn, iterations, c.init, n_nodes, keep)
        if c.head_filter:
            mask = head_mask(s, n_prefix, n_nodes, c.v_min, c.v_max, c.variance_scale, keep)
        else:
            mask = torch.ones_like(s[:, :, 0])
        return aggregate_heads(s, mask, c.aggregation)

    def scores(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        """Final I-stage scores of the non-prefix tokens [B, N - n_prefix]; S-stage drops score -1."""
        if x.attn is None:
            raise InputError("zero-tprune needs the block's attention probabilities (LayerInputs.attn is None)")
        p = x.n_prefix
        n = int(x.attn.shape[-1])
        m = n - p
        if not 1 <= n_keep <= m:
            raise ValueError(f"n_keep={n_keep} outside [1, {m}]")
        attn = x.attn.float()
        r_s = self.similarity_drops(m, n_keep)
        iterations = self.iterations_for(x.layer, x.num_layers)
        self._seen[x.layer] = {"iterations": iterations, "similarity_drops": r_s, "tokens": n, "keep": n_keep}
        keep = None
        if r_s > 0:
            if x.keys is None:
                raise InputError("zero-tprune's similarity stage needs the block's keys (LayerInputs.keys is None)")
            first = self._importance(attn, 1, p, n)  # I' stage
            keep = similarity_drop(first[:, p:], x.keys, p, r_s)
        s = self._importance(attn, iterations, p, n - r_s, keep)[:, p:]
        if keep is not None:
            k = keep[:, p:]
            s = s * k + (k - 1.0)  # dropped tokens -> -1, below every PageRank score (>= 0)
        return s

    def selection_macs(self, stage, d, n_prefix: int) -> int:
        """The recomputed attention (N²·D) and the PageRank iterations of the I stage plus the I' iteration,
        each H·N² per head-vector product."""
        iterations = self.iterations_for(stage.layer, d.layers)
        return super().selection_macs(stage, d, n_prefix) + (iterations + 1) * d.heads * stage.tokens_in**2

    def check(self, n_prefix: int) -> None:
        if n_prefix == 0 and self.config.init == "cls":
            raise InputError(
                "reduction.init: cls boosts the CLS token's PageRank start, and this model has no CLS "
                "token (e.g. SigLIP); use init: uniform"
            )

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        return keep_topk(self.scores(x, n_keep), n_keep, x.n_prefix)

    def describe(self) -> dict:
        d = super().describe()
        it = self.config.iterations
        if it is None:
            d["iterations_rule"] = "30 in blocks 0-2, 1 in the last three blocks, 5 otherwise"
            by_layer = {}
        elif isinstance(it, int):
            by_layer = {layer: it for layer in self.config.prune_layers}
        else:
            by_layer = dict(zip(self.config.prune_layers, it))
        by_layer.update({layer: v["iterations"] for layer, v in self._seen.items()})
        d["iterations_by_layer"] = dict(sorted(by_layer.items()))
        d["similarity_drops_by_layer"] = {layer: v["similarity_drops"] for layer, v in sorted(self._seen.items())}
        return d
