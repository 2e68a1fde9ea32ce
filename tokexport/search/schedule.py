"""The schedule search of a ViT recipe, run end to end (:func:`search_schedule`): the model loaded once,
the recipe's own schedule and both greedy passes scored in PyTorch (:mod:`.greedy`), the fewest-FLOPs
feasible schedule written as a recipe and converted by the full pipeline (with the recipe's own, for the
measured comparison), and search.json: the trace, the verdict, the search split against the held-out one."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import __version__
from ..data import SEARCH_STREAM
from ..errors import InputError, option
from ..files import read_json
from ..load import load_model
from ..outdir import check_out_dir, claim_out_dir, staged_dir
from ..recipe import Recipe, Threshold, write_recipe
from ..reduce.schedule import plan
from ..tasks.vit_tokens import SCORED, scored_metrics
from .greedy import Evaluation, Evaluator, greedy_parallel, greedy_search


def search_schedule(
    recipe_path: Path,
    recipe: Recipe,
    out_dir: Path,
    max_drop: float,
    metric: str | None,
    layers: list[int] | None,
    step: int | None,
    reference: bool,
    force: bool,
    stages,
    *,
    backend: str,
    address: str | None,
    cpus_per_job: int | None,
) -> tuple[dict, Path]:
    """The greedy layer-wise schedule search (``layers``: blocks it may prune after, default the recipe's
    ``prune_layers``; ``step`` tokens per grid step, default tokens/32) and the pipeline on its winner (and,
    with ``reference``, on the recipe's own schedule); ``search.json``, ``<name>-search.yaml``, ``winner/``
    (and ``reference/``) under ``out_dir``. ``backend`` ray: both passes at once on evaluator actors, each
    conversion a Ray task; the same path and pick as the local backend."""
    from ..fanout import Fanout
    from ..tasks.run import model_paths

    base_dir = recipe_path.resolve().parent
    metric = metric or "instance_top1"
    protect = (recipe_path, base_dir, *model_paths(recipe.model, base_dir))
    check_out_dir(out_dir, force, protect=protect)
    layers = _searched_layers(recipe, metric, layers)
    fo = Fanout(backend, address, cpus_per_job)
    with fo, claim_out_dir(out_dir, force, kind="search", protect=protect):
        lm, n, step = _load(recipe, base_dir, layers, step, metric, stages)
        with stages.stage("search: original outputs"):
            ev = Evaluator(recipe, lm, metric, max_drop)
        t0 = time.time()
        with stages.stage("search: reference schedule"):
            ref = _reference(ev, recipe, lm)
        passes, parallel = _greedy_passes(ev, ref, fo, backend, stages, base_dir, layers, n, step)
        best = _best(ev, max_drop)
        seconds = time.time() - t0
        winner = _winner_recipe(recipe, recipe_path, ev, best, max_drop, metric, layers)

        with staged_dir(out_dir) as tmp:
            winner, winner_file = _write_winner(winner, lm, tmp)
            runs = [
                ("winner", winner, str(out_dir / winner_file.name)),
                *([("reference", recipe, str(recipe_path))] if reference else []),
            ]
            win_report, win_code, ref_report = _convert(fo, backend, stages, lm, base_dir, tmp, runs)
            summary = _summary(
                recipe,
                str(recipe_path),
                metric,
                max_drop,
                layers,
                step,
                ev,
                ref,
                best,
                seconds,
                win_report,
                ref_report,
                passes,
            )
            summary["winner_recipe"] = winner_file.name
            summary["winner_exit_code"] = win_code
            summary["backend"] = {**fo.describe(), **({"parallel_search": parallel} if parallel else {})}
            (tmp / "search.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary, out_dir


def _searched_layers(recipe: Recipe, metric: str, layers: list[int] | None) -> list[int]:
    """The blocks the search may prune after (``layers``, default the recipe's ``prune_layers``), sorted,
    once ``metric`` is one the search measures."""
    if metric not in SCORED:
        raise InputError(
            f"{option('metric')} {metric}: the search measures feature_cosine, instance_top1 (and top1_agreement "
            "for classifiers)"
        )
    layers = sorted(set(layers if layers is not None else recipe.reduction.prune_layers))
    if not layers:
        raise InputError(f"reduction.prune_layers: empty; give {option('layers')} (blocks the search may prune after)")
    return layers


def _reference(ev: Evaluator, recipe: Recipe, lm) -> Evaluation:
    """The recipe's own schedule, evaluated."""
    ref_stages = plan(
        recipe.reduction, lm.adapter.n_tokens(lm.image_size), lm.adapter.n_prefix(), lm.adapter.num_layers
    )
    return ev({s.layer: s.n_keep for s in ref_stages})


def _best(ev: Evaluator, max_drop: float) -> Evaluation:
    """The winner: the fewest FLOPs of every feasible schedule evaluated (both passes' ends, the reference)."""
    best = min((e for e in ev.evaluations if e.feasible), key=lambda e: (e.flops, e.drop), default=None)
    if best is None:
        raise InputError(
            f"{option('max_drop')} {max_drop:g}: no schedule evaluated stays within the budget and the recipe's "
            "thresholds; raise the budget"
        )
    return best


def _write_winner(winner: Recipe, lm, tmp: Path) -> tuple[Recipe, Path]:
    """The winner's recipe written into the staged output (a local model by its absolute path: relative model
    paths must still resolve from there); (that recipe, its file)."""
    # the winner's recipe lives next to the outputs; relative model paths must still resolve
    winner_file = tmp / f"{winner.name}.yaml"
    if lm.source_kind == "local":
        winner = winner.model_copy(update={"model": str(lm.path)})
    write_recipe(winner, winner_file, winner.description)
    return winner, winner_file


def _load(recipe: Recipe, base_dir: Path, layers: list[int], step: int | None, metric: str, stages):
    """The recipe's model, once for every evaluation and both conversions; (model, candidate tokens, grid step)
    after checking ``layers`` and ``metric`` against it."""
    with stages.stage("load"):
        lm = load_model(
            recipe.model,
            base_dir,
            recipe.family,
            recipe.task,
            recipe.export.image_size,
            allow_pickle=recipe.allow_pickle,
        )
    nl = lm.adapter.num_layers
    bad = [x for x in layers if not 0 <= x < nl]
    if bad:
        raise InputError(f"{option('layers')}: blocks {bad} out of range; the model has {nl} blocks (0..{nl - 1})")
    n = lm.adapter.n_tokens(lm.image_size) - lm.adapter.n_prefix()
    step = step or max(1, n // 32)
    if metric not in scored_metrics(lm.task):
        raise InputError(f"{option('metric')} {metric}: needs a classification head, but the model is {lm.task}")
    return lm, n, step


def _greedy_passes(
    ev: Evaluator, ref: Evaluation, fo, backend: str, stages, base_dir: Path, layers: list[int], n: int, step: int
) -> tuple[dict, dict | None]:
    """Both greedy passes (deepest layer first, shallowest first): one after the other here, or at once on
    Ray's evaluators (then ``ev.evaluations`` is set to the sequential search's, in its order). Returns
    ({order: layer → count}, the parallel search's counts or None)."""
    passes, parallel = {}, None
    if backend == "ray":
        with stages.stage(f"search: greedy, both passes at once on Ray ({fo.parallel} evaluators)") as advance:

            def log_both(order: str, line: str) -> None:
                stages.log(f"[{order}] {line}")
                advance()

            evaluate_many = fo.evaluators(Evaluator, ev.recipe, str(base_dir), ev.metric, ev.max_drop)
            try:
                passes, paths, counts = greedy_parallel(evaluate_many, layers, n, step, fo.parallel, log_both)
            finally:
                fo.close_evaluators()
        # the sequential search's evaluations, in its order (the winner's tie-break is the same)
        ev.evaluations = [ref, *paths["deepest layer first"], *paths["shallowest layer first"]]
        parallel = {"evaluators": fo.parallel, **counts}
    else:
        for deepest_first in (True, False):
            order = "deepest layer first" if deepest_first else "shallowest layer first"
            with stages.stage(f"search: greedy, {order}") as advance:

                def log(line: str, order=order, advance=advance) -> None:
                    stages.log(f"[{order}] {line}")
                    advance()

                passes[order] = greedy_search(ev, layers, n, step, deepest_first, log)
    return passes, parallel


def _winner_recipe(
    recipe: Recipe, recipe_path: Path, ev: Evaluator, best: Evaluation, max_drop: float, metric: str, layers: list[int]
) -> Recipe:
    """The recipe of the winning schedule, named ``<name>-search``: its reduction, and the budget as the
    metric's ``max_drop`` threshold (the recipe's own, when tighter)."""
    winner_keep = best.keep
    if not winner_keep:
        raise InputError(
            f"{option('max_drop')} {max_drop:g}: even the mildest pruning at blocks {layers} drops {metric} beyond "
            f"the budget (or breaks a recipe threshold); raise the budget or try other {option('layers')}"
        )
    red = ev.config(winner_keep)
    thresholds = dict(recipe.verify.accuracy.metrics)
    t = thresholds.get(metric)
    thresholds[metric] = Threshold(
        min=t.min if t else None, max_drop=min(max_drop, t.max_drop) if t and t.max_drop is not None else max_drop
    )
    verify = recipe.verify.model_copy(
        update={"accuracy": recipe.verify.accuracy.model_copy(update={"metrics": thresholds})}
    )
    name = f"{recipe.name or recipe_path.stem}-search"
    return recipe.model_copy(
        update={
            "name": name,
            "reduction": red,
            "verify": verify,
            "description": (
                f"Found by `tokexport search {recipe_path} --max-drop {max_drop:g} --metric {metric}`: fewest FLOPs with "
                f"{metric} drop <= {max_drop:g} on the recipe's eval set (greedy layer-wise, two passes: search.json)."
            ),
        }
    )


def _convert(fo, backend: str, stages, lm, base_dir: Path, tmp: Path, jobs: list[tuple]) -> tuple:
    """The full pipeline on ``jobs`` = [(what, recipe, label)]: the winner, then (optionally) the reference,
    into ``tmp/<what>``; locally on the loaded model, on Ray as two tasks at once. Returns (the winner's
    report, its exit code, the reference's report or None)."""
    from ..pipeline import run

    if backend == "ray":  # the winner's and the reference's conversions: two Ray tasks at once
        done = _ray_conversions(fo, stages, [(what, r, tmp / what, label) for what, r, label in jobs], base_dir)
        return done[0][0], done[0][1], done[1][0] if len(jobs) > 1 else None
    res = [run(r, base_dir, tmp / what, stages=stages, loaded=lm, label=label) for what, r, label in jobs]
    return res[0].report, res[0].exit_code, res[1].report if len(res) > 1 else None


def _ray_conversions(fo, stages, jobs: list[tuple], base_dir: Path) -> list[tuple[dict, int]]:
    """Full conversions as Ray tasks at once: ``jobs`` = [(what, recipe, run_dir, label)]; each one's
    (report, exit code) in order. A failed one raises what the local backend would (its exit code)."""
    from ..fanout import PointSpec, raise_failed
    from ..tasks.run import model_paths

    specs = []
    for what, r, run_dir, label in jobs:
        local = model_paths(r.model, base_dir)
        specs.append(
            PointSpec(
                what,
                r,
                str(base_dir),
                str(Path(run_dir).absolute()),
                label,
                fo.threads(),
                str(local[0]) if local else None,
            )
        )
    with stages.stage(f"convert on Ray: {', '.join(j[0] for j in jobs)}"):
        records = fo.convert(specs)
    out = []
    for spec, rec in zip(specs, records):
        raise_failed(rec, spec.key)
        out.append((read_json(Path(spec.run_dir) / "report.json", "report"), rec["exit_code"]))
    return out


def _measured(report: dict | None, metric: str) -> dict | None:
    if report is None:
        return None
    m = report["accuracy"]["metrics"][metric]
    bench = report.get("bench") or {}
    return {
        "drop": m["original"] - m["reduced"],
        "reduced": m["reduced"],
        "original": m["original"],
        "speedups": {b: v["speedup"] for b, v in (bench.get("batches") or {}).items()},
        "flops_ratio": bench["flops"]["reduced"] / bench["flops"]["baseline"] if bench.get("flops") else None,
        "parity_passed": report["parity"]["passed"],
        "passed": report["passed"],
    }


def _splits(ev: Evaluator, win_report: dict | None) -> dict:
    """Which data chose the schedule and which judged it (disjoint crop streams of the same photographs)."""
    acc = (win_report or {}).get("accuracy") or {}
    seed = ev.recipe.verify.accuracy.seed
    return {
        "search": {
            "samples": len(ev.iset.eval_y),
            "classes": ev.iset.n_classes,
            "crops": f"default_rng([{seed}, {SEARCH_STREAM}])",
            "role": "every candidate schedule was evaluated and the winner chosen on it (PyTorch)",
        },
        "held_out": {
            "samples": acc.get("samples"),
            "classes": acc.get("classes"),
            "crops": f"default_rng([{seed}, 0]) (the convert's eval split)",
            "role": "the verdict: winner/ (and reference/) converted, model.onnx on these crops",
        },
        "prototypes": {
            "samples": len(ev.iset.proto_y),
            "crops": f"default_rng([{seed}, 1])",
            "role": "class prototypes (original model), shared by both",
        },
    }


def _held_out(
    metric: str, max_drop: float, best: Evaluation, ref: Evaluation, win_report: dict | None, ref_report: dict | None
) -> dict:
    """The winner's (and the reference's) drop on the search split vs on the held-out split: how much it moved."""
    out = {}
    for name, ev, report in (("winner", best, win_report), ("reference", ref, ref_report)):
        m = _measured(report, metric)
        if m is None:
            continue
        out[name] = {
            "searched_drop": ev.drop,
            "held_out_drop": m["drop"],
            "moved": m["drop"] - ev.drop,
            "searched_reduced": ev.metrics[metric]["reduced"],
            "held_out_reduced": m["reduced"],
            "within_budget_on_held_out": m["drop"] <= max_drop + 1e-12,
            "held_out_passed": m["passed"],
        }
    return out


def _summary(
    recipe,
    label,
    metric,
    max_drop,
    layers,
    step,
    ev: Evaluator,
    ref: Evaluation,
    best: Evaluation,
    seconds,
    win_report,
    ref_report,
    passes,
) -> dict:
    passes = {order: {"prune_layers": sorted(k), "keep": [k[x] for x in sorted(k)]} for order, k in passes.items()}
    faster = best.flops < ref.flops
    within = best.drop <= ref.drop + 1e-12
    if faster and within:
        verdict = (
            f"the searched schedule needs {best.flops_ratio:.3f}× the original FLOPs vs "
            f"{ref.flops_ratio:.3f}× "
            f"for the recipe's schedule, at a {metric} drop of {best.drop:+.4f} vs {ref.drop:+.4f}"
        )
    elif faster:
        verdict = (
            f"fewer FLOPs ({best.flops_ratio:.3f}× vs {ref.flops_ratio:.3f}×) but a larger {metric} drop "
            f"({best.drop:+.4f} vs {ref.drop:+.4f}), within the budget {max_drop:g}; a budget at or below "
            f"{ref.drop:.4f} compares at equal drop"
        )
    else:
        verdict = (
            f"no schedule evaluated over blocks {layers} within the budget {max_drop:g} needs fewer FLOPs than "
            f"the recipe's ({ref.flops_ratio:.3f}×, drop {ref.drop:+.4f}); the greedy passes stopped at "
            + "; ".join(f"{o}: keep {v['keep']}" for o, v in passes.items())
        )
    held = _held_out(metric, max_drop, best, ref, win_report, ref_report)
    if "winner" in held:
        w = held["winner"]
        verdict += (
            f". Chosen on the search split ({len(ev.iset.eval_y)} crops); on the held-out split the winner's "
            f"{metric} drop is {w['held_out_drop']:+.4f} (searched {w['searched_drop']:+.4f}, moved "
            f"{w['moved']:+.4f}), {'within' if w['within_budget_on_held_out'] else 'OVER'} the budget"
        )
    return {
        "schema_version": 1,
        "kind": "search",
        "tokexport_version": __version__,
        "created_unix": int(time.time()),
        "recipe_path": label,
        "metric": metric,
        "max_drop": max_drop,
        "layers": layers,
        "step_tokens": step,
        "method": recipe.reduction.method,
        "eval": {
            "classes": ev.iset.n_classes,
            "samples": len(ev.iset.eval_y),
            "split": "search",
            "evaluated_in": "PyTorch (reduce.patch), original-model prototypes, as in pipeline",
        },
        "splits": _splits(ev, win_report),
        "held_out": held,
        "search_seconds": seconds,
        "evaluations": len(ev.evaluations),
        "passes": passes,
        "reference": ref.as_dict(),
        "winner": best.as_dict(),
        "faster_than_reference": faster,
        "drop_not_larger_than_reference": within,
        "verdict": verdict,
        "measured": {"winner": _measured(win_report, metric), "reference": _measured(ref_report, metric)},
        "trace": [e.as_dict() for e in ev.evaluations],
    }
