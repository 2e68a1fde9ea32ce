"""Model-family adapters (registered on import)."""
from .base import ADAPTERS, TESTED_TRANSFORMERS, Adapter, Dims, adapter_for, register_adapter
from . import deit, dinov2, vit  # noqa: F401  (registration)
from . import clip, siglip  # noqa: F401  (registration)

__all__ = ["ADAPTERS", "TESTED_TRANSFORMERS", "Adapter", "Dims", "adapter_for", "register_adapter"]
