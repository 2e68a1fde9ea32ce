"""What `tokexport check` lets pass: the tolerance of every figure (:class:`Tolerances`), read from a YAML
file and ``--set`` overrides (:func:`load_tolerances`); a bad value is one line naming it (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from ..errors import InputError, option
from ..files import read_yaml
from .schema import EXPECTED, json_kind

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
    accuracy: Tol = Field(
        default_factory=lambda: Tol(abs=0.01),
        description="Every accuracy metric (reduced value and drop) unless listed in `metrics`.",
    )
    metrics: dict[StrictStr, Tol] = Field(default_factory=dict, description="Per-metric overrides, by metric name.")
    speedup_factor: _TolNum = Field(
        0.85, gt=0, le=1, description="A measured speed-up may drop to this factor of the baseline's."
    )
    speedup_factors: dict[_BatchSize, Annotated[_TolNum, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="Per-batch override of speedup_factor, by batch size."
    )
    parity_factor: _TolNum = Field(10.0, ge=1, description="Parity max abs diff may grow to this factor of baseline.")
    parity_floor: _TolNum = Field(
        1e-5, ge=0, description="Baseline parity diffs below this count as this (float noise)."
    )
    flops: Tol = Field(default_factory=lambda: Tol(rel=1e-6), description="FLOPs ratio / LLM prefill saving.")
    params: Tol = Field(default_factory=Tol, description="Parameter counts (a change means another model).")
    sizes: Tol = Field(default_factory=lambda: Tol(rel=0.01), description="ONNX file sizes in bytes.")
    fail_missing: StrictBool = Field(
        True,
        description="Fail when a figure of the baseline is missing from the "
        "report (default; false lists it as MISSING only).",
    )


def load_tolerances(
    path: str | Path | None = None, overrides: dict | None = None, labels: dict[str, str] | None = None
) -> Tolerances:
    """Tolerances from an optional YAML file, then ``overrides`` (dotted keys, e.g. ``metrics.instance_top1.abs``).
    ``labels`` names the command-line option an override came from (default: ``overrides``, which the CLI
    prints as ``--set``)."""
    overrides_ = option("overrides", None, "--set")
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
                raise InputError(f"{overrides_} {key}: {part} is not a section")
            cur = nxt
        cur[last] = value
    try:
        return Tolerances.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"] if x != "[key]") or "(top level)"
        if loc in (overrides or {}):
            where = (labels or {}).get(loc, overrides_)
        typ = err["type"]
        if typ == "extra_forbidden":
            msg = "unknown field"
        elif typ in EXPECTED or typ in ("greater_than", "greater_than_equal", "less_than_equal"):
            msg = f"{json_kind(err.get('input'))} is not allowed: " + (
                f"expected {EXPECTED[typ]}" if typ in EXPECTED else err["msg"].lower()
            )
        else:
            msg = err["msg"].removeprefix("Value error, ")
        raise InputError(f"{where}: {loc}: {msg}") from None
