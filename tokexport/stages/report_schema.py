"""The report contract, as a schema: what every task's report.json holds, whatever else a task adds.

``tokexport report schema`` prints it as JSON Schema; the driver validates every report against it
before writing (a report that breaks the contract is a bug, never a file on disk), and `tokexport
check` reads only what the contract guarantees."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 2
KINDS = ("vit-token-pruning", "visual-tokens", "vocab-trim")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


Finite = Annotated[float, Field(allow_inf_nan=False)]


class GatedMetric(_Open):
    """A reduced-vs-original figure. ``passed`` is null when no threshold was set. A value that came out
    non-finite (a broken model's NaN) fails its threshold; report.json writes it as null and lists it
    under ``non_finite``, and `tokexport check` refuses such a report."""

    original: float | None
    reduced: float | None
    delta: float | None
    better: Literal["higher", "lower"]
    threshold: dict[str, Finite] | None
    passed: bool | None

    @field_validator("passed")
    @classmethod
    def _no_threshold_no_pass(cls, v, info):
        if v is not None and not info.data.get("threshold"):
            raise ValueError("a metric without a threshold has passed: null")
        return v


class InfoMetric(_Open):
    """A figure that gates nothing."""

    value: Any
    info: Literal[True]


Metric = Union[InfoMetric, GatedMetric]  # noqa: UP007  (pydantic tries InfoMetric first: it needs info: true)


class Parity(_Open):
    max_abs_diff: float
    mean_abs_diff: float
    atol: Finite
    mean_atol: Finite
    samples: int = Field(ge=0)
    outputs: dict[str, dict]
    passed: bool


class Accuracy(_Open):
    metrics: dict[str, Metric]
    passed: bool


class BenchRow(_Open):
    baseline_ms: Finite = Field(gt=0)
    reduced_ms: Finite = Field(gt=0)
    baseline_p90_ms: Finite
    reduced_p90_ms: Finite
    speedup: Finite = Field(gt=0)


class Bench(_Open):
    runtime: str
    provider: str
    threads: int = Field(ge=1)
    repeats: int = Field(ge=1)
    warmup: int = Field(ge=0)
    batches: dict[str, BenchRow] = Field(min_length=1)


class Artifacts(_Open):
    onnx: str
    onnx_sha256: str
    onnx_bytes: int = Field(ge=0)
    baseline_onnx: str
    baseline_onnx_sha256: str
    baseline_onnx_bytes: int = Field(ge=0)
    onnx_nodes: int | None = Field(None, ge=0)  # top-level graph nodes (reports before issue 24 lack them)
    baseline_onnx_nodes: int | None = Field(None, ge=0)


class Environment(_Open):
    python: str
    packages: dict[str, str]
    onnxruntime_providers: list[str]
    cpu: str
    os: str


class Model(_Open):
    source: str
    params: int = Field(ge=0)


class Margin(_Open):
    better: Literal["higher", "lower"]
    best_baseline: str
    margin: Finite
    ci: list[Finite] = Field(min_length=2, max_length=2)
    level: Finite
    resamples: int = Field(ge=1)


class BaselineSummary(_Open):
    mean: Finite
    sd: Finite = Field(ge=0)
    values: list[Finite] = Field(min_length=1)  # one mean per draw (seed)
    per_sample: list[Finite] | None = None  # one value per evaluation sample, the mean over the draws


class BaselineRunSection(_Open):
    description: str
    metrics: dict[str, BaselineSummary]


class VsBaselinesGate(_Open):
    min_margin: Finite
    bound: Literal["ci_low", "estimate"]
    metrics: list[str]
    passed: bool
    failures: list[str]


class Baselines(_Open):
    """The method against random keep (per image, >= 5 seeds) and a 2-D uniform lattice at the same
    budget, on the same data (tokexport.stages.baselines)."""

    budget: dict
    data: dict
    method: dict
    baselines: dict[str, BaselineRunSection] = Field(min_length=1)
    margins: dict[str, Margin]
    gate: VsBaselinesGate | None


class DeviceResults(_Open):
    """What verify_on_device.py measured on the device (device_results.json), added by `tokexport report merge`."""

    format: Literal["tokexport-device-results"]
    format_version: Literal[1]
    sha256: dict
    runtime: dict | None
    models: dict[str, dict]
    trtexec: dict[str, dict]
    passed: bool


class Report(_Open):
    """report.json of `tokexport convert`, every task."""

    schema_version: Literal[2]
    kind: Literal["vit-token-pruning", "visual-tokens", "vocab-trim"]
    tokexport_version: str
    created_unix: int
    recipe_path: str
    recipe: dict
    environment: Environment
    model: Model
    export: dict
    artifacts: Artifacts
    parity: Parity
    parity_baseline: Parity
    accuracy: Accuracy
    bench: Bench | None
    trt_check: dict | None
    deploy: dict | None
    baselines: Baselines | None = None
    passed: bool
    failures: list[str]
    device_results: DeviceResults | None = None


def report_schema() -> dict:
    return Report.model_json_schema()


def report_schema_json() -> str:
    return json.dumps(report_schema(), indent=2)


def validate_report(report: dict) -> list[str]:
    """Every contract violation of ``report``, one line each (empty when it conforms)."""
    try:
        Report.model_validate(report)
    except ValidationError as e:
        return [f"{'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()]
    return []
