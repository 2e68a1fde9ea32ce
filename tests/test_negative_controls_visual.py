"""Negative controls of the shipped visual-token recipes: the same recipe with a deliberately broken
selection must FAIL its gate (exit 4). A gate that a broken reduction passes is a defect of the recipe.

The break: every selector is handed the NEGATED significance (``VisualSelector.select`` wrapped), so
fopru-rank keeps the K least significant tokens, fopru-row the least significant rows, and HiRED the
least significant tokens of each view (its allocation scores, clamped at 0, become an even split). The
export, parity, the evaluation attention (vision.eval_layer/eval_source) and every ``verify`` field stay
exactly the recipe's; only bench and deploy are off (they gate nothing).

Which recipes run here: the three DINOv2-S recipes (the bundled real checkpoint; like
tests/test_real_model.py this fails rather than skips without it). The two 7B LLaVA recipes
(``llava-1.5-7b-fopru-rank.yaml``, ``llava-v1.6-mistral-7b-hired.yaml``) need the 7B checkpoints from the
Hub, which this machine cannot reach, and their tiny twins (recipes/tiny/) carry random weights: on
random attention "the least significant tokens" are as arbitrary as "the most significant", so a
negative control there could not tell a meaningful gate from a meaningless one — it would test nothing.
Their gates come from the same written rule as the DINOv2-S recipes (docs/verdicts.md, visual tokens);
run this module's ``broken_selection`` against them where the checkpoints exist.
"""
from __future__ import annotations

import contextlib

import pytest

from tokexport.recipe import load_recipe
from tokexport.tasks.run import run
from tokexport.vlm.select import VisualSelector

from conftest import REPO, real_model_dir

pytestmark = pytest.mark.real_model

RECIPES = ["dinov2-small-fopru-rank", "dinov2-small-fopru-row", "dinov2-small-hired"]
NOT_RUNNABLE_HERE = ["llava-1.5-7b-fopru-rank", "llava-v1.6-mistral-7b-hired"]


@contextlib.contextmanager
def broken_selection(mp: pytest.MonkeyPatch):
    """Every visual selector ranks by the negated significance: it keeps the least significant tokens."""
    original = VisualSelector.select

    def select(self, sig, sig_alloc, layout, k):
        return original(self, None if sig is None else -sig, None if sig_alloc is None else -sig_alloc, layout, k)

    mp.setattr(VisualSelector, "select", select)
    yield


def _control_recipe(name: str):
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    data = recipe.model_dump(mode="json", exclude_none=True)
    data["bench"]["enabled"] = False
    data["deploy"] = {"bundle": False, "engines": False}
    out = type(recipe).model_validate(data)
    assert out.verify == recipe.verify  # the gate under test is exactly the shipped one
    return out


def test_every_shipped_visual_recipe_is_covered():
    shipped = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml")
                     if load_recipe(p).task == "visual-tokens")
    assert shipped == sorted(RECIPES + NOT_RUNNABLE_HERE)


@pytest.mark.parametrize("name", RECIPES)
def test_broken_selection_fails_the_gate(name, tmp_path):
    assert real_model_dir() is not None, "run `tokexport models fetch dinov2-small` first"
    recipe = _control_recipe(name)
    with pytest.MonkeyPatch.context() as mp, broken_selection(mp):
        res = run(recipe, REPO / "recipes", tmp_path / "out", label=f"{name}.yaml (broken selection)")
    rep = res.report
    # the control really kept the least significant tokens: less attention than a uniform share
    k, total = rep["reduction"]["visual_tokens_out"], rep["reduction"]["visual_tokens_in"]
    assert rep["accuracy"]["metrics"]["attention_mass"]["value"] < k / total
    assert rep["parity"]["passed"] and rep["parity_baseline"]["passed"]  # the broken graph exports faithfully
    assert res.exit_code == 4, rep["failures"]
    assert rep["passed"] is False and rep["accuracy"]["passed"] is False
    # the broken selection fails the recipe's own thresholds, not only a comparison
    assert any(f.startswith("accuracy: ") for f in rep["failures"]), rep["failures"]
    if recipe.verify.vs_baselines is not None:
        assert rep["baselines"]["gate"]["passed"] is False
