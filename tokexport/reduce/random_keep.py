"""Fixed random subset (method ``random``): one seeded random subset per layer, the SAME for every image
— a deployable method (a static graph with constant indices), the ablation of Zero-TPrune and EViT.

Not to be confused with the per-image random BASELINE every ViT report carries
(:mod:`tokexport.reduce.baselines_vit`, report section ``baselines``): that draws a new subset for every
image and every seed (≥ 5 seeds, mean ± sd) and is evaluated in PyTorch only.

The scores are drawn once per (layer, number of candidate tokens) from
``torch.Generator().manual_seed(seed * 1_000_003 + layer)`` and stored as a constant tensor, so every
image in the batch keeps the same positions and the exported graph is deterministic and static (the
scores become an ONNX initializer). The draw is ``torch.randperm`` (a uniformly random ranking, i.e.
the ranking of i.i.d. uniform noise, but without ties, so TopK cannot break ties differently in
PyTorch and ONNX Runtime).
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field

from tokexport.lazy import torch

from ..bounds import Count
from .base import METHODS, LayerInputs, Method, ReductionConfig
from .common import keep_topk

_LAYER_STRIDE = 1_000_003  # prime larger than any block count: (seed, layer) -> distinct generator seeds


class RandomKeepConfig(ReductionConfig):
    """Fixed random subset: seeded, one per layer, identical for every image (deployable)."""

    method: Literal["random"] = Field(default="random", description="Method name.")
    seed: Count(0, 2**40) = Field(
        default=0,
        description="Base seed, 0..1099511627776; layer l draws from torch.Generator().manual_seed(seed * 1000003 + l).",
    )


@METHODS.register
class RandomKeep(Method):
    name = "random"
    config_cls = RandomKeepConfig
    needs_attention = False
    config: RandomKeepConfig

    def __init__(self, config: RandomKeepConfig):
        super().__init__(config)
        self._scores: dict[tuple[int, int], torch.Tensor] = {}

    def generator_seed(self, layer: int) -> int:
        return self.config.seed * _LAYER_STRIDE + layer

    def scores_for(self, layer: int, n_candidates: int) -> torch.Tensor:
        """Constant float32 scores [n_candidates] of ``layer``, drawn on first use."""
        key = (layer, n_candidates)
        if key not in self._scores:
            g = torch.Generator().manual_seed(self.generator_seed(layer))
            # Through Python values, so that a first call under torch.onnx.export's tracer records
            # the draw as a constant, not as a RandPerm op.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                perm = torch.randperm(int(n_candidates), generator=g).tolist()
            self._scores[key] = torch.tensor(perm, dtype=torch.float32)
        return self._scores[key]

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        b, n = x.hidden.shape[0], int(x.hidden.shape[1])  # batch may be dynamic, tokens are static
        scores = self.scores_for(x.layer, n - x.n_prefix).to(x.hidden.device)
        return keep_topk(scores.expand(b, -1), n_keep, x.n_prefix)

    def describe(self) -> dict:
        d = super().describe()
        layers = sorted(set(self.config.prune_layers) | {layer for layer, _ in self._scores})
        d["subset"] = "fixed random subset per layer, identical for every image"
        d["generator_seed_by_layer"] = {layer: self.generator_seed(layer) for layer in layers}
        return d
