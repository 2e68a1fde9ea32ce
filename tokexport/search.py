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
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from . import __version__
from . import verify as V
from .data import Preprocess, instance_recognition_set, natural_images
from .errors import InputError
from .flops import encoder_flops
from .load import LoadedModel, load_model
from .outdir import check_out_dir, claim_out_dir, staged_dir
from .recipe import Recipe, Threshold, load_recipe
from .reduce import METHODS
from .reduce.patch import reduced
from .reduce.schedule import Stage, plan
from .runners import TorchRunner, run_batched


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
        raise InputError(f"--max-drop: {text!r} is not a number; e.g. 0.02 or 2pp") from None
    if v < 0:
        raise InputError(f"--max-drop: {text} is negative; the budget is how much the metric may drop")
    return v


@dataclass
class Evaluation:
    """One schedule evaluated in PyTorch."""

    keep: dict[int, int]  # layer -> non-prefix tokens kept (only effective stages)
    tokens_out: list[int]
    flops: float
    flops_ratio: float
    metrics: dict[str, dict]
    drop: float
    feasible: bool

    def as_dict(self) -> dict:
        return {"prune_layers": list(self.keep), "keep": list(self.keep.values()), "tokens_out": self.tokens_out,
                "flops": self.flops, "flops_ratio": self.flops_ratio, "drop": self.drop, "feasible": self.feasible,
                "metrics": {k: {"original": v["original"], "reduced": v["reduced"]} for k, v in self.metrics.items()}}


class Evaluator:
    """Scores schedules on the recipe's eval set with the loaded PyTorch model (original outputs cached)."""

    def __init__(self, recipe: Recipe, lm: LoadedModel, metric: str, max_drop: float):
        self.recipe, self.lm, self.metric, self.max_drop = recipe, lm, metric, max_drop
        ad = lm.adapter
        self.n_tokens, self.n_prefix = ad.n_tokens(lm.image_size), ad.n_prefix()
        acc = recipe.verify.accuracy
        pre = Preprocess(lm.image_size, lm.mean, lm.std)
        self.iset = instance_recognition_set(natural_images(include_optional=False), pre, acc.samples_per_class,
                                             acc.prototypes_per_class, tuple(acc.crop_scale), acc.seed)
        kwargs = ad.forward_kwargs(lm.image_size)
        self.forward = lambda x: ad.outputs(lm.model, lm.model(pixel_values=x, **kwargs))
        orig = TorchRunner(self.forward)
        self.orig_eval = run_batched(orig, self.iset.eval_x)
        self.feat = ad.feature_output(list(self.orig_eval))
        self.orig_proto = run_batched(orig, self.iset.proto_x)[self.feat]
        self.thresholds = dict(acc.metrics)
        base = self.flops([], None)
        self.base_flops = base
        self.evaluations: list[Evaluation] = []

    def config(self, keep: dict[int, int]):
        """The recipe's reduction with ``keep`` (layer -> count) as its schedule."""
        red = self.recipe.reduction
        layers = sorted(keep)
        fields = red.model_dump(mode="json", exclude_none=True)
        fields.update(prune_layers=layers, keep=[keep[layer] for layer in layers])
        fields.pop("keep_rate", None)
        if isinstance(fields.get("iterations"), list):
            by_layer = dict(zip(red.prune_layers, red.iterations))
            missing = [layer for layer in layers if layer not in by_layer]
            if missing:
                raise InputError(f"reduction.iterations: one value per recipe prune layer, but the search prunes after "
                                 f"blocks {missing} too; use an int or null (the paper's rule by depth) to search")
            fields["iterations"] = [by_layer[layer] for layer in layers]
        return type(red).model_validate(fields)

    def flops(self, stages: list[Stage], method) -> float:
        ad = self.lm.adapter
        if not stages:
            return encoder_flops(ad.dims(), self.n_tokens, self.n_prefix, [], ad.head_macs(self.lm.model))["flops"]
        by_layer = method.describe().get("iterations_by_layer") or {}
        iters = [int(by_layer.get(s.layer, 0)) for s in stages] if by_layer else None
        return encoder_flops(ad.dims(), self.n_tokens, self.n_prefix, stages, ad.head_macs(self.lm.model),
                             method.needs_attention, iters)["flops"]

    def __call__(self, keep: dict[int, int]) -> Evaluation:
        n = self.n_tokens - self.n_prefix
        effective, current = {}, n
        for layer in sorted(keep):  # a stage keeping every token entering it is no stage
            if keep[layer] < current:
                effective[layer] = current = keep[layer]
        cfg = self.config(effective)
        method = METHODS[cfg.method](cfg)
        stages = plan(cfg, self.n_tokens, self.n_prefix, self.lm.adapter.num_layers)

        def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
            with reduced(self.lm.model, self.lm.adapter, stages, method):
                return self.forward(x)

        red = run_batched(TorchRunner(fn), self.iset.eval_x)
        metrics = V.feature_metrics(self.orig_eval[self.feat], red[self.feat], self.orig_proto, self.iset.eval_y,
                                    self.iset.proto_y, self.iset.n_classes, self.thresholds)
        if self.lm.task == "image-classification":
            metrics |= V.classifier_metrics(self.orig_eval["logits"], red["logits"], self.thresholds)
        if self.metric not in metrics:
            raise InputError(f"--metric {self.metric}: not measured in the search (measured: {', '.join(metrics)})")
        md = {k: v.as_dict() for k, v in metrics.items()}
        drop = md[self.metric]["original"] - md[self.metric]["reduced"]
        feasible = drop <= self.max_drop + 1e-12 and all(m["passed"] is not False for m in md.values())
        fl = self.flops(stages, method)
        ev = Evaluation(effective, [s.tokens_out for s in stages], fl, fl / self.base_flops, md, drop, feasible)
        self.evaluations.append(ev)
        return ev


def greedy_search(evaluate: Callable[[dict[int, int]], Evaluation], layers: list[int], n_candidates: int,
                  step: int, deepest_first: bool = True, log: Callable[[str], None] = lambda s: None) -> dict[int, int]:
    """One greedy pass over ``layers``: for each, the fewest tokens that keep the schedule feasible (binary
    search on a grid of ``step`` tokens, assuming fewer tokens never helps accuracy). Counts already fixed
    deeper are the floor and those fixed shallower the ceiling (non-increasing with depth); keeping the
    ceiling is a no-op stage, so the schedule so far (feasible) bounds every search. Returns layer -> count."""
    keep: dict[int, int] = {}
    for layer in sorted(layers, reverse=deepest_first):
        floor = max([keep[x] for x in keep if x > layer], default=1)
        ceiling = min([keep[x] for x in keep if x < layer], default=n_candidates)
        grid = sorted({*range(floor, ceiling, step), ceiling})
        lo, hi = 0, len(grid) - 1  # grid[hi] adds no pruning: feasible
        while lo < hi:
            mid = (lo + hi) // 2
            ev = evaluate({**keep, layer: grid[mid]})
            log(f"block {layer}: keep {grid[mid]} → drop {ev.drop:+.4f}, FLOPs ×{ev.flops_ratio:.3f}"
                f" {'ok' if ev.feasible else 'over budget'}")
            if ev.feasible:
                hi = mid
            else:
                lo = mid + 1
        keep[layer] = grid[hi]
    return keep


def _write_recipe(recipe: Recipe, path: Path, comment: str) -> None:
    data = recipe.model_dump(mode="json", exclude_none=True)
    path.write_text("".join(f"# {line}\n" for line in comment.splitlines())
                    + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def search(recipe_path: str | Path, max_drop: float, metric: str, out: str | Path | None = None,
           layers: list[int] | None = None, step: int | None = None, reference: bool = True, force: bool = False,
           stages=None) -> tuple[dict, Path]:
    """Run the search and the pipeline on the winner; write ``search.json``, ``<name>-search.yaml``,
    ``winner/`` (and ``reference/``) under ``out``. Returns (summary, output directory)."""
    from .pipeline import Stages, run

    stages = stages or Stages()
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    base_dir = recipe_path.resolve().parent
    out_dir = Path(out) if out is not None else Path("out") / f"{recipe_path.stem}-search"
    if recipe.task == "visual-tokens":
        raise InputError(f"{recipe_path}: task visual-tokens keeps a fixed K after one layer; search explores "
                         "layer-wise ViT pruning schedules (use `tokexport sweep` for K)")
    from .pipeline import model_paths

    protect = (recipe_path, base_dir, *model_paths(recipe.model, base_dir))
    check_out_dir(out_dir, force, protect=protect)
    if metric not in ("feature_cosine", "instance_top1", "top1_agreement"):
        raise InputError(f"--metric {metric}: the search measures feature_cosine, instance_top1 (and top1_agreement "
                         "for classifiers)")
    layers = sorted(set(layers if layers is not None else recipe.reduction.prune_layers))
    if not layers:
        raise InputError("reduction.prune_layers: empty; give --layers (blocks the search may prune after)")
    with claim_out_dir(out_dir, force, kind="search", protect=protect):
        with stages.stage("load"):
            lm = load_model(recipe.model, base_dir, recipe.family, recipe.task, recipe.export.image_size)
        nl = lm.adapter.num_layers
        bad = [x for x in layers if not 0 <= x < nl]
        if bad:
            raise InputError(f"--layers: blocks {bad} out of range; the model has {nl} blocks (0..{nl - 1})")
        n = lm.adapter.n_tokens(lm.image_size) - lm.adapter.n_prefix()
        step = step or max(1, n // 32)
        if metric == "top1_agreement" and lm.task != "image-classification":
            raise InputError(f"--metric {metric}: needs a classification head, but the model is {lm.task}")
        with stages.stage("search: original outputs"):
            ev = Evaluator(recipe, lm, metric, max_drop)
        t0 = time.time()
        with stages.stage("search: reference schedule"):
            ref_stages = plan(recipe.reduction, lm.adapter.n_tokens(lm.image_size), lm.adapter.n_prefix(), nl)
            ref = ev({s.layer: s.n_keep for s in ref_stages})
        passes = {}
        for deepest_first in (True, False):
            order = "deepest layer first" if deepest_first else "shallowest layer first"
            with stages.stage(f"search: greedy, {order}") as advance:
                def log(line: str, order=order, advance=advance) -> None:
                    stages.log(f"[{order}] {line}")
                    advance()

                passes[order] = greedy_search(ev, layers, n, step, deepest_first, log)
        # the winner: the fewest FLOPs of every feasible schedule evaluated (both passes' ends, the reference)
        best = min((e for e in ev.evaluations if e.feasible), key=lambda e: (e.flops, e.drop), default=None)
        seconds = time.time() - t0
        if best is None:
            raise InputError(f"--max-drop {max_drop:g}: no schedule evaluated stays within the budget and the recipe's "
                             "thresholds; raise the budget")

        winner_keep = best.keep
        if not winner_keep:
            raise InputError(f"--max-drop {max_drop:g}: even the mildest pruning at blocks {layers} drops {metric} beyond "
                             "the budget (or breaks a recipe threshold); raise the budget or try other --layers")
        red = ev.config(winner_keep)
        thresholds = dict(recipe.verify.accuracy.metrics)
        t = thresholds.get(metric)
        thresholds[metric] = Threshold(min=t.min if t else None,
                                       max_drop=min(max_drop, t.max_drop) if t and t.max_drop is not None else max_drop)
        verify = recipe.verify.model_copy(update={"accuracy": recipe.verify.accuracy.model_copy(
            update={"metrics": thresholds})})
        name = f"{recipe.name or recipe_path.stem}-search"
        winner = recipe.model_copy(update={"name": name, "reduction": red, "verify": verify, "description": (
            f"Found by `tokexport search {recipe_path} --max-drop {max_drop:g} --metric {metric}`: fewest FLOPs with "
            f"{metric} drop <= {max_drop:g} on the recipe's eval set (greedy layer-wise, two passes: search.json).")})

        with staged_dir(out_dir) as tmp:
            # the winner's recipe lives next to the outputs; relative model paths must still resolve
            winner_file = tmp / f"{name}.yaml"
            if lm.source_kind == "local":
                winner = winner.model_copy(update={"model": str(lm.path)})
            _write_recipe(winner, winner_file, winner.description)
            res = run(winner, base_dir, tmp / "winner", stages=stages, loaded=lm, label=str(out_dir / winner_file.name))
            ref_res = run(recipe, base_dir, tmp / "reference", stages=stages, loaded=lm, label=str(recipe_path)) \
                if reference else None
            summary = _summary(recipe, str(recipe_path), metric, max_drop, layers, step, ev, ref, best, seconds,
                               res.report, ref_res.report if ref_res else None, passes)
            summary["winner_recipe"] = winner_file.name
            summary["winner_exit_code"] = res.exit_code
            (tmp / "search.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary, out_dir


def _measured(report: dict | None, metric: str) -> dict | None:
    if report is None:
        return None
    m = report["accuracy"]["metrics"][metric]
    bench = report.get("bench") or {}
    return {"drop": m["original"] - m["reduced"], "reduced": m["reduced"], "original": m["original"],
            "speedups": {b: v["speedup"] for b, v in (bench.get("batches") or {}).items()},
            "flops_ratio": bench["flops"]["reduced"] / bench["flops"]["baseline"] if bench.get("flops") else None,
            "parity_passed": report["parity"]["passed"], "passed": report["passed"]}


def _summary(recipe, label, metric, max_drop, layers, step, ev: Evaluator, ref: Evaluation, best: Evaluation,
             seconds, win_report, ref_report, passes) -> dict:
    passes = {order: {"prune_layers": sorted(k), "keep": [k[x] for x in sorted(k)]} for order, k in passes.items()}
    faster = best.flops < ref.flops
    within = best.drop <= ref.drop + 1e-12
    if faster and within:
        verdict = (f"the searched schedule needs {best.flops_ratio:.3f}× the original FLOPs vs "
                   f"{ref.flops_ratio:.3f}× "
                   f"for the recipe's schedule, at a {metric} drop of {best.drop:+.4f} vs {ref.drop:+.4f}")
    elif faster:
        verdict = (f"fewer FLOPs ({best.flops_ratio:.3f}× vs {ref.flops_ratio:.3f}×) but a larger {metric} drop "
                   f"({best.drop:+.4f} vs {ref.drop:+.4f}), within the budget {max_drop:g}; a budget at or below "
                   f"{ref.drop:.4f} compares at equal drop")
    else:
        verdict = (f"no schedule evaluated over blocks {layers} within the budget {max_drop:g} needs fewer FLOPs than "
                   f"the recipe's ({ref.flops_ratio:.3f}×, drop {ref.drop:+.4f}); the greedy passes stopped at "
                   + "; ".join(f"{o}: keep {v['keep']}" for o, v in passes.items()))
    return {
        "schema_version": 1, "kind": "search", "tokexport_version": __version__, "created_unix": int(time.time()),
        "recipe_path": label, "metric": metric, "max_drop": max_drop, "layers": layers, "step_tokens": step,
        "method": recipe.reduction.method,
        "eval": {"classes": ev.iset.n_classes, "samples": len(ev.iset.eval_y),
                 "evaluated_in": "PyTorch (reduce.patch), original-model prototypes, as in pipeline"},
        "search_seconds": seconds, "evaluations": len(ev.evaluations),
        "passes": passes,
        "reference": ref.as_dict(), "winner": best.as_dict(), "faster_than_reference": faster,
        "drop_not_larger_than_reference": within, "verdict": verdict,
        "measured": {"winner": _measured(win_report, metric), "reference": _measured(ref_report, metric)},
        "trace": [e.as_dict() for e in ev.evaluations],
    }
