"""The command line, one module per command group: :mod:`.app` (the root app: convert, run, inspect, models,
recipes, report), :mod:`.target` (check-target, bundle, build), :mod:`.ci` (check, sweep, search) and
:mod:`.ui` (consoles, one-line errors, progress, logging, the summary and result tables). Every command calls a
library function; no module outside this package imports typer, rich or this package (tests/test_structure.py)."""

from .app import app, main

__all__ = ["app", "main"]
