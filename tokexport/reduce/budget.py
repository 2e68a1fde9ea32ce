"""A method at a FLOPs budget: the configuration whose analytic FLOPs ratio (reduced / original, selection
overhead included, as every report computes it) is closest to a target, found from the method's own budget
knob (``Method.knob``) and nothing else — never from accuracy. Used to place every method at the same
budgets (scripts/bench_frontier.py) and to choose shipped recipes' budgets before measuring them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InputError
from .base import Method, ReductionConfig
from .schedule import plan


@dataclass(frozen=True)
class ModelShape:
    """What FLOPs need to know about a model: token counts, blocks, dimensions, head MACs."""

    n_tokens: int
    n_prefix: int
    dims: object  # tokexport.adapters.Dims
    head_macs: int

    @property
    def num_layers(self) -> int:
        return self.dims.layers


def flops_ratio(method: Method, shape: ModelShape) -> float:
    """Reduced FLOPs ÷ original FLOPs per image of ``method`` (its config's schedule) on ``shape``."""
    from ..flops import encoder_flops

    stages = plan(method.config, shape.n_tokens, shape.n_prefix, shape.num_layers)
    base = encoder_flops(shape.dims, shape.n_tokens, shape.n_prefix, [], shape.head_macs)["flops"]
    red = encoder_flops(shape.dims, shape.n_tokens, shape.n_prefix, stages, shape.head_macs, method=method)["flops"]
    return red / base


def knob_values(method_cls: type[Method], template: ReductionConfig | None = None, step: float = 0.001) -> list[float]:
    """The knob values tried, from the mildest (largest) down, ``step`` apart, within the method's bounds."""
    lo, hi = method_cls.knob_bounds(template)
    n = int(round((hi - lo) / step))
    return [round(hi - i * step, 6) for i in range(n + 1)]


def config_at_flops(
    method_cls: type[Method],
    template: ReductionConfig | None,
    target: float,
    shape: ModelShape,
    step: float = 0.001,
    make: Callable[[ReductionConfig], Method] | None = None,
) -> tuple[ReductionConfig, float]:
    """(config, its FLOPs ratio): the knob value whose FLOPs ratio is closest to ``target`` (ties: the milder
    knob). Knob values the model cannot plan (a merge beyond half the tokens, ...) are skipped. InputError when
    no value plans at all."""
    make = make or method_cls
    best: tuple[float, ReductionConfig, float] | None = None
    for value in knob_values(method_cls, template, step):
        try:
            cfg = method_cls.knob(template, value, shape.num_layers)
            ratio = flops_ratio(make(cfg), shape)
        except (InputError, ValueError):
            continue
        gap = abs(ratio - target)
        if best is None or gap < best[0] - 1e-12:
            best = (gap, cfg, ratio)
    if best is None:
        raise InputError(f"{method_cls.name}: no value of its budget knob plans on this model")
    return best[1], best[2]
