"""The search of a visual-token recipe (the smallest K) or a vocab-trim recipe (the smallest
``trim.target_vocab_size``): one knob, bisected over full conversions (the one driver), the recipe's own
value first; locally one conversion at a time, or on Ray the bisection's possible next steps at once."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .. import __version__
from ..errors import InputError, option
from ..files import read_json
from ..outdir import claim_out_dir, staged_dir
from ..recipe import write_recipe
from ..stages import metric as MC
from .bisection import bisect_smallest


def _absolute_paths(recipe, base_dir: Path):
    """The recipe with its local paths (model directory, corpus files, tokens_to_keep_file, keep_file) made absolute, so
    the winner's YAML, written next to the outputs, still resolves them."""
    from ..zoo import BUNDLED, GENERATED

    def absolute(p: str) -> str:
        q = Path(p).expanduser()
        return p if q.is_absolute() else str(Path(base_dir).resolve() / q)

    update = {}
    if recipe.model not in BUNDLED and recipe.model not in GENERATED and (Path(base_dir) / recipe.model).exists():
        update["model"] = absolute(recipe.model)
    if getattr(recipe, "corpus", None) is not None:
        sources = []
        for s in recipe.corpus.sources:
            if s.path is not None:
                s = s.model_copy(
                    update={"path": [absolute(x) for x in s.path] if isinstance(s.path, list) else absolute(s.path)}
                )
            sources.append(s)
        update["corpus"] = recipe.corpus.model_copy(update={"sources": sources})
        files = {
            k: absolute(getattr(recipe.trim, k))
            for k in ("tokens_to_keep_file", "keep_file")
            if getattr(recipe.trim, k, None)
        }
        if files:
            update["trim"] = recipe.trim.model_copy(update=files)
    return recipe.model_copy(update=update) if update else recipe


def _judge(report: dict, metric: str, max_drop: float) -> dict:
    from ..sweep import metric_drop

    ms = report["accuracy"]["metrics"]
    m = ms[metric]
    drop = metric_drop(m)
    failed = [k for k, v in ms.items() if not MC.is_info(v) and v.get("passed") is False]
    parity = bool(report["parity"]["passed"] and report["parity_baseline"]["passed"])
    return {
        "drop": drop,
        "original": m["original"],
        "reduced": m["reduced"],
        "better": m.get("better", "higher"),
        "failed_thresholds": failed,
        "parity_passed": parity,
        "feasible": bool(drop <= max_drop + 1e-12 and not failed and parity),
    }


class _Candidates:
    """The conversions of one knob search: each candidate value's recipe converted into the staging
    directory's ``candidates/`` (locally one by one; on Ray one task each, a round at once), and what each
    one measured, in the order converted (``trace``), by value (``runs``: tag and report)."""

    def __init__(
        self, axis, recipe, template, base_dir: Path, tmp: Path, label: str, stages, fo, metric: str, max_drop: float
    ):
        self.axis, self.recipe, self.template, self.base_dir, self.tmp = axis, recipe, template, base_dir, tmp
        self.label, self.stages, self.fo, self.metric, self.max_drop = label, stages, fo, metric, max_drop
        self.knob = axis.search_knob
        self.trace: list[dict] = []
        self.runs: dict = {}
        self.rounds: list[list] = []  # Ray: the values converted together, round by round

    def candidate(self, value):
        return self.template if value is None else self.axis.knob_recipe(self.recipe, self.template, value)

    def tag_of(self, value) -> str:
        return "recipe" if value is None else f"{self.axis.search_tag}{value}"

    def evaluate_many(self, values: list, what: str = "candidate") -> list[dict]:
        """Convert every value's candidate (on Ray: one task each, all at once); their trace entries."""
        if self.fo is None:
            return [self._convert_here(value, what) for value in values]
        return self._convert_on_ray(values, what)

    def evaluate(self, value, what: str = "candidate") -> dict:
        return self.evaluate_many([value], what)[0]

    def _convert_here(self, value, what: str) -> dict:
        from ..pipeline import run

        t0 = time.time()
        with self.stages.stage(f"search: {self.knob} = {value if value is not None else 'the recipe’s'}"):
            res = run(
                self.candidate(value),
                self.base_dir,
                self.tmp / "candidates" / self.tag_of(value),
                stages=self.stages,
                label=f"{self.label}@{self.tag_of(value)}",
            )
        return self.entry(value, what, res.report, res.exit_code, time.time() - t0)

    def _convert_on_ray(self, values: list, what: str) -> list[dict]:
        from ..fanout import PointSpec, raise_failed
        from ..tasks.run import model_paths

        fo, tag_of = self.fo, self.tag_of
        local = model_paths(self.template.model, self.base_dir)
        specs = [
            PointSpec(
                tag_of(v),
                self.candidate(v),
                str(self.base_dir),
                str((self.tmp / "candidates" / tag_of(v)).absolute()),
                f"{self.label}@{tag_of(v)}",
                fo.threads(),
                str(local[0]) if local else None,
            )
            for v in values
        ]
        self.rounds.append(list(values))
        shown = ", ".join("the recipe’s" if v is None else str(v) for v in values)
        with self.stages.stage(f"search: {self.knob} = {shown} ({len(values)} conversion(s) at once on Ray)"):
            records = fo.convert(specs)
        out = []
        for v, spec, rec in zip(values, specs, records):
            raise_failed(rec, f"{self.knob} {v if v is not None else '(the recipe’s)'}")
            rep = read_json(Path(spec.run_dir) / "report.json", "report")
            out.append(self.entry(v, what, rep, rec["exit_code"], rec.get("seconds")))
        return out

    def entry(self, value, what: str, rep: dict, exit_code: int, seconds) -> dict:
        tag = self.tag_of(value)
        measured = self.axis.knob_measured(rep)
        got = value if value is not None else measured
        e = {
            "value": got,
            "measured_value": measured,
            "role": what,
            "run": tag,
            "exit_code": exit_code,
            "seconds": seconds,
            **_judge(rep, self.metric, self.max_drop),
            "speedups": {b: v["speedup"] for b, v in ((rep.get("bench") or {}).get("batches") or {}).items()},
        }
        e.update(self.axis.knob_figures(rep))
        self.stages.log(
            f"{self.knob} {got}: {self.metric} drop {e['drop']:+.4f} "
            f"{'ok' if e['feasible'] else 'over budget / threshold failed'}"
        )
        self.trace.append(e)
        self.runs[got] = (tag, rep)
        return e


def _bisect(cands: _Candidates, ref: dict, grid: list, max_evals: int, max_drop: float) -> tuple:
    """Bisect ``grid`` from the recipe's own value (``ref``, evaluated): below it when it is within the budget,
    above it when it is not (the largest value first). Returns (the winning value, converged, every value
    evaluated → its entry, the values the sequential search needed)."""
    knob, fo = cands.knob, cands.fo
    ref_value = ref["value"]
    evaluated = {ref_value: ref}
    budget_left = max_evals - 1
    on_path: set = set()

    def feasible(value) -> bool:
        nonlocal budget_left
        on_path.add(value)
        if value not in evaluated:
            budget_left -= 1
            evaluated[value] = cands.evaluate(value)
        return evaluated[value]["feasible"]

    def prefetch(values: list) -> None:  # Ray: the bisection's possible next steps, converted at once
        missing = [v for v in values if v not in evaluated]
        if missing:
            for v, e in zip(missing, cands.evaluate_many(missing)):
                evaluated[v] = e

    parallel = {"prefetch": prefetch, "width": fo.parallel} if fo is not None else {}

    start = grid.index(ref_value)
    if not ref["feasible"]:  # the recipe's own value is over budget: search above it
        if grid[-1] == ref_value or budget_left < 1 or not feasible(grid[-1]):
            raise InputError(
                f"{option('max_drop')} {max_drop:g}: no {knob} evaluated stays within the budget and the recipe's "
                f"thresholds (the recipe's {ref_value}: drop {ref['drop']:+.4f}"
                + (
                    f"; the largest, {grid[-1]}: drop {evaluated[grid[-1]]['drop']:+.4f}"
                    if grid[-1] in evaluated and grid[-1] != ref_value
                    else ""
                )
                + "); raise the budget"
            )
        upper = grid[start + 1 :]
        idx, converged = bisect_smallest(upper, len(upper) - 1, feasible, budget_left, **parallel)
        win = upper[idx]
    else:
        idx, converged = bisect_smallest(grid, start, feasible, budget_left, **parallel)
        win = grid[idx]
    return win, converged, evaluated, on_path


def _keep_winner(tmp: Path, runs: dict, win, ref_value, reference: bool) -> None:
    """The winner's conversion to ``winner/`` (the recipe's own to ``reference/``); the other candidates go."""
    w_tag = runs[win][0]
    shutil.move(str(tmp / "candidates" / w_tag), str(tmp / "winner"))
    if reference:
        r_tag = runs[ref_value][0]
        src = tmp / ("winner" if r_tag == w_tag else "candidates") / ("" if r_tag == w_tag else r_tag)
        (shutil.copytree if r_tag == w_tag else shutil.move)(str(src), str(tmp / "reference"))
    shutil.rmtree(tmp / "candidates", ignore_errors=True)


def search_knob(
    recipe_path: Path,
    recipe,
    max_drop: float,
    metric: str,
    out_dir: Path,
    step: int | None,
    reference: bool,
    force: bool,
    stages,
    max_evals: int,
    fo=None,
) -> tuple[dict, Path]:
    """The smallest K (visual tokens) or ``trim.target_vocab_size`` (vocab) whose ``metric`` drop stays
    within ``max_drop`` with every recipe threshold met and parity passed. Every candidate is a full
    conversion (the one driver) into the staging directory; the recipe's own value first (the upper end of
    the bisection, or, when it is over budget, the lower end: then the largest value is tried next)."""
    from ..tasks.axes import axis_for
    from ..tasks.run import model_paths

    axis = axis_for(recipe)
    base_dir = recipe_path.resolve().parent
    knob = axis.search_knob
    protect = (recipe_path, base_dir, *model_paths(recipe.model, base_dir))
    with claim_out_dir(out_dir, force, kind="search", protect=protect), staged_dir(out_dir) as tmp:
        name = f"{recipe.name or recipe_path.stem}-search"
        winner_file = tmp / f"{name}.yaml"
        verify, gate = axis.budget_verify(recipe, metric, max_drop)
        template = _absolute_paths(recipe, base_dir).model_copy(update={"name": name, "verify": verify})
        cands = _Candidates(
            axis, recipe, template, base_dir, tmp, str(out_dir / winner_file.name), stages, fo, metric, max_drop
        )

        t0 = time.time()
        ref = cands.evaluate(None, "reference (the recipe's own)")
        ref_value = ref["value"]
        st = step or 1
        grid = axis.knob_grid(recipe, cands.runs[ref_value][1], ref_value, st, cands.candidate)
        win, converged, evaluated, on_path = _bisect(cands, ref, grid, max_evals, max_drop)
        seconds = time.time() - t0
        for e in cands.trace:  # evaluated ahead on Ray but never needed by the sequential path
            if e["role"] == "candidate" and e["value"] not in on_path:
                e["speculative"] = True
        best = evaluated[win]
        # smaller evaluated values that were infeasible bound the resolution
        below = [v for v in evaluated if v < win]
        resolution = win - max(below) if below else win - grid[0]

        _keep_winner(tmp, cands.runs, win, ref_value, reference)
        winner = cands.candidate(win)
        winner = winner.model_copy(
            update={
                "description": (
                    f"Found by `tokexport search {recipe_path} --max-drop {max_drop:g} --metric {metric}`: the smallest "
                    f"{knob} ({win}) with {metric} drop <= {max_drop:g} and every threshold met (bisection over full "
                    f"conversions: search.json)." + (f" Budget set as {gate}." if gate else "")
                )
            }
        )
        write_recipe(winner, winner_file, winner.description)
        summary = _summary(
            cands,
            recipe_path,
            grid,
            st,
            max_evals,
            ref,
            best,
            win,
            converged,
            resolution,
            seconds,
            gate,
            reference,
            winner_file.name,
        )
        (tmp / "search.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, out_dir


def _summary(
    cands: _Candidates,
    recipe_path: Path,
    grid: list,
    st: int,
    max_evals: int,
    ref: dict,
    best: dict,
    win,
    converged: bool,
    resolution,
    seconds: float,
    gate,
    reference: bool,
    winner_recipe: str,
) -> dict:
    """search.json of a knob search."""
    recipe, metric, max_drop, knob, trace, runs, fo = (
        cands.recipe,
        cands.metric,
        cands.max_drop,
        cands.knob,
        cands.trace,
        cands.runs,
        cands.fo,
    )
    ref_value = ref["value"]
    ref_drop = ref["drop"]
    verdict = (
        f"{knob} {win} (recipe: {ref_value}) keeps the {metric} drop at {best['drop']:+.4f} within "
        f"{max_drop:g} (recipe's: {ref_drop:+.4f}); {len(trace)} conversions evaluated"
        + (
            ""
            if converged
            else f", stopped by --max-evals {max_evals}: the smallest feasible value may "
            f"be up to {resolution - 1} lower"
        )
    )
    return {
        "schema_version": 1,
        "kind": "search",
        "tokexport_version": __version__,
        "created_unix": int(time.time()),
        "recipe_path": str(recipe_path),
        "task": recipe.task,
        "metric": metric,
        "metric_better": best["better"],
        "max_drop": max_drop,
        "knob": knob,
        "method": cands.axis.method_name(recipe),
        "algorithm": (
            "bisection over an ascending grid (step "
            f"{st}) of {knob} values, assuming more never "
            "hurts the metric: the recipe's own value first, then the grid below it (or above it when "
            "over budget); every candidate a full conversion"
        ),
        "grid": {"min": grid[0], "max": grid[-1], "step": st, "size": len(grid)},
        "max_evals": max_evals,
        "evaluations": len(trace),
        "converged": converged,
        "resolution": resolution,
        "search_seconds": seconds,
        "budget_threshold": gate,
        "reference": ref,
        "winner": best,
        "verdict": verdict,
        "measured": {
            "winner": _measured_task(runs[win][1], metric),
            "reference": _measured_task(runs[ref_value][1], metric) if reference else None,
        },
        "winner_recipe": winner_recipe,
        "winner_exit_code": next(e["exit_code"] for e in trace if e["value"] == win),
        "trace": trace,
        "backend": ({**fo.describe(), "rounds": cands.rounds} if fo is not None else {"name": "local", "parallel": 1}),
        "speculative_evaluations": sum(bool(e.get("speculative")) for e in trace),
    }


def _measured_task(report: dict, metric: str) -> dict:
    from ..sweep import metric_drop

    m = report["accuracy"]["metrics"][metric]
    bench = report.get("bench") or {}
    return {
        "drop": metric_drop(m),
        "reduced": m["reduced"],
        "original": m["original"],
        "speedups": {b: v["speedup"] for b, v in (bench.get("batches") or {}).items()},
        "parity_passed": report["parity"]["passed"],
        "passed": report["passed"],
    }
