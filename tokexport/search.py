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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from . import __version__
from . import verify as V
from .data import SEARCH_STREAM, Preprocess, instance_recognition_set, natural_images
from .errors import InputError
from .files import read_json
from .flops import encoder_flops
from .load import LoadedModel, load_model
from .outdir import check_out_dir, claim_out_dir, staged_dir
from .recipe import Recipe, Threshold, load_recipe
from .reduce import METHODS
from .reduce.patch import reduced
from .reduce.schedule import Stage, plan
from .stages import metric as MC
from .stages.runners import TorchRunner, run_rows


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
    """Scores schedules with the loaded PyTorch model (original outputs cached) on the SEARCH split: crops
    of the recipe's photographs from their own stream (``data.SEARCH_STREAM``), disjoint from the eval crops
    the verdict (the winner's conversion) is judged on."""

    def __init__(self, recipe: Recipe, lm: LoadedModel, metric: str, max_drop: float):
        self.recipe, self.lm, self.metric, self.max_drop = recipe, lm, metric, max_drop
        ad = lm.adapter
        self.n_tokens, self.n_prefix = ad.n_tokens(lm.image_size), ad.n_prefix()
        acc = recipe.verify.accuracy
        pre = Preprocess(lm.image_size, lm.mean, lm.std)
        self.iset = instance_recognition_set(natural_images(include_optional=False, include_dependencies=True), pre,
                                             acc.samples_per_class, acc.prototypes_per_class, tuple(acc.crop_scale),
                                             acc.seed, eval_stream=SEARCH_STREAM)
        kwargs = ad.forward_kwargs(lm.image_size)
        self.forward = lambda x: ad.outputs(lm.model, lm.model(pixel_values=x, **kwargs))
        orig = TorchRunner(self.forward)
        self.orig_eval = run_rows(orig, {"pixel_values": self.iset.eval_x})
        self.feat = ad.feature_output(list(self.orig_eval))
        self.orig_proto = run_rows(orig, {"pixel_values": self.iset.proto_x})[self.feat]
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

        red = run_rows(TorchRunner(fn), {"pixel_values": self.iset.eval_x})
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


class Bisection:
    """The binary search for the smallest feasible index in ``[lo, hi]`` (``hi`` feasible), one evaluation per
    step, at most ``max_n`` steps. Its state is small, so the steps it may take next can be listed ahead
    (:meth:`frontier`) and evaluated in parallel: replaying the search over those results takes exactly
    the path the sequential search takes, so both pick the same index."""

    def __init__(self, lo: int, hi: int, max_n: int | None = None):
        self.lo, self.hi, self.n, self.max_n = lo, hi, 0, max_n

    @property
    def done(self) -> bool:
        return not (self.lo < self.hi and (self.max_n is None or self.n < self.max_n))

    def next(self) -> int:
        return (self.lo + self.hi) // 2

    def step(self, feasible: bool) -> None:
        mid = self.next()
        self.n += 1
        if feasible:
            self.hi = mid
        else:
            self.lo = mid + 1

    def frontier(self, width: int) -> list[int]:
        """Up to ``width`` indices the search may evaluate next, breadth-first over its decision tree (the
        next step first): what to evaluate in parallel in one round."""
        out, queue = [], [(self.lo, self.hi, self.n)]
        while queue and len(out) < width:
            lo, hi, n = queue.pop(0)
            if not lo < hi or (self.max_n is not None and n >= self.max_n):
                continue
            mid = (lo + hi) // 2
            if mid not in out:
                out.append(mid)
            queue += [(lo, mid, n + 1), (mid + 1, hi, n + 1)]
        return out


class GreedyPass:
    """One greedy pass over ``layers`` as a state machine: for each layer, the fewest tokens that keep the
    schedule feasible (:class:`Bisection` on a grid of ``step`` tokens, assuming fewer tokens never helps
    accuracy). Counts already fixed deeper are the floor and those fixed shallower the ceiling
    (non-increasing with depth); keeping the ceiling is a no-op stage, so the schedule so far (feasible)
    bounds every search."""

    def __init__(self, layers: list[int], n_candidates: int, step: int, deepest_first: bool = True):
        self.order = sorted(layers, reverse=deepest_first)
        self.n_candidates, self.step_tokens = n_candidates, step
        self.keep: dict[int, int] = {}
        self._i = -1
        self.layer: int | None = None
        self._next_layer()

    def _next_layer(self) -> None:
        self._i += 1
        while self._i < len(self.order):
            layer = self.order[self._i]
            floor = max([self.keep[x] for x in self.keep if x > layer], default=1)
            ceiling = min([self.keep[x] for x in self.keep if x < layer], default=self.n_candidates)
            self.layer, self.grid = layer, sorted({*range(floor, ceiling, self.step_tokens), ceiling})
            self.bisection = Bisection(0, len(self.grid) - 1)  # grid[hi] adds no pruning: feasible
            if not self.bisection.done:
                return
            self.keep[layer] = self.grid[self.bisection.hi]
            self._i += 1
        self.layer = None

    @property
    def done(self) -> bool:
        return self.layer is None

    def _candidate(self, i: int) -> dict[int, int]:
        return {**self.keep, self.layer: self.grid[i]}

    def request(self) -> dict[int, int]:
        """The schedule the sequential search evaluates next."""
        return self._candidate(self.bisection.next())

    def frontier(self, width: int) -> list[dict[int, int]]:
        return [self._candidate(i) for i in self.bisection.frontier(width)]

    def feed(self, ev: Evaluation, log: Callable[[str], None] = lambda s: None) -> None:
        """The evaluation of :meth:`request`'s schedule."""
        log(f"block {self.layer}: keep {self.grid[self.bisection.next()]} → drop {ev.drop:+.4f}, FLOPs "
            f"×{ev.flops_ratio:.3f} {'ok' if ev.feasible else 'over budget'}")
        self.bisection.step(ev.feasible)
        if self.bisection.done:
            self.keep[self.layer] = self.grid[self.bisection.hi]
            self._next_layer()


def greedy_search(evaluate: Callable[[dict[int, int]], Evaluation], layers: list[int], n_candidates: int,
                  step: int, deepest_first: bool = True, log: Callable[[str], None] = lambda s: None) -> dict[int, int]:
    """One greedy pass (:class:`GreedyPass`), evaluated sequentially. Returns layer -> count."""
    p = GreedyPass(layers, n_candidates, step, deepest_first)
    while not p.done:
        p.feed(evaluate(p.request()), log)
    return p.keep


def _key(keep: dict[int, int]) -> tuple:
    return tuple(sorted(keep.items()))


def greedy_parallel(evaluate_many: Callable[[list[dict[int, int]]], list[Evaluation]], layers: list[int],
                    n_candidates: int, step: int, width: int,
                    log: Callable[[str, str], None] = lambda order, s: None) -> tuple[dict, dict, int]:
    """Both greedy passes (deepest layer first, shallowest first) at once, in rounds: each round evaluates,
    in parallel (``evaluate_many``), the next schedule of every unfinished pass plus, up to ``width`` in
    all, the schedules its binary search may need after that; then each pass replays its sequential steps
    over the results. Every pass takes the sequential path, so it ends where :func:`greedy_search` ends.
    Returns ({order: keep}, {order: [Evaluation on its path, in order]}, {evaluations_run, speculative})."""
    orders = {"deepest layer first": True, "shallowest layer first": False}
    passes = {o: GreedyPass(layers, n_candidates, step, d) for o, d in orders.items()}
    paths: dict[str, list[Evaluation]] = {o: [] for o in orders}
    cache: dict[tuple, Evaluation] = {}
    used: set[tuple] = set()
    rounds = 0
    while not all(p.done for p in passes.values()):
        active = [o for o, p in passes.items() if not p.done]
        share = max(1, width // len(active))
        wanted: dict[tuple, dict] = {}
        for o in active:
            for c in passes[o].frontier(share):
                if _key(c) not in cache:
                    wanted.setdefault(_key(c), c)
        if wanted:
            rounds += 1
            for k, e in zip(wanted, evaluate_many(list(wanted.values()))):
                cache[k] = e
        for o in active:
            p = passes[o]
            while not p.done and _key(p.request()) in cache:
                e = cache[_key(p.request())]
                used.add(_key(p.request()))
                paths[o].append(e)
                p.feed(e, lambda line, o=o: log(o, line))
    return ({o: p.keep for o, p in passes.items()}, paths,
            {"evaluations_run": len(cache), "speculative": len(cache) - len(used), "rounds": rounds})


def _write_recipe(recipe: Recipe, path: Path, comment: str) -> None:
    data = recipe.model_dump(mode="json", exclude_none=True)
    path.write_text("".join(f"# {line}\n" for line in comment.splitlines())
                    + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


DEFAULT_MAX_EVALS = 12  # visual / vocab: conversions per search, the recipe's own value included


def search(recipe_path: str | Path, max_drop: float, metric: str | None, out: str | Path | None = None,
           layers: list[int] | None = None, step: int | None = None, reference: bool = True, force: bool = False,
           stages=None, max_evals: int | None = None, *, backend: str = "local", address: str | None = None,
           cpus_per_job: int | None = None) -> tuple[dict, Path]:
    """Run the search and the pipeline on the winner; write ``search.json``, ``<name>-search.yaml``,
    ``winner/`` (and ``reference/``) under ``out``. Returns (summary, output directory).

    ViT recipes: the greedy layer-wise schedule search (``layers``, ``step`` tokens). Visual-token recipes:
    the smallest K; vocab recipes: the smallest ``trim.target_vocab_size`` (``step``: grid step of the
    value; ``max_evals``: conversions at most, default 12). ``metric`` None: the task's default.
    ``backend`` ray (:mod:`tokexport.fanout`): the candidates of one round are evaluated in parallel (ViT: both
    greedy passes at once, on evaluator actors; visual / vocab: the bisection's next steps as conversion
    tasks) and every conversion is one Ray task; the search takes the local backend's path and pick."""
    from .fanout import Fanout, check_backend
    from .pipeline import Stages, run
    from .sweep import check_metric
    from .tasks.axes import axis_for

    check_backend(backend, 1, cpus_per_job)

    stages = stages or Stages()
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    base_dir = recipe_path.resolve().parent
    out_dir = Path(os.path.expanduser(out)) if out is not None else Path("out") / f"{recipe_path.stem}-search"
    axis = axis_for(recipe)
    if axis.search_knob is not None:
        if layers is not None:
            raise InputError(f"--layers: {recipe_path} is task {recipe.task}: the search varies {axis.search_knob}, "
                             "not a layer-wise schedule")
        if max_evals is not None and max_evals < 2:
            raise InputError(f"--max-evals: {max_evals}; give 2 or more (the recipe's own value is the first)")
        metric = check_metric(recipe, base_dir, metric, "the search")
        from .tasks.run import model_paths

        check_out_dir(out_dir, force, protect=(recipe_path, base_dir, *model_paths(recipe.model, base_dir)))
        with Fanout(backend, address, cpus_per_job) as fo:
            return search_knob(recipe_path, recipe, max_drop, metric, out_dir, step, reference, force, stages,
                               max_evals or DEFAULT_MAX_EVALS, fo=fo if backend == "ray" else None)
    if max_evals is not None:
        raise InputError("--max-evals: only for visual-token and vocab-trim searches; the ViT schedule search is "
                         "bounded by --step and --layers")
    metric = metric or "instance_top1"
    from .tasks.run import model_paths

    protect = (recipe_path, base_dir, *model_paths(recipe.model, base_dir))
    check_out_dir(out_dir, force, protect=protect)
    if metric not in ("feature_cosine", "instance_top1", "top1_agreement"):
        raise InputError(f"--metric {metric}: the search measures feature_cosine, instance_top1 (and top1_agreement "
                         "for classifiers)")
    layers = sorted(set(layers if layers is not None else recipe.reduction.prune_layers))
    if not layers:
        raise InputError("reduction.prune_layers: empty; give --layers (blocks the search may prune after)")
    fo = Fanout(backend, address, cpus_per_job)
    with fo, claim_out_dir(out_dir, force, kind="search", protect=protect):
        with stages.stage("load"):
            lm = load_model(recipe.model, base_dir, recipe.family, recipe.task, recipe.export.image_size,
                            allow_pickle=recipe.allow_pickle)
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
        passes, parallel = {}, None
        if backend == "ray":
            with stages.stage(f"search: greedy, both passes at once on Ray ({fo.parallel} evaluators)") as advance:
                def log_both(order: str, line: str) -> None:
                    stages.log(f"[{order}] {line}")
                    advance()

                evaluate_many = fo.evaluators(Evaluator, recipe, str(base_dir), metric, max_drop)
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
            if backend == "ray":  # the winner's and the reference's conversions: two Ray tasks at once
                done = _ray_conversions(
                    fo, stages, [("winner", winner, tmp / "winner", str(out_dir / winner_file.name))]
                    + ([("reference", recipe, tmp / "reference", str(recipe_path))] if reference else []), base_dir)
                win_report, win_code = done[0]
                ref_report = done[1][0] if reference else None
            else:
                res = run(winner, base_dir, tmp / "winner", stages=stages, loaded=lm,
                          label=str(out_dir / winner_file.name))
                ref_res = run(recipe, base_dir, tmp / "reference", stages=stages, loaded=lm, label=str(recipe_path)) \
                    if reference else None
                win_report, win_code = res.report, res.exit_code
                ref_report = ref_res.report if ref_res else None
            summary = _summary(recipe, str(recipe_path), metric, max_drop, layers, step, ev, ref, best, seconds,
                               win_report, ref_report, passes)
            summary["winner_recipe"] = winner_file.name
            summary["winner_exit_code"] = win_code
            summary["backend"] = {**fo.describe(), **({"parallel_search": parallel} if parallel else {})}
            (tmp / "search.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary, out_dir


def _ray_conversions(fo, stages, jobs: list[tuple], base_dir: Path) -> list[tuple[dict, int]]:
    """Full conversions as Ray tasks at once: ``jobs`` = [(what, recipe, run_dir, label)]; each one's
    (report, exit code) in order. A failed one raises what the local backend would (its exit code)."""
    from .fanout import PointSpec, raise_failed
    from .tasks.run import model_paths

    specs = []
    for what, r, run_dir, label in jobs:
        local = model_paths(r.model, base_dir)
        specs.append(PointSpec(what, r, str(base_dir), str(Path(run_dir).absolute()), label, fo.threads(),
                               str(local[0]) if local else None))
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
    return {"drop": m["original"] - m["reduced"], "reduced": m["reduced"], "original": m["original"],
            "speedups": {b: v["speedup"] for b, v in (bench.get("batches") or {}).items()},
            "flops_ratio": bench["flops"]["reduced"] / bench["flops"]["baseline"] if bench.get("flops") else None,
            "parity_passed": report["parity"]["passed"], "passed": report["passed"]}


def _splits(ev: Evaluator, win_report: dict | None) -> dict:
    """Which data chose the schedule and which judged it (disjoint crop streams of the same photographs)."""
    acc = (win_report or {}).get("accuracy") or {}
    seed = ev.recipe.verify.accuracy.seed
    return {"search": {"samples": len(ev.iset.eval_y), "classes": ev.iset.n_classes,
                       "crops": f"default_rng([{seed}, {SEARCH_STREAM}])",
                       "role": "every candidate schedule was evaluated and the winner chosen on it (PyTorch)"},
            "held_out": {"samples": acc.get("samples"), "classes": acc.get("classes"),
                         "crops": f"default_rng([{seed}, 0]) (the convert's eval split)",
                         "role": "the verdict: winner/ (and reference/) converted, model.onnx on these crops"},
            "prototypes": {"samples": len(ev.iset.proto_y), "crops": f"default_rng([{seed}, 1])",
                           "role": "class prototypes (original model), shared by both"}}


def _held_out(metric: str, max_drop: float, best: Evaluation, ref: Evaluation, win_report: dict | None,
              ref_report: dict | None) -> dict:
    """The winner's (and the reference's) drop on the search split vs on the held-out split: how much it moved."""
    out = {}
    for name, ev, report in (("winner", best, win_report), ("reference", ref, ref_report)):
        m = _measured(report, metric)
        if m is None:
            continue
        out[name] = {"searched_drop": ev.drop, "held_out_drop": m["drop"], "moved": m["drop"] - ev.drop,
                     "searched_reduced": ev.metrics[metric]["reduced"], "held_out_reduced": m["reduced"],
                     "within_budget_on_held_out": m["drop"] <= max_drop + 1e-12, "held_out_passed": m["passed"]}
    return out


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
    held = _held_out(metric, max_drop, best, ref, win_report, ref_report)
    if "winner" in held:
        w = held["winner"]
        verdict += (f". Chosen on the search split ({len(ev.iset.eval_y)} crops); on the held-out split the winner's "
                    f"{metric} drop is {w['held_out_drop']:+.4f} (searched {w['searched_drop']:+.4f}, moved "
                    f"{w['moved']:+.4f}), {'within' if w['within_budget_on_held_out'] else 'OVER'} the budget")
    return {
        "schema_version": 1, "kind": "search", "tokexport_version": __version__, "created_unix": int(time.time()),
        "recipe_path": label, "metric": metric, "max_drop": max_drop, "layers": layers, "step_tokens": step,
        "method": recipe.reduction.method,
        "eval": {"classes": ev.iset.n_classes, "samples": len(ev.iset.eval_y), "split": "search",
                 "evaluated_in": "PyTorch (reduce.patch), original-model prototypes, as in pipeline"},
        "splits": _splits(ev, win_report),
        "held_out": held,
        "search_seconds": seconds, "evaluations": len(ev.evaluations),
        "passes": passes,
        "reference": ref.as_dict(), "winner": best.as_dict(), "faster_than_reference": faster,
        "drop_not_larger_than_reference": within, "verdict": verdict,
        "measured": {"winner": _measured(win_report, metric), "reference": _measured(ref_report, metric)},
        "trace": [e.as_dict() for e in ev.evaluations],
    }


# ---------------------------------------------------------------------------------------------------------
# visual tokens (K) and vocab trims (trim.target_vocab_size): one knob, bisection over full conversions

def _absolute_paths(recipe, base_dir: Path):
    """The recipe with its local paths (model directory, corpus files, tokens_to_keep_file, keep_file) made absolute, so
    the winner's YAML, written next to the outputs, still resolves them."""
    from .zoo import BUNDLED, GENERATED

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
                s = s.model_copy(update={"path": [absolute(x) for x in s.path] if isinstance(s.path, list)
                                         else absolute(s.path)})
            sources.append(s)
        update["corpus"] = recipe.corpus.model_copy(update={"sources": sources})
        files = {k: absolute(getattr(recipe.trim, k)) for k in ("tokens_to_keep_file", "keep_file")
                 if getattr(recipe.trim, k, None)}
        if files:
            update["trim"] = recipe.trim.model_copy(update=files)
    return recipe.model_copy(update=update) if update else recipe


def _judge(report: dict, metric: str, max_drop: float) -> dict:
    from .sweep import metric_drop

    ms = report["accuracy"]["metrics"]
    m = ms[metric]
    drop = metric_drop(m)
    failed = [k for k, v in ms.items() if not MC.is_info(v) and v.get("passed") is False]
    parity = bool(report["parity"]["passed"] and report["parity_baseline"]["passed"])
    return {"drop": drop, "original": m["original"], "reduced": m["reduced"], "better": m.get("better", "higher"),
            "failed_thresholds": failed, "parity_passed": parity,
            "feasible": bool(drop <= max_drop + 1e-12 and not failed and parity)}


def bisect_smallest(grid: list, start: int, evaluate: Callable[[object], bool], max_evals: int,
                    prefetch: Callable[[list], None] | None = None, width: int = 1) -> tuple[int, bool]:
    """Index of the smallest feasible value of ascending ``grid``, assuming feasibility is monotone (more never
    hurts): ``grid[start]`` is feasible (evaluated by the caller); values below are bisected with at most
    ``max_evals`` evaluations. Returns (index, converged): when the evaluations run out, the smallest feasible
    value evaluated (every smaller value evaluated was infeasible). ``prefetch`` (with ``width`` > 1): called
    before each step with the up to ``width`` values the search may need next (:meth:`Bisection.frontier`),
    to evaluate them in parallel; ``evaluate`` must then answer from what was prefetched. The path, and so
    the index, is the sequential search's."""
    b = Bisection(0, start, max_evals)
    while not b.done:
        if prefetch is not None and width > 1:
            prefetch([grid[i] for i in b.frontier(width)])
        b.step(evaluate(grid[b.next()]))
    return b.hi, b.lo >= b.hi


def search_knob(recipe_path: Path, recipe, max_drop: float, metric: str, out_dir: Path, step: int | None,
                reference: bool, force: bool, stages, max_evals: int, fo=None) -> tuple[dict, Path]:
    """The smallest K (visual tokens) or ``trim.target_vocab_size`` (vocab) whose ``metric`` drop stays
    within ``max_drop`` with every recipe threshold met and parity passed. Every candidate is a full
    conversion (the one driver) into the staging directory; the recipe's own value first (the upper end of
    the bisection, or, when it is over budget, the lower end: then the largest value is tried next)."""
    import shutil

    from .pipeline import run
    from .tasks.axes import axis_for
    from .tasks.run import model_paths

    axis = axis_for(recipe)
    base_dir = recipe_path.resolve().parent
    knob = axis.search_knob
    protect = (recipe_path, base_dir, *model_paths(recipe.model, base_dir))
    with claim_out_dir(out_dir, force, kind="search", protect=protect), staged_dir(out_dir) as tmp:
        name = f"{recipe.name or recipe_path.stem}-search"
        winner_file = tmp / f"{name}.yaml"
        verify, gate = axis.budget_verify(recipe, metric, max_drop)
        template = _absolute_paths(recipe, base_dir).model_copy(update={"name": name, "verify": verify})
        label = str(out_dir / winner_file.name)
        trace: list[dict] = []
        runs: dict = {}
        rounds: list[list] = []  # Ray: the values converted together, round by round

        def candidate(value):
            return template if value is None else axis.knob_recipe(recipe, template, value)

        def tag_of(value) -> str:
            return "recipe" if value is None else f"{axis.search_tag}{value}"

        def evaluate_many(values: list, what: str = "candidate") -> list[dict]:
            """Convert every value's candidate (on Ray: one task each, all at once); their trace entries."""
            if fo is None:
                out = []
                for value in values:
                    t0 = time.time()
                    with stages.stage(f"search: {knob} = {value if value is not None else 'the recipe’s'}"):
                        res = run(candidate(value), base_dir, tmp / "candidates" / tag_of(value), stages=stages,
                                  label=f"{label}@{tag_of(value)}")
                    out.append(entry(value, what, res.report, res.exit_code, time.time() - t0))
                return out
            from .fanout import PointSpec, raise_failed

            local = model_paths(template.model, base_dir)
            specs = [PointSpec(tag_of(v), candidate(v), str(base_dir), str((tmp / "candidates" / tag_of(v)).absolute()),
                               f"{label}@{tag_of(v)}", fo.threads(), str(local[0]) if local else None) for v in values]
            rounds.append(list(values))
            shown = ", ".join("the recipe’s" if v is None else str(v) for v in values)
            with stages.stage(f"search: {knob} = {shown} ({len(values)} conversion(s) at once on Ray)"):
                records = fo.convert(specs)
            out = []
            for v, spec, rec in zip(values, specs, records):
                raise_failed(rec, f"{knob} {v if v is not None else '(the recipe’s)'}")
                rep = read_json(Path(spec.run_dir) / "report.json", "report")
                out.append(entry(v, what, rep, rec["exit_code"], rec.get("seconds")))
            return out

        def evaluate(value, what: str = "candidate") -> dict:
            return evaluate_many([value], what)[0]

        def entry(value, what: str, rep: dict, exit_code: int, seconds) -> dict:
            tag = tag_of(value)
            measured = axis.knob_measured(rep)
            got = value if value is not None else measured
            e = {"value": got, "measured_value": measured, "role": what, "run": tag, "exit_code": exit_code, "seconds": seconds,
                 **_judge(rep, metric, max_drop), "speedups": {b: v["speedup"] for b, v in
                                                               ((rep.get("bench") or {}).get("batches") or {}).items()}}
            e.update(axis.knob_figures(rep))
            stages.log(f"{knob} {got}: {metric} drop {e['drop']:+.4f} "
                       f"{'ok' if e['feasible'] else 'over budget / threshold failed'}")
            trace.append(e)
            runs[got] = (tag, rep)
            return e

        t0 = time.time()
        ref = evaluate(None, "reference (the recipe's own)")
        ref_value = ref["value"]
        st = step or 1
        grid = axis.knob_grid(recipe, runs[ref_value][1], ref_value, st, candidate)
        evaluated = {ref_value: ref}
        budget_left = max_evals - 1
        on_path: set = set()

        def feasible(value) -> bool:
            nonlocal budget_left
            on_path.add(value)
            if value not in evaluated:
                budget_left -= 1
                evaluated[value] = evaluate(value)
            return evaluated[value]["feasible"]

        def prefetch(values: list) -> None:  # Ray: the bisection's possible next steps, converted at once
            missing = [v for v in values if v not in evaluated]
            if missing:
                for v, e in zip(missing, evaluate_many(missing)):
                    evaluated[v] = e

        parallel = {"prefetch": prefetch, "width": fo.parallel} if fo is not None else {}

        start = grid.index(ref_value)
        if not ref["feasible"]:  # the recipe's own value is over budget: search above it
            if grid[-1] == ref_value or budget_left < 1 or not feasible(grid[-1]):
                raise InputError(f"--max-drop {max_drop:g}: no {knob} evaluated stays within the budget and the recipe's "
                                 f"thresholds (the recipe's {ref_value}: drop {ref['drop']:+.4f}"
                                 + (f"; the largest, {grid[-1]}: drop {evaluated[grid[-1]]['drop']:+.4f}"
                                    if grid[-1] in evaluated and grid[-1] != ref_value else "") + "); raise the budget")
            upper = grid[start + 1:]
            idx, converged = bisect_smallest(upper, len(upper) - 1, feasible, budget_left, **parallel)
            win = upper[idx]
        else:
            idx, converged = bisect_smallest(grid, start, feasible, budget_left, **parallel)
            win = grid[idx]
        seconds = time.time() - t0
        for e in trace:  # evaluated ahead on Ray but never needed by the sequential path
            if e["role"] == "candidate" and e["value"] not in on_path:
                e["speculative"] = True
        best = evaluated[win]
        # smaller evaluated values that were infeasible bound the resolution
        below = [v for v in evaluated if v < win]
        resolution = win - max(below) if below else win - grid[0]

        w_tag, w_rep = runs[win]
        shutil.move(str(tmp / "candidates" / w_tag), str(tmp / "winner"))
        if reference:
            r_tag = runs[ref_value][0]
            src = tmp / ("winner" if r_tag == w_tag else "candidates") / ("" if r_tag == w_tag else r_tag)
            (shutil.copytree if r_tag == w_tag else shutil.move)(str(src), str(tmp / "reference"))
        shutil.rmtree(tmp / "candidates", ignore_errors=True)
        winner = candidate(win)
        winner = winner.model_copy(update={"description": (
            f"Found by `tokexport search {recipe_path} --max-drop {max_drop:g} --metric {metric}`: the smallest "
            f"{knob} ({win}) with {metric} drop <= {max_drop:g} and every threshold met (bisection over full "
            f"conversions: search.json)." + (f" Budget set as {gate}." if gate else ""))})
        _write_recipe(winner, winner_file, winner.description)
        ref_drop = ref["drop"]
        verdict = (f"{knob} {win} (recipe: {ref_value}) keeps the {metric} drop at {best['drop']:+.4f} within "
                   f"{max_drop:g} (recipe's: {ref_drop:+.4f}); {len(trace)} conversions evaluated"
                   + ("" if converged else f", stopped by --max-evals {max_evals}: the smallest feasible value may "
                                           f"be up to {resolution - 1} lower"))
        summary = {
            "schema_version": 1, "kind": "search", "tokexport_version": __version__, "created_unix": int(time.time()),
            "recipe_path": str(recipe_path), "task": recipe.task, "metric": metric, "metric_better": best["better"],
            "max_drop": max_drop, "knob": knob, "method": axis.method_name(recipe),
            "algorithm": ("bisection over an ascending grid (step " f"{st}) of {knob} values, assuming more never "
                          "hurts the metric: the recipe's own value first, then the grid below it (or above it when "
                          "over budget); every candidate a full conversion"),
            "grid": {"min": grid[0], "max": grid[-1], "step": st, "size": len(grid)},
            "max_evals": max_evals, "evaluations": len(trace), "converged": converged, "resolution": resolution,
            "search_seconds": seconds, "budget_threshold": gate,
            "reference": ref, "winner": best, "verdict": verdict,
            "measured": {"winner": _measured_task(w_rep, metric),
                         "reference": _measured_task(runs[ref_value][1], metric) if reference else None},
            "winner_recipe": winner_file.name,
            "winner_exit_code": next(e["exit_code"] for e in trace if e["value"] == win),
            "trace": trace,
            "backend": ({**fo.describe(), "rounds": rounds} if fo is not None else {"name": "local", "parallel": 1}),
            "speculative_evaluations": sum(bool(e.get("speculative")) for e in trace),
        }
        (tmp / "search.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, out_dir


def _measured_task(report: dict, metric: str) -> dict:
    from .sweep import metric_drop

    m = report["accuracy"]["metrics"][metric]
    bench = report.get("bench") or {}
    return {"drop": metric_drop(m), "reduced": m["reduced"], "original": m["original"],
            "speedups": {b: v["speedup"] for b, v in (bench.get("batches") or {}).items()},
            "parity_passed": report["parity"]["passed"], "passed": report["passed"]}
