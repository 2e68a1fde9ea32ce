"""Importing this module registers every task (each task module registers itself in TASKS)."""

from . import (
    visual_tokens,  # noqa: F401
    vit_tokens,  # noqa: F401
    vocab_trim,  # noqa: F401
)
