"""The report contract (tokexport.stages.metric, tokexport.stages.report_schema): verdicts, the rule that
a metric without a threshold never counts as passed, and the schema every task's report must meet."""

from __future__ import annotations

import copy
import json
import math

import pytest
from conftest import REPO

from tokexport.stages import metric as MC
from tokexport.stages.report_schema import report_schema, validate_report

BASELINE = REPO / "tests" / "baselines" / "dinov2-small-zero-tprune.report.json"


@pytest.mark.parametrize(
    "original,reduced,threshold,better,passed",
    [
        (0.9, 0.88, {"max_drop": 0.03}, "higher", True),
        (0.9, 0.86, {"max_drop": 0.03}, "higher", False),
        (1.0, 0.96, {"min": 0.95}, "higher", True),
        (1.0, 0.94, {"min": 0.95}, "higher", False),
        (0.0, 1e-6, {"max": 1e-5}, "lower", True),
        (0.0, 1e-4, {"max": 1e-5}, "lower", False),
        (2.0, 2.05, {"max_increase": 0.1}, "lower", True),
        (2.0, 2.2, {"max_increase": 0.1}, "lower", False),
        (1.0, 0.99, None, "higher", None),
        (1.0, math.nan, {"min": 0.5}, "higher", False),
    ],
)
def test_metric_verdicts(original, reduced, threshold, better, passed):
    m = MC.metric(original, reduced, threshold, better)
    assert m["passed"] is passed
    assert set(m) == {"original", "reduced", "delta", "better", "threshold", "passed"}
    if math.isfinite(reduced):
        assert m["delta"] == pytest.approx(reduced - original)


def test_unknown_threshold_key_is_refused():
    with pytest.raises(ValueError, match="unknown threshold keys"):
        MC.metric(1.0, 0.9, {"minimum": 0.5})


def test_a_metric_without_threshold_never_counts_as_passed():
    ungated = {"a": MC.metric(1.0, 0.99), "b": MC.info(0.5)}
    assert not MC.accuracy_passed(ungated)  # nothing verified
    assert MC.accuracy_passed({**ungated, "c": MC.metric(1.0, 0.99, {"min": 0.9})})
    assert not MC.accuracy_passed({**ungated, "c": MC.metric(1.0, 0.8, {"min": 0.9})})
    assert MC.failure_lines({"c": MC.metric(1.0, 0.8, {"min": 0.9})}) == ["accuracy: c 0.8 misses >= 0.9 (original 1)"]


def test_committed_baseline_meets_the_schema():
    rep = json.loads(BASELINE.read_text())
    assert validate_report(rep) == []
    schema = report_schema()
    assert {"parity", "accuracy", "bench", "environment", "artifacts"} <= set(schema["properties"])


@pytest.mark.parametrize(
    "break_it,where",
    [
        (lambda r: r.pop("environment"), "environment"),
        (lambda r: r["accuracy"]["metrics"]["instance_top1"].pop("better"), "instance_top1"),
        (lambda r: r["accuracy"]["metrics"]["instance_top1"].update(threshold=None, passed=True), "instance_top1"),
        (lambda r: r["bench"]["batches"]["8"].update(speedup=-1.0), "speedup"),
        (lambda r: r.update(kind="something-else"), "kind"),
        (lambda r: r.update(schema_version=1), "schema_version"),
    ],
)
def test_broken_reports_are_named(break_it, where):
    rep = json.loads(BASELINE.read_text())
    broken = copy.deepcopy(rep)
    break_it(broken)
    problems = validate_report(broken)
    assert problems and any(where in p for p in problems), problems


def test_report_schema_and_validate_commands(tmp_path):
    from test_cli_bad_input import run_cli

    res = run_cli("report", "schema")
    assert res.returncode == 0 and json.loads(res.stdout)["title"] == "Report"
    assert run_cli("report", "validate", str(BASELINE)).returncode == 0
    bad = json.loads(BASELINE.read_text())
    bad["accuracy"]["metrics"]["feature_cosine"].pop("better")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    res = run_cli("report", "validate", str(tmp_path / "bad.json"))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 7 and len(lines) == 1 and "feature_cosine" in lines[0], res.stderr


@pytest.mark.parametrize("content", [None, b"\xff\xfe not utf-8", b"{not json", b"[1, 2]"])
def test_report_validate_bad_files_one_line(tmp_path, content):
    from test_cli_bad_input import run_cli

    p = tmp_path / "r.json"
    if content is not None:
        p.write_bytes(content)
    res = run_cli("report", "validate", str(p))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 7 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(p) in lines[0]
