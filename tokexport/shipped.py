"""The recipes shipped inside the package (``tokexport/recipes``): list them, find one by name.

Part of the library (``tokexport.convert("dinov2-small-zero-tprune")`` looks names up here); the CLI's
``recipes list`` and its recipe argument use the same functions."""

from __future__ import annotations

import contextlib
from pathlib import Path

RECIPE_SUFFIXES = (".yaml", ".yml")
_resources = contextlib.ExitStack()


def shipped_recipes_dir() -> Path:
    """The recipes shipped inside the package (``tokexport/recipes``), as a filesystem directory."""
    from importlib.resources import as_file, files

    root = files("tokexport").joinpath("recipes")
    if isinstance(root, Path):
        return root
    return _resources.enter_context(as_file(root))  # a zipped install: extracted for this process


def shipped_recipes() -> list[tuple[str, Path]]:
    """(name, path) of every shipped recipe, name relative to the recipes directory
    (``dinov2-small-zero-tprune.yaml``, ``tiny/llava-next-tiny-hired.yaml``), sorted."""
    root = shipped_recipes_dir()
    found = [p for p in root.rglob("*") if p.suffix in RECIPE_SUFFIXES and p.is_file()]
    return sorted((p.relative_to(root).as_posix(), p) for p in found)


def find_shipped_recipe(name: str) -> Path | None:
    """The shipped recipe called ``name`` (with or without ``.yaml``; a leading ``recipes/`` is
    ignored, so the commands of the README work from any directory), or None."""
    n = name.replace("\\", "/").strip()
    if not n or n.startswith("/") or ".." in n.split("/"):
        return None
    candidates = [n] + ([n.removeprefix("recipes/")] if n.startswith("recipes/") else [])
    by_name = dict(shipped_recipes())
    for c in candidates:
        for key in (c,) if c.endswith(RECIPE_SUFFIXES) else (c + ".yaml", c + ".yml", c):
            if key in by_name:
                return by_name[key]
    return None
