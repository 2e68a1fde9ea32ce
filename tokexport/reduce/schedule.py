"""Per-layer keep counts, fixed at export time (the one place rounding happens)."""

from __future__ import annotations

import math

from ..errors import InputError
from .base import ReductionConfig
from .stage import Removal, Stage

# TensorRT rejects TopK with K >= 3840 on every version (static-export.md).
TOPK_LIMIT = 3840


def round_count(x: float, rule: str = "floor") -> int:
    """A token count from a fractional product (rate × tokens). The 1e-9 guard makes products such as
    0.29 * 100 = 28.999999999999996 floor to 29."""
    if rule == "floor":
        return math.floor(x + 1e-9)
    if rule == "ceil":
        return math.ceil(x - 1e-9)
    return math.floor(x + 0.5)


def plan(cfg: ReductionConfig, n_tokens: int, n_prefix: int, num_layers: int) -> list[Stage]:
    """Keep counts for every pruning (or merging) layer. Errors name the recipe field (``reduction.*``).

    Schedules come either from ``prune_layers`` + ``keep_rate``/``keep`` (every method), from the
    config's own per-block removal counts (``ReductionConfig.removals``, e.g. ToMe's ``r``, PiToMe's
    ``ratio``), or from the config's own planner (``ReductionConfig.own_plan``: a hybrid's steps).
    """
    own = cfg.own_plan(n_tokens, n_prefix, num_layers)
    if own is not None:
        return own
    layers = list(cfg.prune_layers)
    for i, layer in enumerate(layers):
        if layer >= num_layers:
            raise InputError(
                f"reduction.prune_layers[{i}]: block {layer} is out of range; the model has "
                f"{num_layers} blocks (valid: 0..{num_layers - 1})"
            )
        if i and layer <= layers[i - 1]:
            raise InputError(f"reduction.prune_layers: must be strictly increasing, got {layers}")
    options = cfg.stage_options()
    removals = cfg.removals(num_layers)
    if removals is not None:
        stages = _plan_removals(removals, n_tokens, n_prefix, options)
    else:
        stages = _plan_keep(cfg, layers, n_tokens, n_prefix, options)
    for s in stages:
        if s.n_keep >= TOPK_LIMIT or s.tokens_in - n_prefix >= TOPK_LIMIT:
            raise InputError(
                f"reduction: {s.tokens_in - n_prefix} candidate tokens at block {s.layer} exceed TensorRT's TopK "
                f"limit ({TOPK_LIMIT}); use a smaller image_size"
            )
    return stages


def max_merge(tokens_in: int, n_prefix: int) -> int:
    """Most tokens one bipartite merge can remove: every token of the smaller half (ToMe: 50%)."""
    return (tokens_in - n_prefix) // 2


def _check_merge(field: str, layer: int, n: int, removed: int, n_prefix: int) -> None:
    limit = max_merge(n + n_prefix, n_prefix)
    if removed > limit:
        raise InputError(
            f"reduction.{field}: {removed} tokens merged at block {layer}, but a merge pairs the tokens of two "
            f"halves, so at most half of the {n} non-prefix tokens entering it can go (max {limit})"
        )


def _plan_removals(
    removals: list[tuple[int, Removal, str]], n_tokens: int, n_prefix: int, options: dict
) -> list[Stage]:
    stages = []
    n = n_tokens - n_prefix
    for layer, rule, field in removals:
        removed = rule(n) if callable(rule) else rule
        if removed <= 0:
            continue
        if options.get("kind") == "merge":
            _check_merge(field, layer, n, removed, n_prefix)
        if removed >= n:
            raise InputError(
                f"reduction.{field}: {removed} tokens removed at block {layer}, but only {n} non-prefix tokens "
                "reach it; at least one must remain"
            )
        stages.append(
            Stage(layer=layer, tokens_in=n + n_prefix, tokens_out=n - removed + n_prefix, n_keep=n - removed, **options)
        )
        n -= removed
    return stages


def _plan_keep(cfg: ReductionConfig, layers: list[int], n_tokens: int, n_prefix: int, options: dict) -> list[Stage]:
    if not layers:
        if cfg.keep_rate is not None or cfg.keep is not None:
            raise InputError("reduction.prune_layers: empty, but keep_rate/keep is set; list the blocks to prune after")
        return []
    if (cfg.keep_rate is None) == (cfg.keep is None):
        raise InputError("reduction: give exactly one of keep_rate (fractions) or keep (absolute counts)")

    if cfg.keep_rate is not None:
        rates = cfg.keep_rate if isinstance(cfg.keep_rate, list) else [cfg.keep_rate] * len(layers)
        if len(rates) != len(layers):
            raise InputError(
                f"reduction.keep_rate: {len(rates)} values for {len(layers)} prune_layers; give one per layer or a single value"
            )
        for i, r in enumerate(rates):
            if not 0 < r <= 1:
                raise InputError(
                    f"reduction.keep_rate[{i}]: {r} is outside (0, 1]; a keep rate is the fraction of tokens kept"
                )
    else:
        if len(cfg.keep) != len(layers):
            raise InputError(
                f"reduction.keep: {len(cfg.keep)} values for {len(layers)} prune_layers; give one per layer"
            )

    stages = []
    n = n_tokens - n_prefix
    for i, layer in enumerate(layers):
        if cfg.keep_rate is not None:
            k = max(1, round_count(rates[i] * n, cfg.rounding))
            field = f"keep_rate[{i}]" if isinstance(cfg.keep_rate, list) else "keep_rate"
        else:
            k = cfg.keep[i]
            field = f"keep[{i}]"
            if k > n:
                raise InputError(
                    f"reduction.keep[{i}]: {k} tokens requested after block {layer}, but only {n} "
                    "non-prefix tokens reach it; keep counts must not increase"
                )
        if options.get("kind") == "merge":
            _check_merge(field, layer, n, n - k, n_prefix)
        stages.append(Stage(layer=layer, tokens_in=n + n_prefix, tokens_out=k + n_prefix, n_keep=k, **options))
        n = k
    return stages


def tokens_per_layer(stages: list[Stage], n_tokens: int, num_layers: int) -> list[int]:
    """Tokens each block processes (block i sees the count left after stages before it)."""
    counts, current, by_layer = [], n_tokens, {s.layer: s for s in stages}
    for i in range(num_layers):
        counts.append(current)
        if i in by_layer:
            current = by_layer[i].tokens_out
    return counts
