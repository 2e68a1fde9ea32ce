"""`tokexport convert` as a library call: read and validate the recipe file, then run it through the
one driver (:mod:`tokexport.tasks.run`): recipe → task → load → export pair → parity → metrics → bench
→ target check → deploy → report, staged into a temporary directory and renamed into place.

The recipe is read and validated before the driver (torch, transformers, onnx, onnxruntime) is
imported: a bad recipe is answered at once."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .recipe import load_recipe

if TYPE_CHECKING:
    from .tasks.base import Stages
    from .tasks.run import Result

__all__ = ["Result", "Stages", "convert", "run"]  # noqa: F822  (Result, Stages, run: module __getattr__)


def __getattr__(name: str):
    if name in ("Result", "Stages", "run"):  # the driver, imported when first asked for
        from .tasks import run as driver

        return getattr(driver, name)
    raise AttributeError(name)


def convert(
    recipe_path: str | Path, out: str | Path | None = None, force: bool = False, stages: Stages | None = None
) -> Result:
    """Load and validate the recipe file, then run it into ``out`` (default ``out/<recipe stem>``)."""
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    t0 = time.perf_counter()
    from .tasks.run import run

    logging.getLogger("tokexport").debug(
        "pipeline modules (torch, transformers, onnx) imported in %.1f s", time.perf_counter() - t0
    )

    out_dir = Path(out) if out is not None else Path("out") / recipe_path.stem
    return run(
        recipe, recipe_path.resolve().parent, out_dir, force, stages, label=str(recipe_path), protect=(recipe_path,)
    )
