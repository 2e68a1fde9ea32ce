"""Top-k CLS attention (EViT-style; github youweiliang/evit, evit.py), without EViT's fused token.

Score of a non-prefix token = attention from the CLS query (row 0) to it, averaged over heads; the
``n_keep`` highest are kept, in their original order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tokexport.errors import InputError
from tokexport.lazy import torch

from .base import METHODS, LayerInputs, Method, ReductionConfig
from .common import keep_topk


class TopKCLSConfig(ReductionConfig):
    """EViT-style keep-the-most-attended-by-CLS recipe (EViT itself uses rounding='ceil', keep_rate 0.7)."""

    method: Literal["topk-cls"] = Field(default="topk-cls", description="Method name.")
    heads: Literal["mean"] = Field(
        default="mean", description="How the CLS-row attention of the heads is combined: 'mean' over heads (EViT)."
    )


@METHODS.register
class TopKCLS(Method):
    name = "topk-cls"
    config_cls = TopKCLSConfig
    needs_attention = True

    def check(self, n_prefix: int) -> None:
        if n_prefix == 0:
            raise InputError(
                "reduction.method: topk-cls ranks tokens by the CLS token's attention, and this model has "
                "no CLS token (e.g. SigLIP); use zero-tprune with init: uniform, random or uniform"
            )

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        if x.attn is None:
            raise InputError("topk-cls needs the block's attention probabilities (LayerInputs.attn is None)")
        scores = x.attn[:, :, 0, x.n_prefix :].mean(dim=1)  # [B, N - n_prefix]
        return keep_topk(scores, n_keep, x.n_prefix)
