"""`tokexport check`: compare a report.json with a baseline report and gate on regressions (CI).

Every figure both reports carry is compared under a tolerance and gets PASS or FAIL; figures only one
of them carries are listed as MISSING (a failure only with ``fail_missing``), so reports of other kinds
(``visual-tokens``, or kinds added later) compare on what they share. Speed is compared only as
ratios measured within one run (speed-up of model.onnx over baseline.onnx, interleaved in the same
process), never as absolute times: a ratio survives a slower or busier machine, a millisecond does not.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError, UnreadableReport

SUPPORTED_SCHEMA_VERSIONS = (1,)

Direction = Literal["higher", "lower", "equal", "true"]


class Tol(BaseModel):
    """Allowed worsening of one figure: ``max(abs, rel × |baseline|)``."""

    model_config = ConfigDict(extra="forbid")
    abs: float = Field(0.0, ge=0)
    rel: float = Field(0.0, ge=0)

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
    metrics: dict[str, Tol] = Field(default_factory=dict, description="Per-metric overrides, by metric name.")
    speedup_factor: float = Field(0.85, gt=0, le=1,
                                  description="A measured speed-up may drop to this factor of the baseline's.")
    speedup_factors: dict[int, Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=dict,
                                              description="Per-batch override of speedup_factor, by batch size.")
    parity_factor: float = Field(10.0, ge=1, description="Parity max abs diff may grow to this factor of baseline.")
    parity_floor: float = Field(1e-5, ge=0, description="Baseline parity diffs below this count as this (float noise).")
    flops: Tol = Field(default_factory=lambda: Tol(rel=1e-6), description="FLOPs ratio / LLM prefill saving.")
    params: Tol = Field(default_factory=Tol, description="Parameter counts (a change means another model).")
    sizes: Tol = Field(default_factory=lambda: Tol(rel=0.01), description="ONNX file sizes in bytes.")
    fail_missing: bool = Field(False, description="Fail when a figure of the baseline is missing from the report.")


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


def load_report(path: str | Path, role: str = "report") -> dict:
    """Read a report.json; anything unusable is an ``UnreadableReport`` naming the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise UnreadableReport(f"{p}: {role} not found" + ("" if not p.exists() else " (not a file)")
                               + "; pass the report.json written by `tokexport convert`")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnreadableReport(f"{p}: {role} is not valid JSON ({e}); regenerate it with `tokexport convert`") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise UnreadableReport(f"{p}: {role} has no schema_version; not a tokexport report.json")
    if data["schema_version"] not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnreadableReport(f"{p}: {role} schema_version {data['schema_version']!r} is not supported by this "
                               f"tokexport (supported: {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); "
                               "compare reports written by the same tokexport release")
    return data


def load_tolerances(path: str | Path | None = None, overrides: dict | None = None) -> Tolerances:
    """Tolerances from an optional YAML file, then ``overrides`` (dotted keys, e.g. ``metrics.instance_top1.abs``)."""
    data: dict = {}
    where = "tolerances"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise InputError(f"{p}: tolerance file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{p}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
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
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise InputError(f"{where}: {loc}: {msg}") from None


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def figures(report: dict) -> dict[str, _Figure]:
    """Every comparable figure a report carries, keyed by a stable name. Kind-agnostic: sections are
    read when present, so a report of another kind yields what it has."""
    out: dict[str, _Figure] = {}
    for name, m in ((report.get("accuracy") or {}).get("metrics") or {}).items():
        if not isinstance(m, dict):
            continue
        if _num(m.get("reduced")):
            out[f"accuracy.{name}"] = _Figure(m["reduced"], "higher", f"accuracy/{name}")
            if _num(m.get("original")):
                out[f"accuracy.{name}.drop"] = _Figure(m["original"] - m["reduced"], "lower", f"accuracy/{name}")
    bench = report.get("bench") or {}
    for batch, b in (bench.get("batches") or {}).items():
        if isinstance(b, dict) and _num(b.get("speedup")):
            out[f"speedup.b{batch}"] = _Figure(b["speedup"], "higher", "speedup", str(batch))
    fl = bench.get("flops") or {}
    if _num(fl.get("reduced")) and _num(fl.get("baseline")) and fl["baseline"]:
        out["flops.ratio"] = _Figure(fl["reduced"] / fl["baseline"], "lower", "flops")
    llm = report.get("llm") or {}
    if _num(llm.get("prefill_flops_saved")):
        out["llm.prefill_flops_saved"] = _Figure(llm["prefill_flops_saved"], "higher", "flops")
    for key in ("parity", "parity_baseline"):
        par = report.get(key) or {}
        if _num(par.get("max_abs_diff")):
            out[f"{key}.max_abs_diff"] = _Figure(par["max_abs_diff"], "lower", "parity")
        if isinstance(par.get("passed"), bool):
            out[f"passed.{key}"] = _Figure(par["passed"], "true", "passed")
    model = report.get("model") or {}
    for key, name in (("params", "params.model"), ("tower_params", "params.tower")):
        if _num(model.get(key)):
            out[name] = _Figure(model[key], "equal", "params")
    art = report.get("artifacts") or {}
    for key in ("onnx_bytes", "baseline_onnx_bytes"):
        if _num(art.get(key)):
            out[f"size.{key.removesuffix('_bytes')}"] = _Figure(art[key], "lower", "sizes")
    if isinstance((report.get("accuracy") or {}).get("passed"), bool):
        out["passed.accuracy"] = _Figure(report["accuracy"]["passed"], "true", "passed")
    if isinstance(report.get("passed"), bool):
        out["passed.report"] = _Figure(report["passed"], "true", "passed")
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


def compare(report: dict, baseline: dict, tol: Tolerances) -> CheckResult:
    """Compare every figure of ``report`` with ``baseline`` (figures of either side that the other lacks
    are MISSING rows)."""
    notes = []
    kr, kb = report.get("kind", "?"), baseline.get("kind", "?")
    if kr != kb:
        notes.append(f"report kind {kr!r} differs from baseline kind {kb!r}: only the figures both carry are compared")
    rn, bn = (report.get("recipe") or {}).get("name"), (baseline.get("recipe") or {}).get("name")
    if rn != bn:
        notes.append(f"recipe name differs: report {rn!r}, baseline {bn!r}")
    fr, fb = figures(report), figures(baseline)
    rows = []
    for name, base in fb.items():
        cur = fr.get(name)
        if cur is None:
            rows.append(Row(name, base.value, None, "missing from the report",
                            "FAIL" if tol.fail_missing else "MISSING"))
            continue
        ok, rule = _judge(base, cur, tol)
        rows.append(Row(name, base.value, cur.value, rule, "PASS" if ok else "FAIL"))
    for name, cur in fr.items():
        if name not in fb:
            rows.append(Row(name, None, cur.value, "missing from the baseline", "MISSING"))
    if not any(r.status != "MISSING" for r in rows):
        notes.append("no figure is common to both reports: nothing was compared")
    return CheckResult(rows, notes)


def check(report_path: str | Path, baseline_path: str | Path, tol: Tolerances) -> CheckResult:
    """Load both reports (``UnreadableReport`` on a bad one) and compare them."""
    report = load_report(report_path, "report")
    baseline = load_report(baseline_path, "baseline")
    if report.get("schema_version") != baseline.get("schema_version"):
        raise UnreadableReport(f"{report_path}: schema_version {report['schema_version']} differs from the baseline's "
                               f"({baseline['schema_version']}); regenerate the baseline with this tokexport")
    return compare(report, baseline, tol)
