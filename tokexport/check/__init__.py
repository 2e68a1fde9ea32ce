"""`tokexport check`: compare a report.json with a baseline report and gate on regressions (CI).

The gate fails closed: anything it cannot trust is an error, never a silent pass.

* Exit 7 (``UnreadableReport``), one line naming the file and the figure: a report or baseline that is
  missing, not JSON, of an unknown schema; a figure that is NaN/±inf (bare, or written as null and listed
  in the report's ``non_finite``), not a number where a number belongs (a string, a list, an object, a
  boolean), or a mistyped section (``bench.batches`` a list, ``model`` a string, ...): the parts `check`
  reads are validated by a schema (:class:`ReportSchema`); a report of another kind, model or task than
  its baseline (unless ``allow_kind_change``); no comparable figure in both reports at all.
* Exit 6 (``RegressionError``): a figure regressed beyond its tolerance, or a figure of the baseline is
  missing from the report (``fail_missing``, on by default; ``fail_missing: false`` relaxes it).

Speed is compared only as ratios measured within one run (speed-up of model.onnx over baseline.onnx,
interleaved in the same process), never as absolute times: a ratio survives a slower or busier machine,
a millisecond does not.

Figures and their rule (direction, tolerance):

* ``accuracy.<metric>``: the reduced value, higher is better; ``accuracy.<metric>.drop`` (original −
  reduced), lower is better. Allowed worsening: ``max(abs, rel × |baseline|)`` (per metric overridable).
* ``speedup.b<N>``: measured speed-up at batch N; must stay >= ``speedup_factor`` × baseline.
* ``parity.max_abs_diff`` (both graphs): may grow to ``parity_factor`` × max(baseline, ``parity_floor``).
* ``flops.ratio`` (reduced ÷ baseline FLOPs) / ``llm.prefill_flops_saved``: deterministic, tight tolerance.
* ``params.*``: must stay equal; ``size.*`` (ONNX bytes): lower is better, relative tolerance.
* ``passed.*``: the report's own verdicts; a baseline PASS that became FAIL fails.

The package: :mod:`.schema` (the parts of a report.json `check` reads, reading a report),
:mod:`.tolerances` (what `check` lets pass), :mod:`.figures` (the figures, their rules, the comparison),
:mod:`.device` (device_results.json: gating it, merging it into a report) and :func:`check` here, which
loads both files and compares them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UnreadableReport
from ..files import read_json
from .device import (
    DEVICE_FORMAT,
    DeviceResultsSchema,
    compare_device,
    device_identity,
    is_device_results,
    load_device_results,
    merged_report,
    parse_device_results,
)
from .figures import CheckResult, Row, compare, figures
from .schema import SUPPORTED_SCHEMA_VERSIONS, ReportSchema, load_report, parse_report
from .tolerances import Tol, Tolerances, load_tolerances

__all__ = [
    "DEVICE_FORMAT",
    "SUPPORTED_SCHEMA_VERSIONS",
    "CheckResult",
    "DeviceResultsSchema",
    "ReportSchema",
    "Row",
    "Tol",
    "Tolerances",
    "check",
    "compare",
    "compare_device",
    "device_identity",
    "figures",
    "is_device_results",
    "load_device_results",
    "load_report",
    "load_tolerances",
    "merged_report",
    "parse_device_results",
    "parse_report",
]


def check(
    report_path: str | Path, baseline_path: str | Path, tol: Tolerances, allow_kind_change: bool = False
) -> CheckResult:
    """Load both reports (``UnreadableReport`` on a bad one) and compare them. A device_results.json in
    place of the report (what verify_on_device.py writes) is gated against the baseline report by
    :func:`compare_device`."""
    first = read_json(
        Path(report_path),
        "report or device results",
        UnreadableReport,
        missing="report not found; pass the report.json written by `tokexport convert`",
    )
    if is_device_results(first):
        device = load_device_results(report_path)
        baseline = load_report(baseline_path, "baseline")
        return compare_device(device, baseline, allow_kind_change, (str(report_path), str(baseline_path)))
    report = load_report(report_path, "report")
    baseline = load_report(baseline_path, "baseline")
    if report["schema_version"] != baseline["schema_version"]:
        raise UnreadableReport(
            f"{report_path}: schema_version {report['schema_version']} differs from the baseline's "
            f"({baseline['schema_version']}); regenerate the baseline with this tokexport"
        )
    return compare(report, baseline, tol, allow_kind_change, (str(report_path), str(baseline_path)))
