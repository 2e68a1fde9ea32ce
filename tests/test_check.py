"""`tokexport check`: planted regressions fail with exit 6, unreadable reports exit 7, bad tolerances exit 2,
and reports of other kinds compare on what they share."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import REPO
from test_cli_bad_input import assert_one_line_error, run_cli

from tokexport.check import compare, figures, load_tolerances
from tokexport.errors import RegressionError, UnreadableReport
from tokexport.stages.report_schema import validate_report

BASELINE = REPO / "tests" / "baselines" / "dinov2-small-zero-tprune.report.json"
CI_TOL = REPO / "tests" / "baselines" / "tolerances.yaml"


@pytest.fixture(scope="module")
def base() -> dict:
    return json.loads(BASELINE.read_text())


def _write(tmp_path, rep, name="report.json"):
    p = tmp_path / name
    p.write_text(json.dumps(rep))
    return p


def test_committed_baseline_is_a_real_passing_report(base):
    assert base["schema_version"] == 2 and base["kind"] == "vit-token-pruning" and base["passed"] is True
    assert validate_report(base) == []
    assert base["recipe"]["name"] == "dinov2-small-zero-tprune"
    names = set(figures(base))
    assert {
        "accuracy.instance_top1",
        "accuracy.feature_cosine",
        "speedup.b1",
        "speedup.b8",
        "flops.ratio",
        "parity.max_abs_diff",
        "params.model",
        "size.onnx",
        "passed.report",
    } <= names


def test_identical_report_passes_every_figure(base):
    res = compare(copy.deepcopy(base), base, load_tolerances(CI_TOL))
    assert not res.failed and not res.missing and len(res.rows) == len(figures(base))


@pytest.mark.parametrize(
    "plant, failing",
    [
        # accuracy degraded by 5 crops of 136
        (
            lambda r: r["accuracy"]["metrics"]["instance_top1"].update(
                reduced=r["accuracy"]["metrics"]["instance_top1"]["reduced"] - 5 / 136
            ),
            {"accuracy.instance_top1", "accuracy.instance_top1.drop"},
        ),
        # the reduced graph lost its speed-up at batch 8 (same-run ratio)
        (
            lambda r: r["bench"]["batches"]["8"].update(speedup=0.5 * r["bench"]["batches"]["8"]["speedup"]),
            {"speedup.b8"},
        ),
        # the schedule prunes less: more FLOPs
        (lambda r: r["bench"]["flops"].update(reduced=r["bench"]["flops"]["reduced"] * 1.05), {"flops.ratio"}),
        # parity got 100x worse (still under the recipe's atol, so the report itself passes)
        (lambda r: r["parity"].update(max_abs_diff=r["parity"]["max_abs_diff"] * 100), {"parity.max_abs_diff"}),
        (lambda r: r["model"].update(params=r["model"]["params"] + 1), {"params.model"}),
        (lambda r: r["artifacts"].update(onnx_bytes=int(r["artifacts"]["onnx_bytes"] * 1.1)), {"size.onnx"}),
        (lambda r: r.update(passed=False), {"passed.report"}),
    ],
)
def test_planted_regression_fails_exactly_that_figure(base, plant, failing):
    rep = copy.deepcopy(base)
    plant(rep)
    res = compare(rep, base, load_tolerances(CI_TOL))
    assert {r.name for r in res.failed} == failing


def test_noise_within_tolerance_passes_and_improvements_pass(base):
    rep = copy.deepcopy(base)
    rep["accuracy"]["metrics"]["instance_top1"]["reduced"] -= 2 / 136  # 2 crops: within abs 0.03
    rep["bench"]["batches"]["8"]["speedup"] *= 0.9  # within factor 0.85
    rep["bench"]["batches"]["1"]["speedup"] *= 0.75  # batch 1: per-batch factor 0.70
    rep["bench"]["flops"]["reduced"] *= 0.9  # fewer FLOPs is better
    rep["accuracy"]["metrics"]["feature_cosine"]["reduced"] = 0.99
    assert not compare(rep, base, load_tolerances(CI_TOL)).failed


def test_tightened_threshold_fails_cli_with_regression_exit_code(tmp_path, base):
    rep = copy.deepcopy(base)
    rep["accuracy"]["metrics"]["instance_top1"]["reduced"] -= 1 / 136  # one crop
    p = _write(tmp_path, rep)
    ok = run_cli("check", str(p), "--baseline", str(BASELINE), "--tolerances", str(CI_TOL))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout and "0 failed" in ok.stdout
    res = run_cli(
        "check",
        str(p),
        "--baseline",
        str(BASELINE),
        "--tolerances",
        str(CI_TOL),
        "--set",
        "metrics.instance_top1.abs=0.001",
        "--json",
    )
    assert res.returncode == RegressionError.exit_code == 6, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["passed"] is False
    assert {r["name"] for r in out["rows"] if r["status"] == "FAIL"} == {
        "accuracy.instance_top1",
        "accuracy.instance_top1.drop",
    }
    assert "regression:" in res.stderr and "Traceback" not in res.stderr
    # the speed-up flag tightens too: 95% of the baseline's batch-8 speed-up passes the default factor
    # (0.85) and fails --speedup-factor 1.0
    slower = copy.deepcopy(base)
    slower["bench"]["batches"]["8"]["speedup"] *= 0.95
    p = _write(tmp_path, slower)
    ok = run_cli("check", str(p), "--baseline", str(BASELINE), "--tolerances", str(CI_TOL))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    fast = run_cli(
        "check", str(p), "--baseline", str(BASELINE), "--tolerances", str(CI_TOL), "--speedup-factor", "1.0", "--json"
    )
    assert fast.returncode == 6, fast.stdout + fast.stderr
    assert {r["name"] for r in json.loads(fast.stdout)["rows"] if r["status"] == "FAIL"} == {"speedup.b8"}


def test_unreadable_reports_exit_7(tmp_path, base):
    cases = {
        "missing": tmp_path / "nope.json",
        "not-json": tmp_path / "bad.json",
        "not-a-report": tmp_path / "list.json",
        "future-schema": tmp_path / "v99.json",
    }
    cases["not-json"].write_text("{truncated")
    cases["not-a-report"].write_text("[1, 2]")
    cases["future-schema"].write_text(json.dumps({**base, "schema_version": 99}))
    for what, path in cases.items():
        res = run_cli("check", str(path), "--baseline", str(BASELINE))
        assert res.returncode == UnreadableReport.exit_code == 7, (what, res.stdout, res.stderr)
        assert str(path.name) in res.stderr and "Traceback" not in res.stderr, what
    # a bad baseline is unreadable too
    res = run_cli("check", str(BASELINE), "--baseline", str(cases["not-json"]))
    assert res.returncode == 7 and "baseline" in res.stderr


def test_bad_tolerances_are_input_errors(tmp_path):
    bad = tmp_path / "tol.yaml"
    bad.write_text("speedup_factor: 1.5\n")
    assert_one_line_error(
        run_cli("check", str(BASELINE), "--baseline", str(BASELINE), "--tolerances", str(bad)),
        "tol.yaml",
        "speedup_factor",
    )
    bad.write_text("acuracy: {abs: 0.1}\n")
    assert_one_line_error(
        run_cli("check", str(BASELINE), "--baseline", str(BASELINE), "--tolerances", str(bad)),
        "acuracy",
        "unknown field",
    )
    assert_one_line_error(
        run_cli("check", str(BASELINE), "--baseline", str(BASELINE), "--set", "nonsense"), "--set", "KEY=VALUE"
    )


def _visual_report() -> dict:
    """A visual-tokens report as the driver writes it (the sections check reads)."""
    metric = {"original": 0.95, "reduced": 0.72, "delta": -0.23, "better": "higher", "threshold": None, "passed": None}
    return {
        "schema_version": 2,
        "kind": "visual-tokens",
        "recipe": {"name": "dinov2-small-fopru-rank"},
        "model": {"params": 22056576, "tower_params": 22056576},
        "reduction": {"visual_tokens_in": 256, "visual_tokens_out": 64, "schedule": []},
        "parity": {"max_abs_diff": 1.3e-5, "passed": True},
        "parity_baseline": {"max_abs_diff": 1.1e-5, "passed": True},
        "accuracy": {
            "metrics": {
                "feature_cosine": dict(metric, original=1.0, reduced=0.81),
                "instance_top1": metric,
                "attention_mass": {"value": 0.61, "info": True},
            },
            "passed": True,
        },
        "llm": {"prefill_flops_saved": 0.603},
        "bench": {"batches": {"1": {"speedup": 1.06}, "8": {"speedup": 1.01}}},
        "artifacts": {"onnx_bytes": 88_000_000, "baseline_onnx_bytes": 87_000_000},
        "passed": True,
    }


def test_visual_tokens_reports_and_mixed_kinds(base):
    vis = _visual_report()
    tol = load_tolerances()
    same = compare(copy.deepcopy(vis), vis, tol)
    assert not same.failed and not same.missing
    assert {"llm.prefill_flops_saved", "params.tower", "accuracy.feature_cosine"} <= {r.name for r in same.rows}
    assert not any("attention_mass" in r.name for r in same.rows)  # information only: never gated
    worse = copy.deepcopy(vis)
    worse["llm"]["prefill_flops_saved"] = 0.5
    worse["accuracy"]["metrics"]["feature_cosine"]["reduced"] = 0.7
    worse["accuracy"]["metrics"]["attention_mass"]["value"] = 0.1
    assert {r.name for r in compare(worse, vis, tol).failed} == {
        "llm.prefill_flops_saved",
        "accuracy.feature_cosine",
        "accuracy.feature_cosine.drop",
    }
    # a ViT report against a visual-tokens baseline is refused (exit 7) unless the kind change is allowed
    with pytest.raises(UnreadableReport, match="another kind or model.*allow_kind_change=True"):
        compare(copy.deepcopy(base), vis, tol)
    # allowed: the common figures are compared; the baseline's figures the report lacks fail by default ...
    mixed = compare(copy.deepcopy(base), vis, tol, allow_kind_change=True)
    assert any("kind" in n for n in mixed.notes)
    assert {"llm.prefill_flops_saved", "params.tower"} <= {r.name for r in mixed.failed}
    assert {r.name for r in mixed.rows if r.current is not None and r.baseline is not None} >= {
        "accuracy.instance_top1",
        "speedup.b8",
    }
    # ... and are only listed with fail_missing: false
    relaxed = compare(
        copy.deepcopy(base), vis, load_tolerances(overrides={"fail_missing": False}), allow_kind_change=True
    )
    missing = {r.name for r in relaxed.missing}
    assert {"llm.prefill_flops_saved", "params.tower", "flops.ratio"} <= missing
    assert not any(r.name == "params.tower" for r in relaxed.failed)


def test_unknown_kind_compares_what_it_has(tmp_path, base):
    other = {
        "schema_version": 2,
        "kind": "vocab-trim",
        "model": {"params": 100},
        "accuracy": {"metrics": {"token_agreement": {"original": 1.0, "reduced": 0.99}}, "passed": True},
        "passed": True,
    }
    p = _write(tmp_path, other)
    res = run_cli("check", str(p), "--baseline", str(p))
    assert res.returncode == 0, res.stderr
    assert "accuracy.token_agreement" in res.stdout
    res = run_cli("check", str(p), "--baseline", str(BASELINE))
    assert res.returncode == 7 and "another kind or model" in res.stderr and "vocab-trim" in res.stderr, res.stderr
    res = run_cli("check", str(p), "--baseline", str(BASELINE), "--allow-kind-change", "--allow-missing")
    assert res.returncode == 6  # params differ (another model) — and the rest is listed as missing
    assert "MISSING" in res.stdout and "--allow-kind-change" in res.stdout


def test_lower_is_better_metrics_gate_the_right_way(base):
    """A metric whose `better` is lower (a max abs diff, a perplexity increase) fails when it grows."""
    rep = copy.deepcopy(base)
    rep["accuracy"]["metrics"]["in_vocab_max_abs_diff"] = {
        "original": 0.0,
        "reduced": 1e-6,
        "delta": 1e-6,
        "better": "lower",
        "threshold": {"max": 1e-5},
        "passed": True,
    }
    tol = load_tolerances()
    same = compare(copy.deepcopy(rep), rep, tol)
    assert {"accuracy.in_vocab_max_abs_diff", "accuracy.in_vocab_max_abs_diff.increase"} <= {r.name for r in same.rows}
    assert not same.failed
    better = copy.deepcopy(rep)
    better["accuracy"]["metrics"]["in_vocab_max_abs_diff"]["reduced"] = 0.0
    assert not compare(better, rep, tol).failed
    worse = copy.deepcopy(rep)
    worse["accuracy"]["metrics"]["in_vocab_max_abs_diff"]["reduced"] = 0.5
    assert {r.name for r in compare(worse, rep, tol).failed} >= {
        "accuracy.in_vocab_max_abs_diff",
        "accuracy.in_vocab_max_abs_diff.increase",
    }
