"""`tokexport sweep`: one conversion per point, the accuracy–x curve and its Pareto front, for every task.

Points: ViT token pruning and visual tokens vary ``(method, keep rate)`` (``--keep-rates``, ``--methods``);
a vocab trim varies ``trim.target_vocab_size`` (``--vocab-sizes``). Each point is a full run of the one
driver (:func:`tokexport.tasks.run.run`) on a recipe derived from the loaded one with
``recipe.model_copy(update=...)`` (only ``reduction`` or ``trim`` changes), run by :mod:`tokexport.fanout`
in this process, in ``--jobs N`` worker processes or as Ray tasks (``--backend ray``). Several recipes make
a matrix sweep: each recipe takes the axis its task supports, into ``OUT/<recipe file stem>/``, with an
``index.html`` showing every Pareto plot.

Every point lands in the output directory atomically (``runs/<point>/``, renamed into place when its
conversion is complete) with its record ``runs/<point>.json`` (status, exit code, error, host, recipe
fingerprint); a failed point is recorded and the rest go on, and ``--resume`` keeps the points an earlier
run completed with the same recipe. Then ``sweep.json``, ``pareto.png`` and a self-contained ``sweep.html``
(table + the plot embedded) are written (each atomically). A new output is filled in place (so an
interrupted sweep can be resumed); ``--force`` over an existing output builds the new one in a staging
sibling and swaps it in when complete (:mod:`tokexport.outdir`).

The x axis is what the reduction buys, per task: ViT, the measured speed-up (baseline.onnx ÷ model.onnx
latency, interleaved in one process) at the largest bench batch; visual tokens, the LLM prefill FLOPs
ratio (the tower's own measured ratio is only the selection overhead, reported per point); vocab, the
parameter reduction (original ÷ trimmed parameters; the measured speed-up at the export batch is
reported per point). With ``jobs > 1`` each job gets ``cores // jobs`` threads (on Ray: ``--cpus-per-job``,
default 1) unless the recipe fixes ``bench.threads``. Speed-ups are ratios measured inside one task, so
points converted on different machines stay comparable.
"""
from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from . import __version__
from .errors import InputError, ParityError
from .files import read_json
from .outdir import check_out_dir, claim_out_dir, write_file_atomic, write_marker
from .recipe import METRICS, Recipe, load_recipe
from .report import fmt_value
from .stages import metric as MC

PLOT_SIZE = (8.0, 5.0)  # inches; at PLOT_DPI the PNG is 800 x 500 pixels
PLOT_DPI = 100


@dataclass(frozen=True)
class Point:
    """One conversion of the sweep: a (method, keep rate), or a vocab trim's target vocabulary size."""

    method: str
    keep_rate: float | None = None
    vocab_size: int | None = None

    @property
    def label(self) -> str:
        return f"v{self.vocab_size}" if self.vocab_size is not None else f"{self.method}-k{self.keep_rate:g}"

    def fields(self) -> dict:
        if self.vocab_size is not None:
            return {"method": self.method, "target_vocab_size": self.vocab_size}
        return {"method": self.method, "keep_rate": self.keep_rate}


# metrics per task ------------------------------------------------------------------------------------

VIT_METRICS = ("feature_cosine", "instance_top1", "top1_agreement", "imagefolder_top1")
VISUAL_METRICS = ("feature_cosine", "attn_pooled_cosine", "instance_top1", "generation_exact_match",
                  "generation_token_agreement")
VISUAL_INFO_ONLY = ("attention_mass",)  # {value, info: true}: the selector's own ranking signal, gates nothing
# the gated figures of a vocab trim, the default (the quality figure the recipe's thresholds bound) first
VOCAB_METRICS = {
    "encoder": ("heldout_embedding_cosine", "in_vocab_max_abs_diff", "heldout_token_coverage",
                "tokenizer_remap_exact", "checkpoint_tensors_exact"),
    "decoder": ("next_token_top1_agreement", "perplexity_per_char_increase", "generation_exact_match",
                "generation_differences_explained", "top1_agreement_where_kept", "heldout_token_coverage",
                "tokenizer_remap_exact", "checkpoint_tensors_exact"),
}
# every name --metric may take for some task (the CLI's check before the recipe is read)
ALL_METRICS = tuple(dict.fromkeys((*METRICS, *VOCAB_METRICS["encoder"], *VOCAB_METRICS["decoder"])))


def is_vocab(recipe) -> bool:
    return getattr(recipe, "task", None) == "vocab-trim"


def vocab_architecture(recipe, base_dir: Path) -> str:
    """encoder or decoder: the recipe's ``architecture``, or what the model's config.json says (read only)."""
    from .tasks.vocab_trim import architecture_of, resolve_model_dir

    if recipe.architecture != "auto":
        return recipe.architecture
    model_dir, _ = resolve_model_dir(recipe.model, base_dir)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
    except Exception as e:  # noqa: BLE001  (unreadable config: one line)
        raise InputError(f"model: cannot read {model_dir / 'config.json'} ({type(e).__name__})") from None
    return architecture_of(recipe, config)


def task_metrics(recipe, base_dir: Path) -> tuple[tuple[str, ...], str]:
    """(the gated metrics this recipe's task measures, the default ``--metric``)."""
    if is_vocab(recipe):
        names = VOCAB_METRICS[vocab_architecture(recipe, base_dir)]
        return names, names[0]
    if recipe.task == "visual-tokens":
        return VISUAL_METRICS, "instance_top1"
    return VIT_METRICS, "instance_top1"


def check_metric(recipe, base_dir: Path, metric: str | None, what: str) -> str:
    """The ``--metric`` of ``what`` (sweep, search) for this recipe: known to its task and gated."""
    known, default = task_metrics(recipe, base_dir)
    if metric is None:
        return default
    if metric in VISUAL_INFO_ONLY and recipe.task == "visual-tokens":
        raise InputError(f"--metric {metric}: an information-only figure ({{value, info: true}}: the attention the "
                         f"selector itself ranks by), not an accuracy measure; {what} needs a gated metric: "
                         f"{', '.join(known)}")
    if metric not in known:
        task = recipe.task if not is_vocab(recipe) else f"vocab-trim ({vocab_architecture(recipe, base_dir)})"
        raise InputError(f"--metric: unknown metric {metric!r} for task {task}; known: {', '.join(known)}")
    return metric


def metric_drop(m: dict) -> float:
    """How much worse the reduced model is: original − reduced, or reduced − original for lower-is-better."""
    if m.get("better", "higher") == "lower":
        return m["reduced"] - m["original"]
    return m["original"] - m["reduced"]


def parse_vocab_sizes(text: str) -> list[int]:
    """``"8000,12000,16000"`` → [8000, 12000, 16000]; errors name ``--vocab-sizes``."""
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        try:
            n = int(part)
        except ValueError:
            raise InputError(f"--vocab-sizes: {part!r} is not an integer; give target vocabulary sizes such as "
                             "8000,12000,16000") from None
        if not 1 <= n <= 10_000_000:
            raise InputError(f"--vocab-sizes: {n} is outside 1..10000000 (trim.target_vocab_size)")
        sizes.append(n)
    if not sizes or len(set(sizes)) != len(sizes):
        raise InputError(f"--vocab-sizes: give distinct sizes, got {text!r}")
    return sizes


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
    """The recipe of one point: the loaded recipe with its reduction's keep rate (and method) replaced, or
    (vocab) its ``trim.target_vocab_size``. Method-specific fields carry over when the method is the
    recipe's own; otherwise they take the method's defaults."""
    if point.vocab_size is not None:
        return vocab_recipe(recipe, point.vocab_size, f"{recipe.name or 'recipe'}-{point.label}", threads)
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


def vocab_recipe(recipe, size: int, name: str, threads: int | None = None, **update):
    """A vocab recipe with ``trim.target_vocab_size = size`` (validated like the recipe file); the size
    replaces a budget the recipe sets instead (``max_params`` / ``max_bytes``)."""
    from .vocab.recipe import TrimConfig

    try:
        trim = TrimConfig.model_validate({**recipe.trim.model_dump(mode="json"), "target_vocab_size": size,
                                          "max_params": None, "max_bytes": None})
    except ValidationError as e:
        raise InputError(f"trim.target_vocab_size: {size}: {e.errors()[0]['msg']}") from None
    update = {"trim": trim, "name": name, **update}
    if threads is not None and recipe.bench.threads is None:
        update["bench"] = recipe.bench.model_copy(update={"threads": threads})
    return recipe.model_copy(update=update)


# summary ---------------------------------------------------------------------------------------------

def _row(point: Point, report: dict, metric: str, batch: str | None, run_dir: str, code: int) -> dict:
    m = report["accuracy"]["metrics"].get(metric)
    if m is None:
        raise InputError(f"--metric {metric}: not measured by this recipe (measured: "
                         f"{', '.join(report['accuracy']['metrics'])})")
    if MC.is_info(m):
        raise InputError(f"--metric {metric}: an information-only figure in the reports; give a gated metric")
    bench = report.get("bench") or {}
    b = (bench.get("batches") or {}).get(batch) if batch else None
    row: dict = {**point.fields(), "run_dir": run_dir, "exit_code": code}
    if report["kind"] == "vocab-trim":
        mod, tok, art = report["model"], report["tokenizer"], report["artifacts"]
        row.update(vocab_size=tok["vocab_size"], vocab_size_trimmed=tok["vocab_size_trimmed"],
                   kept=report["trim"]["kept"], params=mod["params"], params_trimmed=mod["params_trimmed"],
                   params_ratio=mod["params_trimmed"] / mod["params"],
                   params_reduction=mod["params"] / mod["params_trimmed"],
                   onnx_bytes_ratio=art["onnx_bytes"] / art["baseline_onnx_bytes"])
    else:
        fl = bench.get("flops") or {}
        red = report["reduction"]
        llm = report.get("llm") or {}
        saved = llm.get("prefill_flops_saved")
        row.update(
            tokens=([s["tokens_out"] for s in red.get("schedule") or []] if red.get("schedule")
                    else [red.get("visual_tokens_out")]),
            predicted_speedup=fl.get("predicted_speedup"),
            flops_ratio=fl["reduced"] / fl["baseline"] if fl.get("baseline") else None,
            llm_prefill_flops_saved=saved)
        if report["kind"] == "visual-tokens":
            row["visual_tokens_in"] = red.get("visual_tokens_in")
            row["prefill_speedup"] = llm["prefill_flops_full"] / llm["prefill_flops_reduced"]
    row.update({
        "speedup": b["speedup"] if b else None,
        "metric": m["reduced"], "metric_original": m["original"], "metric_better": m.get("better", "higher"),
        "metric_drop": metric_drop(m),
        "parity_max_abs_diff": report["parity"]["max_abs_diff"], "passed": report["passed"],
    })
    return row


def pareto_front(xs: list[float], ys: list[float]) -> list[bool]:
    """True for points no other point beats on both axes (x = speed-up, y = accuracy, both higher-better)."""
    return [not any((xj >= xi and yj >= yi) and (xj > xi or yj > yi) for xj, yj in zip(xs, ys))
            for xi, yi in zip(xs, ys)]


def _oriented(summary: dict, values: list[float]) -> list[float]:
    """The metric as higher-is-better (negated for a lower-is-better metric such as a perplexity increase)."""
    return [-v for v in values] if summary.get("metric_better") == "lower" else list(values)


def plot(summary: dict, path: Path) -> None:
    """pareto.png: accuracy metric vs the x axis, one series per method, the Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, xkey = [p for p in summary["points"] if p.get("status", "done") == "done"], summary["x"]["key"]
    vkey = summary["varied"]["key"]
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    if not pts:
        ax.text(0.5, 0.5, f"no point converted ({len(summary['points'])} failed: see sweep.json)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_title(f"{summary['recipe']['name']}: no results", fontsize=10)
        fig.savefig(path, dpi=PLOT_DPI)
        plt.close(fig)
        return
    for method in dict.fromkeys(p["method"] for p in pts):
        ser = sorted((p for p in pts if p["method"] == method), key=lambda p: p[xkey])
        ax.plot([p[xkey] for p in ser], [p["metric"] for p in ser], "o-", label=method)
        for p in ser:
            ax.annotate(f"{p[vkey]:g}", (p[xkey], p["metric"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    front = sorted((p for p in pts if p["pareto"]), key=lambda p: p[xkey])
    ax.plot([p[xkey] for p in front], [p["metric"] for p in front], "--", color="black", lw=1, zorder=1)
    ax.scatter([p[xkey] for p in front], [p["metric"] for p in front], s=160, facecolors="none",
               edgecolors="black", linewidths=1.5, label="Pareto front", zorder=3)
    orig = summary["original"]
    ax.scatter([1.0], [orig["metric"]], marker="*", s=180, color="gold", edgecolors="black", zorder=4,
               label="original (no reduction)")
    ax.set_xlabel(summary["x"]["label"])
    lower = summary.get("metric_better") == "lower"
    ax.set_ylabel(f"{summary['metric']} (reduced{'; lower is better' if lower else ''})")
    ax.set_title(f"{summary['recipe']['name']}: {summary['metric']} vs {summary['x_short']}"
                 f"\n(point labels: {summary['varied']['label']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def _columns(summary: dict) -> list[tuple[str, object]]:
    """(header, cell of a point) of the HTML table, per task."""
    def fmt(v, d=4):
        return html.escape("→".join(map(str, v)) if isinstance(v, list) else fmt_value(v, d))

    xk, kind = summary["x"]["key"], summary["task_kind"]
    cols: list[tuple[str, object]] = [("method", lambda p: fmt(p["method"]))]
    if kind == "vocab-trim":
        cols += [("target vocab size", lambda p: f"{p['target_vocab_size']:,}"),
                 ("vocab kept", lambda p: f"{p['vocab_size_trimmed']:,} of {p['vocab_size']:,}"),
                 ("parameters kept", lambda p: f"{p['params_trimmed']:,} ({p['params_ratio']:.3f}×)"),
                 (summary["x"]["label"], lambda p: fmt(p[xk], 3)),
                 ("measured speed-up", lambda p: fmt(p["speedup"], 3)),
                 ("ONNX bytes ratio", lambda p: fmt(p["onnx_bytes_ratio"], 3))]
    else:
        cols += [("keep rate", lambda p: f"{p['keep_rate']:g}"), ("tokens", lambda p: fmt(p["tokens"])),
                 (summary["x"]["label"], lambda p: fmt(p[xk], 3))]
        if kind == "visual-tokens":
            cols += [("tower speed-up (selection overhead)", lambda p: fmt(p["speedup"], 3))]
        else:
            cols += [("predicted speed-up", lambda p: fmt(p["predicted_speedup"], 3)),
                     ("FLOPs ratio", lambda p: fmt(p["flops_ratio"], 3))]
    cols += [(f"{summary['metric']} (original → reduced)", lambda p: f"{p['metric_original']:.4f} → {p['metric']:.4f}"),
             ("drop", lambda p: f"{p['metric_drop']:+.4f}"),
             ("parity max abs", lambda p: f"{p['parity_max_abs_diff']:.1e}"),
             ("report", lambda p: f'<a href="{html.escape(p["run_dir"])}/report.md">{fmt(p["passed"])}</a>'),
             ("Pareto", lambda p: "★" if p["pareto"] else "")]
    return cols


def render_html(summary: dict, png: bytes) -> str:
    """Self-contained page: the table of every point and the plot as a data URI."""
    cols = _columns(summary)
    done = [p for p in summary["points"] if p.get("status", "done") == "done"]
    rows = ["<tr>" + "".join(f"<td>{cell(p)}</td>" for _, cell in cols) + "</tr>" for p in done]
    failed = [p for p in summary["points"] if p.get("status", "done") != "done"]
    vkey = summary["varied"]["key"]
    failed_table = "" if not failed else (
        "<h2>Failed points</h2><table><thead><tr><th>method</th><th>" + html.escape(summary["varied"]["label"])
        + "</th><th>exit code</th><th>error</th></tr></thead><tbody>"
        + "".join(f"<tr><td>{html.escape(str(p['method']))}</td><td>{html.escape(fmt_value(p[vkey]))}</td>"
                  f"<td>{p['exit_code']}</td><td style=\"text-align:left\">{html.escape(str(p['error']))}</td></tr>"
                  for p in failed) + "</tbody></table>")
    img = base64.b64encode(png).decode("ascii")
    title = html.escape(f"tokexport sweep — {summary['recipe']['name']}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}</style></head>
<body><h1>{title}</h1>
<p>{html.escape(summary["description"])}</p>
<img alt="{html.escape(summary['metric'])} vs {html.escape(summary['x_short'])}" src="data:image/png;base64,{img}">
<table><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h, _ in cols)}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{failed_table}
<p>{f'Original model: {html.escape(summary["metric"])} = {summary["original"]["metric"]:.4f}.'
    if summary["original"]["metric"] is not None else ""}
{html.escape(summary["accuracy_description"])}</p>
<p>{html.escape(summary.get("timing", ""))}</p>
<script type="application/json" id="sweep-data">{html.escape(json.dumps(summary["points"]), quote=False)}</script>
</body></html>
"""


def _axis(kind: str, rows: list[dict], batch: str | None) -> tuple[dict, dict, str]:
    """(x axis, varied parameter, what a point's conversion changes) of the task's sweep."""
    if kind == "vocab-trim":
        x = {"key": "params_reduction", "short": "parameter reduction",
             "label": "parameter reduction (original ÷ trimmed parameters)", "batch": int(batch) if batch else None}
        return x, {"key": "target_vocab_size", "label": "trim.target_vocab_size"}, (
            "trim.target_vocab_size replaced (mined ids kept, most frequent first; special, required and closure ids "
            "come on top); x = parameter reduction, what a trim buys (an embedding lookup costs little time: the "
            "measured baseline.onnx ÷ model.onnx speed-up at the export batch is in every point)")
    varied = {"key": "keep_rate", "label": "keep rate"}
    if kind == "visual-tokens":
        x = {"key": "prefill_speedup", "short": "LLM prefill FLOPs ratio",
             "label": "LLM prefill FLOPs ratio (original ÷ reduced, predicted)", "batch": int(batch) if batch else None}
        return x, varied, ("reduction.keep_rate of all visual tokens replaced (K = floor(V·P·rate)); x = the LLM "
                           "prefill FLOPs with all visual tokens ÷ with the K kept (the tower's measured "
                           "model.onnx ÷ baseline.onnx ratio is only the selection overhead, in every point)")
    if batch:
        x = {"key": "speedup", "label": f"measured speed-up at batch {batch}", "batch": int(batch)}
    else:
        x = {"key": "predicted_speedup", "label": "FLOP-predicted speed-up (bench disabled)", "batch": None}
        if any(r[x["key"]] is None for r in rows):
            raise InputError("bench.enabled: false and no FLOP prediction in the reports; enable bench to sweep")
    return x, varied, ("keep rate applied at every pruning step of the recipe's schedule; speed-up = baseline.onnx ÷ "
                       "model.onnx latency measured in the same run")


TIMING_NOTE = ("Timing figures are ratios measured inside one task: baseline.onnx and model.onnx are timed "
               "interleaved in the same process on the same node, so points run on different workers or machines "
               "stay comparable; absolute latencies are not compared across points.")


def _failed_row(point: Point, rec: dict) -> dict:
    return {**point.fields(), "status": "failed", "exit_code": rec.get("exit_code"), "error": rec.get("error"),
            "crashed": bool(rec.get("crashed")), "run_dir": None, "pareto": False, "host": rec.get("host"),
            "resumed": bool(rec.get("resumed"))}


def summarize(recipe: Recipe, recipe_label: str, points: list[Point], records: list[dict], metric: str,
              backend: dict, threads: int | None, root: Path) -> dict:
    """sweep.json of one recipe: a row per point (done: its figures from its report; failed: error and exit
    code), the Pareto front over the done points and the original model."""
    rows, reports = [], []
    for p, rec in zip(points, records):
        if rec.get("status") != "done":
            rows.append(_failed_row(p, rec))
            continue
        run_dir = root / "runs" / p.label
        report = read_json(run_dir / "report.json", "report")  # kept from an earlier run with --resume, too
        reports.append(report)
        rows.append(None)
    done_idx = [i for i, r in enumerate(rows) if r is None]
    first = reports[0] if reports else None
    kind = first["kind"] if first else ("vocab-trim" if is_vocab(recipe) else
                                        "visual-tokens" if recipe.task == "visual-tokens" else "vit")
    batches = ((first or {}).get("bench") or {}).get("batches") or {}
    batch = str(max(int(b) for b in batches)) if batches else None
    for i, rep in zip(done_idx, reports):
        rec = records[i]
        row = _row(points[i], rep, metric, batch, f"runs/{points[i].label}", rec["exit_code"])
        row.update(status="done", host=rec.get("host"), seconds=rec.get("seconds"), resumed=bool(rec.get("resumed")))
        rows[i] = row
    done = [r for r in rows if r["status"] == "done"]
    x, varied, what = _axis(kind, done, batch) if done or kind != "vit" else (
        {"key": "speedup", "label": "measured speed-up", "batch": None}, {"key": "keep_rate", "label": "keep rate"},
        "keep rate applied at every pruning step of the recipe's schedule")
    x_short = x.pop("short", "speed-up")
    better = done[0]["metric_better"] if done else "higher"
    orig = done[0]["metric_original"] if done else None
    if done:
        # the original model (x = 1, full accuracy) competes too: a point it beats is on no useful front
        sign = -1.0 if better == "lower" else 1.0
        front = pareto_front([r[x["key"]] for r in done] + [1.0], [sign * r["metric"] for r in done] + [sign * orig])
        for r, on in zip(done, front[:-1]):
            r["pareto"] = on
    bench = (first or {}).get("bench") or {}
    changed = ({"trim": recipe.trim.model_dump(mode="json")} if is_vocab(recipe)
               else {"reduction": recipe.reduction.model_dump(mode="json")})
    failed = [r for r in rows if r["status"] != "done"]
    resumed = sum(r["resumed"] for r in rows)
    where = (f"{backend['name']} backend, {backend['parallel']} at a time"
             + (f", {backend['cpus_per_job']} CPU(s) each" if backend.get("cpus_per_job") else ""))
    return {
        "schema_version": 1, "kind": "sweep", "tokexport_version": __version__, "created_unix": int(time.time()),
        "recipe_path": recipe_label, "recipe": {"name": recipe.name, "model": recipe.model, "task": recipe.task,
                                                **changed},
        "task_kind": kind, "metric": metric, "metric_better": better, "x": x, "x_short": x_short, "varied": varied,
        "jobs": backend["parallel"], "backend": backend,
        "threads_per_job": threads or bench.get("threads"),
        "runtime": bench.get("runtime"),
        "description": (f"{len(rows)} conversions of {recipe_label}: {what} "
                        f"({bench.get('runtime', 'bench disabled')}, {where})"
                        + (f"; {len(failed)} failed (error and exit code in the table)" if failed else "")
                        + (f"; {resumed} kept from an earlier run (--resume)" if resumed else "") + "."),
        "timing": TIMING_NOTE,
        "accuracy_description": (first or {}).get("accuracy", {}).get("description", ""),
        "original": {"metric": orig},
        "failed": len(failed), "resumed": resumed,
        "points": rows,
    }


def fingerprint(recipe: Recipe, base_dir: Path) -> str:
    """What makes a point's conversion the same one on a re-run (``--resume``): its recipe (thread counts
    aside: speed-ups are same-task ratios) and where its relative paths resolve."""
    import hashlib

    data = recipe.model_dump(mode="json")
    if isinstance(data.get("bench"), dict):
        data["bench"].pop("threads", None)
    blob = json.dumps({"recipe": data, "base_dir": str(base_dir)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file next to its final name and rename it into place (never half-written, never through a
    link left at a temporary name: :func:`tokexport.outdir.write_file_atomic`)."""
    write_file_atomic(path, data)


def _read_record(path: Path) -> dict | None:
    try:
        rec = read_json(path, "report")
    except InputError:
        return None
    return rec if isinstance(rec, dict) else None


def write_summary(summary: dict, root: Path) -> None:
    """sweep.json, pareto.png and sweep.html of one recipe into ``root`` (each written atomically)."""
    png = root / "pareto.png"
    fd, name = tempfile.mkstemp(prefix=".pareto.", suffix=".png", dir=root)  # a new file: no link to write through
    os.close(fd)
    try:
        plot(summary, Path(name))
        os.replace(name, png)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
    _write_atomic(root / "sweep.html", render_html(summary, png.read_bytes()))
    _write_atomic(root / "sweep.json", json.dumps(summary, indent=2) + "\n")


@dataclass
class _Recipe:
    """One recipe of a (matrix) sweep."""

    path: Path
    recipe: Recipe
    base_dir: Path
    points: list
    metric: str = ""
    sub: str = ""  # its directory in a matrix sweep ("" for a single recipe)
    recipes: list = field(default_factory=list)


def _points(r: _Recipe, keep_rates, methods, vocab_sizes) -> list[Point]:
    if is_vocab(r.recipe):
        return [Point("vocab-trim", vocab_size=n) for n in vocab_sizes]
    registry = _registry(r.recipe)
    names = methods or [r.recipe.reduction.method]
    for m in names:
        if m not in registry:
            raise InputError(f"--methods: unknown method {m!r} for task {r.recipe.task}"
                             + (f" ({r.path})" if methods else "") + f"; known: {', '.join(sorted(registry))}")
    return [Point(m, k) for m in names for k in keep_rates]


def _check_axes(items: list[_Recipe], keep_rates, methods, vocab_sizes) -> None:
    """Each recipe takes the axis its task supports: --keep-rates (and --methods) for ViT and visual-token
    recipes, --vocab-sizes for vocab-trim recipes. A flag no recipe takes, or an axis a recipe lacks, is an
    error."""
    vocab = [r for r in items if is_vocab(r.recipe)]
    other = [r for r in items if not is_vocab(r.recipe)]
    if not other and (keep_rates is not None or methods):
        flag = "--keep-rates" if keep_rates is not None else "--methods"
        raise InputError(f"{flag}: {vocab[0].path} is a vocab-trim recipe; sweep its vocabulary with "
                         "--vocab-sizes 8000,12000,16000 (trim.target_vocab_size)")
    if vocab and not vocab_sizes:
        raise InputError(f"--vocab-sizes: required for the vocab-trim recipe {vocab[0].path}, e.g. "
                         "--vocab-sizes 8000,12000,16000")
    if not vocab and vocab_sizes is not None:
        raise InputError(f"--vocab-sizes: only for task vocab-trim recipes; {other[0].path} is task "
                         f"{other[0].recipe.task} (vary its keep rate with --keep-rates)")
    if other and not keep_rates:
        raise InputError(f"--keep-rates: required for {other[0].path} (task {other[0].recipe.task}), e.g. "
                         "--keep-rates 0.9,0.7,0.5")


@contextlib.contextmanager
def _in_place(out_dir: Path):
    """The output directory itself (created with its marker when new): points land in it one by one, so an
    interrupted sweep keeps every finished point for ``--resume``."""
    if not out_dir.exists():
        out_dir.mkdir()
        write_marker(out_dir, "sweep")
    yield out_dir


def sweep(recipe_path: str | Path | list, keep_rates: list[float] | None, methods: list[str] | None,
          out: str | Path | None, jobs: int = 1, force: bool = False, metric: str | None = None, on_done=None,
          vocab_sizes: list[int] | None = None, *, backend: str = "local", address: str | None = None,
          cpus_per_job: int | None = None, resume: bool = False) -> tuple[dict, Path]:
    """Run every point's conversion and write sweep.json, sweep.html, pareto.png under ``out``: every
    (method, keep rate) of a ViT or visual-token recipe, or every ``vocab_sizes`` of a vocab recipe.
    Several recipes (a matrix sweep): each into ``out/<recipe stem>/`` with its own axis, plus
    ``index.html`` and ``index.json``. Returns (summary, output directory): one recipe's summary, or for a
    matrix ``{"kind": "sweep-matrix", "sweeps": [summary, ...]}``. ``on_done(point, exit_code)`` reports
    progress. A failed point is recorded (error, exit code) and the rest go on; ``resume`` keeps points
    an earlier run into ``out`` completed with the same recipe."""
    from .fanout import Fanout, PointSpec, check_backend
    from .outdir import read_marker
    from .tasks.run import model_paths

    paths = [Path(p) for p in (recipe_path if isinstance(recipe_path, (list, tuple)) else [recipe_path])]
    if not paths:
        raise InputError("sweep: give at least one recipe")
    matrix = len(paths) > 1
    if jobs < 1:
        raise InputError(f"--jobs: {jobs}; give 1 or more parallel conversions")
    if resume and force:
        raise InputError("--resume and --force: give one (--resume keeps the points an earlier run completed, "
                         "--force starts over)")
    check_backend(backend, jobs, cpus_per_job)
    items = []
    for p in paths:
        r = load_recipe(p)
        items.append(_Recipe(p, r, p.resolve().parent, []))
    if matrix:
        stems = [it.path.stem for it in items]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise InputError(f"sweep: two recipes named {dup[0]}.yaml; each recipe's results go to OUT/<file name>/, "
                             "so give recipes with distinct file names")
        for it in items:
            it.sub = it.path.stem
    _check_axes(items, keep_rates, methods, vocab_sizes)
    for it in items:
        it.points = _points(it, keep_rates, methods, vocab_sizes)
        if matrix and metric is not None:
            known, _ = task_metrics(it.recipe, it.base_dir)
            it.metric = check_metric(it.recipe, it.base_dir, metric if metric in known else None, "a sweep")
        else:
            it.metric = check_metric(it.recipe, it.base_dir, metric, "a sweep")
    if matrix and metric is not None and not any(it.metric == metric for it in items):
        check_metric(items[0].recipe, items[0].base_dir, metric, "a sweep")  # names the known ones
    out_dir = Path(os.path.expanduser(out)) if out is not None else Path("out") / (f"{paths[0].stem}-sweep" if not matrix else "sweep-matrix")
    protect = [x for it in items for x in (it.path, it.base_dir, *model_paths(it.recipe.model, it.base_dir))]
    exists = os.path.lexists(out_dir)
    if resume and exists:
        check_out_dir(out_dir, True, protect=protect)
        kind = (read_marker(out_dir) or {}).get("kind")
        if kind != "sweep":
            raise InputError(f"{out_dir}: written by tokexport {kind}, not by a sweep; --resume continues a sweep "
                             "into its own output directory (choose another --out)")
    else:
        check_out_dir(out_dir, force, protect=protect)
    fo = Fanout(backend, address, cpus_per_job, jobs)
    threads = fo.threads()
    for it in items:  # every point validated before anything runs
        it.recipes = [point_recipe(it.recipe, p, threads) for p in it.points]

    with fo, claim_out_dir(out_dir, force or (resume and exists), kind="sweep", protect=protect) as claim:
        desc = fo.describe()
        staged = exists and force
        with (claim.staged() if staged else _in_place(out_dir)) as root:
            specs, records, where = [], {}, {}
            for it in items:
                base = root / it.sub if it.sub else root
                (base / "runs").mkdir(parents=True, exist_ok=True)
                local = model_paths(it.recipe.model, it.base_dir)
                for p, r in zip(it.points, it.recipes):
                    key = f"{it.sub}/{p.label}" if it.sub else p.label
                    run_dir, rec_file = base / "runs" / p.label, base / "runs" / f"{p.label}.json"
                    fp = fingerprint(r, it.base_dir)
                    where[key] = (rec_file, fp, p)
                    prev = _read_record(rec_file) if resume else None
                    if (prev and prev.get("status") == "done" and prev.get("fingerprint") == fp
                            and (run_dir / "report.json").is_file()):
                        records[key] = {**prev, "resumed": True}
                        if on_done:
                            on_done(p, prev.get("exit_code"))
                        continue
                    specs.append(PointSpec(key, r, str(it.base_dir), str(run_dir.absolute()), f"{it.path}@{p.label}",
                                           threads, str(local[0]) if local else None))

            def finished(spec, rec):
                rec_file, fp, p = where[spec.key]
                rec = {**rec, "fingerprint": fp, "point": p.label, "backend": backend}
                _write_atomic(rec_file, json.dumps(rec, indent=2) + "\n")
                records[spec.key] = rec
                if on_done:
                    on_done(p, rec.get("exit_code"))

            fo.convert(specs, finished)
            summaries = []
            for it in items:
                base = root / it.sub if it.sub else root
                recs = [records[f"{it.sub}/{p.label}" if it.sub else p.label] for p in it.points]
                summary = summarize(it.recipe, str(it.path), it.points, recs, it.metric, desc, threads, base)
                write_summary(summary, base)
                summaries.append(summary)
            if not matrix:
                return summaries[0], out_dir
            index = {"schema_version": 1, "kind": "sweep-matrix", "tokexport_version": __version__,
                     "created_unix": int(time.time()), "backend": desc, "timing": TIMING_NOTE,
                     "recipes": [{"recipe_path": str(it.path), "dir": it.sub, "task_kind": s["task_kind"],
                                  "metric": s["metric"], "varied": s["varied"]["key"], "points": len(s["points"]),
                                  "failed": s["failed"], "resumed": s["resumed"]} for it, s in zip(items, summaries)]}
            _write_atomic(root / "index.json", json.dumps(index, indent=2) + "\n")
            _write_atomic(root / "index.html", render_index(index, summaries, root))
    return {**index, "sweeps": summaries}, out_dir


def render_index(index: dict, summaries: list[dict], root: Path) -> str:
    """The matrix sweep's page: every recipe's Pareto plot (embedded) with a link to its own sweep.html."""
    parts = []
    for entry, s in zip(index["recipes"], summaries):
        png = base64.b64encode((root / entry["dir"] / "pareto.png").read_bytes()).decode("ascii")
        sub = html.escape(entry["dir"])
        failed = f", {s['failed']} failed" if s["failed"] else ""
        parts.append(f"""<section><h2><a href="{sub}/sweep.html">{html.escape(s['recipe_path'])}</a></h2>
<p>{html.escape(s['task_kind'])}: {len(s['points'])} points over {html.escape(s['varied']['label'])}{failed};
{html.escape(s['metric'])} vs {html.escape(s['x_short'])}.</p>
<img alt="{html.escape(s['metric'])} vs {html.escape(s['x_short'])} ({sub})" src="data:image/png;base64,{png}">
</section>""")
    b = index["backend"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tokexport sweep — {len(summaries)} recipes</title>
<style>body{{font-family:sans-serif;margin:2em}}section{{margin-bottom:2em}}</style></head>
<body><h1>tokexport sweep — {len(summaries)} recipes</h1>
<p>Backend: {html.escape(b['name'])}, {b['parallel']} conversion(s) at a time. {html.escape(index['timing'])}</p>
{"".join(parts)}
<script type="application/json" id="sweep-index">{html.escape(json.dumps(index["recipes"]), quote=False)}</script>
</body></html>
"""


def exit_code(summary: dict) -> int:
    """A sweep explores: points failing the recipe's accuracy thresholds are expected (they show FAIL in
    the table). A point that could not be converted (an error, a crashed worker): its exit code (the
    first such point's). A parity failure means a broken graph: exit 3."""
    sweeps = summary.get("sweeps") or [summary]
    pts = [p for s in sweeps for p in s["points"]]
    for p in pts:
        if p.get("status") == "failed":
            return p["exit_code"] or 1
    return ParityError.exit_code if any(p["exit_code"] == ParityError.exit_code for p in pts) else 0
