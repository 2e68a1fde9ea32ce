"""Uniform keep: evenly strided positions among the current non-prefix tokens, constant per layer.

With M candidate tokens and n_keep kept, the i-th kept candidate (0-based) is
``floor((i + 1/2) * M / n_keep)``, computed in integers as ``((2i + 1) * M) // (2 * n_keep)``: the
centres of n_keep equal bins. The step is M / n_keep >= 1, so the indices are distinct, ascending and
exactly n_keep of them (unlike HiRED's version, which can return more). Strides are along the current
1-D token order; after earlier pruning this is not a 2-D grid.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .base import LayerInputs, Method, ReductionConfig, register_method


def uniform_positions(n_candidates: int, n_keep: int) -> list[int]:
    """0-based candidate indices of the uniform keep set."""
    if not 1 <= n_keep <= n_candidates:
        raise ValueError(f"n_keep={n_keep} outside [1, {n_candidates}]")
    return [((2 * i + 1) * n_candidates) // (2 * n_keep) for i in range(n_keep)]


class UniformKeepConfig(ReductionConfig):
    """Evenly strided subset of the tokens; no parameters beyond the schedule."""

    method: Literal["uniform"] = Field(default="uniform", description="Method name.")


@register_method
class UniformKeep(Method):
    name = "uniform"
    config_cls = UniformKeepConfig
    needs_attention = False

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        b, n = x.hidden.shape[0], int(x.hidden.shape[1])  # batch may be dynamic, tokens are static
        pos = [p + x.n_prefix for p in uniform_positions(n - x.n_prefix, n_keep)]
        idx = torch.tensor(pos, dtype=torch.int64, device=x.hidden.device)  # an ONNX constant
        return idx.expand(b, n_keep)
