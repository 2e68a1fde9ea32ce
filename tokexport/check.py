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
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)

from .errors import InputError, UnreadableReport
from .files import read_json, read_yaml

SUPPORTED_SCHEMA_VERSIONS = (2,)  # the report contract of tokexport.stages.report_schema

Direction = Literal["higher", "lower", "equal", "true"]

# -- tolerances ------------------------------------------------------------------------------------------

# A tolerance number: finite, a real number (``true`` is not 1), an int is fine.
_TolNum = Annotated[float, Strict(), Field(allow_inf_nan=False)]


def _batch_size(v: Any) -> Any:
    """A ``speedup_factors`` key: a batch size (YAML gives an int, ``--set`` a digit string); never a bool."""
    if isinstance(v, bool):
        raise ValueError("a batch size is a positive integer, not a boolean")
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return v


_BatchSize = Annotated[StrictInt, BeforeValidator(_batch_size), Field(gt=0)]


class Tol(BaseModel):
    """Allowed worsening of one figure: ``max(abs, rel × |baseline|)``."""

    model_config = ConfigDict(extra="forbid")
    abs: _TolNum = Field(0.0, ge=0)
    rel: _TolNum = Field(0.0, ge=0)

    def allowance(self, baseline: float) -> float:
        return max(self.abs, self.rel * abs(baseline))

    def text(self) -> str:
        parts = ([f"{self.abs:g}"] if self.abs else []) + ([f"{100 * self.rel:g}%"] if self.rel else [])
        return " or ".join(parts) or "0"


class Tolerances(BaseModel):
    """What `check` lets pass. Defaults suit a rerun on the same kind of machine; see docs/ci.md."""

    model_config = ConfigDict(extra="forbid")
    accuracy: Tol = Field(default_factory=lambda: Tol(abs=0.01),
                          description="Every accuracy metric (reduced value and drop) unless listed in `metrics`.")
    metrics: dict[StrictStr, Tol] = Field(default_factory=dict, description="Per-metric overrides, by metric name.")
    speedup_factor: _TolNum = Field(0.85, gt=0, le=1,
                                    description="A measured speed-up may drop to this factor of the baseline's.")
    speedup_factors: dict[_BatchSize, Annotated[_TolNum, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="Per-batch override of speedup_factor, by batch size.")
    parity_factor: _TolNum = Field(10.0, ge=1, description="Parity max abs diff may grow to this factor of baseline.")
    parity_floor: _TolNum = Field(1e-5, ge=0,
                                  description="Baseline parity diffs below this count as this (float noise).")
    flops: Tol = Field(default_factory=lambda: Tol(rel=1e-6), description="FLOPs ratio / LLM prefill saving.")
    params: Tol = Field(default_factory=Tol, description="Parameter counts (a change means another model).")
    sizes: Tol = Field(default_factory=lambda: Tol(rel=0.01), description="ONNX file sizes in bytes.")
    fail_missing: StrictBool = Field(True, description="Fail when a figure of the baseline is missing from the "
                                                       "report (default; false lists it as MISSING only).")


# -- the parts of a report.json that `check` reads ----------------------------------------------------------

_Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # a JSON number, finite; not a boolean
_Count = Annotated[StrictInt, Field(ge=0, le=2**62)]  # parameters, bytes
_BatchKey = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,5}$")]


class _Section(BaseModel):
    # everything `check` does not read is kept and not validated
    model_config = ConfigDict(extra="allow")


class _Metric(_Section):
    original: _Finite | None = None
    reduced: _Finite | None = None
    better: Literal["higher", "lower"] | None = None
    info: StrictBool | None = None


class _Accuracy(_Section):
    metrics: dict[StrictStr, _Metric] | None = None
    passed: StrictBool | None = None


class _Batch(_Section):
    speedup: Annotated[_Finite, Field(gt=0)] | None = None


class _Flops(_Section):
    baseline: Annotated[_Finite, Field(gt=0)] | None = None
    reduced: Annotated[_Finite, Field(ge=0)] | None = None


class _Bench(_Section):
    batches: dict[_BatchKey, _Batch] | None = None
    flops: _Flops | None = None


class _Llm(_Section):
    prefill_flops_saved: _Finite | None = None


class _Parity(_Section):
    max_abs_diff: Annotated[_Finite, Field(ge=0)] | None = None
    passed: StrictBool | None = None


class _Model(_Section):
    source: StrictStr | None = None
    task: StrictStr | None = None
    params: _Count | None = None
    tower_params: _Count | None = None
    params_trimmed: _Count | None = None


class _Artifacts(_Section):
    onnx_bytes: _Count | None = None
    baseline_onnx_bytes: _Count | None = None


class _Recipe(_Section):
    name: StrictStr | None = None


class _NonFinite(_Section):
    path: StrictStr
    value: StrictStr | None = None


class _DeviceVerdict(_Section):
    passed: StrictBool


class ReportSchema(_Section):
    """The sections and figures of a report.json that `check` reads, typed: figures are finite JSON numbers
    (or null/absent = missing), sections are objects, verdicts are booleans. Other keys are not checked."""

    schema_version: StrictInt
    kind: StrictStr
    recipe: _Recipe | None = None
    model: _Model | None = None
    accuracy: _Accuracy | None = None
    bench: _Bench | None = None
    llm: _Llm | None = None
    parity: _Parity | None = None
    parity_baseline: _Parity | None = None
    artifacts: _Artifacts | None = None
    passed: StrictBool | None = None
    non_finite: list[_NonFinite] | None = None
    device_results: _DeviceVerdict | None = None


# Paths (dotted, as report.write_json names them in ``non_finite``) of the values `check` turns into figures.
_READ_PATHS = re.compile(r"^(accuracy\.metrics\.[^.]+\.(original|reduced)|bench\.batches\.[^.]+\.speedup"
                         r"|bench\.flops\.(baseline|reduced)|llm\.prefill_flops_saved"
                         r"|parity(_baseline)?\.max_abs_diff|model\.(params|tower_params)"
                         r"|artifacts\.(onnx_bytes|baseline_onnx_bytes))$")


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {json.dumps(v)}"
    if isinstance(v, str):
        return f"the string {json.dumps(v[:40] + ('…' if len(v) > 40 else ''), ensure_ascii=False)}"
    if isinstance(v, list):
        return "an empty list" if not v else f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, float) and not math.isfinite(v):
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(v)]
    return repr(v)[:40]


_EXPECTED = {"float_type": "a number", "int_type": "an integer", "bool_type": "true or false",
             "string_type": "a string", "dict_type": "an object (a section)", "model_type": "an object (a section)",
             "model_attributes_type": "an object (a section)", "list_type": "a list",
             "finite_number": "a finite number"}


def _schema_error(where: str, role: str, e: ValidationError) -> UnreadableReport:
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    typ, inp = err["type"], err.get("input")
    if loc and loc[-1] == "[key]":
        return UnreadableReport(f"{where}: {role} {'.'.join(loc[:-1])}: key {json.dumps(inp)} is not a batch size "
                                "(a positive integer); regenerate it with `tokexport convert`")
    name = ".".join(loc) or "(top level)"
    if typ == "missing":
        what = "is missing"
    elif typ in _EXPECTED:
        what = f"is {_json_kind(inp)}, expected {_EXPECTED[typ]}"
    else:
        what = f"is {_json_kind(inp)}: {err['msg'][0].lower()}{err['msg'][1:]}"
    return UnreadableReport(f"{where}: {role} {name} {what}; the gate cannot read it (regenerate it with "
                            "`tokexport convert`)")


def parse_report(data: Any, where: str = "report", role: str = "report", gate: bool = True) -> ReportSchema:
    """Validate the parts of a report `check` reads; ``UnreadableReport`` (exit 7) naming the file and the
    figure on a mistyped section, a non-numeric or non-finite figure, or (``gate``) a figure the report
    itself records as non-finite (written as null by ``report.write_json``: honest, but nothing to gate)."""
    if isinstance(data, ReportSchema):
        return data
    try:
        rep = ReportSchema.model_validate(data)
    except ValidationError as e:
        raise _schema_error(where, role, e) from None
    for nf in (rep.non_finite or []) if gate else []:
        if _READ_PATHS.match(nf.path):
            raise UnreadableReport(f"{where}: {role} figure {nf.path} was {nf.value or 'not finite'} when the report "
                                   "was written (stored as null, listed in non_finite); a non-finite figure cannot "
                                   "pass the gate")
    return rep


def load_report(path: str | Path, role: str = "report", gate: bool = True) -> dict:
    """Read a report.json; anything unusable is an ``UnreadableReport`` naming the file and the fix
    (``gate=False``: a figure the report records as non-finite is allowed, :func:`parse_report`)."""
    p = Path(path)
    data = read_json(p, "report", UnreadableReport, label=None if role == "report" else role,
                     missing="not found; pass the report.json written by `tokexport convert`")
    if not isinstance(data, dict) or "schema_version" not in data:
        raise UnreadableReport(f"{p}: {role} has no schema_version; not a tokexport report.json")
    sv = data["schema_version"]
    if type(sv) is not int or sv not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnreadableReport(f"{p}: {role} schema_version {_json_kind(sv)} is not supported by this "
                               f"tokexport (supported: {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); "
                               "compare reports written by the same tokexport release")
    parse_report(data, str(p), role, gate)
    return data


def load_tolerances(path: str | Path | None = None, overrides: dict | None = None,
                    labels: dict[str, str] | None = None) -> Tolerances:
    """Tolerances from an optional YAML file, then ``overrides`` (dotted keys, e.g. ``metrics.instance_top1.abs``).
    ``labels`` names the command-line option an override came from (default ``--set KEY``)."""
    data: dict = {}
    where = "tolerances"
    if path is not None:
        p = Path(path)
        where = str(p)
        data = read_yaml(p, "tolerances", missing="tolerance file not found") or {}
        if not isinstance(data, dict):
            raise InputError(f"{p}: a tolerance file is a YAML mapping (see docs/ci.md)")
    for key, value in (overrides or {}).items():
        cur = data
        *parents, last = key.split(".")
        for part in parents:
            nxt = cur.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise InputError(f"--set {key}: {part} is not a section")
            cur = nxt
        cur[last] = value
    try:
        return Tolerances.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"] if x != "[key]") or "(top level)"
        if loc in (overrides or {}):
            where = (labels or {}).get(loc, "--set")
        typ = err["type"]
        if typ == "extra_forbidden":
            msg = "unknown field"
        elif typ in _EXPECTED or typ in ("greater_than", "greater_than_equal", "less_than_equal"):
            msg = f"{_json_kind(err.get('input'))} is not allowed: " + (
                f"expected {_EXPECTED[typ]}" if typ in _EXPECTED else err["msg"].lower())
        else:
            msg = err["msg"].removeprefix("Value error, ")
        raise InputError(f"{where}: {loc}: {msg}") from None


# -- figures ------------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One compared figure."""

    name: str
    baseline: float | bool | None
    current: float | bool | None
    rule: str
    status: Literal["PASS", "FAIL", "MISSING"]
    note: str = ""


@dataclass
class _Figure:
    value: float | bool
    direction: Direction
    group: str  # which tolerance applies: accuracy/<metric> | speedup | parity | flops | params | sizes | passed
    batch: str | None = None  # speed-ups: the batch size


def figures(report: dict | ReportSchema, where: str = "report") -> dict[str, _Figure]:
    """Every comparable figure a report carries, keyed by a stable name. Kind-agnostic: sections are
    read when present, so a report of another kind yields what it has. A mistyped or non-finite figure is
    an ``UnreadableReport``; an absent (or null) one is simply not there."""
    rep = parse_report(report, where)
    out: dict[str, _Figure] = {}
    acc = rep.accuracy
    for name, m in ((acc.metrics if acc else None) or {}).items():
        if m.info:  # information only: gates nothing, here neither
            continue
        if m.reduced is not None:
            higher = (m.better or "higher") == "higher"
            out[f"accuracy.{name}"] = _Figure(m.reduced, "higher" if higher else "lower", f"accuracy/{name}")
            if m.original is not None:  # the loss against the original, lower is better either way
                loss = m.original - m.reduced if higher else m.reduced - m.original
                out[f"accuracy.{name}.{'drop' if higher else 'increase'}"] = _Figure(loss, "lower", f"accuracy/{name}")
    bench = rep.bench
    for batch, b in ((bench.batches if bench else None) or {}).items():
        if b.speedup is not None:
            out[f"speedup.b{batch}"] = _Figure(b.speedup, "higher", "speedup", batch)
    fl = bench.flops if bench else None
    if fl is not None and fl.reduced is not None and fl.baseline is not None:
        out["flops.ratio"] = _Figure(fl.reduced / fl.baseline, "lower", "flops")
    if rep.llm is not None and rep.llm.prefill_flops_saved is not None:
        out["llm.prefill_flops_saved"] = _Figure(rep.llm.prefill_flops_saved, "higher", "flops")
    for key in ("parity", "parity_baseline"):
        par = getattr(rep, key)
        if par is None:
            continue
        if par.max_abs_diff is not None:
            out[f"{key}.max_abs_diff"] = _Figure(par.max_abs_diff, "lower", "parity")
        if par.passed is not None:
            out[f"passed.{key}"] = _Figure(par.passed, "true", "passed")
    if rep.model is not None:
        for key, name in (("params", "params.model"), ("tower_params", "params.tower"),
                          ("params_trimmed", "params.trimmed")):
            if getattr(rep.model, key) is not None:
                out[name] = _Figure(getattr(rep.model, key), "equal", "params")
    if rep.artifacts is not None:
        for key in ("onnx_bytes", "baseline_onnx_bytes"):
            if getattr(rep.artifacts, key) is not None:
                out[f"size.{key.removesuffix('_bytes')}"] = _Figure(getattr(rep.artifacts, key), "lower", "sizes")
    if acc is not None and acc.passed is not None:
        out["passed.accuracy"] = _Figure(acc.passed, "true", "passed")
    if rep.passed is not None:
        out["passed.report"] = _Figure(rep.passed, "true", "passed")
    if rep.device_results is not None:  # `tokexport report merge`: the device's verdict
        out["passed.device"] = _Figure(rep.device_results.passed, "true", "passed")
    for name, f in out.items():  # derived figures (a drop, a ratio) of extreme inputs
        if not isinstance(f.value, bool) and not math.isfinite(f.value):
            raise UnreadableReport(f"{where}: figure {name} is not finite ({f.value}); the gate cannot compare it")
    return out


def _judge(base: _Figure, cur: _Figure, tol: Tolerances) -> tuple[bool, str]:
    """(passed, rule text) for one figure present in both reports."""
    b, c = base.value, cur.value
    if base.direction == "true":
        return (bool(c) or not bool(b)), "stays PASS"
    if base.group.startswith("accuracy/"):
        t = tol.metrics.get(base.group.split("/", 1)[1], tol.accuracy)
    elif base.group == "speedup":
        factor = tol.speedup_factors.get(int(base.batch), tol.speedup_factor)
        limit = b * factor
        return c >= limit, f">= {factor:g}×base = {limit:.3f}"
    elif base.group == "parity":
        limit = max(b, tol.parity_floor) * tol.parity_factor
        return c <= limit, f"<= {tol.parity_factor:g}×max(base, {tol.parity_floor:g}) = {limit:.2g}"
    else:
        t = {"flops": tol.flops, "params": tol.params, "sizes": tol.sizes}[base.group]
    a = t.allowance(b)
    if base.direction == "higher":
        return c >= b - a - 1e-12, f">= base − {t.text()}"
    if base.direction == "lower":
        return c <= b + a + 1e-12, f"<= base + {t.text()}"
    return abs(c - b) <= a + 1e-12, f"= base ± {t.text()}"


@dataclass
class CheckResult:
    rows: list[Row]
    notes: list[str]

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]

    @property
    def missing(self) -> list[Row]:
        return [r for r in self.rows if r.status == "MISSING"]

    def as_dict(self) -> dict:
        return {"passed": not self.failed, "rows": [asdict(r) for r in self.rows], "notes": self.notes}


def _identity(rep: ReportSchema) -> dict[str, str | None]:
    """What makes two reports comparable: the kind of report, the model (as the recipe named it), the task."""
    return {"kind": rep.kind, "model.source": rep.model.source if rep.model else None,
            "model.task": rep.model.task if rep.model else None}


def compare(report: dict | ReportSchema, baseline: dict | ReportSchema, tol: Tolerances,
            allow_kind_change: bool = False, labels: tuple[str, str] = ("report", "baseline")) -> CheckResult:
    """Compare every figure of ``report`` with ``baseline``. Baseline figures the report lacks FAIL (or are
    MISSING rows with ``tol.fail_missing`` false); report figures the baseline lacks are MISSING rows.
    ``UnreadableReport`` on a mistyped/non-finite figure, on reports of another kind/model/task (unless
    ``allow_kind_change``) and when no figure can be compared at all."""
    rl, bl = labels
    rep, base = parse_report(report, rl, "report"), parse_report(baseline, bl, "baseline")
    notes = []
    ir, ib = _identity(rep), _identity(base)
    diffs = [f"{k} {ir[k]!r} vs baseline {ib[k]!r}" for k in ir if ir[k] != ib[k]]
    if diffs and not allow_kind_change:
        raise UnreadableReport(f"{rl}: another kind or model than {bl} ({'; '.join(diffs)}); gate a "
                               "report against a baseline of the same kind, model and task, or pass "
                               "--allow-kind-change")
    if diffs:
        notes.append(f"report differs from the baseline ({'; '.join(diffs)}; --allow-kind-change): figures of one "
                     "side only are listed" + (" and fail (fail_missing)" if tol.fail_missing else " as MISSING"))
    rn, bn = rep.recipe.name if rep.recipe else None, base.recipe.name if base.recipe else None
    if rn != bn:
        notes.append(f"recipe name differs: report {rn!r}, baseline {bn!r}")
    for label, r in (("report", rep), ("baseline", base)):
        other = [nf.path for nf in r.non_finite or []]
        if other:
            notes.append(f"the {label} records non-finite values outside the gated figures (written as null): "
                         + ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else ""))
    fr, fb = figures(rep, rl), figures(base, bl)
    comparable = [n for n in fb if n in fr and fb[n].group != "passed"]
    if not comparable:
        raise UnreadableReport(f"{rl}: no figure comparable with {bl} (no accuracy, speed-up, parity, "
                               "FLOPs, parameter or size figure in both): nothing to gate; pass the report.json "
                               "`tokexport convert` writes, with verification and bench enabled")
    rows = []
    for name, b in fb.items():
        cur = fr.get(name)
        if cur is None:
            rows.append(Row(name, b.value, None, "missing from the report",
                            "FAIL" if tol.fail_missing else "MISSING"))
            continue
        ok, rule = _judge(b, cur, tol)
        rows.append(Row(name, b.value, cur.value, rule, "PASS" if ok else "FAIL"))
    for name, cur in fr.items():
        if name not in fb:
            rows.append(Row(name, None, cur.value, "missing from the baseline", "MISSING"))
    return CheckResult(rows, notes)


def check(report_path: str | Path, baseline_path: str | Path, tol: Tolerances,
          allow_kind_change: bool = False) -> CheckResult:
    """Load both reports (``UnreadableReport`` on a bad one) and compare them. A device_results.json in
    place of the report (what verify_on_device.py writes) is gated against the baseline report by
    :func:`compare_device`."""
    first = read_json(Path(report_path), "report or device results", UnreadableReport,
                      missing="report not found; pass the report.json written by `tokexport convert`")
    if is_device_results(first):
        device = load_device_results(report_path)
        baseline = load_report(baseline_path, "baseline")
        return compare_device(device, baseline, allow_kind_change, (str(report_path), str(baseline_path)))
    report = load_report(report_path, "report")
    baseline = load_report(baseline_path, "baseline")
    if report["schema_version"] != baseline["schema_version"]:
        raise UnreadableReport(f"{report_path}: schema_version {report['schema_version']} differs from the baseline's "
                               f"({baseline['schema_version']}); regenerate the baseline with this tokexport")
    return compare(report, baseline, tol, allow_kind_change, (str(report_path), str(baseline_path)))


# -- device results (verify_on_device.py's device_results.json) -------------------------------------------

DEVICE_FORMAT = "tokexport-device-results"


class _DevRow(_Section):
    output: StrictStr
    passed: StrictBool
    kind: Literal["float", "exact"] | None = None
    median_abs: _Finite | None = None
    max_abs: _Finite | None = None
    within: _Finite | None = None
    cosine: _Finite | None = None
    agreement: _Finite | None = None
    problem: StrictStr | None = None


class _DevModel(_Section):
    outputs: list[_DevRow]
    passed: StrictBool


class _DevBundleModel(_Section):
    onnx: StrictStr
    source_sha256: StrictStr | None = None


class _DevBundle(_Section):
    models: dict[StrictStr, _DevBundleModel]


class _DevSha(_Section):
    files: _Count
    passed: StrictBool
    problems: list[StrictStr]


class _DevRuntime(_Section):
    name: StrictStr
    provider: StrictStr | None = None
    versions: dict[StrictStr, StrictStr]


class _TrtexecSummary(_Section):
    throughput_qps: _Finite | None = None
    latency_ms: dict[StrictStr, _Finite] | None = None


class DeviceResultsSchema(_Section):
    """device_results.json, as verify_on_device.py writes it (format_version 1)."""

    format: Literal["tokexport-device-results"]
    format_version: Literal[1]
    bundle: _DevBundle
    sha256: _DevSha
    runtime: _DevRuntime | None
    tolerances: dict[StrictStr, _Finite]
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
        what = "is missing" if err["type"] == "missing" else f"is {_json_kind(err.get('input'))}: {err['msg'].lower()}"
        raise UnreadableReport(f"{where}: {name} {what}; not a device_results.json written by verify_on_device.py "
                               "(run it again on the device)") from None


def _read_json(path: str | Path, role: str) -> Any:
    return read_json(Path(path), "device results", UnreadableReport, missing=f"{role} not found")


def load_device_results(path: str | Path) -> dict:
    data = _read_json(path, "device results")
    if not is_device_results(data):
        raise UnreadableReport(f"{path}: not a device_results.json (no \"format\": \"{DEVICE_FORMAT}\"); pass the file "
                               "verify_on_device.py writes")
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
    return (tol.get("median_atol"), r.median_abs,
            f"median |err| <= median_atol, >= {tol.get('quantile', 0):g} of elements within atol + rtol·|e|, "
            f"cosine >= {tol.get('min_cosine', 0):g} (max |err| {_fmt_num(r.max_abs)}, cosine {_fmt_num(r.cosine)})")


def _fmt_num(v: float | None) -> str:
    return "?" if v is None else f"{v:.3g}"


def compare_device(device: dict | DeviceResultsSchema, report: dict, allow_kind_change: bool = False,
                   labels: tuple[str, str] = ("device results", "report")) -> CheckResult:
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
        raise UnreadableReport(f"{dl}: the bundle's graphs are not {rl}'s: {'; '.join(bad)}; gate device results "
                               "against the report of the conversion they were bundled from, or pass --allow-kind-change")
    if bad:
        notes.append(f"the bundle's graphs differ from the report's ({'; '.join(bad)}; --allow-kind-change)")
    if unknown:
        notes.append(f"graph identity not verifiable for {', '.join(unknown)} (no source_sha256: a bundle written "
                     "before device results existed, or a graph the report does not name)")
    rows = [Row("device.sha256", True, dev.sha256.passed, "every bundle file matches manifest.json",
                "PASS" if dev.sha256.passed else "FAIL",
                "; ".join(dev.sha256.problems[:5]))]
    if dev.runtime is None or not dev.models:
        rows.append(Row("device.runtime", True, False, "a runtime ran the bundled graphs", "FAIL",
                        str(getattr(dev, "problem", None) or "no runtime ran (see the device's output)")))
    tol = dict(dev.tolerances)
    for name, m in dev.models.items():
        for r in m.outputs:
            limit, value, rule = _device_row_value(r, tol)
            rows.append(Row(f"device.{name}.{r.output}", limit, value, rule, "PASS" if r.passed else "FAIL"))
    rows.append(Row("device.passed", True, dev.passed, "verify_on_device.py's verdict", "PASS" if dev.passed else "FAIL"))
    if dev.runtime is not None:
        v = ", ".join(f"{k} {val}" for k, val in dev.runtime.versions.items())
        notes.append(f"device runtime: {dev.runtime.name}" + (f" on {dev.runtime.provider}" if dev.runtime.provider
                                                               else "") + f" ({v})")
    lat = {n: (s.latency_ms or {}).get("median") for n, s in dev.trtexec.items()}
    for n, s in dev.trtexec.items():
        l_ms = s.latency_ms or {}
        notes.append(f"trtexec {n}: median {_fmt_num(l_ms.get('median'))} ms, p90 {_fmt_num(l_ms.get('p90'))} ms, "
                     f"{_fmt_num(s.throughput_qps)} qps (not gated: one device, one run)")
    if lat.get("baseline") and lat.get("model"):
        notes.append(f"device speed-up of model.engine over baseline.engine (trtexec medians): "
                     f"{lat['baseline'] / lat['model']:.3f}×")
    return CheckResult(rows, notes)


def merged_report(report: dict, device: dict, allow_kind_change: bool = False,
                  labels: tuple[str, str] = ("report", "device results")) -> dict:
    """``report`` with the device results under ``device_results`` (a new dict; neither input is modified).
    UnreadableReport when the bundled graphs are not the report's (unless ``allow_kind_change``)."""
    rl, dl = labels
    dev = parse_device_results(device, dl)
    parse_report(report, rl)
    bad, _ = device_identity(dev, report)
    if bad and not allow_kind_change:
        raise UnreadableReport(f"{dl}: the bundle's graphs are not {rl}'s: {'; '.join(bad)}; merge device results "
                               "into the report of the conversion they were bundled from, or pass --allow-kind-change")
    return {**report, "device_results": device}
