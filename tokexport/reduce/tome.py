"""ToMe, token merging (Bolya et al., ICLR 2023, arXiv 2210.09461), static-shape re-implementation.

See docs/methods/topk-cls-and-baselines.md. In every merging block, between the attention and the MLP:

1. metric = the block's keys averaged over heads, L2-normalised;
2. bipartite split by position: A = even positions, B = odd positions; prefix tokens (CLS, the
   distillation token, registers) belong to neither (ToMe sets their similarity rows/columns to -inf,
   which is the same as leaving them out);
3. each A token's most similar B token (cosine); the ``r`` A tokens with the highest such similarity
   are merged into their B token, the others stay;
4. merging is the size-weighted mean: x_b <- (s_b x_b + sum s_a x_a) / (s_b + sum s_a), sizes add up;
5. output order: prefix tokens, the unmerged A tokens in position order, then the B tokens in position
   order (ToMe's order: not positional, and the next block's even/odd split is taken on it);
6. proportional attention: later blocks add log(size) to their attention logits (done by the patch).

Static form (static-export.md): ToMe's ``scatter_reduce`` exports as a ScatterElements that the torch
exporter emits without the reduction and TensorRT 8.x would ignore anyway. Here the r merged A tokens
and their destinations become a one-hot assignment matrix ``[B, r, |B|]`` (Equal + Cast), and the sums
are a MatMul with it; every other step is a Slice with step 2, TopK with a constant K, or Gather.
Token counts are static: N -> N - r.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tokexport.bounds import Count, OneOrMany
from tokexport.errors import InputError
from tokexport.lazy import torch

from .base import METHODS, MergeInputs, MergingMethod, ReductionConfig
from .common import sort_positions
from .margins import note_boundary


class ToMeConfig(ReductionConfig):
    """ToMe recipe: ``r`` tokens merged per block (or per listed block), CLS and other prefix tokens protected."""

    method: Literal["tome"] = Field(default="tome", description="Method name.")
    r: OneOrMany(Count(0, 3839)) | None = Field(
        default=None,
        description=(
            "Tokens merged in each block (ToMe's r), each 0..3839: one int for every block (or every block in "
            "prune_layers), or "
            "a list with one value per block (per prune_layers entry when given); 0 = no merge in that block. At "
            "most half of the non-prefix tokens entering a block. Alternatively give prune_layers with keep_rate/"
            "keep: those blocks merge down to the planned counts."
        ),
    )
    prop_attn: bool = Field(
        default=True,
        description="Proportional attention: after a merge, attention logits get + log(token size) (ToMe's default).",
    )

    def summary(self) -> str:
        return self.merge_summary(f"r={self.r}" if self.r is not None else f"keep {self.kept()}")

    @field_validator("r")
    @classmethod
    def _non_negative(cls, r: int | list[int] | None) -> int | list[int] | None:
        if r is not None and min(r if isinstance(r, list) else [r], default=0) < 0:
            raise ValueError(f"{r}: tokens merged per block must be >= 0")
        return r

    @model_validator(mode="after")
    def _check(self) -> ToMeConfig:
        if self.r is not None and (self.keep_rate is not None or self.keep is not None):
            raise ValueError("give either r (tokens merged per block) or keep_rate/keep, not both")
        if isinstance(self.r, list) and self.prune_layers and len(self.r) != len(self.prune_layers):
            raise ValueError(
                f"r has {len(self.r)} values for {len(self.prune_layers)} prune_layers; give one per "
                "listed block, or a single int"
            )
        return self

    def removals(self, num_layers: int) -> list[tuple[int, int, str]] | None:
        if self.r is None:
            return None
        blocks = list(self.prune_layers) or list(range(num_layers))
        if isinstance(self.r, int):
            return [(b, self.r, "r") for b in blocks if self.r > 0]
        if len(self.r) != len(blocks):
            raise InputError(
                f"reduction.r: {len(self.r)} values for a model with {num_layers} blocks; give one per "
                "block, a single int, or list the blocks in prune_layers"
            )
        return [(b, r, f"r[{i}]") for i, (b, r) in enumerate(zip(blocks, self.r)) if r > 0]

    def stage_options(self) -> dict:
        return {"kind": "merge", "prop_attn": self.prop_attn}


def _split_starts(n_prefix: int) -> tuple[int, int]:
    """First non-prefix even (set A) and odd (set B) positions."""
    a = n_prefix + (n_prefix % 2)
    b = n_prefix + 1 - (n_prefix % 2)
    return a, b


def bipartite_merge(
    x: torch.Tensor, keys: torch.Tensor, size: torch.Tensor | None, n_prefix: int, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching and size-weighted merge, static shapes, no scatter.

    x: [B, N, D]; keys: [B, H, N, dh]; size: [B, N, 1] or None (all 1). Returns ([B, N - r, D],
    [B, N - r, 1]) ordered prefix, unmerged A (ascending), B (ascending). ``r`` is a Python int.
    """
    n = int(x.shape[1])
    if size is None:
        size = torch.ones_like(x[..., :1])
    if r == 0:
        return x, size
    sa, sb = _split_starts(n_prefix)
    n_a, n_b = len(range(sa, n, 2)), len(range(sb, n, 2))
    if not 1 <= r <= min(n_a, n_b):
        raise ValueError(f"r={r} outside [1, {min(n_a, n_b)}] for {n} tokens with {n_prefix} prefix tokens")

    metric = keys.mean(dim=1)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = torch.matmul(metric[:, sa::2], metric[:, sb::2].transpose(-1, -2))  # [B, n_a, n_b] cosine
    best, dst_all = torch.topk(scores, 1, dim=-1)  # each A token's most similar B token
    order = torch.topk(best[..., 0], n_a, dim=-1, largest=True, sorted=True).indices  # A by similarity, desc.
    src = order[:, :r]  # merged A tokens (A-local indices)
    note_boundary(best[..., 0], r)  # which A tokens merge
    note_boundary(scores, 1, src)  # where each merged A token goes
    unm = sort_positions(order[:, r:])  # the others, in position order
    dst = torch.gather(dst_all[..., 0], 1, src)  # their B partners (B-local indices)

    weighted = x * size
    xa, xb = weighted[:, sa::2], weighted[:, sb::2]
    za, zb = size[:, sa::2], size[:, sb::2]

    def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.gather(t, 1, idx[:, :, None].expand(-1, -1, int(t.shape[-1])))

    assign = (dst[:, :, None] == torch.arange(n_b, device=x.device)).to(x.dtype)  # [B, r, n_b] one-hot
    to_b = assign.transpose(1, 2)  # [B, n_b, r]: B token <- merged A tokens
    xb = xb + torch.matmul(to_b, take(xa, src))
    zb = zb + torch.matmul(to_b, take(za, src))
    out = torch.cat([weighted[:, :n_prefix], take(xa, unm), xb], dim=1)
    out_size = torch.cat([size[:, :n_prefix], take(za, unm), zb], dim=1)
    return out / out_size, out_size


@METHODS.register
class ToMe(MergingMethod):
    """ToMe: bipartite soft matching on key means between attention and MLP, size-weighted merge."""

    name = "tome"
    config_cls = ToMeConfig
    config: ToMeConfig

    def check(self, n_prefix: int) -> None:
        if n_prefix == 0:
            raise InputError(
                "reduction.method: tome protects the CLS token from merging, and this model has no CLS "
                "token (e.g. SigLIP); use zero-tprune with init: uniform, random or uniform"
            )

    def merge(self, x: MergeInputs, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = int(x.hidden.shape[1]) - x.n_prefix - n_keep
        return bipartite_merge(x.hidden, x.keys, x.size, x.n_prefix, r)

    def selection_macs(self, stage, d, n_prefix: int) -> int:
        """Key-mean similarities between the two halves and the one-hot assignment MatMul."""
        from ..flops import merge_macs

        return merge_macs(stage, n_prefix, d)

    @classmethod
    def knob(cls, template, value: float, num_layers: int):
        """ToMe's knob is the fraction kept by each merge (``keep_rate`` in every block, or in the template's
        ``prune_layers``); the template's constant ``r`` is dropped."""
        if template is not None and template.r is not None:
            template = template.model_copy(update={"r": None})
        return super().knob(template, value, num_layers)
