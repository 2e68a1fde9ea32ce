"""report.md and the console summary, for every task: the sections of the report contract rendered the
same way for all, with the task's own lines (``Task.markdown`` / ``Task.console_lines``) after the
header."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from .metric import describe_threshold, is_info


def fmt_value(v, digits: int = 4, float_format: str | None = None) -> str:
    """A report cell: — for missing, PASS/FAIL for booleans, floats with ``digits`` decimals (or
    ``float_format``), anything else as text. Shared by every table tokexport writes."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "PASS" if v else "FAIL"
    if isinstance(v, float):
        return format(v, float_format or f".{digits}f")
    return str(v)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(
        out + ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    )


def _verdict(m: dict) -> str:
    return "info" if is_info(m) else {True: "PASS", False: "FAIL", None: "no threshold"}[m.get("passed")]


def metric_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, m in report["accuracy"]["metrics"].items():
        if is_info(m):
            v = m["value"]
            rows.append(
                [
                    name,
                    "",
                    fmt_value(v, float_format=".6g") if isinstance(v, float) else json.dumps(v)[:60],
                    "",
                    "—",
                    "info",
                ]
            )
        else:
            rows.append(
                [
                    name,
                    fmt_value(m["original"], float_format=".6g"),
                    fmt_value(m["reduced"], float_format=".6g"),
                    f"{m['delta']:+.4g}",
                    describe_threshold(m.get("threshold")),
                    _verdict(m),
                ]
            )
    return rows


def parity_rows(report: dict) -> list[list[str]]:
    rows = []
    for label, key in (
        ("model.onnx vs reduced PyTorch", "parity"),
        ("baseline.onnx vs original PyTorch", "parity_baseline"),
    ):
        p = report[key]
        rows.append(
            [
                label,
                fmt_value(p["max_abs_diff"], float_format=".3g"),
                fmt_value(p["mean_abs_diff"], float_format=".3g"),
                f"{p['atol']:g} / {p['mean_atol']:g}",
                fmt_value(p["passed"]),
            ]
        )
    return rows


def speed_rows(report: dict) -> list[list[str]]:
    bench = report.get("bench") or {}
    return [
        [
            b,
            f"{r['baseline_ms']:.2f}",
            f"{r['reduced_ms']:.2f}",
            f"{r['baseline_p90_ms']:.2f}",
            f"{r['reduced_p90_ms']:.2f}",
            f"{r['speedup']:.3f}×",
        ]
        for b, r in (bench.get("batches") or {}).items()
    ]


def _near_ties(par: dict) -> list[str]:
    ties = par.get("near_ties") or []
    if not ties:
        return []
    rows = ", ".join(
        f"sample {t['sample']} (margin {t['margin']:.1e}, max abs diff {t['max_abs_diff']:.3g})" for t in ties
    )
    return [
        "",
        f"Left out as near-ties ({len(ties)} of {par['samples']}; a token selection there was decided by a "
        f"relative score gap below {par['tie_margin']:g}, where float32 rounding may pick either side): {rows}. "
        f"Compared on the other {par['decisive_samples']}.",
    ]


def _target(tc: dict) -> list[str]:
    lint = tc.get("lint") or {}
    lint_line = (
        (
            "polygraphy check lint: "
            + (
                f"{lint['passing_nodes']} nodes pass, {len(lint['failing_nodes'])} fail"
                if lint.get("ran")
                else f"not run ({lint.get('reason', 'disabled')})"
            )
        )
        if tc.get("lint") is not None
        else ""
    )
    label = tc.get("target", "?") + (
        f" (TensorRT {tc['tensorrt']}, JetPack {tc['jetpack']})" if tc.get("tensorrt") else ""
    )
    out = [
        f"## Target check: {label} (static, no GPU)",
        f"**{'PASS' if tc.get('passed', not tc.get('errors')) else 'FAIL'}** — {tc.get('errors', 0)} error(s), "
        f"{tc.get('warnings', 0)} warning(s)" + (f"; {lint_line}" if lint_line else ""),
    ]
    if tc.get("findings"):
        out += [
            "",
            md_table(
                ["level", "code", "node", "problem", "fix"],
                [
                    [f["level"], f["code"], f"`{f.get('node') or '(graph)'}`", f["message"], f.get("fix", "")]
                    for f in tc["findings"]
                ],
            ),
        ]
    return out


def render_markdown(report: dict, task_lines: Sequence[str] = ()) -> str:
    model, ex, art = report["model"], report["export"], report["artifacts"]
    env = report.get("environment") or {}
    lines = [
        f"# tokexport report ({report['kind']}) — {report['recipe'].get('name') or report['recipe_path']}",
        "",
        f"**Result: {'PASS' if report['passed'] else 'FAIL'}**"
        + (f" — {'; '.join(report['failures'])}" if report["failures"] else ""),
        "",
        f"- Model: `{model['source']}` ({model.get('source_kind', '?')}, {model['params']:,} parameters)",
        f"- Export: opset {ex.get('opset')} ({ex.get('exporter')} exporter), batch {ex.get('batch')}, target {ex.get('target')}",
        f"- Environment: Python {env.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
        + f"; {env.get('cpu')} ×{env.get('cpu_count')}, {env.get('os')}",
        "",
        *task_lines,
        "",
        "## Parity (ONNX Runtime vs PyTorch)",
        md_table(["graph", "max abs diff", "mean abs diff", "atol / mean atol", "result"], parity_rows(report)),
        *_near_ties(report["parity"]),
        "",
        "## Accuracy against the original"
        + (f" ({report['accuracy']['dataset']})" if report["accuracy"].get("dataset") else ""),
        report["accuracy"].get("description", ""),
        "",
        md_table(["metric", "original", "reduced", "delta", "threshold", "result"], metric_rows(report)),
    ]
    if report.get("baselines"):
        lines += ["", *baselines_lines(report["baselines"])]
    speed = speed_rows(report)
    if speed:
        b = report["bench"]
        lines += [
            "",
            f"## Speed ({b['runtime']}, {b['threads']} threads, median of {b['repeats']} interleaved runs)",
            md_table(["batch", "baseline ms", "reduced ms", "baseline p90", "reduced p90", "measured speed-up"], speed),
        ]
        if b.get("note"):
            lines += ["", f"- {b['note']}"]
    lines += [
        "",
        "## Artifacts",
        f"- `{art['onnx']}` sha256 `{art['onnx_sha256']}` ({art['onnx_bytes']:,} bytes"
        + (f", {art['onnx_nodes']:,} nodes)" if art.get("onnx_nodes") is not None else ")"),
        f"- `{art['baseline_onnx']}` sha256 `{art['baseline_onnx_sha256']}` ({art['baseline_onnx_bytes']:,} bytes"
        + (f", {art['baseline_onnx_nodes']:,} nodes)" if art.get("baseline_onnx_nodes") is not None else ")"),
    ]
    if report.get("trt_check"):
        lines += ["", *_target(report["trt_check"])]
    if report.get("deploy"):
        lines += ["", "## Deployment", f"- {report['deploy']['note']}"]
    return "\n".join(lines) + "\n"


def baselines_lines(section: Mapping | None) -> list[str]:
    """report.md: the method and the baselines side by side, and the margins."""
    if not section:
        return []
    runs = section["baselines"]
    method = section["method"]
    names = list(section["margins"]) or list(method["metrics"])
    header = ["metric", f"{method['name']} (method)", *[f"{n}" for n in runs], "margin over best [CI]"]
    rows = []
    for m in names:
        row = [m, f"{method['metrics'][m]:.4f}"]
        for r in runs.values():
            s = r["metrics"].get(m)
            row.append(
                "—"
                if s is None
                else (f"{s['mean']:.4f} ± {s['sd']:.4f}" if len(s["values"]) > 1 else f"{s['mean']:.4f}")
            )
        mg = section["margins"].get(m)
        row.append(
            "—"
            if mg is None
            else f"{mg['margin']:+.4f} [{mg['ci'][0]:+.4f}, {mg['ci'][1]:+.4f}] vs {mg['best_baseline']}"
        )
        rows.append(row)
    data = section.get("data") or {}
    lines = [
        "## Against baselines at the same budget",
        f"Same kept-token budget, same {data.get('samples', '?')} samples ({data.get('split', 'eval')} split); "
        + "; ".join(f"{n}: {r['description']}" for n, r in runs.items())
        + ".",
        "",
        md_table(header, rows),
    ]
    gate = section.get("gate")
    if gate:
        lines += [
            "",
            f"Gate `verify.vs_baselines` (min_margin {gate['min_margin']:+g} on the "
            f"{'CI lower bound' if gate['bound'] == 'ci_low' else 'margin'}): "
            + ("PASS" if gate["passed"] else "FAIL — " + "; ".join(gate["failures"])),
        ]
    return lines
