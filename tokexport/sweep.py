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
(table + the plot embedded; both drawn by :mod:`tokexport.sweep_render`) are written (each atomically). A new output is filled in place (so an
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

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import InputError, ParityError, option
from .files import read_json
from .outdir import check_out_dir, claim_out_dir, read_marker, write_file_atomic, write_marker
from .recipe import Recipe, load_recipe
from .stages import metric as MC
from .sweep_render import plot, render_html, render_index
from .tasks.axes import ALL_METRICS, Point, axis_for, axis_of_report  # noqa: F401  (ALL_METRICS: for the CLI)


def task_metrics(recipe, base_dir: Path) -> tuple[tuple[str, ...], str]:
    """(the gated metrics this recipe's task measures, the default ``--metric``)."""
    return axis_for(recipe).metrics(recipe, base_dir)


def _metric_named(metric: str) -> str:
    """``metric='NAME'`` in the library's message, ``--metric NAME`` where the CLI prints it (a metric name the
    task knows: no control characters)."""
    return option("metric", f"metric={metric!r}", f"--metric {metric}")


def check_metric(recipe, base_dir: Path, metric: str | None, what: str) -> str:
    """The ``--metric`` of ``what`` (sweep, search) for this recipe: known to its task and gated."""
    ax = axis_for(recipe)
    known, default = ax.metrics(recipe, base_dir)
    if metric is None:
        return default
    if metric in ax.info_only:
        raise InputError(
            f"{_metric_named(metric)}: an information-only figure ({{value, info: true}}: the attention the "
            f"selector itself ranks by), not an accuracy measure; {what} needs a gated metric: "
            f"{', '.join(known)}"
        )
    if metric not in known:
        raise InputError(
            f"{option('metric')}: unknown metric {metric!r} for task {ax.task_name(recipe, base_dir)}; known: "
            f"{', '.join(known)}"
        )
    return metric


def metric_drop(m: dict) -> float:
    """How much worse the reduced model is: original − reduced, or reduced − original for lower-is-better."""
    if m.get("better", "higher") == "lower":
        return m["reduced"] - m["original"]
    return m["original"] - m["reduced"]


def parse_vocab_sizes(text: str) -> list[int]:
    """``"8000,12000,16000"`` → [8000, 12000, 16000]; errors name ``vocab_sizes`` (the CLI: ``--vocab-sizes``)."""
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        try:
            n = int(part)
        except ValueError:
            raise InputError(
                f"{option('vocab_sizes')}: {part!r} is not an integer; give target vocabulary sizes such as "
                "8000,12000,16000"
            ) from None
        if not 1 <= n <= 10_000_000:
            raise InputError(f"{option('vocab_sizes')}: {n} is outside 1..10000000 (trim.target_vocab_size)")
        sizes.append(n)
    if not sizes or len(set(sizes)) != len(sizes):
        raise InputError(f"{option('vocab_sizes')}: give distinct sizes, got {text!r}")
    return sizes


def parse_keep_rates(text: str) -> list[float]:
    """``"0.9,0.7,0.5"`` → [0.9, 0.7, 0.5]; errors name ``keep_rates`` (the CLI: ``--keep-rates``)."""
    rates = []
    for part in (p.strip() for p in text.split(",")):
        try:
            r = float(part)
        except ValueError:
            raise InputError(
                f"{option('keep_rates')}: {part!r} is not a number; give fractions such as 0.9,0.7,0.5"
            ) from None
        if not 0 < r <= 1:
            raise InputError(
                f"{option('keep_rates')}: {r:g} is outside (0, 1]; a keep rate is the fraction of tokens kept"
            )
        rates.append(r)
    if not rates or len(set(rates)) != len(rates):
        raise InputError(f"{option('keep_rates')}: give distinct fractions, got {text!r}")
    return rates


def point_recipe(recipe: Recipe, point: Point, threads: int | None = None) -> Recipe:
    """The recipe of one point (its task's axis: :meth:`tokexport.tasks.axes.SweepAxis.point_recipe`)."""
    return axis_for(recipe).point_recipe(recipe, point, threads)


# summary ---------------------------------------------------------------------------------------------


def _row(point: Point, report: dict, metric: str, batch: str | None, run_dir: str, code: int) -> dict:
    m = report["accuracy"]["metrics"].get(metric)
    if m is None:
        raise InputError(
            f"{_metric_named(metric)}: not measured by this recipe (measured: "
            f"{', '.join(report['accuracy']['metrics'])})"
        )
    if MC.is_info(m):
        raise InputError(f"{_metric_named(metric)}: an information-only figure in the reports; give a gated metric")
    bench = report.get("bench") or {}
    b = (bench.get("batches") or {}).get(batch) if batch else None
    row: dict = {**point.fields(), "run_dir": run_dir, "exit_code": code, **axis_of_report(report["kind"]).row(report)}
    row.update(
        {
            "speedup": b["speedup"] if b else None,
            "metric": m["reduced"],
            "metric_original": m["original"],
            "metric_better": m.get("better", "higher"),
            "metric_drop": metric_drop(m),
            "parity_max_abs_diff": report["parity"]["max_abs_diff"],
            "passed": report["passed"],
        }
    )
    return row


def pareto_front(xs: list[float], ys: list[float]) -> list[bool]:
    """True for points no other point beats on both axes (x = speed-up, y = accuracy, both higher-better)."""
    return [
        not any((xj >= xi and yj >= yi) and (xj > xi or yj > yi) for xj, yj in zip(xs, ys)) for xi, yi in zip(xs, ys)
    ]


TIMING_NOTE = (
    "Timing figures are ratios measured inside one task: baseline.onnx and model.onnx are timed "
    "interleaved in the same process on the same node, so points run on different workers or machines "
    "stay comparable; absolute latencies are not compared across points."
)


def _failed_row(point: Point, rec: dict) -> dict:
    return {
        **point.fields(),
        "status": "failed",
        "exit_code": rec.get("exit_code"),
        "error": rec.get("error"),
        "crashed": bool(rec.get("crashed")),
        "run_dir": None,
        "pareto": False,
        "host": rec.get("host"),
        "resumed": bool(rec.get("resumed")),
    }


def _point_rows(recipe: Recipe, points: list[Point], records: list[dict], metric: str, root: Path):
    """(a row per point: a done one with the figures of its report, a failed one with its error and exit code;
    the first done point's report, None when none converted; the task's axis; the bench batch the speed-up
    is read at)."""
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
    ax = axis_of_report(first["kind"]) if first else axis_for(recipe)
    batches = ((first or {}).get("bench") or {}).get("batches") or {}
    batch = str(max(int(b) for b in batches)) if batches else None
    for i, rep in zip(done_idx, reports):
        rec = records[i]
        row = _row(points[i], rep, metric, batch, f"runs/{points[i].label}", rec["exit_code"])
        row.update(status="done", host=rec.get("host"), seconds=rec.get("seconds"), resumed=bool(rec.get("resumed")))
        rows[i] = row
    return rows, first, ax, batch


def summarize(
    recipe: Recipe,
    recipe_label: str,
    points: list[Point],
    records: list[dict],
    metric: str,
    backend: dict,
    threads: int | None,
    root: Path,
) -> dict:
    """sweep.json of one recipe: a row per point (done: its figures from its report; failed: error and exit
    code), the Pareto front over the done points and the original model."""
    rows, first, ax, batch = _point_rows(recipe, points, records, metric, root)
    kind = ax.report_kind
    done = [r for r in rows if r["status"] == "done"]
    x, varied, what = ax.axis(done, batch)
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
    changed = ax.changed(recipe)
    failed = [r for r in rows if r["status"] != "done"]
    resumed = sum(r["resumed"] for r in rows)
    where = f"{backend['name']} backend, {backend['parallel']} at a time" + (
        f", {backend['cpus_per_job']} CPU(s) each" if backend.get("cpus_per_job") else ""
    )
    return {
        "schema_version": 1,
        "kind": "sweep",
        "tokexport_version": __version__,
        "created_unix": int(time.time()),
        "recipe_path": recipe_label,
        "recipe": {"name": recipe.name, "model": recipe.model, "task": recipe.task, **changed},
        "task_kind": kind,
        "metric": metric,
        "metric_better": better,
        "x": x,
        "x_short": x_short,
        "varied": varied,
        "jobs": backend["parallel"],
        "backend": backend,
        "threads_per_job": threads or bench.get("threads"),
        "runtime": bench.get("runtime"),
        "description": (
            f"{len(rows)} conversions of {recipe_label}: {what} "
            f"({bench.get('runtime', 'bench disabled')}, {where})"
            + (f"; {len(failed)} failed (error and exit code in the table)" if failed else "")
            + (f"; {resumed} kept from an earlier run (--resume)" if resumed else "")
            + "."
        ),
        "timing": TIMING_NOTE,
        "accuracy_description": (first or {}).get("accuracy", {}).get("description", ""),
        "original": {"metric": orig},
        "failed": len(failed),
        "resumed": resumed,
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
    return axis_for(r.recipe).points(r.recipe, r.path, keep_rates, methods, vocab_sizes)


def _check_axes(items: list[_Recipe], keep_rates, methods, vocab_sizes) -> None:
    """Each recipe takes the axis its task supports (its :class:`~tokexport.tasks.axes.SweepAxis`'s
    argument): ``keep_rates`` (and ``methods``) for token reduction, ``vocab_sizes`` for vocabulary trims.
    An argument no recipe takes, or an axis a recipe lacks, is an error."""
    given = {"keep_rates": keep_rates, "vocab_sizes": vocab_sizes}
    by_arg: dict[str, list[_Recipe]] = {}
    for r in items:
        by_arg.setdefault(axis_for(r.recipe).argument, []).append(r)
    for arg, values in given.items():
        if arg not in by_arg and (values is not None or (methods and arg == "keep_rates")):
            other = next(iter(by_arg.values()))[0]
            shown, ax = option(arg if values is not None else "methods"), axis_for(other.recipe)
            raise InputError(
                f"{shown}: {other.path} is task {other.recipe.task}: sweep it with {option(ax.argument)} "
                f"({ax.varied['label']}, e.g. {_example(ax)}), not {shown}"
            )
    for arg, rs in by_arg.items():
        if not given[arg]:
            raise InputError(
                f"{option(arg)}: required for {rs[0].path} (task {rs[0].recipe.task}), e.g. "
                f"{_example(axis_for(rs[0].recipe))}"
            )


def _example(ax) -> str:
    """The axis's example values: ``keep_rates=[0.9, 0.7, 0.5]`` in the library's message, ``--keep-rates
    0.9,0.7,0.5`` where the CLI prints it."""
    values = ", ".join(ax.example.split(","))
    return option(ax.argument, f"{ax.argument}=[{values}]", f"--{ax.argument.replace('_', '-')} {ax.example}")


@contextlib.contextmanager
def _in_place(out_dir: Path):
    """The output directory itself (created with its marker when new): points land in it one by one, so an
    interrupted sweep keeps every finished point for ``--resume``."""
    if not out_dir.exists():
        out_dir.mkdir()
        write_marker(out_dir, "sweep")
    yield out_dir


def sweep(
    recipe_path: str | Path | list,
    keep_rates: list[float] | None,
    methods: list[str] | None,
    out: str | Path | None,
    jobs: int = 1,
    force: bool = False,
    metric: str | None = None,
    on_done=None,
    vocab_sizes: list[int] | None = None,
    *,
    backend: str = "local",
    address: str | None = None,
    cpus_per_job: int | None = None,
    resume: bool = False,
) -> tuple[dict, Path]:
    """Run every point's conversion and write sweep.json, sweep.html, pareto.png under ``out``: every
    (method, keep rate) of a ViT or visual-token recipe, or every ``vocab_sizes`` of a vocab recipe.
    Several recipes (a matrix sweep): each into ``out/<recipe stem>/`` with its own axis, plus
    ``index.html`` and ``index.json``. Returns (summary, output directory): one recipe's summary, or for a
    matrix ``{"kind": "sweep-matrix", "sweeps": [summary, ...]}``. ``on_done(point, exit_code)`` reports
    progress. A failed point is recorded (error, exit code) and the rest go on; ``resume`` keeps points
    an earlier run into ``out`` completed with the same recipe."""
    from .fanout import Fanout, check_backend
    from .tasks.run import model_paths

    paths = [Path(p) for p in (recipe_path if isinstance(recipe_path, (list, tuple)) else [recipe_path])]
    if not paths:
        raise InputError("sweep: give at least one recipe")
    matrix = len(paths) > 1
    if jobs < 1:
        raise InputError(f"{option('jobs')}: {jobs}; give 1 or more parallel conversions")
    if resume and force:
        resume_, force_ = option("resume", "resume=True"), option("force", "force=True")
        raise InputError(
            f"{resume_} and {force_}: give one ({resume_} keeps the points an earlier run completed, "
            f"{force_} starts over)"
        )
    check_backend(backend, jobs, cpus_per_job)
    items = _load_items(paths, keep_rates, methods, vocab_sizes, metric)
    out_dir = (
        Path(os.path.expanduser(out))
        if out is not None
        else Path("out") / (f"{paths[0].stem}-sweep" if not matrix else "sweep-matrix")
    )
    protect = [x for it in items for x in (it.path, it.base_dir, *model_paths(it.recipe.model, it.base_dir))]
    exists = _check_out(out_dir, protect, force, resume)
    fo = Fanout(backend, address, cpus_per_job, jobs)
    threads = fo.threads()
    for it in items:  # every point validated before anything runs
        it.recipes = [point_recipe(it.recipe, p, threads) for p in it.points]

    with fo, claim_out_dir(out_dir, force or (resume and exists), kind="sweep", protect=protect) as claim:
        desc = fo.describe()
        staged = exists and force
        with claim.staged() if staged else _in_place(out_dir) as root:
            specs, records, where = _pending(items, root, resume, threads, on_done)

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
            index = _write_index(items, summaries, desc, root)
    return {**index, "sweeps": summaries}, out_dir


def _load_items(paths: list[Path], keep_rates, methods, vocab_sizes, metric: str | None) -> list[_Recipe]:
    """Every recipe loaded, with its points and its metric (a matrix sweep: each recipe in ``OUT/<stem>/``;
    ``metric`` for the recipes that measure it, each one's default for the others)."""
    matrix = len(paths) > 1
    items = []
    for p in paths:
        r = load_recipe(p)
        items.append(_Recipe(p, r, p.resolve().parent, []))
    if matrix:
        stems = [it.path.stem for it in items]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise InputError(
                f"sweep: two recipes named {dup[0]}.yaml; each recipe's results go to OUT/<file name>/, "
                "so give recipes with distinct file names"
            )
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
    return items


def _check_out(out_dir: Path, protect: list, force: bool, resume: bool) -> bool:
    """The output's checks (``resume`` into an existing one: it must be a sweep's); whether it exists."""
    exists = os.path.lexists(out_dir)
    if resume and exists:
        check_out_dir(out_dir, True, protect=protect)
        kind = (read_marker(out_dir) or {}).get("kind")
        if kind != "sweep":
            raise InputError(
                f"{out_dir}: written by tokexport {kind}, not by a sweep; {option('resume', 'resume=True')} "
                f"continues a sweep into its own output directory (choose another {option('out')})"
            )
    else:
        check_out_dir(out_dir, force, protect=protect)
    return exists


def _pending(items: list[_Recipe], root: Path, resume: bool, threads, on_done) -> tuple[list, dict, dict]:
    """(the specs of the points to convert, the records of points kept from an earlier run, point key →
    (its record file, its recipe's fingerprint, the point)). ``resume``: a point an earlier run completed
    with the same recipe is kept (and reported to ``on_done``), not converted again."""
    from .fanout import PointSpec
    from .tasks.run import model_paths

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
            if (
                prev
                and prev.get("status") == "done"
                and prev.get("fingerprint") == fp
                and (run_dir / "report.json").is_file()
            ):
                records[key] = {**prev, "resumed": True}
                if on_done:
                    on_done(p, prev.get("exit_code"))
                continue
            specs.append(
                PointSpec(
                    key,
                    r,
                    str(it.base_dir),
                    str(run_dir.absolute()),
                    f"{it.path}@{p.label}",
                    threads,
                    str(local[0]) if local else None,
                )
            )
    return specs, records, where


def _write_index(items: list[_Recipe], summaries: list[dict], desc: dict, root: Path) -> dict:
    """index.json and index.html of a matrix sweep; the index."""
    index = {
        "schema_version": 1,
        "kind": "sweep-matrix",
        "tokexport_version": __version__,
        "created_unix": int(time.time()),
        "backend": desc,
        "timing": TIMING_NOTE,
        "recipes": [
            {
                "recipe_path": str(it.path),
                "dir": it.sub,
                "task_kind": s["task_kind"],
                "metric": s["metric"],
                "varied": s["varied"]["key"],
                "points": len(s["points"]),
                "failed": s["failed"],
                "resumed": s["resumed"],
            }
            for it, s in zip(items, summaries)
        ],
    }
    _write_atomic(root / "index.json", json.dumps(index, indent=2) + "\n")
    _write_atomic(root / "index.html", render_index(index, summaries, root))
    return index


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
