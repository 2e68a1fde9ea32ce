"""Model-family adapters (registered on import)."""

from . import clip, deit, dinov2, siglip, vit  # noqa: F401  (registration)
from .base import (
    ADAPTERS,
    TESTED_TRANSFORMERS,
    Adapter,
    BlockHalves,
    BlockLayout,
    Dims,
    adapter_for,
)

__all__ = ["ADAPTERS", "TESTED_TRANSFORMERS", "Adapter", "BlockHalves", "BlockLayout", "Dims", "adapter_for"]
