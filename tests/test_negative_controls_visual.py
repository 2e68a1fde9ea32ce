"""Negative controls of the shipped visual-token recipes: the same recipe with a deliberately broken
selection must FAIL its gate (exit 4) on a check that the recipe as shipped passes. The shipped DINOv2-S
recipes themselves exit 4 (every selecting method loses to the uniform lattice there: docs/verdicts.md
rule V2), so exit 4 alone proves nothing: the test compares the broken run with the session's shipped
run (conftest ``shipped``) check by check, and the break must add a failed check.

The break (``BREAKS``, one row per method; a shipped recipe whose method has no row fails
``test_every_shipped_visual_recipe_is_covered``): the selector is handed the NEGATED significance
(``VisualSelector.select`` wrapped), so fopru-rank keeps the K least significant tokens, fopru-row the
least significant rows, and HiRED the least significant tokens of each view (its allocation scores,
clamped at 0, become an even split). The baselines (uniform lattice, random draws) do not go through the
method's selector: the test asserts they are the shipped run's, figure for figure. The export, parity,
the evaluation attention (vision.eval_layer/eval_source) and every ``verify`` field stay exactly the
recipe's; only bench and deploy are off (they gate nothing).

Methods that do not rank by a significance map get a break of their own (also in ``BREAKS``): DivPrune
picks the token NEAREST to those already picked (argmin instead of argmax of the distance to the kept
set), VisionZip takes the LEAST attended patches as its dominant tokens, DART keeps the tokens MOST
similar to each pivot. For every method the broken run must fail a gated check (a V1 floor) that the
shipped run passes; for the significance-ranked methods the test also shows the break happened (the
retained attention mass drops below a uniform share).

Which recipes run here: the DINOv2-S recipes (the bundled real checkpoint). The three 7B LLaVA recipes
(``NOT_RUNNABLE_HERE``) need the 7B checkpoints from the Hub, which this machine cannot reach, and their
tiny twins (recipes/tiny/) carry random weights: on random attention "the least significant tokens" are
as arbitrary as "the most significant", so a negative control there could not tell a meaningful gate
from a meaningless one — it would test nothing. Their gates come from the same written rule as the
DINOv2-S recipes (docs/verdicts.md, visual tokens); run ``BREAKS`` against them where the checkpoints exist.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import REPO, group, real_model_dir, shipped_recipes
from test_negative_controls_vit import baseline_figures, failed_checks

from tokexport.recipe import load_recipe
from tokexport.tasks.run import run
from tokexport.vlm.select import VisualSelector

NOT_RUNNABLE_HERE = ["llava-1.5-7b-fopru-rank", "llava-v1.6-mistral-7b-hired", "llava-1.5-7b-cdpruner"]
RECIPES = [n for n in shipped_recipes("visual-tokens") if n not in NOT_RUNNABLE_HERE]


def _divprune_nearest(mp: pytest.MonkeyPatch) -> None:
    """DivPrune's greedy step takes the unpicked token NEAREST to the picked set (argmin of the max-min
    distance) instead of the farthest: it keeps near-duplicates of the first pick."""
    from tokexport.vlm import divprune
    from tokexport.vlm.diversity import MASKED

    original = divprune.divprune_positions

    def nearest(m, dim):
        return torch.argmax(torch.where(m <= MASKED, torch.full_like(m, 2 * MASKED), -m), dim=dim)

    mp.setattr(divprune, "divprune_positions", lambda tokens, k: original(tokens, k, choose=nearest))


def _visionzip_least_attended(mp: pytest.MonkeyPatch) -> None:
    """VisionZip's dominant tokens are the patches the CLS query attends to LEAST (its merge unchanged)."""
    from tokexport.vlm import visionzip

    original = visionzip.dominant_and_remainder
    mp.setattr(visionzip, "dominant_and_remainder", lambda score, d, with_rest: original(-score, d, with_rest))


def _dart_most_similar(mp: pytest.MonkeyPatch) -> None:
    """DART keeps, for every pivot, the tokens MOST cosine-similar to it (the duplicates it should drop)."""
    from tokexport.vlm import dart

    original = dart.dart_positions
    mp.setattr(dart, "dart_positions", lambda tokens, k, pivots: original(tokens, k, pivots, order=1.0))


def _negated_significance(mp: pytest.MonkeyPatch) -> None:
    """The selector ranks by the negated significance: it keeps the least significant tokens."""
    original = VisualSelector.select

    def select(self, sig, sig_alloc, layout, k):
        return original(self, None if sig is None else -sig, None if sig_alloc is None else -sig_alloc, layout, k)

    mp.setattr(VisualSelector, "select", select)


# method -> how to break it (applied with monkeypatch for the broken run only); a new method adds its row
BREAKS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "fopru-rank": _negated_significance,
    "fopru-row": _negated_significance,
    "hired": _negated_significance,
    "divprune": _divprune_nearest,
    "visionzip": _visionzip_least_attended,
    "dart": _dart_most_similar,
}
# the methods that rank by a significance map: the break is visible in the retained attention mass
SIGNIFICANCE_RANKED = {"fopru-rank", "fopru-row", "hired"}


def _control_recipe(name: str):
    recipe = load_recipe(REPO / "tokexport" / "recipes" / f"{name}.yaml")
    data = recipe.model_dump(mode="json", exclude_none=True)
    data["bench"]["enabled"] = False
    data["deploy"] = {"bundle": False, "engines": False}
    out = type(recipe).model_validate(data)
    assert out.verify == recipe.verify  # the gate under test is exactly the shipped one
    return out


def test_every_shipped_visual_recipe_is_covered():
    assert RECIPES and set(NOT_RUNNABLE_HERE) <= set(shipped_recipes("visual-tokens"))
    for name in RECIPES:
        method = load_recipe(REPO / "tokexport" / "recipes" / f"{name}.yaml").reduction.method
        assert method in BREAKS, f"{name}: no negative control for {method}: add it to BREAKS"


@pytest.mark.real_model
@pytest.mark.parametrize("name", [pytest.param(n, marks=group(n)) for n in RECIPES])
def test_broken_selection_fails_the_gate(name, shipped, tmp_path):
    assert real_model_dir() is not None, "run `tokexport models fetch dinov2-small` first"
    ref = shipped(name).report
    recipe = _control_recipe(name)
    with pytest.MonkeyPatch.context() as mp:
        BREAKS[recipe.reduction.method](mp)
        res = run(recipe, REPO / "recipes", tmp_path / "out", label=f"{name}.yaml (broken selection)")
    rep = res.report
    assert rep["parity"]["passed"] and rep["parity_baseline"]["passed"]  # the broken graph exports faithfully
    assert res.exit_code == 4, rep["failures"]
    assert rep["passed"] is False and rep["accuracy"]["passed"] is False
    if recipe.reduction.method in SIGNIFICANCE_RANKED:
        # the control really kept the least significant tokens: less attention than a uniform share, where the
        # shipped selection keeps more
        k, total = rep["reduction"]["visual_tokens_out"], rep["reduction"]["visual_tokens_in"]
        assert rep["accuracy"]["metrics"]["attention_mass"]["value"] < k / total
        assert ref["accuracy"]["metrics"]["attention_mass"]["value"] > k / total
    # judged against the shipped run's baselines, figure for figure
    want, got = baseline_figures(ref), baseline_figures(rep)
    assert want.keys() == got.keys() and all(abs(got[k] - want[k]) <= 1e-4 for k in want), (want, got)
    # the break changes a verdict: a check of the recipe's own thresholds the shipped run passes, this one fails
    new = failed_checks(rep) - failed_checks(ref)
    if recipe.reduction.method in SIGNIFICANCE_RANKED:
        assert new - {"vs_baselines"}, (failed_checks(rep), failed_checks(ref))
        assert any(f.startswith("accuracy: ") for f in rep["failures"]), rep["failures"]
    else:  # a floor, or the baselines gate where the shipped recipe passes it
        assert new, (failed_checks(rep), failed_checks(ref))
