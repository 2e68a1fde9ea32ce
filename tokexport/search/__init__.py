"""`tokexport search`: the fewest-FLOPs pruning schedule whose accuracy drop stays within a budget.

Greedy and layer-wise, in the spirit of G-Search: the number of tokens a ViT needs does not grow with
depth, so a schedule is a non-increasing list of absolute keep counts, one per candidate layer
(default: the recipe's ``prune_layers``). Layers are decided one at a time; for each, a binary search
over a grid of counts finds the fewest tokens to keep there such that the schedule so far still meets
the budget. Counts fixed deeper are the floor, counts fixed shallower the ceiling (monotonicity), and
keeping the ceiling adds no pruning, so every layer's search has a feasible end. Two passes: deepest
layer first (pruning there costs the least accuracy, the shallow layers then spend what is left where
a removed token saves the most FLOPs) and shallowest first (the opposite bet). The winner is the
feasible schedule with the fewest FLOPs among everything evaluated, the recipe's own schedule included.

A candidate is evaluated in-process with PyTorch (``reduce.patch.reduced`` on the loaded model) on the
recipe's evaluation set, with the same metrics code as ``pipeline`` (prototypes from the original
model); it is feasible when ``original − reduced`` of the chosen metric is at most ``max_drop`` and
every threshold of the recipe holds. FLOPs come from ``flops.encoder_flops`` (selection overhead
included). Then the full pipeline (export, ONNX parity, accuracy on model.onnx, bench) runs once on the
winner and, unless disabled, once on the recipe's schedule, so both measured speed-ups come from the
same machine and session.

The knob searches (visual-token K, vocab size) bisect one value over full conversions instead
(:mod:`.knob`). The package: :func:`search` here (arguments checked, then the task's search),
:mod:`.greedy` (the schedule search's evaluator and greedy passes), :mod:`.schedule` (the schedule
search run end to end), :mod:`.knob` (the knob search) and :mod:`.bisection` (the binary search of both).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, option
from ..outdir import check_out_dir
from ..recipe import load_recipe
from .bisection import Bisection, bisect_smallest
from .greedy import Evaluation, Evaluator, GreedyPass, greedy_parallel, greedy_search
from .knob import search_knob
from .schedule import search_schedule

__all__ = [
    "DEFAULT_MAX_EVALS",
    "Bisection",
    "Evaluation",
    "Evaluator",
    "GreedyPass",
    "bisect_smallest",
    "greedy_parallel",
    "greedy_search",
    "parse_budget",
    "search",
    "search_knob",
    "search_schedule",
]


def parse_budget(text: str) -> float:
    """``0.02`` (metric units, like a recipe's ``max_drop``) or ``0.5pp`` / ``0.5%`` (percentage points)."""
    t = text.strip().lower()
    scale = 1.0
    for suffix in ("pp", "%"):
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)].strip(), 0.01
    try:
        v = float(t) * scale
    except ValueError:
        raise InputError(f"{option('max_drop')}: {text!r} is not a number; e.g. 0.02 or 2pp") from None
    if v < 0:
        raise InputError(f"{option('max_drop')}: {text} is negative; the budget is how much the metric may drop")
    return v


DEFAULT_MAX_EVALS = 12  # visual / vocab: conversions per search, the recipe's own value included


def search(
    recipe_path: str | Path,
    max_drop: float,
    metric: str | None,
    out: str | Path | None = None,
    layers: list[int] | None = None,
    step: int | None = None,
    reference: bool = True,
    force: bool = False,
    stages=None,
    max_evals: int | None = None,
    *,
    backend: str = "local",
    address: str | None = None,
    cpus_per_job: int | None = None,
) -> tuple[dict, Path]:
    """Run the search and the pipeline on the winner; write ``search.json``, ``<name>-search.yaml``,
    ``winner/`` (and ``reference/``) under ``out``. Returns (summary, output directory).

    ViT recipes: the greedy layer-wise schedule search (``layers``, ``step`` tokens). Visual-token recipes:
    the smallest K; vocab recipes: the smallest ``trim.target_vocab_size`` (``step``: grid step of the
    value; ``max_evals``: conversions at most, default 12). ``metric`` None: the task's default.
    ``backend`` ray (:mod:`tokexport.fanout`): the candidates of one round are evaluated in parallel (ViT: both
    greedy passes at once, on evaluator actors; visual / vocab: the bisection's next steps as conversion
    tasks) and every conversion is one Ray task; the search takes the local backend's path and pick."""
    from ..fanout import Fanout, check_backend
    from ..pipeline import Stages
    from ..sweep import check_metric
    from ..tasks.axes import axis_for

    check_backend(backend, 1, cpus_per_job)

    stages = stages or Stages()
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    base_dir = recipe_path.resolve().parent
    out_dir = Path(os.path.expanduser(out)) if out is not None else Path("out") / f"{recipe_path.stem}-search"
    axis = axis_for(recipe)
    _check_arguments(recipe_path, recipe.task, axis.search_knob, layers, max_evals)
    if axis.search_knob is not None:
        metric = check_metric(recipe, base_dir, metric, "the search")
        from ..tasks.run import model_paths

        check_out_dir(out_dir, force, protect=(recipe_path, base_dir, *model_paths(recipe.model, base_dir)))
        with Fanout(backend, address, cpus_per_job) as fo:
            return search_knob(
                recipe_path,
                recipe,
                max_drop,
                metric,
                out_dir,
                step,
                reference,
                force,
                stages,
                max_evals or DEFAULT_MAX_EVALS,
                fo=fo if backend == "ray" else None,
            )
    return search_schedule(
        recipe_path,
        recipe,
        out_dir,
        max_drop,
        metric,
        layers,
        step,
        reference,
        force,
        stages,
        backend=backend,
        address=address,
        cpus_per_job=cpus_per_job,
    )


def _check_arguments(
    recipe_path: Path, task: str, knob: str | None, layers: list[int] | None, max_evals: int | None
) -> None:
    """The arguments fit the search the recipe's task runs: ``layers`` only for the ViT schedule search
    (``knob`` None), ``max_evals`` only for a knob search (``knob``: the value it varies), and then 2 or more."""
    if knob is not None:
        if layers is not None:
            raise InputError(
                f"{option('layers')}: {recipe_path} is task {task}: the search varies {knob}, not a layer-wise schedule"
            )
        if max_evals is not None and max_evals < 2:
            raise InputError(
                f"{option('max_evals')}: {max_evals}; give 2 or more (the recipe's own value is the first)"
            )
    elif max_evals is not None:
        raise InputError(
            f"{option('max_evals')}: only for visual-token and vocab-trim searches; the ViT schedule search is "
            f"bounded by {option('step')} and {option('layers')}"
        )
