"""The figures `tokexport check` compares: every comparable figure of a report (:func:`figures`), the rule
each one is judged by (direction, tolerance), and the comparison of a report with its baseline
(:func:`compare`) into rows of PASS, FAIL or MISSING (:class:`CheckResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from ..errors import UnreadableReport, option
from .schema import ReportSchema, parse_report
from .tolerances import Tolerances

Direction = Literal["higher", "lower", "equal", "true"]
# the argument that lets reports of another kind, model or task be compared (the CLI prints --allow-kind-change)
ALLOW_KIND_CHANGE = option("allow_kind_change", "allow_kind_change=True")


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
        for key, name in (
            ("params", "params.model"),
            ("tower_params", "params.tower"),
            ("params_trimmed", "params.trimmed"),
        ):
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
    return {
        "kind": rep.kind,
        "model.source": rep.model.source if rep.model else None,
        "model.task": rep.model.task if rep.model else None,
    }


def compare(
    report: dict | ReportSchema,
    baseline: dict | ReportSchema,
    tol: Tolerances,
    allow_kind_change: bool = False,
    labels: tuple[str, str] = ("report", "baseline"),
) -> CheckResult:
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
        raise UnreadableReport(
            f"{rl}: another kind or model than {bl} ({'; '.join(diffs)}); gate a "
            "report against a baseline of the same kind, model and task, or pass "
            f"{ALLOW_KIND_CHANGE}"
        )
    if diffs:
        notes.append(
            f"report differs from the baseline ({'; '.join(diffs)}; --allow-kind-change): figures of one "
            "side only are listed" + (" and fail (fail_missing)" if tol.fail_missing else " as MISSING")
        )
    rn, bn = rep.recipe.name if rep.recipe else None, base.recipe.name if base.recipe else None
    if rn != bn:
        notes.append(f"recipe name differs: report {rn!r}, baseline {bn!r}")
    for label, r in (("report", rep), ("baseline", base)):
        other = [nf.path for nf in r.non_finite or []]
        if other:
            notes.append(
                f"the {label} records non-finite values outside the gated figures (written as null): "
                + ", ".join(other[:5])
                + (f" and {len(other) - 5} more" if len(other) > 5 else "")
            )
    fr, fb = figures(rep, rl), figures(base, bl)
    comparable = [n for n in fb if n in fr and fb[n].group != "passed"]
    if not comparable:
        raise UnreadableReport(
            f"{rl}: no figure comparable with {bl} (no accuracy, speed-up, parity, "
            "FLOPs, parameter or size figure in both): nothing to gate; pass the report.json "
            "`tokexport convert` writes, with verification and bench enabled"
        )
    rows = []
    for name, b in fb.items():
        cur = fr.get(name)
        if cur is None:
            rows.append(Row(name, b.value, None, "missing from the report", "FAIL" if tol.fail_missing else "MISSING"))
            continue
        ok, rule = _judge(b, cur, tol)
        rows.append(Row(name, b.value, cur.value, rule, "PASS" if ok else "FAIL"))
    for name, cur in fr.items():
        if name not in fb:
            rows.append(Row(name, None, cur.value, "missing from the baseline", "MISSING"))
    return CheckResult(rows, notes)
