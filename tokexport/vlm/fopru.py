"""FoPru (arXiv 2411.14164; no public code, details [unverified]): the visual tokens ranked by the attention one
tower block gives them (``significance``). ``fopru-rank`` keeps the K most significant tokens of all views,
``fopru-row`` whole grid rows (of any view) by their summed significance. Static: TopK with constant K,
``sort_positions``; see :mod:`tokexport.vlm.select` for the layout and the static-export rules."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from tokexport.lazy import torch

from ..bounds import Count
from ..reduce.common import keep_topk
from .select import (
    SELECT_LAYER_DESC,
    SOURCE_DESC,
    TOPK_LIMIT,
    VISUAL_METHODS,
    Source,
    VisualLayout,
    VisualReductionConfig,
    VisualSelector,
)

_FOPRU_SOURCE_DEFAULT = (
    " Default 'received', chosen by measurement (README, visual tokens: FoPru significance; "
    "scripts/bench_fopru_significance.py): on DINOv2-S at 64 of 256 it preserved the mean-pooled "
    "features better than 'cls' for both strategies. [unverified: paper code not public]"
)


class FoPruRankConfig(VisualReductionConfig):
    """FoPru rank strategy: the K most significant tokens over all views (global view)."""

    method: Literal["fopru-rank"] = Field(default="fopru-rank", description="Method name.")
    select_layer: Count(-1024, 1023) = Field(
        default=-2, description=SELECT_LAYER_DESC + " [unverified: paper code not public]"
    )
    source: Source = Field(default="received", description=SOURCE_DESC + _FOPRU_SOURCE_DEFAULT)


@VISUAL_METHODS.register
class FoPruRank(VisualSelector):
    name = "fopru-rank"
    config_cls = FoPruRankConfig
    needs = frozenset({"select"})

    def _select(self, sig, sig_alloc, layout, k):
        return keep_topk(sig.reshape(sig.shape[0], layout.total), k, 0)


class FoPruRowConfig(VisualReductionConfig):
    """FoPru row strategy: keep whole grid rows (of any view) with the largest summed significance."""

    method: Literal["fopru-row"] = Field(default="fopru-row", description="Method name.")
    select_layer: Count(-1024, 1023) = Field(
        default=-2, description=SELECT_LAYER_DESC + " [unverified: paper code not public]"
    )
    source: Source = Field(default="received", description=SOURCE_DESC + _FOPRU_SOURCE_DEFAULT)

    def check_k(self, layout: VisualLayout, k: int, field: str = "k") -> None:
        gw, total = layout.grid[1], layout.total
        if k % gw == 0:
            return
        lo, hi = (k // gw) * gw, (k // gw + 1) * gw
        valid = [v for v in (lo, hi) if gw <= v <= total and v < TOPK_LIMIT]
        if field == "keep_rate":
            # smallest rate (6 decimals, rounded up) whose floor(total * rate) is v
            alts = ", ".join(f"{math.ceil(v / total * 1e6) / 1e6:g} (K={v})" for v in valid)
            what = f"keep_rate={self.keep_rate:g} gives K={k}"
        else:
            alts = ", ".join(str(v) for v in valid)
            what = f"{field}={k}"
        raise ValueError(
            f"{field}: fopru-row keeps whole rows of {gw} tokens, so K must be a multiple of {gw}; "
            f"{what}; nearest valid {field}: {alts or 'none'}"
        )


@VISUAL_METHODS.register
class FoPruRow(VisualSelector):
    name = "fopru-row"
    config_cls = FoPruRowConfig
    needs = frozenset({"select"})

    def _select(self, sig, sig_alloc, layout, k):
        gh, gw = layout.grid
        n_rows = k // gw
        b = sig.shape[0]
        row_score = sig.reshape(b, layout.views * gh, gw).sum(dim=-1)  # [B, V·gh], row r = view·gh + row
        rows = keep_topk(row_score, n_rows, 0)  # ascending row ids
        cols = torch.arange(gw, dtype=torch.int64, device=sig.device)
        return (rows.unsqueeze(-1) * gw + cols).reshape(b, n_rows * gw)

    def resolved(self, layout, k):
        return {"rows_kept": k // layout.grid[1], "rows_total": layout.views * layout.grid[0]}
