"""`tokexport sweep`: one conversion per point, the accuracy–x curve and its Pareto front, for every task.

Points: ViT token pruning and visual tokens vary ``(method, keep rate)`` (``--keep-rates``, ``--methods``);
a vocab trim varies ``trim.target_vocab_size`` (``--vocab-sizes``). Each point is a full run of the one
driver (:func:`tokexport.tasks.run.run`) on a recipe derived from the loaded one with
``recipe.model_copy(update=...)`` (only ``reduction`` or ``trim`` changes), each in its own output
directory, in worker processes with ``jobs > 1``. The whole sweep is written into a temporary sibling
of the output directory and renamed into place when complete: ``runs/<point>/`` (every conversion),
``sweep.json``, ``pareto.png`` and a self-contained ``sweep.html`` (table + the plot embedded).

The x axis is what the reduction buys, per task: ViT, the measured speed-up (baseline.onnx ÷ model.onnx
latency, interleaved in one process) at the largest bench batch; visual tokens, the LLM prefill FLOPs
ratio (the tower's own measured ratio is only the selection overhead, reported per point); vocab, the
parameter reduction (original ÷ trimmed parameters; the measured speed-up at the export batch is
reported per point). With ``jobs > 1`` each job gets ``cores // jobs`` threads unless the recipe fixes
``bench.threads``.
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
    """A vocab recipe with ``trim.target_vocab_size = size`` (validated like the recipe file)."""
    from .vocab.recipe import TrimConfig

    try:
        trim = TrimConfig.model_validate({**recipe.trim.model_dump(mode="json"), "target_vocab_size": size})
    except ValidationError as e:
        raise InputError(f"trim.target_vocab_size: {size}: {e.errors()[0]['msg']}") from None
    update = {"trim": trim, "name": name, **update}
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
    kwargs = {}
    if recipe.task not in ("visual-tokens", "vocab-trim"):
        key = (recipe.model, base_dir, recipe.family, recipe.task, recipe.export.image_size)
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = load_model(recipe.model, Path(base_dir), recipe.family, recipe.task,
                                      recipe.export.image_size)
        kwargs["loaded"] = _LOADED[key]
    res = run(recipe, Path(base_dir), Path(out_dir), force=True, label=label, **kwargs)
    return res.exit_code, str(Path(out_dir) / "report.json")


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

    pts, xkey = summary["points"], summary["x"]["key"]
    vkey = summary["varied"]["key"]
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
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
                 f" (labels: {summary['varied']['label']})", fontsize=10)
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
    rows = ["<tr>" + "".join(f"<td>{cell(p)}</td>" for _, cell in cols) + "</tr>" for p in summary["points"]]
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
<p>Original model: {html.escape(summary["metric"])} = {summary["original"]["metric"]:.4f}.
{html.escape(summary["accuracy_description"])}</p>
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


def summarize(recipe: Recipe, recipe_label: str, points: list[Point], results: list[tuple[int, str]],
              metric: str, jobs: int, threads: int | None, root: Path) -> dict:
    reports = [json.loads(Path(path).read_text()) for _, path in results]
    first = reports[0]
    kind = first["kind"]
    batches = (first.get("bench") or {}).get("batches") or {}
    batch = str(max(int(b) for b in batches)) if batches else None
    rows = [_row(p, r, metric, batch, str(Path(path).parent.relative_to(root)), code)
            for p, (code, path), r in zip(points, results, reports)]
    x, varied, what = _axis(kind, rows, batch)
    x_short = x.pop("short", "speed-up")
    better = rows[0]["metric_better"]
    # the original model (x = 1, full accuracy) competes too: a point it beats is on no useful front
    orig = rows[0]["metric_original"]
    sign = -1.0 if better == "lower" else 1.0
    front = pareto_front([r[x["key"]] for r in rows] + [1.0], [sign * r["metric"] for r in rows] + [sign * orig])[:-1]
    for r, on in zip(rows, front):
        r["pareto"] = on
    bench = first.get("bench") or {}
    changed = ({"trim": recipe.trim.model_dump(mode="json")} if is_vocab(recipe)
               else {"reduction": recipe.reduction.model_dump(mode="json")})
    return {
        "schema_version": 1, "kind": "sweep", "tokexport_version": __version__, "created_unix": int(time.time()),
        "recipe_path": recipe_label, "recipe": {"name": recipe.name, "model": recipe.model, "task": recipe.task,
                                                **changed},
        "task_kind": kind, "metric": metric, "metric_better": better, "x": x, "x_short": x_short, "varied": varied, "jobs": jobs,
        "threads_per_job": threads or bench.get("threads"),
        "runtime": bench.get("runtime"),
        "description": (f"{len(rows)} conversions of {recipe_label}: {what} "
                        f"({bench.get('runtime', 'bench disabled')}, {jobs} parallel job(s))."),
        "accuracy_description": first["accuracy"].get("description", ""),
        "original": {"metric": rows[0]["metric_original"]},
        "points": rows,
    }


def sweep(recipe_path: str | Path, keep_rates: list[float] | None, methods: list[str] | None,
          out: str | Path | None, jobs: int = 1, force: bool = False, metric: str | None = None, on_done=None,
          vocab_sizes: list[int] | None = None) -> tuple[dict, Path]:
    """Run every point's conversion and write sweep.json, sweep.html, pareto.png under ``out``: every
    (method, keep rate) of a ViT or visual-token recipe, or every ``vocab_sizes`` of a vocab recipe.
    Returns (summary, output directory). ``on_done(point, exit_code)`` reports progress."""
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    base_dir = recipe_path.resolve().parent
    out_dir = Path(out) if out is not None else Path("out") / f"{recipe_path.stem}-sweep"
    if jobs < 1:
        raise InputError(f"--jobs: {jobs}; give 1 or more parallel conversions")
    if is_vocab(recipe):
        if keep_rates is not None or methods:
            flag = "--keep-rates" if keep_rates is not None else "--methods"
            raise InputError(f"{flag}: {recipe_path} is a vocab-trim recipe; sweep its vocabulary with "
                             "--vocab-sizes 8000,12000,16000 (trim.target_vocab_size)")
        if not vocab_sizes:
            raise InputError(f"--vocab-sizes: required for the vocab-trim recipe {recipe_path}, e.g. "
                             "--vocab-sizes 8000,12000,16000")
        points = [Point("vocab-trim", vocab_size=n) for n in vocab_sizes]
    else:
        if vocab_sizes is not None:
            raise InputError(f"--vocab-sizes: only for task vocab-trim recipes; {recipe_path} is task "
                             f"{recipe.task} (vary its keep rate with --keep-rates)")
        if not keep_rates:
            raise InputError(f"--keep-rates: required for {recipe_path} (task {recipe.task}), e.g. "
                             "--keep-rates 0.9,0.7,0.5")
        registry = _registry(recipe)
        methods = methods or [recipe.reduction.method]
        for m in methods:
            if m not in registry:
                raise InputError(f"--methods: unknown method {m!r} for task {recipe.task}; "
                                 f"known: {', '.join(sorted(registry))}")
        points = [Point(m, r) for m in methods for r in keep_rates]
    metric = check_metric(recipe, base_dir, metric, "a sweep")
    from .tasks.run import model_paths

    protect = (recipe_path, base_dir, *model_paths(recipe.model, base_dir))
    check_out_dir(out_dir, force, protect=protect)
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
