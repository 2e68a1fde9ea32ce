"""Device results: the device_results.json a bundle's verify_on_device.py writes, validated
(:class:`DeviceResultsSchema`), gated against the convert report the bundle came from
(:func:`compare_device`) and merged into it (:func:`merged_report`, `tokexport report merge`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import StrictBool, StrictStr, ValidationError

from ..errors import UnreadableReport
from ..files import read_json
from .figures import ALLOW_KIND_CHANGE, CheckResult, Row
from .schema import Count, Finite, Section, json_kind, parse_report

DEVICE_FORMAT = "tokexport-device-results"


class _DevRow(Section):
    output: StrictStr
    passed: StrictBool
    kind: Literal["float", "exact"] | None = None
    median_abs: Finite | None = None
    max_abs: Finite | None = None
    within: Finite | None = None
    cosine: Finite | None = None
    agreement: Finite | None = None
    problem: StrictStr | None = None


class _DevModel(Section):
    outputs: list[_DevRow]
    passed: StrictBool


class _DevBundleModel(Section):
    onnx: StrictStr
    source_sha256: StrictStr | None = None


class _DevBundle(Section):
    models: dict[StrictStr, _DevBundleModel]


class _DevSha(Section):
    files: Count
    passed: StrictBool
    problems: list[StrictStr]


class _DevRuntime(Section):
    name: StrictStr
    provider: StrictStr | None = None
    versions: dict[StrictStr, StrictStr]


class _TrtexecSummary(Section):
    throughput_qps: Finite | None = None
    latency_ms: dict[StrictStr, Finite] | None = None


class DeviceResultsSchema(Section):
    """device_results.json, as verify_on_device.py writes it (format_version 1)."""

    format: Literal["tokexport-device-results"]
    format_version: Literal[1]
    bundle: _DevBundle
    sha256: _DevSha
    runtime: _DevRuntime | None
    tolerances: dict[StrictStr, Finite]
    models: dict[StrictStr, _DevModel]
    trtexec: dict[StrictStr, _TrtexecSummary]
    passed: StrictBool


def is_device_results(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == DEVICE_FORMAT


def parse_device_results(data: Any, where: str = "device results") -> DeviceResultsSchema:
    """Validate a device_results.json; ``UnreadableReport`` (exit 7) naming the file and the field."""
    try:
        return DeviceResultsSchema.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(str(x) for x in err["loc"]) or "(top level)"
        what = "is missing" if err["type"] == "missing" else f"is {json_kind(err.get('input'))}: {err['msg'].lower()}"
        raise UnreadableReport(
            f"{where}: {name} {what}; not a device_results.json written by verify_on_device.py "
            "(run it again on the device)"
        ) from None


def _read_json(path: str | Path, role: str) -> Any:
    return read_json(Path(path), "device results", UnreadableReport, missing=f"{role} not found")


def load_device_results(path: str | Path) -> dict:
    data = _read_json(path, "device results")
    if not is_device_results(data):
        raise UnreadableReport(
            f'{path}: not a device_results.json (no "format": "{DEVICE_FORMAT}"); pass the file '
            "verify_on_device.py writes"
        )
    parse_device_results(data, str(path))
    return data


# the report's graph hash for each bundled graph name
_GRAPH_SHA = {"model": "onnx_sha256", "baseline": "baseline_onnx_sha256"}


def device_identity(dev: DeviceResultsSchema, report: dict) -> tuple[list[str], list[str]]:
    """(mismatches, unverifiable): bundled graphs whose source hash differs from the report's graph, and
    graphs whose hash cannot be compared (an older bundle, a graph the report does not name)."""
    arts = report.get("artifacts") if isinstance(report.get("artifacts"), dict) else {}
    bad, unknown = [], []
    for name, m in dev.bundle.models.items():
        want = arts.get(_GRAPH_SHA.get(name, ""))
        if m.source_sha256 is None or not isinstance(want, str):
            unknown.append(name)
        elif m.source_sha256 != want:
            bad.append(f"{name}.onnx ({m.source_sha256[:12]}… vs the report's {want[:12]}…)")
    return bad, unknown


def _device_row_value(r: _DevRow, tol: dict) -> tuple[float | bool | None, float | bool | None, str]:
    """(tolerance, value, rule) of one compared output."""
    if r.problem is not None:
        return None, False, r.problem
    if r.kind == "exact":
        return tol.get("min_agreement"), r.agreement, "exact agreement >= min_agreement"
    return (
        tol.get("median_atol"),
        r.median_abs,
        f"median |err| <= median_atol, >= {tol.get('quantile', 0):g} of elements within atol + rtol·|e|, "
        f"cosine >= {tol.get('min_cosine', 0):g} (max |err| {_fmt_num(r.max_abs)}, cosine {_fmt_num(r.cosine)})",
    )


def _fmt_num(v: float | None) -> str:
    return "?" if v is None else f"{v:.3g}"


def compare_device(
    device: dict | DeviceResultsSchema,
    report: dict,
    allow_kind_change: bool = False,
    labels: tuple[str, str] = ("device results", "report"),
) -> CheckResult:
    """Gate device results against the convert report they came from: the bundle's files matched
    manifest.json, a runtime ran every graph, every output agrees with the expected outputs within the
    bundle's tolerances. UnreadableReport (exit 7) when the bundled graphs are not the report's
    (unless ``allow_kind_change``)."""
    dl, rl = labels
    dev = device if isinstance(device, DeviceResultsSchema) else parse_device_results(device, dl)
    parse_report(report, rl, "baseline")
    notes: list[str] = []
    bad, unknown = device_identity(dev, report)
    if bad and not allow_kind_change:
        raise UnreadableReport(
            f"{dl}: the bundle's graphs are not {rl}'s: {'; '.join(bad)}; gate device results "
            f"against the report of the conversion they were bundled from, or pass {ALLOW_KIND_CHANGE}"
        )
    if bad:
        notes.append(f"the bundle's graphs differ from the report's ({'; '.join(bad)}; --allow-kind-change)")
    if unknown:
        notes.append(
            f"graph identity not verifiable for {', '.join(unknown)} (no source_sha256: a bundle written "
            "before device results existed, or a graph the report does not name)"
        )
    rows = [
        Row(
            "device.sha256",
            True,
            dev.sha256.passed,
            "every bundle file matches manifest.json",
            "PASS" if dev.sha256.passed else "FAIL",
            "; ".join(dev.sha256.problems[:5]),
        )
    ]
    if dev.runtime is None or not dev.models:
        rows.append(
            Row(
                "device.runtime",
                True,
                False,
                "a runtime ran the bundled graphs",
                "FAIL",
                str(getattr(dev, "problem", None) or "no runtime ran (see the device's output)"),
            )
        )
    tol = dict(dev.tolerances)
    for name, m in dev.models.items():
        for r in m.outputs:
            limit, value, rule = _device_row_value(r, tol)
            rows.append(Row(f"device.{name}.{r.output}", limit, value, rule, "PASS" if r.passed else "FAIL"))
    rows.append(
        Row("device.passed", True, dev.passed, "verify_on_device.py's verdict", "PASS" if dev.passed else "FAIL")
    )
    if dev.runtime is not None:
        v = ", ".join(f"{k} {val}" for k, val in dev.runtime.versions.items())
        notes.append(
            f"device runtime: {dev.runtime.name}"
            + (f" on {dev.runtime.provider}" if dev.runtime.provider else "")
            + f" ({v})"
        )
    lat = {n: (s.latency_ms or {}).get("median") for n, s in dev.trtexec.items()}
    for n, s in dev.trtexec.items():
        l_ms = s.latency_ms or {}
        notes.append(
            f"trtexec {n}: median {_fmt_num(l_ms.get('median'))} ms, p90 {_fmt_num(l_ms.get('p90'))} ms, "
            f"{_fmt_num(s.throughput_qps)} qps (not gated: one device, one run)"
        )
    if lat.get("baseline") and lat.get("model"):
        notes.append(
            f"device speed-up of model.engine over baseline.engine (trtexec medians): "
            f"{lat['baseline'] / lat['model']:.3f}×"
        )
    return CheckResult(rows, notes)


def merged_report(
    report: dict, device: dict, allow_kind_change: bool = False, labels: tuple[str, str] = ("report", "device results")
) -> dict:
    """``report`` with the device results under ``device_results`` (a new dict; neither input is modified).
    UnreadableReport when the bundled graphs are not the report's (unless ``allow_kind_change``)."""
    rl, dl = labels
    dev = parse_device_results(device, dl)
    parse_report(report, rl)
    bad, _ = device_identity(dev, report)
    if bad and not allow_kind_change:
        raise UnreadableReport(
            f"{dl}: the bundle's graphs are not {rl}'s: {'; '.join(bad)}; merge device results "
            f"into the report of the conversion they were bundled from, or pass {ALLOW_KIND_CHANGE}"
        )
    return {**report, "device_results": device}
