"""`tokexport check` fails closed: corrupted figures, mistyped sections, reports of another kind and
reports with nothing to compare never pass; bad tolerances and bad sweep/search numbers are one-line
input errors before anything runs; report.json is strict JSON (no bare NaN).

Every case starts from the committed real report (tests/baselines/dinov2-small-zero-tprune.report.json)."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from conftest import REPO
from sentinel import assert_unchanged, make_tree, snapshot
from test_cli_bad_input import assert_one_line_error, run_cli

from tokexport.check import compare, figures, load_tolerances
from tokexport.report import write_json

BASELINE = REPO / "tests" / "baselines" / "dinov2-small-zero-tprune.report.json"
CI_TOL = REPO / "tests" / "baselines" / "tolerances.yaml"
BASE = json.loads(BASELINE.read_text())

# figure family -> (where the value lives in a report, its dotted path, the check figures it feeds)
FAMILIES = {
    "accuracy-reduced": (
        lambda r: r["accuracy"]["metrics"]["instance_top1"],
        "reduced",
        "accuracy.metrics.instance_top1.reduced",
    ),
    "accuracy-original": (
        lambda r: r["accuracy"]["metrics"]["feature_cosine"],
        "original",
        "accuracy.metrics.feature_cosine.original",
    ),
    "speedup-b8": (lambda r: r["bench"]["batches"]["8"], "speedup", "bench.batches.8.speedup"),
    "speedup-b1": (lambda r: r["bench"]["batches"]["1"], "speedup", "bench.batches.1.speedup"),
    "parity": (lambda r: r["parity"], "max_abs_diff", "parity.max_abs_diff"),
    "parity-baseline": (lambda r: r["parity_baseline"], "max_abs_diff", "parity_baseline.max_abs_diff"),
    "flops-reduced": (lambda r: r["bench"]["flops"], "reduced", "bench.flops.reduced"),
    "flops-baseline": (lambda r: r["bench"]["flops"], "baseline", "bench.flops.baseline"),
}
_REMOVED = object()
CORRUPTIONS = {
    "nan": float("nan"),
    "+inf": float("inf"),
    "-inf": float("-inf"),
    "string": "0.9",
    "empty-list": [],
    "removed": _REMOVED,
}
MISSING_EXIT = 6  # docs/ci.md: a baseline figure missing from the report is a regression (fail_missing default)


def _write(tmp_path, rep, name="report.json"):
    p = tmp_path / name
    p.write_text(json.dumps(rep))  # json.dumps writes NaN/Infinity bare, as old reports did
    return p


def assert_unreadable(res, *needles):
    """Exit 7 with exactly one stderr line starting `error:`, no traceback, no table."""
    assert res.returncode == 7, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "PASS" not in res.stdout
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


def check(path, *extra, baseline=BASELINE):
    return run_cli("check", str(path), "--baseline", str(baseline), *extra)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_corrupted_figure_never_passes(tmp_path, family, corruption):
    where, key, path = FAMILIES[family]
    rep = copy.deepcopy(BASE)
    value = CORRUPTIONS[corruption]
    if value is _REMOVED:
        del where(rep)[key]
    else:
        where(rep)[key] = value
    p = _write(tmp_path, rep)
    # the default tolerances, and CI's for a removed figure (fail_missing is set there explicitly)
    for extra in ((), ("--tolerances", str(CI_TOL))) if value is _REMOVED else ((),):
        res = check(p, *extra)
        if value is _REMOVED:
            assert res.returncode == MISSING_EXIT, (res.stdout, res.stderr)
            assert "Traceback" not in res.stderr + res.stdout
            assert "FAIL" in res.stdout and "missing from the report" in res.stdout
            assert res.stderr.startswith("regression:") and "missing from the report" in res.stderr
        else:
            assert_unreadable(res, "report.json", path)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_corrupted_baseline_is_unreadable_too(tmp_path, family):
    where, key, path = FAMILIES[family]
    base = copy.deepcopy(BASE)
    where(base)[key] = float("nan")
    b = _write(tmp_path, base, "base.json")
    assert_unreadable(check(BASELINE, baseline=b), "base.json", "baseline", path)


def test_removed_figure_can_be_relaxed(tmp_path):
    rep = copy.deepcopy(BASE)
    del rep["bench"]["batches"]["8"]["speedup"]
    p = _write(tmp_path, rep)
    assert check(p).returncode == MISSING_EXIT
    for relax in (("--allow-missing",), ("--set", "fail_missing=false")):
        res = check(p, *relax)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "MISSING" in res.stdout
    # a null figure is a missing one
    rep["bench"]["batches"]["8"]["speedup"] = None
    assert check(_write(tmp_path, rep)).returncode == MISSING_EXIT


@pytest.mark.parametrize(
    "section, value, needle",
    [
        ("batches", [1, 8], "bench.batches"),
        ("model", "dinov2-small", "model"),
        ("bench", [], "bench"),
        ("accuracy", "high", "accuracy"),
        ("metric", 0.9, "accuracy.metrics.instance_top1"),
        ("params", True, "model.params"),
        ("params", 22056576.5, "model.params"),
        ("onnx_bytes", "88 MB", "artifacts.onnx_bytes"),
        ("passed", "yes", "passed"),
        ("batch-key", {"eight": {"speedup": 1.2}}, "bench.batches"),
        ("kind", None, "kind"),
    ],
)
def test_mistyped_section_is_unreadable(tmp_path, section, value, needle):
    rep = copy.deepcopy(BASE)
    if section == "batches":
        rep["bench"]["batches"] = value
    elif section == "metric":
        rep["accuracy"]["metrics"]["instance_top1"] = value
    elif section == "params":
        rep["model"]["params"] = value
    elif section == "onnx_bytes":
        rep["artifacts"]["onnx_bytes"] = value
    elif section == "batch-key":
        rep["bench"]["batches"].update(value)
    elif section == "kind":
        del rep["kind"]
    else:
        rep[section] = value
    assert_unreadable(check(_write(tmp_path, rep)), "report.json", needle)


def test_no_comparable_figure_is_unreadable(tmp_path):
    rep = copy.deepcopy(BASE)
    rep["accuracy"]["metrics"] = {}
    del rep["bench"]["batches"], rep["bench"]["flops"]
    for key in ("parity", "parity_baseline"):
        del rep[key]["max_abs_diff"]
    del rep["model"]["params"]
    del rep["artifacts"]["onnx_bytes"], rep["artifacts"]["baseline_onnx_bytes"]
    assert not {n for n in figures(rep) if not n.startswith("passed.")}  # only verdicts are left
    p = _write(tmp_path, rep)
    assert_unreadable(check(p), "report.json", "no figure comparable")
    assert_unreadable(check(p, "--allow-missing"), "no figure comparable")
    # verdicts gone too
    for key in ("passed", "accuracy", "parity", "parity_baseline"):
        rep.pop(key)
    assert_unreadable(check(_write(tmp_path, rep)), "no figure comparable")


def test_other_kind_or_model_needs_allow_kind_change(tmp_path):
    rep = copy.deepcopy(BASE)
    rep["kind"] = "vocab-trim"
    rep["model"]["source"] = "e5-small"
    p = _write(tmp_path, rep)
    assert_unreadable(check(p), "report.json", "vocab-trim", "e5-small", "--allow-kind-change")
    res = check(p, "--allow-kind-change")
    assert res.returncode == 0, res.stdout + res.stderr  # same figures: the kind check is the only obstacle
    assert "vocab-trim" in res.stdout and "--allow-kind-change" in res.stdout
    # the task alone differs
    rep = copy.deepcopy(BASE)
    rep["model"]["task"] = "image-classification"
    assert_unreadable(check(_write(tmp_path, rep)), "model.task", "image-classification")


def test_real_report_against_itself_passes():
    for extra in ((), ("--tolerances", str(CI_TOL))):
        res = check(BASELINE, *extra)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "0 failed, 0 missing from the report" in res.stdout and "FAIL" not in res.stdout
    res = compare(copy.deepcopy(BASE), BASE, load_tolerances(CI_TOL))
    assert not res.failed and not res.missing and len(res.rows) == len(figures(BASE))


@pytest.mark.parametrize(
    "text, field",
    [
        ("accuracy: {abs: .nan}\n", "accuracy.abs"),
        ("speedup_factor: .inf\n", "speedup_factor"),
        ("metrics: {instance_top1: {abs: -.inf}}\n", "metrics.instance_top1.abs"),
        ("metrics: {instance_top1: {abs: true}}\n", "metrics.instance_top1.abs"),
        ("fail_missing: 1\n", "fail_missing"),
        ("parity_floor: -1.0e-5\n", "parity_floor"),
        ("sizes: {rel: -0.01}\n", "sizes.rel"),
        ("speedup_factors: {8: .nan}\n", "speedup_factors.8"),
        ("speedup_factors: {0: 0.9}\n", "speedup_factors"),
        ("parity_factor: 0.5\n", "parity_factor"),
        ("flops: {rel: 1.0e-6, tolerance: 2}\n", "flops.tolerance"),
        ("speedup_factr: 0.8\n", "speedup_factr"),
    ],
)
def test_bad_tolerance_files_are_one_line_input_errors(tmp_path, text, field):
    t = tmp_path / "tol.yaml"
    t.write_text(text)
    assert_one_line_error(check(BASELINE, "--tolerances", str(t)), "tol.yaml", field)


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--accuracy-abs", "nan"), "--accuracy-abs"),
        (("--speedup-factor", "inf"), "--speedup-factor"),
        (("--set", "parity_factor=.nan"), "parity_factor"),
        (("--set", "metrics.instance_top1.abs=true"), "metrics.instance_top1.abs"),
        (("--set", "speedup_factor=["), "--set"),
    ],
)
def test_bad_tolerance_options_are_one_line_input_errors(args, needle):
    assert_one_line_error(check(BASELINE, *args), needle)


def _tree_with_recipe(tmp_path):
    tree = make_tree(tmp_path / "tree")
    shutil.copy(REPO / "tests" / "baselines" / "tolerances.yaml", tree / "keep-me.yaml")
    recipe = tree / "r.yaml"
    recipe.write_text(
        "name: r\nmodel: dinov2-small\nreduction: {method: zero-tprune, prune_layers: [2], keep_rate: [0.9]}\n"
    )
    return tree, recipe


@pytest.mark.parametrize(
    "cmd",
    [
        ("search", "--max-drop", "nan"),
        ("search", "--max-drop", "inf"),
        ("search", "--max-drop", "1.5"),
        ("search", "--max-drop", "150pp"),
        ("search", "--max-drop", "0.02", "--metric", "top5"),
        ("search", "--max-drop", "0.02", "--step", "0"),
        ("sweep", "--keep-rates", "0.5,nan"),
        ("sweep", "--keep-rates", "0.5,inf"),
        ("sweep", "--keep-rates", "0.5", "--jobs", "0"),
        ("sweep", "--keep-rates", "0.5", "--jobs", "100000"),
        ("sweep", "--keep-rates", "0.5", "--jobs", "two"),
        ("sweep", "--keep-rates", "0.5", "--metric", "top5"),
    ],
)
def test_bad_numbers_stop_sweep_and_search_at_once(tmp_path, cmd):
    tree, recipe = _tree_with_recipe(tmp_path)
    out = tree / "out"
    before = snapshot(tree)
    command, *args = cmd
    res = run_cli(command, str(recipe), *args, "--out", str(out))
    assert_one_line_error(res, args[-2])  # the option is named
    assert_unchanged(before, tree)  # nothing written, not even the output directory
    assert not out.exists()


def _strict_loads(text: str):
    def refuse(const):
        raise ValueError(f"bare {const} in report.json")

    return json.loads(text, parse_constant=refuse)


def test_write_json_never_writes_bare_nan(tmp_path):
    rep = copy.deepcopy(BASE)
    rep["bench"]["batches"]["8"]["speedup"] = float("nan")
    rep["parity"]["min_margin"] = float("inf")  # not a gated figure (a method without data-dependent choices)
    rep["bench"]["efficiency"] = float("-inf")
    path = tmp_path / "report.json"
    write_json(rep, path)
    data = _strict_loads(path.read_text())  # strict JSON
    assert data["bench"]["batches"]["8"]["speedup"] is None and data["parity"]["min_margin"] is None
    assert {(e["path"], e["value"]) for e in data["non_finite"]} == {
        ("bench.batches.8.speedup", "nan"),
        ("parity.min_margin", "inf"),
        ("bench.efficiency", "-inf"),
    }
    assert rep["bench"]["batches"]["8"]["speedup"] != rep["bench"]["batches"]["8"]["speedup"]  # input untouched
    # the NaN figure can never pass the gate, even written as null
    assert_unreadable(check(path), "report.json", "bench.batches.8.speedup", "non_finite")
    assert_unreadable(check(path, "--allow-missing"), "bench.batches.8.speedup")
    # a non-finite value outside the gated figures only adds a note
    ok = copy.deepcopy(BASE)
    ok["parity"]["min_margin"] = float("inf")
    write_json(ok, path)
    assert "non_finite" in _strict_loads(path.read_text())
    res = check(path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parity.min_margin" in res.stdout
    # a finite report is written as before, without a non_finite list
    write_json(BASE, path)
    assert _strict_loads(path.read_text()) == BASE
