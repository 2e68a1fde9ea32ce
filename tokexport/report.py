"""report.json (machine-readable, schema-versioned) and report.md / console summary (for people)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

SCHEMA_VERSION = 1


def report_header(kind: str, label: str, recipe) -> dict:
    """The fields every report.json starts with (what `tokexport check` reads to know the schema)."""
    import time

    from . import __version__

    return {"schema_version": SCHEMA_VERSION, "kind": kind, "tokexport_version": __version__,
            "created_unix": int(time.time()), "recipe_path": label, "recipe": recipe.model_dump(mode="json")}


def _near_ties_md(par: dict) -> list[str]:
    ties = par.get("near_ties") or []
    if not ties:
        return []
    rows = ", ".join(f"sample {t['sample']} (margin {t['margin']:.1e}, max abs diff {t['max_abs_diff']:.3g})" for t in ties)
    return ["", f"Left out as near-ties ({len(ties)} of {par['samples']}; a token selection there was decided by a "
                f"relative score gap below {par['tie_margin']:g}, where float32 rounding may pick either side): {rows}. "
                f"Compared on the other {par['decisive_samples']}."]


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


_fmt = fmt_value


def _gflops(x):
    return f"{x / 1e9:.2f}"


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
    found: list[dict] = []
    clean = _finite_copy(report, "", found)
    if found:
        earlier = clean.get("non_finite") if isinstance(clean.get("non_finite"), list) else []
        clean["non_finite"] = earlier + [f for f in found if not f["path"].startswith("non_finite.")]
    path.write_text(json.dumps(clean, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _rows(report: dict):
    """(section, rows) pairs shared by markdown and console rendering."""
    red = report["reduction"]
    sched = [[str(s["layer"]), str(s["tokens_in"]), str(s["tokens_out"])] for s in red["schedule"]]
    par = report["parity"]
    parity = [["model.onnx vs reduced PyTorch", _fmt(par["max_abs_diff"], 2 if par["max_abs_diff"] > 1 else 6),
               _fmt(par["mean_abs_diff"], 6), f"{par['atol']:g} / {par['mean_atol']:g}", _fmt(par["passed"])]]
    pb = report.get("parity_baseline")
    if pb:
        parity.append(["baseline.onnx vs original PyTorch", _fmt(pb["max_abs_diff"], 6), _fmt(pb["mean_abs_diff"], 6),
                       f"{pb['atol']:g} / {pb['mean_atol']:g}", _fmt(pb["passed"])])
    acc = [[name, _fmt(m["original"]), _fmt(m["reduced"]), f"{m['delta']:+.4f}",
            json.dumps(m["threshold"]) if m["threshold"] else "—", _fmt(m["passed"])]
           for name, m in report["accuracy"]["metrics"].items()]
    bench = report.get("bench") or {}
    speed = []
    for b, r in (bench.get("batches") or {}).items():
        speed.append([b, f"{r['baseline_ms']:.2f}", f"{r['reduced_ms']:.2f}", f"{r['baseline_p90_ms']:.2f}",
                      f"{r['reduced_p90_ms']:.2f}", f"{r['speedup']:.3f}×"])
    return sched, parity, acc, speed


def _visual_md(report: dict) -> list[str]:
    red, llm = report["reduction"], report["llm"]
    lay = red["layout"]
    return [
        "## Visual tokens",
        f"- Layout: {lay['views']} view(s) of {lay['grid'][0]}×{lay['grid'][1]} patches"
        + (f" (full image + {lay['sub_grid'][0]}×{lay['sub_grid'][1]} sub-images)" if lay["sub_grid"] else ""),
        f"- Visual tokens to the LLM: {red['visual_tokens_in']} → {red['visual_tokens_out']} "
        f"(feature layer {red['feature_layer']}, select {red['feature_select']})",
        f"- LLM prefill ({llm['prompt_tokens']} text tokens): {_gflops(llm['prefill_flops_full'])} → "
        f"{_gflops(llm['prefill_flops_reduced'])} GFLOPs ({100 * llm['prefill_flops_saved']:.1f}% saved)",
    ]


def _target_label(report: dict) -> str:
    tc = report.get("trt_check") or {}
    if "target" not in tc:
        return f"TensorRT {report['export'].get('trt_target')}"
    return tc["target"] + (f" (TensorRT {tc['tensorrt']}, JetPack {tc['jetpack']})" if tc.get("tensorrt") else "")


def _target_md(tc: dict) -> list[str]:
    """The target check: verdict, then one table row per offending node with its fix."""
    lint = tc.get("lint") or {}
    lint_line = ("polygraphy check lint: " + (f"{lint['passing_nodes']} nodes pass, {len(lint['failing_nodes'])} fail"
                 if lint.get("ran") else f"not run ({lint.get('reason', 'disabled')})")) if tc.get("lint") is not None else ""
    out = [f"## Target check: {tc['target']} (static, no GPU)",
           f"**{'PASS' if tc.get('passed', not tc.get('errors')) else 'FAIL'}** — {tc.get('errors', 0)} error(s), "
           f"{tc.get('warnings', 0)} warning(s)" + (f"; {lint_line}" if lint_line else ""), ""]
    if tc["findings"]:
        out += ["| level | code | node | problem | fix |", "|---|---|---|---|---|"]
        out += [f"| {f['level']} | {f['code']} | `{f.get('node') or '(graph)'}` | {f['message']} | {f.get('fix', '')} |"
                for f in tc["findings"]]
    return out


def render_markdown(report: dict) -> str:
    if report.get("kind") == "vocab-trim":
        from .vocab.report import render_markdown as vocab_markdown

        return vocab_markdown(report)
    sched, parity, acc, speed = _rows(report)
    red, bench, art = report["reduction"], report.get("bench") or {}, report["artifacts"]

    def table(header, rows):
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)

    lines = [
        f"# tokexport report — {report['recipe'].get('name') or report['recipe_path']}",
        "",
        f"**Result: {'PASS' if report['passed'] else 'FAIL'}**" + (f" — {'; '.join(report['failures'])}" if report["failures"] else ""),
        "",
        f"- Model: `{report['model']['source']}` ({report['model']['source_kind']}, family {report['model']['family']}, "
        f"task {report['model']['task']}, {report['model']['params']:,} parameters)",
        f"- Input: {report['export']['input_shape']}, opset {report['export']['opset']} ({report['export']['exporter']} exporter), "
        f"target {_target_label(report)}",
        f"- Reduction: `{red['method']}`, rounding {red.get('rounding', 'n/a')}, parameters `{json.dumps(red['params'])}`",
        "",
        *(_visual_md(report) if report.get("kind") == "visual-tokens" else [
            "## Tokens per pruning stage",
            table(["after block", "tokens in", "tokens out"], sched) if sched else "(no pruning)"]),
        "",
        "## Parity (ONNX Runtime vs PyTorch)",
        table(["graph", "max abs diff", "mean abs diff", "atol / mean atol", "result"], parity),
        *_near_ties_md(report["parity"]),
        "",
        f"## Accuracy against the original ({report['accuracy']['dataset']})",
        report["accuracy"].get("description", ""),
        "",
        table(["metric", "original", "reduced", "delta", "threshold", "result"], acc),
    ]
    if speed:
        lines += [
            "",
            f"## Speed ({bench['runtime']}, {bench['threads']} threads, median of {bench['repeats']} interleaved runs)",
            table(["batch", "baseline ms", "reduced ms", "baseline p90", "reduced p90", "measured speed-up"], speed),
            "",
        ]
        if "flops" in bench:
            fl = bench["flops"]
            lines += [
                f"- FLOPs per image: baseline {_gflops(fl['baseline'])} G, reduced {_gflops(fl['reduced'])} G "
                f"(selection overhead {_gflops(fl['selection'])} G) → predicted speed-up {fl['predicted_speedup']:.3f}×",
                f"- Efficiency (measured ÷ predicted, batch {bench['efficiency_batch']}): {bench['efficiency']:.3f}",
            ]
        if bench.get("note"):
            lines.append(f"- {bench['note']}")
    lines += [
        "",
        "## Artifacts",
        f"- `{art['onnx']}` sha256 `{art['onnx_sha256']}` ({art['onnx_bytes']:,} bytes)",
        f"- `{art['baseline_onnx']}` sha256 `{art['baseline_onnx_sha256']}` ({art['baseline_onnx_bytes']:,} bytes)",
    ]
    if report.get("trt_check"):
        lines += ["", *_target_md(report["trt_check"])]
    if report.get("deploy"):
        lines += ["", "## Deployment", f"- {report['deploy']['note']}"]
    return "\n".join(lines) + "\n"


def console_summary(report: dict):
    if report.get("kind") == "vocab-trim":
        from .vocab.report import console_summary as vocab_summary

        return vocab_summary(report)
    sched, parity, acc, speed = _rows(report)
    parts = []
    if report.get("kind") == "visual-tokens":
        parts.append(Text("\n".join(line.removeprefix("- ") for line in _visual_md(report)[1:])))
    else:
        t = Table(title="tokens per stage", show_edge=False)
        for h in ("after block", "in", "out"):
            t.add_column(h, justify="right")
        for r in sched:
            t.add_row(*r)
        parts.append(t)
    t = Table(title="parity", show_edge=False)
    for h in ("graph", "max abs", "mean abs", "tolerance", ""):
        t.add_column(h)
    for r in parity:
        t.add_row(*r)
    parts.append(t)
    t = Table(title="accuracy against the original", show_edge=False)
    for h in ("metric", "original", "reduced", "delta", "threshold", ""):
        t.add_column(h)
    for r in acc:
        t.add_row(*r)
    parts.append(t)
    if speed:
        bench = report["bench"]
        t = Table(title=f"speed ({bench['runtime']})", show_edge=False)
        for h in ("batch", "baseline ms", "reduced ms", "base p90", "red p90", "measured"):
            t.add_column(h, justify="right")
        for r in speed:
            t.add_row(*r)
        parts.append(t)
    if speed and "flops" in report["bench"]:
        bench = report["bench"]
        fl = bench["flops"]
        parts.append(Text(f"FLOP-predicted speed-up {fl['predicted_speedup']:.3f}× "
                          f"({_gflops(fl['baseline'])} → {_gflops(fl['reduced'])} GFLOPs/image); "
                          f"efficiency {bench['efficiency']:.3f}"))
    verdict = Text("PASS", style="bold green") if report["passed"] else Text("FAIL: " + "; ".join(report["failures"]), style="bold red")
    parts.append(verdict)
    return Group(*parts)
