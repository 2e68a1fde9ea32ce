"""tokexport: zero-shot token reduction, static-shape ONNX export, and verification against the original.

Python API (the same pipeline as `tokexport convert`)::

    import tokexport
    result = tokexport.convert("recipes/dinov2-small-zero-tprune.yaml", out="out/zt", force=False)
    result.passed, result.exit_code          # verdict (0 pass, 3 parity, 4 accuracy)
    result.accuracy["metrics"]               # the report's sections as attributes
    result.bench["batches"]["8"]["speedup"]
"""

from __future__ import annotations

# The one place the version is written: pyproject.toml reads it (dynamic version), `tokexport --version` prints it.
__version__ = "0.1.0"


def convert(recipe, out=None, force: bool = False, stages=None):
    """Run a recipe — a path to a YAML file, a shipped recipe's name, or a validated recipe object —
    into ``out`` and return the :class:`tokexport.tasks.run.Result` (``.report``, ``.out_dir``,
    ``.exit_code``, ``.passed`` and every report section as an attribute). Bad input raises
    :class:`tokexport.errors.TokexportError` subclasses (``.exit_code`` as the CLI's)."""
    from pathlib import Path

    from .pipeline import convert as convert_file

    if hasattr(recipe, "model_dump"):  # an already validated recipe object
        from .tasks.run import run

        if out is None:
            raise ValueError("out= is required when the recipe is an object")
        return run(recipe, Path.cwd(), Path(out), force, stages, label=getattr(recipe, "name", None) or "<recipe>")
    path = Path(recipe)
    if not path.exists():
        from .shipped import find_shipped_recipe

        shipped = find_shipped_recipe(str(recipe))
        path = shipped if shipped is not None else path
    return convert_file(path, out, force, stages)
