"""Negative controls of every shipped ViT token-pruning recipe (issue 14, docs/verdicts.md rule 4): the same
recipe with a deliberately broken selection must FAIL its gate (`tokexport convert` exit 4), and the
recipe as shipped must pass.

Broken variants (the verify section stays exactly the shipped one; bench and deploy are switched off in
both runs, they do not touch the gate):

- scored methods (zero-tprune, topk-cls): the method's scores negated — it keeps its LEAST significant tokens;
- tome: the B side's keys negated — it merges the most DISSIMILAR pairs;
- random (fixed subset) and uniform: one contiguous corner block (the first rows of the patch grid).

Runs on the real bundled DINOv2-S (`tokexport models fetch dinov2-small`), like tests/test_real_model.py.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from tokexport.stages import metric as MC

from conftest import REPO, real_model_dir

RECIPES = sorted(p.stem for p in (REPO / "tokexport" / "recipes").glob("*.yaml")
                 if (yaml.safe_load(p.read_text()).get("task") or "auto") in ("auto", "feature-extraction",
                                                                                "image-classification"))


def _negated_topk(module):
    from tokexport.reduce.common import keep_topk

    def broken(scores, n_keep, n_prefix):
        return keep_topk(-scores, n_keep, n_prefix)  # the least significant tokens

    return {(module, "keep_topk"): broken}


def _tome_dissimilar():
    from tokexport.reduce import tome

    orig = tome.bipartite_merge

    def broken(x, keys, size, n_prefix, r):
        _, sb = tome._split_starts(n_prefix)
        sign = torch.ones(int(keys.shape[2]), dtype=keys.dtype)
        sign[sb::2] = -1.0  # cosine(A, -B) = -cosine(A, B): the most similar pairs become the least
        return orig(x, keys * sign[None, None, :, None], size, n_prefix, r)

    return {(tome, "bipartite_merge"): broken}


def _corner_block():
    from tokexport.reduce.random_keep import RandomKeep
    from tokexport.reduce.uniform_keep import UniformKeep

    def scores_for(self, layer, n_candidates):
        return torch.arange(n_candidates, 0, -1, dtype=torch.float32)  # the first positions: the top rows

    def select(self, x, n_keep):
        pos = torch.arange(x.n_prefix, x.n_prefix + n_keep, dtype=torch.int64)
        return pos.expand(int(x.hidden.shape[0]), n_keep)

    return {(RandomKeep, "scores_for"): scores_for, (UniformKeep, "select"): select}


def breakage(method: str) -> dict:
    from tokexport.reduce import topk_cls, zero_tprune

    if method == "zero-tprune":
        return _negated_topk(zero_tprune)
    if method == "topk-cls":
        return _negated_topk(topk_cls)
    if method == "tome":
        return _tome_dissimilar()
    if method in ("random", "uniform"):
        return _corner_block()
    raise AssertionError(f"no negative control for method {method!r}: add one to this test")


def _fast_copy(name: str, tmp_path):
    """The shipped recipe with bench and deploy off (the verify section unchanged)."""
    data = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
    data["bench"] = {**data.get("bench", {}), "enabled": False}
    data["deploy"] = {"bundle": False, "engines": False}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p, data


def _convert(name, tmp_path, broken: bool, monkeypatch=None):
    from tokexport.pipeline import convert

    assert real_model_dir() is not None, "run `tokexport models fetch dinov2-small` first"
    path, data = _fast_copy(name, tmp_path)
    if broken:
        for (owner, attr), fn in breakage(data["reduction"]["method"]).items():
            monkeypatch.setattr(owner, attr, fn)
    res = convert(path, tmp_path / "out")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    shipped = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
    assert rep["recipe"]["verify"]["vs_baselines"] == {**shipped["verify"]["vs_baselines"]}
    return res, rep


def test_every_shipped_vit_recipe_is_covered():
    assert {"dinov2-small-zero-tprune", "dinov2-small-topk-cls", "dinov2-small-tome", "dinov2-small-random"} <= \
        set(RECIPES)
    for name in RECIPES:
        data = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
        breakage(data["reduction"]["method"])  # every method has a broken variant
        assert data["verify"].get("vs_baselines"), f"{name}: no verify.vs_baselines (docs/verdicts.md rule V2)"


@pytest.mark.real_model
@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipe_passes(name, tmp_path):
    res, rep = _convert(name, tmp_path, broken=False)
    assert res.exit_code == 0, rep["failures"]
    assert rep["baselines"]["gate"]["passed"] is True


@pytest.mark.real_model
@pytest.mark.parametrize("name", RECIPES)
def test_broken_selection_fails_the_gate(name, tmp_path, monkeypatch):
    res, rep = _convert(name, tmp_path, broken=True, monkeypatch=monkeypatch)
    assert res.exit_code == 4, (name, rep["accuracy"]["metrics"], rep["baselines"]["margins"])
    assert rep["parity"]["passed"]  # the broken graph is exported faithfully: it is the choice that is wrong
    assert rep["passed"] is False and rep["failures"]


# ------------------------------------------------------------------ a figure nobody set a bar for


def test_a_metric_without_threshold_is_never_counted_as_passed():
    ungated = MC.metric(1.0, 0.2)  # no threshold
    assert ungated["passed"] is None
    assert MC.accuracy_passed({"feature_cosine": ungated}) is False  # verified nothing
    assert MC.accuracy_passed({"feature_cosine": ungated, "x": MC.info(0.5)}) is False
    gated = MC.metric(1.0, 0.95, {"min": 0.9})
    assert MC.accuracy_passed({"feature_cosine": gated, "instance_top1": ungated}) is True
    assert MC.accuracy_passed({"feature_cosine": MC.metric(1.0, 0.5, {"min": 0.9}), "i": ungated}) is False
