"""Negative controls of every shipped ViT token-pruning recipe (issue 14, docs/verdicts.md rule 4): the recipe
as shipped passes its gate (`tokexport convert` exit 0), and the same recipe with a deliberately broken
selection FAILS it (exit 4) on a check the shipped run passes, judged against the very same baselines.

Broken variants (``BREAKS``, one row per method; a shipped recipe whose method has no row fails
``test_every_shipped_vit_recipe_is_covered``). Each break touches the method under test only, never the
honest baselines it is judged against (the per-image random draw and the uniform lattice of
tokexport.reduce.baselines_vit): the broken run is judged against the shipped run's own draws
(``baselines_from``: read from its report, checked to be at the same schedule, on the same crops and seeds),
so no break can move its yardstick, and the test asserts the figures are the shipped run's.

- scored methods (zero-tprune, topk-cls): the method's scores negated — it keeps its LEAST significant tokens;
- tome: the B side's keys negated — it merges the most DISSIMILAR pairs;
- random (fixed subset) and uniform: one contiguous corner block (the first rows of the patch grid), through
  a subclass registered for the method's name only (the uniform baseline keeps its lattice);
- pitome: the energy ranking reversed and the pair similarities negated — it protects the HIGH-energy
  (redundant) tokens and merges into dissimilar partners;
- divprune: the distance negated — it keeps a tight cluster; dart: each pivot keeps its near-copies;
- hybrid: every step broken as its own method is (``break_reduction``).

The shipped run is the session's one conversion of the recipe (conftest ``shipped``); the broken run has bench
and deploy off (they gate nothing; the verify section is exactly the shipped one). Real DINOv2-S.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
import yaml
from conftest import REPO, group, real_model_dir, shipped_recipes

from tokexport.reduce import METHODS
from tokexport.stages import metric as MC

RECIPES = shipped_recipes("vit")


def _negated_topk(module_name: str) -> Callable[[pytest.MonkeyPatch], None]:
    def apply(mp: pytest.MonkeyPatch) -> None:
        import importlib

        from tokexport.reduce.common import keep_topk

        def broken(scores, n_keep, n_prefix):
            return keep_topk(-scores, n_keep, n_prefix)  # the least significant tokens

        mp.setattr(importlib.import_module(f"tokexport.reduce.{module_name}"), "keep_topk", broken)

    return apply


def _tome_dissimilar(mp: pytest.MonkeyPatch) -> None:
    from tokexport.reduce import tome

    orig = tome.bipartite_merge

    def broken(x, keys, size, n_prefix, r):
        _, sb = tome._split_starts(n_prefix)
        sign = torch.ones(int(keys.shape[2]), dtype=keys.dtype)
        sign[sb::2] = -1.0  # cosine(A, -B) = -cosine(A, B): the most similar pairs become the least
        return orig(x, keys * sign[None, None, :, None], size, n_prefix, r)

    mp.setattr(tome, "bipartite_merge", broken)


def _corner_random(mp: pytest.MonkeyPatch) -> None:
    from tokexport.reduce.random_keep import RandomKeep

    class CornerRandom(RandomKeep):
        def scores_for(self, layer, n_candidates):
            return torch.arange(n_candidates, 0, -1, dtype=torch.float32)  # the first positions: the top rows

    mp.setitem(METHODS, "random", CornerRandom)


def _corner_uniform(mp: pytest.MonkeyPatch) -> None:
    from tokexport.reduce.uniform_keep import UniformKeep

    class CornerUniform(UniformKeep):  # registered for the method only: the uniform BASELINE keeps its lattice
        def select(self, x, n_keep):
            pos = torch.arange(x.n_prefix, x.n_prefix + n_keep, dtype=torch.int64)
            return pos.expand(int(x.hidden.shape[0]), n_keep)

    mp.setitem(METHODS, "uniform", CornerUniform)


def _pitome_inverted(mp: pytest.MonkeyPatch) -> None:
    from tokexport.reduce import pitome

    order, pairs = pitome.energy_order, pitome._pair_scores

    def reversed_order(metric, margin, alpha):
        sim, idx = order(metric, margin, alpha)
        return sim, idx.flip(-1)  # ascending energy: the redundant tokens are protected

    mp.setattr(pitome, "energy_order", reversed_order)
    mp.setattr(pitome, "_pair_scores", lambda sim, rows, cols: -pairs(sim, rows, cols))


def _divprune_clustered(mp: pytest.MonkeyPatch) -> None:
    from tokexport.reduce import divprune

    distance = divprune.cosine_distance
    mp.setattr(divprune, "cosine_distance", lambda h: -distance(h))  # the nearest token is picked next


def _dart_duplicates(mp: pytest.MonkeyPatch) -> None:
    from tokexport.reduce import dart

    cosines = dart.pivot_cosines
    mp.setattr(dart, "pivot_cosines", lambda hp, hn: -cosines(hp, hn))  # each pivot keeps its near-copies


# method -> how to break it (applied with monkeypatch for the broken run only); a new method adds its row
BREAKS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "zero-tprune": _negated_topk("zero_tprune"),
    "topk-cls": _negated_topk("topk_cls"),
    "tome": _tome_dissimilar,
    "random": _corner_random,
    "uniform": _corner_uniform,
    "pitome": _pitome_inverted,
    "divprune": _divprune_clustered,
    "dart": _dart_duplicates,
}


def step_methods(reduction: dict) -> list[str]:
    """The methods a reduction runs: its own, or each step's for a hybrid."""
    return [s["method"] for s in reduction["steps"]] if reduction["method"] == "hybrid" else [reduction["method"]]


def break_reduction(reduction: dict, mp: pytest.MonkeyPatch) -> None:
    """Break every method the reduction runs (a hybrid: each of its steps)."""
    for method in step_methods(reduction):
        BREAKS[method](mp)


def _data(name: str) -> dict:
    return yaml.safe_load((REPO / "tokexport" / "recipes" / f"{name}.yaml").read_text())


def failed_checks(rep: dict) -> set[str]:
    """The gated checks a report fails: metrics below their threshold, and the baselines gate."""
    out = {n for n, m in rep["accuracy"]["metrics"].items() if not MC.is_info(m) and m.get("passed") is False}
    if (rep.get("baselines") or {}).get("gate", {}).get("passed") is False:
        out.add("vs_baselines")
    return out


def baseline_figures(rep: dict) -> dict[str, float]:
    """The honest baselines a report is judged against: {baseline.metric: mean}."""
    return {
        f"{b}.{m}": v["mean"] for b, sec in rep["baselines"]["baselines"].items() for m, v in sec["metrics"].items()
    }


def test_every_shipped_vit_recipe_is_covered():
    assert {"dinov2-small-zero-tprune", "dinov2-small-topk-cls", "dinov2-small-tome", "dinov2-small-random"} <= set(
        RECIPES
    )
    for name in RECIPES:
        data = _data(name)
        for method in step_methods(data["reduction"]):
            assert method in BREAKS, f"{name}: no negative control for {method}: add it to BREAKS"
        assert data["verify"].get("vs_baselines"), f"{name}: no verify.vs_baselines (docs/verdicts.md rule V2)"


@pytest.mark.real_model
@pytest.mark.parametrize("name", [pytest.param(n, marks=group(n)) for n in RECIPES])
def test_shipped_recipe_passes(name, shipped):
    conv = shipped(name)
    rep = conv.report
    assert conv.exit_code == 0, rep["failures"]
    assert rep["passed"] is True and rep["accuracy"]["passed"] is True and failed_checks(rep) == set()
    assert rep["baselines"]["gate"]["passed"] is True
    gated = [n for n, m in rep["accuracy"]["metrics"].items() if not MC.is_info(m) and m.get("threshold")]
    assert set(gated) == set(_data(name)["verify"]["accuracy"]["metrics"]), gated  # every shipped floor was applied


@pytest.mark.real_model
@pytest.mark.parametrize("name", [pytest.param(n, marks=group(n)) for n in RECIPES])
def test_broken_selection_fails_the_gate(name, shipped, tmp_path, monkeypatch):
    from tokexport.recipe import load_recipe
    from tokexport.tasks.run import run

    assert real_model_dir() is not None, "run `tokexport models fetch dinov2-small` first"
    conv = shipped(name)
    ref = conv.report
    data = _data(name)
    data["bench"] = {**data.get("bench", {}), "enabled": False}
    data["deploy"] = {"bundle": False, "engines": False}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    break_reduction(data["reduction"], monkeypatch)
    # judged against the shipped run's draws (the 5 random seeds and the lattice are not computed again)
    res = run(load_recipe(path), tmp_path, tmp_path / "out", label=str(path), baselines_from=conv.out_dir)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["recipe"]["verify"] == ref["recipe"]["verify"]  # the gate under test is exactly the shipped one
    assert res.exit_code == 4, (name, rep["accuracy"]["metrics"], rep["baselines"]["margins"])
    assert rep["parity"]["passed"]  # the broken graph is exported faithfully: it is the choice that is wrong
    assert rep["passed"] is False and rep["failures"]
    # the yardstick is untouched: the shipped run's baselines, figure for figure
    assert rep["baselines"]["data"]["baselines_from"].startswith(f"reused from {conv.out_dir}")
    want, got = baseline_figures(ref), baseline_figures(rep)
    assert want.keys() == got.keys() and all(abs(got[k] - want[k]) <= 1e-4 for k in want), (want, got)
    # the break changes a verdict: a check the shipped run passes, the broken run fails
    assert failed_checks(rep) - failed_checks(ref), (failed_checks(rep), failed_checks(ref))


# ------------------------------------------------------------------ a figure nobody set a bar for


def test_a_metric_without_threshold_is_never_counted_as_passed():
    ungated = MC.metric(1.0, 0.2)  # no threshold
    assert ungated["passed"] is None
    assert MC.accuracy_passed({"feature_cosine": ungated}) is False  # verified nothing
    assert MC.accuracy_passed({"feature_cosine": ungated, "x": MC.info(0.5)}) is False
    gated = MC.metric(1.0, 0.95, {"min": 0.9})
    assert MC.accuracy_passed({"feature_cosine": gated, "instance_top1": ungated}) is True
    assert MC.accuracy_passed({"feature_cosine": MC.metric(1.0, 0.5, {"min": 0.9}), "i": ungated}) is False
