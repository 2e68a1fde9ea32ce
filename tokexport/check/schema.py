"""The report contract `tokexport check` reads: the typed sections and figures of a report.json
(:class:`ReportSchema`), and reading a report (:func:`load_report`, :func:`parse_report`) so that anything
the gate cannot trust is an ``UnreadableReport`` (exit 7) naming the file and the figure."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)

from ..errors import UnreadableReport
from ..files import read_json

SUPPORTED_SCHEMA_VERSIONS = (2,)  # the report contract of tokexport.stages.report_schema

Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # a JSON number, finite; not a boolean
Count = Annotated[StrictInt, Field(ge=0, le=2**62)]  # parameters, bytes
_BatchKey = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,5}$")]


class Section(BaseModel):
    # everything `check` does not read is kept and not validated
    model_config = ConfigDict(extra="allow")


class _Metric(Section):
    original: Finite | None = None
    reduced: Finite | None = None
    better: Literal["higher", "lower"] | None = None
    info: StrictBool | None = None


class _Accuracy(Section):
    metrics: dict[StrictStr, _Metric] | None = None
    passed: StrictBool | None = None


class _Batch(Section):
    speedup: Annotated[Finite, Field(gt=0)] | None = None


class _Flops(Section):
    baseline: Annotated[Finite, Field(gt=0)] | None = None
    reduced: Annotated[Finite, Field(ge=0)] | None = None


class _Bench(Section):
    batches: dict[_BatchKey, _Batch] | None = None
    flops: _Flops | None = None


class _Llm(Section):
    prefill_flops_saved: Finite | None = None


class _Parity(Section):
    max_abs_diff: Annotated[Finite, Field(ge=0)] | None = None
    passed: StrictBool | None = None


class _Model(Section):
    source: StrictStr | None = None
    task: StrictStr | None = None
    params: Count | None = None
    tower_params: Count | None = None
    params_trimmed: Count | None = None


class _Artifacts(Section):
    onnx_bytes: Count | None = None
    baseline_onnx_bytes: Count | None = None


class _Recipe(Section):
    name: StrictStr | None = None


class _NonFinite(Section):
    path: StrictStr
    value: StrictStr | None = None


class _DeviceVerdict(Section):
    passed: StrictBool


class ReportSchema(Section):
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
_READ_PATHS = re.compile(
    r"^(accuracy\.metrics\.[^.]+\.(original|reduced)|bench\.batches\.[^.]+\.speedup"
    r"|bench\.flops\.(baseline|reduced)|llm\.prefill_flops_saved"
    r"|parity(_baseline)?\.max_abs_diff|model\.(params|tower_params)"
    r"|artifacts\.(onnx_bytes|baseline_onnx_bytes))$"
)


def json_kind(v: Any) -> str:
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


EXPECTED = {
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "an object (a section)",
    "model_type": "an object (a section)",
    "model_attributes_type": "an object (a section)",
    "list_type": "a list",
    "finite_number": "a finite number",
}


def _schema_error(where: str, role: str, e: ValidationError) -> UnreadableReport:
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    typ, inp = err["type"], err.get("input")
    if loc and loc[-1] == "[key]":
        return UnreadableReport(
            f"{where}: {role} {'.'.join(loc[:-1])}: key {json.dumps(inp)} is not a batch size "
            "(a positive integer); regenerate it with `tokexport convert`"
        )
    name = ".".join(loc) or "(top level)"
    if typ == "missing":
        what = "is missing"
    elif typ in EXPECTED:
        what = f"is {json_kind(inp)}, expected {EXPECTED[typ]}"
    else:
        what = f"is {json_kind(inp)}: {err['msg'][0].lower()}{err['msg'][1:]}"
    return UnreadableReport(
        f"{where}: {role} {name} {what}; the gate cannot read it (regenerate it with `tokexport convert`)"
    )


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
            raise UnreadableReport(
                f"{where}: {role} figure {nf.path} was {nf.value or 'not finite'} when the report "
                "was written (stored as null, listed in non_finite); a non-finite figure cannot "
                "pass the gate"
            )
    return rep


def load_report(path: str | Path, role: str = "report", gate: bool = True) -> dict:
    """Read a report.json; anything unusable is an ``UnreadableReport`` naming the file and the fix
    (``gate=False``: a figure the report records as non-finite is allowed, :func:`parse_report`)."""
    p = Path(path)
    data = read_json(
        p,
        "report",
        UnreadableReport,
        label=None if role == "report" else role,
        missing="not found; pass the report.json written by `tokexport convert`",
    )
    if not isinstance(data, dict) or "schema_version" not in data:
        raise UnreadableReport(f"{p}: {role} has no schema_version; not a tokexport report.json")
    sv = data["schema_version"]
    if type(sv) is not int or sv not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnreadableReport(
            f"{p}: {role} schema_version {json_kind(sv)} is not supported by this "
            f"tokexport (supported: {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); "
            "compare reports written by the same tokexport release"
        )
    parse_report(data, str(p), role, gate)
    return data
