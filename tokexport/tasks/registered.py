"""Importing this module registers every task (each task module registers itself in TASKS)."""
from . import vit_tokens  # noqa: F401
from . import visual_tokens  # noqa: F401
from . import vocab_trim  # noqa: F401
