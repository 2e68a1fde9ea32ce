"""Token-reduction methods. Importing this package registers every method module below."""
from __future__ import annotations

from tokexport.errors import InputError

from . import random_keep, tome, topk_cls, uniform_keep, zero_tprune  # noqa: F401  (registration)
from .base import (
    METHODS,
    LayerInputs,
    MergeInputs,
    MergingMethod,
    Method,
    ReductionConfig,
    register_method,
)


def get_method(name: str) -> type[Method]:
    """The registered Method class called ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown reduction method {name!r}; known: {', '.join(sorted(METHODS))}") from None


__all__ = ["METHODS", "LayerInputs", "MergeInputs", "MergingMethod", "Method", "ReductionConfig", "get_method",
           "register_method"]
