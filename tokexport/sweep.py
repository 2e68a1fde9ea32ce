"""`tokexport sweep`: one conversion per (method, keep rate), the accuracy–speed-up curve and its Pareto front.

Each point is a full ``pipeline.run`` of a recipe derived from the loaded one with
``recipe.model_copy(update=...)`` (only ``reduction`` changes: the recipe's prune layers, one keep rate
for every layer), each in its own output directory, in worker processes with ``jobs > 1``. The whole
sweep is written into a temporary sibling of the output directory and renamed into place when complete:
``runs/<method>-k<rate>/`` (every conversion), ``sweep.json``, ``pareto.png`` and a self-contained
``sweep.html`` (table + the plot embedded as a data URI).

Speed-ups are the ratios each conversion measures between its own baseline.onnx and model.onnx
(interleaved in one process), so they stay comparable across points even when parallel jobs share
cores; with ``jobs > 1`` each job gets ``cores // jobs`` threads unless the recipe fixes ``bench.threads``.
"""
from __future__ import annotations

import base64
import html
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from pydantic import ValidationError

from . import __version__
from .errors import InputError, ParityError
from .outdir import check_out_dir, claim_out_dir, staged_dir
from .recipe import METRICS, Recipe, load_recipe
from .report import fmt_value

PLOT_SIZE = (8.0, 5.0)  # inches; at PLOT_DPI the PNG is 800 x 500 pixels
PLOT_DPI = 100


@dataclass(frozen=True)
class Point:
    """One conversion of the sweep."""

    method: str
    keep_rate: float

    @property
    def label(self) -> str:
        return f"{self.method}-k{self.keep_rate:g}"


def parse_keep_rates(text: str) -> list[float]:
    """``"0.9,0.7,0.5"`` → [0.9, 0.7, 0.5]; errors name ``--keep-rates``."""
    rates = []
    for part in (p.strip() for p in text.split(",")):
        try:
            r = float(part)
        except ValueError:
            raise InputError(f"--keep-rates: {part!r} is not a number; give fractions such as 0.9,0.7,0.5") from None
        if not 0 < r <= 1:
            raise InputError(f"--keep-rates: {r:g} is outside (0, 1]; a keep rate is the fraction of tokens kept")
        rates.append(r)
    if not rates or len(set(rates)) != len(rates):
        raise InputError(f"--keep-rates: give distinct fractions, got {text!r}")
    return rates


def _registry(recipe: Recipe) -> dict:
    if recipe.task == "visual-tokens":
        from .vlm.select import VISUAL_METHODS

        return VISUAL_METHODS
    from .reduce import METHODS

    return METHODS


def point_recipe(recipe: Recipe, point: Point, threads: int | None = None) -> Recipe:
    """The recipe of one point: the loaded recipe with its reduction's keep rate (and method) replaced.
    Method-specific fields carry over when the method is the recipe's own; otherwise they take the
    method's defaults."""
    red = recipe.reduction
    same = point.method == red.method
    fields = red.model_dump(mode="json", exclude_none=True) if same else {}
    fields.update(method=point.method, keep_rate=point.keep_rate)
    fields.pop("keep", None)
    if recipe.task != "visual-tokens":
        if not red.prune_layers:
            raise InputError("reduction.prune_layers: empty; a ViT sweep keeps the recipe's prune layers and "
                             "varies the keep rate, so list the blocks to prune after")
        fields.update(prune_layers=list(red.prune_layers), rounding=red.rounding)
    cls = _registry(recipe)[point.method].config_cls
    try:
        new_red = cls.model_validate(fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise InputError(f"sweep point {point.label}: reduction.{where}: {err['msg']}") from None
    update: dict = {"reduction": new_red, "name": f"{recipe.name or 'recipe'}-{point.label}"}
    if threads is not None and recipe.bench.threads is None:
        update["bench"] = recipe.bench.model_copy(update={"threads": threads})
    return recipe.model_copy(update=update)


# worker side -----------------------------------------------------------------------------------------

_LOADED: dict = {}


def _run_point(recipe: Recipe, base_dir: str, out_dir: str, label: str, torch_threads: int | None) -> tuple[int, str]:
    """Run one conversion (in a worker process or in-process); returns (exit code, report path). The
    loaded model is cached per process, keyed by what the loader depends on."""
    import torch

    from .load import load_model
    from .pipeline import run

    if torch_threads:
        torch.set_num_threads(torch_threads)
    loaded = None
    if recipe.task != "visual-tokens":
        key = (recipe.model, base_dir, recipe.family, recipe.task, recipe.export.image_size)
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = load_model(recipe.model, Path(base_dir), recipe.family, recipe.task,
                                      recipe.export.image_size)
        loaded = _LOADED[key]
    res = run(recipe, Path(base_dir), Path(out_dir), force=True, loaded=loaded, label=label)
    return res.exit_code, str(Path(out_dir) / "report.json")


# summary ---------------------------------------------------------------------------------------------

def _row(point: Point, report: dict, metric: str, batch: str | None, run_dir: str, code: int) -> dict:
    m = report["accuracy"]["metrics"].get(metric)
    if m is None:
        raise InputError(f"--metric {metric}: not measured by this recipe (measured: "
                         f"{', '.join(report['accuracy']['metrics'])})")
    bench = report.get("bench") or {}
    b = (bench.get("batches") or {}).get(batch) if batch else None
    fl = bench.get("flops") or {}
    red = report["reduction"]
    tokens = ([s["tokens_out"] for s in red.get("schedule") or []] if red.get("schedule")
              else [red.get("visual_tokens_out")])
    return {
        "method": point.method, "keep_rate": point.keep_rate, "run_dir": run_dir, "exit_code": code,
        "tokens": tokens,
        "speedup": b["speedup"] if b else None,
        "predicted_speedup": fl.get("predicted_speedup"),
        "flops_ratio": fl["reduced"] / fl["baseline"] if fl.get("baseline") else None,
        "llm_prefill_flops_saved": (report.get("llm") or {}).get("prefill_flops_saved"),
        "metric": m["reduced"], "metric_original": m["original"], "metric_drop": m["original"] - m["reduced"],
        "parity_max_abs_diff": report["parity"]["max_abs_diff"], "passed": report["passed"],
    }


def pareto_front(xs: list[float], ys: list[float]) -> list[bool]:
    """True for points no other point beats on both axes (x = speed-up, y = accuracy, both higher-better)."""
    return [not any((xj >= xi and yj >= yi) and (xj > xi or yj > yi) for xj, yj in zip(xs, ys))
            for xi, yi in zip(xs, ys)]


def plot(summary: dict, path: Path) -> None:
    """pareto.png: accuracy metric vs speed-up, one series per method, the Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, xkey = summary["points"], summary["x"]["key"]
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    for method in dict.fromkeys(p["method"] for p in pts):
        ser = sorted((p for p in pts if p["method"] == method), key=lambda p: p[xkey])
        ax.plot([p[xkey] for p in ser], [p["metric"] for p in ser], "o-", label=method)
        for p in ser:
            ax.annotate(f"{p['keep_rate']:g}", (p[xkey], p["metric"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    front = sorted((p for p in pts if p["pareto"]), key=lambda p: p[xkey])
    ax.plot([p[xkey] for p in front], [p["metric"] for p in front], "--", color="black", lw=1, zorder=1)
    ax.scatter([p[xkey] for p in front], [p["metric"] for p in front], s=160, facecolors="none",
               edgecolors="black", linewidths=1.5, label="Pareto front", zorder=3)
    orig = summary["original"]
    ax.scatter([1.0], [orig["metric"]], marker="*", s=180, color="gold", edgecolors="black", zorder=4,
               label="original (no reduction)")
    ax.set_xlabel(summary["x"]["label"])
    ax.set_ylabel(f"{summary['metric']} (reduced)")
    ax.set_title(f"{summary['recipe']['name']}: {summary['metric']} vs speed-up")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def render_html(summary: dict, png: bytes) -> str:
    """Self-contained page: the table of every point and the plot as a data URI."""
    def fmt(v, d=4):
        return html.escape("→".join(map(str, v)) if isinstance(v, list) else fmt_value(v, d))

    head = ["method", "keep rate", "tokens", summary["x"]["label"], "predicted speed-up", "FLOPs ratio",
            f"{summary['metric']} (original → reduced)", "drop", "parity max abs", "report", "Pareto"]
    rows = []
    for p in summary["points"]:
        cells = [fmt(p["method"]), f"{p['keep_rate']:g}", fmt(p["tokens"]), fmt(p[summary["x"]["key"]], 3),
                 fmt(p["predicted_speedup"], 3), fmt(p["flops_ratio"], 3),
                 f"{p['metric_original']:.4f} → {p['metric']:.4f}", f"{p['metric_drop']:+.4f}",
                 f"{p['parity_max_abs_diff']:.1e}",
                 f'<a href="{html.escape(p["run_dir"])}/report.md">{fmt(p["passed"])}</a>',
                 "★" if p["pareto"] else ""]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    img = base64.b64encode(png).decode("ascii")
    title = html.escape(f"tokexport sweep — {summary['recipe']['name']}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}</style></head>
<body><h1>{title}</h1>
<p>{html.escape(summary["description"])}</p>
<img alt="{html.escape(summary['metric'])} vs speed-up" src="data:image/png;base64,{img}">
<table><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<p>Original model: {html.escape(summary["metric"])} = {summary["original"]["metric"]:.4f}.
{html.escape(summary["accuracy_description"])}</p>
<script type="application/json" id="sweep-data">{html.escape(json.dumps(summary["points"]), quote=False)}</script>
</body></html>
"""


def summarize(recipe: Recipe, recipe_label: str, points: list[Point], results: list[tuple[int, str]],
              metric: str, jobs: int, threads: int | None, root: Path) -> dict:
    reports = [json.loads(Path(path).read_text()) for _, path in results]
    first = reports[0]
    batches = (first.get("bench") or {}).get("batches") or {}
    batch = str(max(int(b) for b in batches)) if batches else None
    rows = [_row(p, r, metric, batch, str(Path(path).parent.relative_to(root)), code)
            for p, (code, path), r in zip(points, results, reports)]
    if batch:
        x = {"key": "speedup", "label": f"measured speed-up at batch {batch}", "batch": int(batch)}
    else:
        x = {"key": "predicted_speedup", "label": "FLOP-predicted speed-up (bench disabled)", "batch": None}
        if any(r[x["key"]] is None for r in rows):
            raise InputError("bench.enabled: false and no FLOP prediction in the reports; enable bench to sweep")
    # the original model (speed-up 1, full accuracy) competes too: a point it beats is on no useful front
    orig = rows[0]["metric_original"]
    front = pareto_front([r[x["key"]] for r in rows] + [1.0], [r["metric"] for r in rows] + [orig])[:-1]
    for r, on in zip(rows, front):
        r["pareto"] = on
    bench = first.get("bench") or {}
    return {
        "schema_version": 1, "kind": "sweep", "tokexport_version": __version__, "created_unix": int(time.time()),
        "recipe_path": recipe_label, "recipe": {"name": recipe.name, "model": recipe.model, "task": recipe.task,
                                                "reduction": recipe.reduction.model_dump(mode="json")},
        "metric": metric, "x": x, "jobs": jobs, "threads_per_job": threads or bench.get("threads"),
        "runtime": bench.get("runtime"),
        "description": (f"{len(rows)} conversions of {recipe_label}: keep rate applied at every pruning step of the "
                        f"recipe's schedule; speed-up = baseline.onnx ÷ model.onnx latency measured in the same run "
                        f"({bench.get('runtime', 'bench disabled')}, {jobs} parallel job(s))."),
        "accuracy_description": first["accuracy"].get("description", ""),
        "original": {"metric": rows[0]["metric_original"]},
        "points": rows,
    }


def sweep(recipe_path: str | Path, keep_rates: list[float], methods: list[str] | None, out: str | Path | None,
          jobs: int = 1, force: bool = False, metric: str | None = None, on_done=None) -> tuple[dict, Path]:
    """Run every (method, keep rate) conversion and write sweep.json, sweep.html, pareto.png under ``out``.
    Returns (summary, output directory). ``on_done(point, exit_code)`` reports progress."""
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    base_dir = recipe_path.resolve().parent
    out_dir = Path(out) if out is not None else Path("out") / f"{recipe_path.stem}-sweep"
    if jobs < 1:
        raise InputError(f"--jobs: {jobs}; give 1 or more parallel conversions")
    registry = _registry(recipe)
    methods = methods or [recipe.reduction.method]
    for m in methods:
        if m not in registry:
            raise InputError(f"--methods: unknown method {m!r} for task {recipe.task}; "
                             f"known: {', '.join(sorted(registry))}")
    metric = metric or "instance_top1"  # measured for every task
    if metric not in METRICS:
        raise InputError(f"--metric: unknown metric {metric!r}; known: {', '.join(METRICS)}")
    from .pipeline import model_paths

    protect = (recipe_path, base_dir, *model_paths(recipe.model, base_dir))
    check_out_dir(out_dir, force, protect=protect)
    points = [Point(m, r) for m in methods for r in keep_rates]
    cores = os.cpu_count() or 1
    threads = max(1, cores // jobs) if jobs > 1 else None
    recipes = [point_recipe(recipe, p, threads) for p in points]  # every point validated before anything runs

    with claim_out_dir(out_dir, force, kind="sweep", protect=protect), staged_dir(out_dir) as tmp:
        dirs = [str(tmp / "runs" / p.label) for p in points]
        labels = [f"{recipe_path}@{p.label}" for p in points]
        results: list[tuple[int, str]] = []
        if jobs == 1:
            for p, r, d, lab in zip(points, recipes, dirs, labels):
                results.append(_run_point(r, str(base_dir), d, lab, None))
                if on_done:
                    on_done(p, results[-1][0])
        else:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_run_point, r, str(base_dir), d, lab, threads)
                           for r, d, lab in zip(recipes, dirs, labels)]
                for p, f in zip(points, futures):
                    results.append(f.result())
                    if on_done:
                        on_done(p, results[-1][0])
        summary = summarize(recipe, str(recipe_path), points, results, metric, jobs, threads, tmp)
        (tmp / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot(summary, tmp / "pareto.png")
        (tmp / "sweep.html").write_text(render_html(summary, (tmp / "pareto.png").read_bytes()))
    return summary, out_dir


def exit_code(summary: dict) -> int:
    """A sweep explores: points failing the recipe's accuracy thresholds are expected (they show FAIL in
    the table). A parity failure means a broken graph: exit 3."""
    return ParityError.exit_code if any(p["exit_code"] == ParityError.exit_code for p in summary["points"]) else 0
