"""report.json (strict JSON, schema-versioned: :mod:`tokexport.stages.report_schema`) and report.md /
the console summary (for people): the contract's sections rendered by :mod:`tokexport.stages.render`,
each task's own lines by the task (:meth:`tokexport.tasks.base.Task.markdown`)."""

from __future__ import annotations

import json
from pathlib import Path

from .stages.render import fmt_value  # noqa: F401  (tables of sweep/search/check use the same cells)


def _finite_copy(obj, path: str, found: list[dict]):
    """``obj`` with every NaN/±inf float replaced by None, each one recorded in ``found`` by dotted path."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        found.append({"path": path, "value": repr(float(obj))})  # 'nan', 'inf', '-inf'
        return None
    if isinstance(obj, dict):
        return {k: _finite_copy(v, f"{path}.{k}" if path else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_copy(v, f"{path}.{i}" if path else str(i), found) for i, v in enumerate(obj)]
    return obj


def write_json(report: dict, path: Path) -> None:
    """Write ``report`` as strict JSON: never a bare NaN/Infinity (invalid JSON, and a figure no gate can
    compare). A non-finite float is written as null and listed in a top-level ``non_finite`` list
    (``{"path": "bench.batches.8.speedup", "value": "nan"}``), so nothing else of the report is lost and
    `tokexport check` refuses a gated figure recorded there (exit 7). ``report`` itself is not modified."""
    path.write_text(json_text(report))


def json_text(report: dict) -> str:
    """The text :func:`write_json` writes."""
    found: list[dict] = []
    clean = _finite_copy(report, "", found)
    if found:
        earlier = clean.get("non_finite") if isinstance(clean.get("non_finite"), list) else []
        clean["non_finite"] = earlier + [f for f in found if not f["path"].startswith("non_finite.")]
    return json.dumps(clean, indent=2, sort_keys=False, allow_nan=False) + "\n"


def _task(report: dict):
    from .tasks import registered  # noqa: F401  (registers every task)
    from .tasks.base import TASKS

    return TASKS[report["kind"]]


def render_markdown(report: dict) -> str:
    from .stages.render import render_markdown as render

    return render(report, _task(report).markdown(report))


def console_lines(report: dict) -> list[str]:
    """The report's own task's lines above the console summary (plain text; the CLI draws the tables)."""
    return list(_task(report).console_lines(report))
