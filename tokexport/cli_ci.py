"""CLI commands check, sweep, search (issue 6). Registered on the main app by ``tokexport.cli``."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
