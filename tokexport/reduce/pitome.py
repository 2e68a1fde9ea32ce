"""PiToMe, "Protect Informative Tokens before Merging" (Tran et al., NeurIPS 2024, arXiv 2405.16148),
static-shape re-implementation of the official code's timm/DeiT path (github hchautran/PiToMe,
``algo/pitome/merge.py`` and ``algo/pitome/patch/{timm,deit}.py``). See docs/methods/pitome.md.

In every merging block, between the attention and the MLP, on the T non-prefix tokens:

1. metric = the block's keys averaged over heads, L2-normalised; sim = metric · metricᵀ (T × T, self included);
2. energy E_i = mean_j ELU(sim_ij − m_l, α): a token similar to many others has high energy (redundant);
   margin m_l = margin · (1 − l/L) for block l of L (official DeiT path: margin 0.75);
3. tokens ranked by energy, descending (``order``); with r = the tokens this block removes:
   - ``pitome`` step (later blocks): the 2r highest-energy tokens are the merge pool, the others are
     protected; the pool splits alternately by rank (A = ranks 0, 2, 4, …, B = ranks 1, 3, 5, …); each A
     token merges into its most similar B token. Output: prefix, protected tokens (energy order), B tokens;
   - ``pitome_bsm`` step (the first ⌈L/2⌉ blocks in the official DeiT patch): ALL tokens split alternately by
     energy rank into A and B, then ToMe's bipartite soft matching: the r A tokens with the most similar B
     partner merge into it. Output: prefix, unmerged A tokens (in descending order of their best similarity,
     the official code does not re-sort them), B tokens (energy order);
4. merging is the size-weighted mean (official ``merge_wavg``); sizes add up.

Static form (docs/methods/static-export.md): the energy ranking is a TopK with K = T (argsort), the splits are
strided slices of it, similarities of the pool are GatherElements of ``sim``, best partners a TopK with K = 1,
and the merge a one-hot assignment matrix (Equal + Cast) with MatMuls — no scatter. Token counts are static:
T → T − r, r fixed by the recipe.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tokexport.bounds import Count, OneOrMany, Real
from tokexport.errors import InputError
from tokexport.lazy import torch

from .base import METHODS, MergeInputs, MergingMethod, ReductionConfig
from .margins import note_boundary, note_order

_EPS = 1e-12  # F.normalize's eps


class PiToMeConfig(ReductionConfig):
    """PiToMe recipe: a keep ratio per block (the official knob), or prune_layers with keep_rate/keep."""

    method: Literal["pitome"] = Field(default="pitome", description="Method name.")
    ratio: OneOrMany(Real(0.5, 1)) | None = Field(
        default=None,
        description=(
            "Keep ratio rho of each merging block, each in [0.5, 1] (the official knob): a block with T non-prefix "
            "tokens merges r = floor(T - T*rho) of them. One value for every block (or every block in prune_layers), "
            "or one per block (per prune_layers entry when given). Alternatively give prune_layers with keep_rate/"
            "keep: those blocks merge down to the planned counts."
        ),
    )
    margin: Real(0, 1) = Field(
        default=0.75,
        description="Energy margin of block l of L: m_l = margin * (1 - l/L), in [0, 1] (official DeiT/timm path: 0.75).",
    )
    alpha: Real(0, 100, lo_open=True) = Field(
        default=1.0, description="ELU alpha of the energy score, in (0, 100] (official: 1)."
    )
    bsm_blocks: Count(0, 1024) | None = Field(
        default=None,
        description=(
            "Blocks 0..bsm_blocks-1 use the pitome_bsm step (energy-ranked alternating split of all tokens, then "
            "bipartite soft matching), later blocks the pitome step (protect the low-energy tokens); 0..1024; null: ceil(L/2), "
            "as the official DeiT patch; 0: the pitome step everywhere."
        ),
    )
    prop_attn: bool = Field(
        default=False,
        description=(
            "Proportional attention (+ log(token size) on the later blocks' attention logits). Off by default: the "
            "official timm/DeiT block never passes the sizes to its attention, so it is never applied there."
        ),
    )

    @field_validator("ratio")
    @classmethod
    def _in_range(cls, ratio):
        for v in ratio if isinstance(ratio, list) else [ratio] if ratio is not None else []:
            if not 0.5 <= v <= 1:
                raise ValueError(f"{v}: a keep ratio is in [0.5, 1] (a merge removes at most half of the tokens)")
        return ratio

    @model_validator(mode="after")
    def _check(self) -> PiToMeConfig:
        if self.ratio is not None and (self.keep_rate is not None or self.keep is not None):
            raise ValueError("give either ratio (keep ratio per block) or keep_rate/keep, not both")
        if isinstance(self.ratio, list) and self.prune_layers and len(self.ratio) != len(self.prune_layers):
            raise ValueError(
                f"ratio has {len(self.ratio)} values for {len(self.prune_layers)} prune_layers; give one "
                "per listed block, or a single value"
            )
        return self

    def summary(self) -> str:
        return self.merge_summary(f"keep ratio {self.ratio}" if self.ratio is not None else f"keep {self.kept()}")

    def removals(self, num_layers: int):
        if self.ratio is None:
            return None
        blocks = list(self.prune_layers) or list(range(num_layers))
        ratios = self.ratio if isinstance(self.ratio, list) else [self.ratio] * len(blocks)
        if len(ratios) != len(blocks):
            raise InputError(
                f"reduction.ratio: {len(ratios)} values for a model with {num_layers} blocks; give one "
                "per block, a single value, or list the blocks in prune_layers"
            )
        field = (lambda i: f"ratio[{i}]") if isinstance(self.ratio, list) else (lambda i: "ratio")
        return [(b, _official_r(rho), field(i)) for i, (b, rho) in enumerate(zip(blocks, ratios)) if rho < 1]

    def stage_options(self) -> dict:
        return {"kind": "merge", "prop_attn": self.prop_attn}


def _official_r(rho: float):
    """r = floor(T - T*rho): the official code's count, in its float arithmetic."""
    return lambda t: math.floor(t - t * rho)


def margin_at(margin: float, layer: int, num_layers: int) -> float:
    """The official margin schedule: ``margin - margin * layer / num_layers``."""
    return margin - margin * (layer / num_layers)


def energy_order(metric: torch.Tensor, margin: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sim [B, T, T], indices [B, T] of the tokens by energy, descending). metric: [B, T, C] (not normalised)."""
    t = int(metric.shape[1])
    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    sim = torch.matmul(m, m.transpose(-1, -2))
    energy = torch.nn.functional.elu(sim - margin, alpha=alpha).mean(dim=-1)
    order = torch.topk(energy, t, dim=-1, largest=True, sorted=True).indices  # argsort, descending (K = T)
    note_order(energy, t)  # every rank decides A or B (and the output order)
    return sim, order


def _pair_scores(sim: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """sim[b, rows[b, i], cols[b, j]] as [B, |rows|, |cols|] (two GatherElements)."""
    t = int(sim.shape[-1])
    s = torch.gather(sim, 1, rows[:, :, None].expand(-1, -1, t))
    return torch.gather(s, 2, cols[:, None, :].expand(-1, int(rows.shape[1]), -1))


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(t, 1, idx[:, :, None].expand(-1, -1, int(t.shape[-1])))


def _merge_into(
    xb: torch.Tensor, zb: torch.Tensor, xs: torch.Tensor, zs: torch.Tensor, dst: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the (size-weighted) sources xs/zs [B, r, ·] into their destinations ``dst`` [B, r] of xb/zb
    [B, n_b, ·] with a one-hot assignment MatMul (a scatter-add without scatter)."""
    n_b = int(xb.shape[1])
    assign = (dst[:, :, None] == torch.arange(n_b, device=xb.device)).to(xb.dtype)  # [B, r, n_b]
    to_b = assign.transpose(1, 2)
    return xb + torch.matmul(to_b, xs), zb + torch.matmul(to_b, zs)


def pitome_merge(
    x: torch.Tensor,
    keys: torch.Tensor,
    size: torch.Tensor | None,
    n_prefix: int,
    r: int,
    margin: float,
    alpha: float = 1.0,
    bsm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PiToMe merge (``bsm``: the official pitome_bsm step). x: [B, N, D]; keys: [B, H, N, dh]; size
    [B, N, 1] or None. Returns ([B, N - r, D], [B, N - r, 1]): prefix tokens first and unchanged."""
    n = int(x.shape[1])
    t = n - n_prefix
    if size is None:
        size = torch.ones_like(x[..., :1])
    if r == 0:
        return x, size
    limit = (t + 1) // 2 if bsm else t // 2
    if not 1 <= r <= limit:
        raise ValueError(f"r={r} outside [1, {limit}] for {t} non-prefix tokens")
    sim, order = energy_order(keys.mean(dim=1)[:, n_prefix:], margin, alpha)
    weighted = (x * size)[:, n_prefix:]
    sizes = size[:, n_prefix:]
    if bsm:
        a, b = order[:, 0::2], order[:, 1::2]
        scores = _pair_scores(sim, a, b)
        best, partner = torch.topk(scores, 1, dim=-1)  # each A token's most similar B token
        n_a = int(a.shape[1])
        edges = torch.topk(best[..., 0], n_a, dim=-1, largest=True, sorted=True).indices
        note_boundary(best[..., 0], r)
        note_order(best[..., 0], n_a)  # the unmerged A tokens come out in this order
        src, kept = edges[:, :r], edges[:, r:]
        note_boundary(scores, 1, src)
        dst = torch.gather(partner[..., 0], 1, src)
        xa, za = _take(weighted, a), _take(sizes, a)
        xb, zb = _merge_into(_take(weighted, b), _take(sizes, b), _take(xa, src), _take(za, src), dst)
        rest_x, rest_z = _take(xa, kept), _take(za, kept)
    else:
        a, b, protected = order[:, 0 : 2 * r : 2], order[:, 1 : 2 * r : 2], order[:, 2 * r :]
        scores = _pair_scores(sim, a, b)  # [B, r, r]
        dst = torch.topk(scores, 1, dim=-1).indices[..., 0]
        note_boundary(scores, 1)
        xb, zb = _merge_into(_take(weighted, b), _take(sizes, b), _take(weighted, a), _take(sizes, a), dst)
        rest_x, rest_z = _take(weighted, protected), _take(sizes, protected)
    out = torch.cat([x[:, :n_prefix] * size[:, :n_prefix], rest_x, xb], dim=1)
    out_size = torch.cat([size[:, :n_prefix], rest_z, zb], dim=1)
    return out / out_size, out_size


@METHODS.register
class PiToMe(MergingMethod):
    """PiToMe: energy-protected bipartite merging of head-averaged keys between attention and MLP."""

    name = "pitome"
    config_cls = PiToMeConfig
    config: PiToMeConfig

    def bsm_blocks(self, num_layers: int) -> int:
        b = self.config.bsm_blocks
        return math.ceil(num_layers * 0.5) if b is None else b

    def merge(self, x: MergeInputs, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = int(x.hidden.shape[1]) - x.n_prefix - n_keep
        c = self.config
        return pitome_merge(
            x.hidden,
            x.keys,
            x.size,
            x.n_prefix,
            r,
            margin_at(c.margin, x.layer, x.num_layers),
            c.alpha,
            bsm=x.layer < self.bsm_blocks(x.num_layers),
        )

    def selection_macs(self, stage, d, n_prefix: int) -> int:
        """Key similarities (T²·dh), the energy (T² ELU and means, counted as T²) and the assignment MatMul
        (r·|B|·(D + 1))."""
        t = stage.tokens_in - n_prefix
        r = stage.tokens_in - stage.tokens_out
        n_b = t // 2 if stage.layer < self.bsm_blocks(d.layers) else r
        return t * t * (d.hidden // d.heads) + t * t + r * n_b * (d.hidden + 1)

    @classmethod
    def knob(cls, template, value: float, num_layers: int):
        """PiToMe's knob is its official one, the keep ratio of every merging block (the template's
        prune_layers, or every block)."""
        base = template.model_dump(exclude={"keep", "keep_rate", "ratio"}) if template is not None else {}
        return cls.config_cls.model_validate({**base, "method": cls.name, "ratio": float(value)})

    def describe(self) -> dict:
        d = super().describe()
        d["margin_rule"] = "m_l = margin * (1 - l / L)"
        d["bsm_blocks_resolved"] = "ceil(L / 2)" if self.config.bsm_blocks is None else self.config.bsm_blocks
        d["metric"] = "keys averaged over heads (official timm/DeiT path)"
        return d
