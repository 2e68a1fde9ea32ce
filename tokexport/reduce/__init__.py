"""Token-reduction methods. Importing this package imports every module in it, and each method module
registers its method (``@METHODS.register``): a new method is one new file here. The hybrid composite is
imported last, so that its steps may be any method registered before it."""

from __future__ import annotations

from tokexport.errors import InputError
from tokexport.registry import import_submodules

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

# infrastructure, not methods (imported where used): the baselines, the block patch (both import torch eagerly)
INFRASTRUCTURE = ("baselines_vit", "patch")
import_submodules(__name__, last=("hybrid",), skip=INFRASTRUCTURE)
from . import hybrid  # noqa: E402  (imported above; named for finalize)

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


__all__ = [
    "COMPOSITES",
    "METHODS",
    "LayerInputs",
    "MergeInputs",
    "MergingMethod",
    "Method",
    "ReductionConfig",
    "get_method",
    "make_method",
    "method_classes",
]
