"""Token-reduction methods. Importing this package registers every method module below."""
from __future__ import annotations

from tokexport.errors import InputError

from . import dart, divprune, pitome, random_keep, tome, topk_cls, uniform_keep, zero_tprune  # noqa: F401  (registration)
from . import hybrid  # noqa: I001  (registration; last: its steps may be any method registered above)
from .base import (
    COMPOSITES,
    METHODS,
    LayerInputs,
    MergeInputs,
    MergingMethod,
    Method,
    ReductionConfig,
    method_classes,
)


hybrid.finalize()


def get_method(name: str) -> type[Method]:
    """The registered Method class called ``name`` (a method or a composite such as a hybrid)."""
    known = method_classes()
    try:
        return known[name]
    except KeyError:
        raise InputError(f"unknown reduction method {name!r}; known: {', '.join(sorted(known))}") from None


def make_method(config: ReductionConfig) -> Method:
    """The Method a recipe's ``reduction`` configures."""
    return get_method(config.method)(config)


__all__ = ["COMPOSITES", "METHODS", "LayerInputs", "MergeInputs", "MergingMethod", "Method", "ReductionConfig",
           "get_method", "make_method", "method_classes"]
