"""The layer-wise schedule search of a ViT recipe, as an algorithm: a schedule scored in PyTorch on the
search split (:class:`Evaluator` → :class:`Evaluation`), and the greedy passes over the candidate layers
(:class:`GreedyPass`), evaluated one schedule at a time (:func:`greedy_search`) or in parallel rounds that
take the same path (:func:`greedy_parallel`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data import SEARCH_STREAM
from ..errors import InputError, option
from ..flops import encoder_flops
from ..load import LoadedModel
from ..recipe import Recipe
from ..reduce import METHODS
from ..reduce.patch import reduced
from ..reduce.schedule import Stage, plan
from ..stages.runners import TorchRunner, run_rows
from ..tasks.vit_tokens import evaluation_set, forward_fn, instance_metrics
from .bisection import Bisection


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
        return {
            "prune_layers": list(self.keep),
            "keep": list(self.keep.values()),
            "tokens_out": self.tokens_out,
            "flops": self.flops,
            "flops_ratio": self.flops_ratio,
            "drop": self.drop,
            "feasible": self.feasible,
            "metrics": {k: {"original": v["original"], "reduced": v["reduced"]} for k, v in self.metrics.items()},
        }


class Evaluator:
    """Scores schedules with the loaded PyTorch model (original outputs cached) on the SEARCH split: crops
    of the recipe's photographs from their own stream (``data.SEARCH_STREAM``), disjoint from the eval crops
    the verdict (the winner's conversion) is judged on. The crops, the forward pass and the figures are the
    ViT task's own (:mod:`tokexport.tasks.vit_tokens`); the FLOPs are the reports' (each method's selection
    cost); the schedule is the method's configuration at the searched counts (``ReductionConfig.at_counts``)."""

    def __init__(self, recipe: Recipe, lm: LoadedModel, metric: str, max_drop: float):
        self.recipe, self.lm, self.metric, self.max_drop = recipe, lm, metric, max_drop
        ad = lm.adapter
        self.n_tokens, self.n_prefix = ad.n_tokens(lm.image_size), ad.n_prefix()
        self.iset = evaluation_set(lm, recipe.verify.accuracy, eval_stream=SEARCH_STREAM)
        self.forward = forward_fn(lm)
        orig = TorchRunner(self.forward)
        self.orig_eval = run_rows(orig, {"pixel_values": self.iset.eval_x})
        self.feat = ad.feature_output(list(self.orig_eval))
        self.orig_proto = run_rows(orig, {"pixel_values": self.iset.proto_x})[self.feat]
        self.thresholds = dict(recipe.verify.accuracy.metrics)
        self.base_flops = self.flops([], None)
        self.evaluations: list[Evaluation] = []

    def config(self, keep: dict[int, int]):
        """The recipe's reduction with ``keep`` (layer -> count) as its schedule."""
        return self.recipe.reduction.at_counts(keep)

    def flops(self, stages: list[Stage], method) -> float:
        ad = self.lm.adapter
        return encoder_flops(
            ad.dims(), self.n_tokens, self.n_prefix, stages, ad.head_macs(self.lm.model), method=method
        )["flops"]

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
        metrics = instance_metrics(self.lm, self.iset, self.feat, self.orig_eval, red, self.orig_proto, self.thresholds)
        if self.metric not in metrics:
            raise InputError(
                f"{option('metric')} {self.metric}: not measured in the search (measured: {', '.join(metrics)})"
            )
        md = {k: v.as_dict() for k, v in metrics.items()}
        drop = md[self.metric]["original"] - md[self.metric]["reduced"]
        feasible = drop <= self.max_drop + 1e-12 and all(m["passed"] is not False for m in md.values())
        fl = self.flops(stages, method)
        ev = Evaluation(effective, [s.tokens_out for s in stages], fl, fl / self.base_flops, md, drop, feasible)
        self.evaluations.append(ev)
        return ev


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
        log(
            f"block {self.layer}: keep {self.grid[self.bisection.next()]} → drop {ev.drop:+.4f}, FLOPs "
            f"×{ev.flops_ratio:.3f} {'ok' if ev.feasible else 'over budget'}"
        )
        self.bisection.step(ev.feasible)
        if self.bisection.done:
            self.keep[self.layer] = self.grid[self.bisection.hi]
            self._next_layer()


def greedy_search(
    evaluate: Callable[[dict[int, int]], Evaluation],
    layers: list[int],
    n_candidates: int,
    step: int,
    deepest_first: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[int, int]:
    """One greedy pass (:class:`GreedyPass`), evaluated sequentially. Returns layer -> count."""
    p = GreedyPass(layers, n_candidates, step, deepest_first)
    while not p.done:
        p.feed(evaluate(p.request()), log)
    return p.keep


def _key(keep: dict[int, int]) -> tuple:
    return tuple(sorted(keep.items()))


def greedy_parallel(
    evaluate_many: Callable[[list[dict[int, int]]], list[Evaluation]],
    layers: list[int],
    n_candidates: int,
    step: int,
    width: int,
    log: Callable[[str, str], None] = lambda order, s: None,
) -> tuple[dict, dict, int]:
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
    return (
        {o: p.keep for o, p in passes.items()},
        paths,
        {"evaluations_run": len(cache), "speculative": len(cache) - len(used), "rounds": rounds},
    )
