"""The baselines section every token-reduction report carries (tokexport.stages.baselines): margins
with paired bootstrap intervals, the vs_baselines gate, its schema and its rendering."""

from __future__ import annotations

import numpy as np
import pytest

from tokexport.recipe_base import VsBaselines
from tokexport.stages.baselines import BaselineRun, baselines_section, judge_gate, paired_bootstrap_ci
from tokexport.stages.render import baselines_lines
from tokexport.stages.report_schema import Baselines

BETTER = {"cos": "higher", "err": "lower"}


def _runs(rng, n, shift=0.0):
    random = BaselineRun(
        "random",
        "per image",
        {
            "cos": [rng.normal(0.8 + shift, 0.05, n) for _ in range(5)],
            "err": [rng.normal(0.3, 0.05, n) for _ in range(5)],
        },
        seeds=list(range(5)),
    )
    uniform = BaselineRun(
        "uniform", "2-D lattice", {"cos": [rng.normal(0.85 + shift, 0.05, n)], "err": [rng.normal(0.25, 0.05, n)]}
    )
    return [random, uniform]


def test_margin_sign_best_baseline_and_interval():
    rng = np.random.default_rng(0)
    n = 200
    method = {"cos": rng.normal(0.9, 0.05, n), "err": rng.normal(0.2, 0.05, n)}
    s = baselines_section("m", method, _runs(rng, n), BETTER, {"tokens": [10]}, {"split": "eval", "samples": n})
    Baselines.model_validate(s)
    cos, err = s["margins"]["cos"], s["margins"]["err"]
    assert cos["best_baseline"] == "uniform" and err["best_baseline"] == "uniform"  # lower err is better
    assert cos["margin"] == pytest.approx(0.05, abs=0.02) and err["margin"] == pytest.approx(0.05, abs=0.02)
    for m in (cos, err):
        assert m["ci"][0] < m["margin"] < m["ci"][1] and m["ci"][0] > 0
    r = s["baselines"]["random"]["metrics"]["cos"]
    assert len(r["values"]) == 5 and r["sd"] > 0


def test_method_worse_than_baseline_has_negative_margin_and_fails_gate():
    rng = np.random.default_rng(1)
    n = 150
    method = {"cos": rng.normal(0.7, 0.05, n)}
    s = baselines_section("broken", method, _runs(rng, n), BETTER, {}, {"samples": n}, VsBaselines(min_margin=0.0))
    assert s["margins"]["cos"]["margin"] < 0 and s["margins"]["cos"]["ci"][1] < 0
    assert s["gate"]["passed"] is False and "cos" in s["gate"]["failures"][0]


def test_gate_bound_ci_low_is_stricter_than_estimate():
    margins = {"cos": {"margin": 0.01, "ci": [-0.02, 0.04], "best_baseline": "uniform", "level": 0.95}}
    assert judge_gate(margins, VsBaselines(min_margin=0.0))["passed"] is False
    assert judge_gate(margins, VsBaselines(min_margin=0.0, bound="estimate"))["passed"] is True
    assert judge_gate(margins, VsBaselines(min_margin=-0.05))["passed"] is True
    assert judge_gate(margins, None) is None


def test_gate_on_unmeasured_metric_fails():
    margins = {"cos": {"margin": 0.1, "ci": [0.05, 0.15], "best_baseline": "uniform", "level": 0.95}}
    g = judge_gate(margins, VsBaselines(metrics=["instance_top1"]))
    assert g["passed"] is False and "no baseline margin" in g["failures"][0]


def test_bootstrap_is_paired_and_deterministic():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, 100)
    b = a - 0.1  # a constant paired difference: no spread at all
    lo, hi = paired_bootstrap_ci(a, b)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    c = rng.normal(0, 1, 100)
    assert paired_bootstrap_ci(a, c, seed=3) == paired_bootstrap_ci(a, c, seed=3)
    unpaired_width = np.diff(paired_bootstrap_ci(a, rng.permutation(a) - 0.1))[0]
    assert unpaired_width > 0.1  # the same values, unpaired: a wide interval; paired: none


def test_too_few_random_seeds_and_length_mismatch_are_refused():
    rng = np.random.default_rng(3)
    few = BaselineRun("random", "per image", {"cos": [rng.normal(size=10) for _ in range(3)]}, seeds=[0, 1, 2])
    with pytest.raises(ValueError, match="at least 5"):
        baselines_section("m", {"cos": rng.normal(size=10)}, [few], BETTER, {}, {})
    short = BaselineRun("uniform", "2-D", {"cos": [rng.normal(size=9)]})
    with pytest.raises(ValueError, match="samples"):
        baselines_section("m", {"cos": rng.normal(size=10)}, [short], BETTER, {}, {})


def test_markdown_shows_method_baselines_and_gate():
    rng = np.random.default_rng(4)
    n = 50
    s = baselines_section(
        "zero-tprune",
        {"cos": rng.normal(0.9, 0.05, n)},
        _runs(rng, n),
        BETTER,
        {},
        {"split": "eval", "samples": n},
        VsBaselines(min_margin=0.5),
    )
    text = "\n".join(baselines_lines(s))
    assert "zero-tprune (method)" in text and "random" in text and "uniform" in text
    assert "± " in text and "FAIL" in text
