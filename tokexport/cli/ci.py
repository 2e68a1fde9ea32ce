"""CLI commands check, sweep, search (issue 6). Registered on the main app by ``tokexport.cli``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# the Ray cluster option of sweep and search
_Address = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster address (default: RAY_ADDRESS, else a Ray instance started here).")]


def _fmt(v) -> str:
    from ..report import fmt_value

    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    small_or_huge = isinstance(v, float) and (abs(v) < 1e-3 or abs(v) >= 1e4)
    return fmt_value(v, float_format=".4g" if small_or_huge else None)


def _overrides(pairs: list[str]) -> dict:
    """``--set key=value`` pairs; values parsed as YAML scalars (numbers, booleans)."""
    import yaml

    from ..errors import InputError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set metrics.instance_top1.abs=0.03")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise InputError(f"--set {pair!r}: the value is not a YAML scalar ({getattr(e, 'problem', None) or e})"
                             ) from None
    return out


# Command-line numbers are checked here, before any file is read or written: one line, exit 2.

def _positive_int(text: str, flag: str, lo: int, hi: int | None = None) -> int:
    """``--jobs`` / ``--step``: an integer in [lo, hi]."""
    from ..errors import InputError

    try:
        v = int(text.strip())
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not an integer") from None
    if v < lo or (hi is not None and v > hi):
        if hi is None:
            raise InputError(f"{flag}: {v}; give {lo} or more")
        raise InputError(f"{flag}: {v} is outside {lo}..{hi}" + (f" ({hi // 4} cores × 4)" if flag == "--jobs" else ""))
    return v


def _jobs(text: str) -> int:
    import os

    return _positive_int(text, "--jobs", 1, 4 * (os.cpu_count() or 1))


def _metric(name: str, known: tuple[str, ...], what: str) -> str:
    from ..errors import InputError

    if name not in known:
        raise InputError(f"--metric: unknown metric {name!r} for {what}; known: {', '.join(known)}")
    return name


def _finite_in(v: float, flag: str, text: str, lo: float, hi: float, lo_open: bool) -> float:
    import math

    from ..errors import InputError

    if not math.isfinite(v) or not (lo < v if lo_open else lo <= v) or not v <= hi:
        raise InputError(f"{flag}: {text.strip()!r} is not a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
    return v


def write_merged(report: Path, device: Path, out: Path, force: bool, allow_kind_change: bool = False) -> dict:
    """`tokexport report merge`: REPORT with DEVICE's results under ``device_results``, validated against the
    report contract, written to OUT (a temporary sibling renamed into place). OUT follows the rules of every
    output file (:func:`tokexport.outdir.check_out_file`): not either input, not a folder, not under /proc,
    never through a symbolic link, an existing file only with ``force`` and only a tokexport report.
    Nothing is written on any error; a full disk is exit 10."""
    import contextlib
    import os

    from ..check import load_device_results, load_report, merged_report
    from ..errors import ContractError, InputError
    from ..outdir import check_out_file, write_file_atomic
    from ..report import json_text
    from ..stages.report_schema import validate_report

    rep = load_report(report, "report")
    dev = load_device_results(device)
    for src, what in ((report, "REPORT"), (device, "DEVICE_RESULTS")):
        with contextlib.suppress(OSError):
            if os.path.samefile(os.path.expanduser(out), src):
                raise InputError(f"--out {out}: is the {what} file itself; write the merged report to a new file")
    out_path = check_out_file(os.path.expanduser(out), force, protect=(report, device), kind="merged report",
                              recognise=_is_tokexport_report, recognised_as="a tokexport report")
    merged = merged_report(rep, dev, allow_kind_change, (str(report), str(device)))
    problems = validate_report(merged)
    if problems:
        raise ContractError(f"the merged report breaks the report contract: {'; '.join(problems[:5])}")
    write_file_atomic(out_path, json_text(merged), shown=f"--out {out}")
    return merged


def _is_tokexport_report(path: Path) -> bool:
    from ..errors import TokexportError
    from ..files import read_json

    try:
        old = read_json(path, "report")
    except TokexportError:
        return False
    return isinstance(old, dict) and "schema_version" in old


def _register_report_merge(app: typer.Typer) -> None:
    """`tokexport report merge` joins the `report` group (schema, validate) defined in tokexport.cli."""
    group = next((g.typer_instance for g in app.registered_groups if g.name == "report"), None)
    if group is None:
        return

    @group.command("merge")
    def report_merge(
        report: Annotated[Path, typer.Argument(help="report.json written by `tokexport convert`.")],
        device: Annotated[Path, typer.Argument(help="device_results.json written by the bundle's verify_on_device.py.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Merged report to write (a new file).")],
        force: Annotated[bool, typer.Option("--force", help="Replace an existing merged report (a tokexport report "
                                                             "only).")] = False,
        allow_kind_change: Annotated[bool, typer.Option(
            "--allow-kind-change", help="Merge although the bundled graphs are not the report's (exit 7 otherwise).")
        ] = False,
    ) -> None:
        """Add what the device measured (device_results.json) to a convert report, as `device_results`; the result
        conforms to the report contract. Exit 7 for an unreadable file or graphs of another conversion."""
        from ..errors import TokexportError
        from .ui import fail, result

        try:
            merged = write_merged(report, device, out, force, allow_kind_change)
        except TokexportError as e:
            fail(e)
        d = merged["device_results"]
        rt = d.get("runtime") or {}
        result(f"wrote {out}: {report} + device results ({rt.get('name', 'no runtime')}"
               + (f" {rt['provider']}" if rt.get("provider") else "") + f", {'PASS' if d['passed'] else 'FAIL'})")


def check(
    report: Annotated[Path, typer.Argument(help="report.json to gate (written by `tokexport convert`), or the "
                                                "device_results.json a bundle's verify_on_device.py wrote.")],
    baseline: Annotated[Path, typer.Option("--baseline", "-b", help="Baseline report.json to compare against.")],
    tolerances: Annotated[Path | None,
        typer.Option("--tolerances", "-t", help="Tolerance YAML (docs/ci.md).")] = None,
    accuracy_abs: Annotated[float | None,
        typer.Option("--accuracy-abs", help="Allowed drop of every accuracy metric.")] = None,
    speedup_factor: Annotated[float | None,
        typer.Option("--speedup-factor", help="Speed-ups may fall to this factor of the baseline's.")] = None,
    set_: Annotated[list[str] | None,
        typer.Option("--set", help="Any tolerance, dotted: metrics.instance_top1.abs=0.03 (repeatable).")] = None,
    fail_missing: Annotated[bool | None, typer.Option(
        "--fail-missing/--allow-missing",
        help="A baseline figure missing from the report fails (default) / is only listed as MISSING.")] = None,
    allow_kind_change: Annotated[bool, typer.Option(
        "--allow-kind-change",
        help="Compare a report of another kind, model or task than the baseline (exit 7 otherwise).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Compare REPORT with a baseline report, figure by figure; exit 6 on regression or a missing figure, 7 on
    an unreadable report (non-finite or mistyped figures, another kind or model, nothing comparable). Given a
    device_results.json, gate what the device measured (sha256, every output within the bundle's tolerances)
    against the baseline report it was bundled from."""
    import json
    import sys

    from rich.table import Table

    from ..check import check as run_check
    from ..check import load_tolerances
    from ..errors import RegressionError, TokexportError
    from .ui import err_console, fail, out_console

    try:
        over = _overrides(set_ or [])
        labels = {k: "--set" for k in over}
        for key, flag, value in (("accuracy.abs", "--accuracy-abs", accuracy_abs),
                                 ("speedup_factor", "--speedup-factor", speedup_factor),
                                 ("fail_missing", "--fail-missing/--allow-missing", fail_missing)):
            if value is not None:
                over[key], labels[key] = value, flag
        tol = load_tolerances(tolerances, over, labels)
        result = run_check(report, baseline, tol, allow_kind_change)
    except TokexportError as e:
        fail(e)
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    else:
        t = Table(title=f"{report} vs {baseline}", show_edge=False)
        t.add_column("figure", no_wrap=True)
        for h in ("baseline", "report", "rule", ""):
            t.add_column(h)
        style = {"PASS": "green", "FAIL": "bold red", "MISSING": "yellow"}
        for r in result.rows:
            t.add_row(r.name, _fmt(r.baseline), _fmt(r.current), r.rule, f"[{style[r.status]}]{r.status}[/]")
        out_console.print(t)
        for note in result.notes:
            out_console.print(f"note: {note}", highlight=False)
        n_cmp = sum(r.baseline is not None and r.current is not None for r in result.rows)
        gone = sum(r.current is None for r in result.rows)
        extra = sum(r.baseline is None for r in result.rows)
        out_console.print(f"{n_cmp} figures compared, {len(result.failed)} failed, {gone} missing from the report"
                          + (f", {extra} not in the baseline" if extra else ""), highlight=False)
    if result.failed:
        worse = [r.name for r in result.failed if r.current is not None]
        gone = [r.name for r in result.failed if r.current is None]
        err_console.print("[bold red]regression:[/] " + "; ".join(
            ([", ".join(worse)] if worse else []) + ([f"missing from the report: {', '.join(gone)}"] if gone else [])),
            highlight=False, soft_wrap=True)
        raise typer.Exit(RegressionError.exit_code)


def sweep(
    recipes: Annotated[list[Path], typer.Argument(
        metavar="RECIPE", help="Recipe YAML file(s); several make a matrix sweep (each takes the axis its task supports).")],
    keep_rates: Annotated[str | None, typer.Option(
        "--keep-rates", "-k",
        help="ViT and visual-token recipes: comma-separated keep rates, e.g. 0.9,0.7,0.5,0.3.")] = None,
    vocab_sizes: Annotated[str | None, typer.Option(
        "--vocab-sizes",
        help="Vocab-trim recipes: comma-separated trim.target_vocab_size values, e.g. 8000,12000,16000.")] = None,
    methods: Annotated[str | None, typer.Option(
        "--methods", "-m", help="Methods, comma-separated (default: the recipe's); any method of the recipe's task "
                              "(docs/methods/; an unknown name lists the known ones).")
    ] = None,
    jobs: Annotated[str, typer.Option("--jobs", "-j", metavar="N",
                                      help="Local backend: conversions run in parallel processes (1 to cores × 4).")
                    ] = "1",
    backend: Annotated[str, typer.Option("--backend", help="local (this machine) or ray (one Ray task per "
                                                           "conversion; needs the ray extra, docs/ray.md).")
                       ] = "local",
    address: _Address = None,
    cpus_per_job: Annotated[str | None, typer.Option(
        "--cpus-per-job", metavar="N", help="CPUs reserved per conversion, also its torch and bench threads "
                                           "(default: 1 on Ray, cores ÷ jobs locally).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a sweep into the same --out: points already "
                                                          "complete (same recipe) are kept, the rest run.")] = False,
    metric: Annotated[str | None, typer.Option(
        "--metric", help="Accuracy metric plotted (default: instance_top1; vocab: heldout_embedding_cosine for "
                         "encoders, next_token_top1_agreement for decoders).")] = None,
    out: Annotated[Path | None,
        typer.Option("--out", "-o", help="Output directory (default: out/<recipe>-sweep; several recipes: "
                                         "out/sweep-matrix).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
) -> None:
    """Convert at every keep rate (× method), or every vocabulary size; write sweep.json, sweep.html and
    pareto.png (several recipes: one folder each plus index.html)."""
    from ..errors import TokexportError
    from ..sweep import ALL_METRICS, exit_code, parse_keep_rates, parse_vocab_sizes
    from ..sweep import sweep as run_sweep
    from .ui import err_console, fail

    try:
        rates = ([_finite_in(r, "--keep-rates", f"{r}", 0.0, 1.0, lo_open=True) for r in parse_keep_rates(keep_rates)]
                 if keep_rates is not None else None)
        sizes = parse_vocab_sizes(vocab_sizes) if vocab_sizes is not None else None
        n_jobs = _jobs(jobs)
        n_cpus = _positive_int(cpus_per_job, "--cpus-per-job", 1) if cpus_per_job is not None else None
        if metric is not None:
            _metric(metric, ALL_METRICS, "a sweep")
        names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        with err_console.status("sweeping") as status:
            done: list[str] = []

            def on_done(point, code):
                done.append(point.label)
                status.update(f"sweeping: {len(done)} done (last {point.label}, exit {code})")

            summary, out_dir = run_sweep(list(recipes), rates, names, out, n_jobs, force, metric, on_done, sizes,
                                         backend=backend, address=address, cpus_per_job=n_cpus, resume=resume)
    except TokexportError as e:
        fail(e)
    _print_sweep(summary, out_dir)
    raise typer.Exit(exit_code(summary))


def search(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (model, method, eval set, thresholds).")],
    max_drop: Annotated[str,
        typer.Option("--max-drop", help="Accuracy budget: metric units (0.02) or percentage points (2pp).")],
    metric: Annotated[str | None, typer.Option(
        "--metric", help="Metric whose drop the budget bounds (default: instance_top1; vocab: "
                         "heldout_embedding_cosine for encoders, next_token_top1_agreement for decoders).")] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Blocks the search may prune after, e.g. 2,5,8 "
                                         "(default: the recipe's prune_layers).")] = None,
    step: Annotated[str | None,
        typer.Option("--step", metavar="N", help="Grid step, >= 1: ViT tokens (default tokens/32); visual K or "
                                                 "vocab size (default 1).")] = None,
    max_evals: Annotated[str | None, typer.Option(
        "--max-evals", metavar="N", help="Visual-token and vocab searches: conversions at most, >= 2, the "
                                         "recipe's own value included (default 12).")] = None,
    reference: Annotated[bool, typer.Option("--reference/--no-reference",
                                   help="Also run the pipeline on the recipe's own schedule.")] = True,
    backend: Annotated[str, typer.Option("--backend", help="local, or ray: each round's candidates evaluated in "
                                                           "parallel, each conversion a Ray task (same pick).")
                       ] = "local",
    address: _Address = None,
    cpus_per_job: Annotated[str | None, typer.Option(
        "--cpus-per-job", metavar="N", help="Ray: CPUs reserved per conversion or evaluator, also its torch and "
                                           "bench threads (default 1).")] = None,
    out: Annotated[Path | None,
        typer.Option("--out", "-o", help="Output directory (default: out/<recipe>-search).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
) -> None:
    """Within an accuracy budget: the fewest-FLOPs ViT schedule (greedy, layer-wise), the smallest visual-token K
    or the smallest vocabulary (bisection over full conversions); its recipe and report."""
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from ..errors import InputError, TokexportError
    from ..search import parse_budget
    from ..search import search as run_search
    from ..sweep import ALL_METRICS
    from .ui import RichStages, err_console, fail

    try:
        budget = _finite_in(parse_budget(max_drop), "--max-drop", max_drop, 0.0, 1.0, lo_open=False)
        if metric is not None:
            _metric(metric, ALL_METRICS, "the search")
        n_step = _positive_int(step, "--step", 1) if step is not None else None
        n_evals = _positive_int(max_evals, "--max-evals", 2, 1000) if max_evals is not None else None
        n_cpus = _positive_int(cpus_per_job, "--cpus-per-job", 1) if cpus_per_job is not None else None
        try:
            blocks = [int(x) for x in layers.split(",")] if layers else None
        except ValueError:
            raise InputError(f"--layers: {layers!r}; give comma-separated block indices, e.g. 2,5,8") from None
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True) as progress:
            summary, out_dir = run_search(recipe, budget, metric, out, blocks, n_step, reference, force,
                                          RichStages(progress), n_evals, backend=backend, address=address,
                                          cpus_per_job=n_cpus)
    except TokexportError as e:
        fail(e)
    if "knob" in summary:  # visual tokens (K) or vocab (target vocabulary size)
        _print_knob_search(summary, out_dir)
    else:
        _print_schedule_search(summary, out_dir)
    raise typer.Exit(summary["winner_exit_code"])


def _print_sweep(summary: dict, out_dir: Path) -> None:
    """Each recipe's table of converted points, its failed points, and what was written."""
    from rich.table import Table

    from ..tasks.axes import axis_of_report
    from .ui import out_console

    for s in summary.get("sweeps") or [summary]:
        kind = s["task_kind"]
        done_pts = [p for p in s["points"] if p["status"] == "done"]
        cols = axis_of_report(kind).cli_columns(s) + [
            (f"{s['metric']}", lambda p: f"{p['metric']:.4f}"), ("drop", lambda p: f"{p['metric_drop']:+.4f}"),
            ("report", lambda p: p["passed"]), ("Pareto", lambda p: "★" if p["pareto"] else "")]
        t = Table(*(h for h, _ in cols), show_edge=False, title=s["recipe_path"] if "sweeps" in summary else None)
        for p in done_pts:
            t.add_row(*((c if isinstance(c := cell(p), str) else _fmt(c)) for _, cell in cols))
        out_console.print(t)
        vkey = s["varied"]["key"]
        for p in s["points"]:
            if p["status"] != "done":
                out_console.print(f"failed: {p['method']} {s['varied']['label']} {p[vkey]:g}: exit {p['exit_code']}: "
                                  f"{p['error']}", highlight=False, soft_wrap=True)
        if s["resumed"]:
            out_console.print(f"{s['resumed']} point(s) kept from the earlier run (--resume)", highlight=False)
    if "sweeps" in summary:
        out_console.print(f"wrote {out_dir}/index.html, index.json and, per recipe, "
                          + ", ".join(f"{e['dir']}/" for e in summary["recipes"])
                          + " (sweep.json, sweep.html, pareto.png, runs/)", highlight=False)
    else:
        out_console.print(f"wrote {out_dir}/sweep.json, sweep.html, pareto.png, runs/", highlight=False)
    out_console.print(f"note: {summary.get('timing', '')}".rstrip(), highlight=False)


def _print_knob_search(summary: dict, out_dir: Path) -> None:
    """The recipe's own value and the searched one, how the bisection ended, the verdict, what was written."""
    from .ui import out_console

    metric = summary["metric"]
    for label, e in (("recipe's own", summary["reference"]), ("searched", summary["winner"])):
        sp = ", ".join(f"b{b} {v:.3f}×" for b, v in e["speedups"].items())
        out_console.print(f"{label:>16}: {summary['knob']} {e['value']} → {metric} drop {e['drop']:+.4f}"
                          f" ({'within budget' if e['feasible'] else 'over budget or a threshold failed'})"
                          + (f"; measured speed-up {sp}" if sp else ""), highlight=False)
    out_console.print(f"evaluated {summary['evaluations']} candidates (at most {summary['max_evals']}), "
                      f"{'converged' if summary['converged'] else 'stopped by --max-evals'}", highlight=False)
    out_console.print(f"verdict: {summary['verdict']}", highlight=False)
    out_console.print(f"wrote {out_dir}/{summary['winner_recipe']}, search.json, winner/"
                      + (", reference/" if summary["measured"]["reference"] else ""), highlight=False)


def _print_schedule_search(summary: dict, out_dir: Path) -> None:
    """The recipe's schedule and the searched one (PyTorch), both measured on model.onnx, the verdict, what
    was written."""
    from .ui import out_console

    metric = summary["metric"]
    w, r = summary["winner"], summary["reference"]
    for label, e in (("recipe schedule", r), ("searched", w)):
        out_console.print(f"{label:>16}: after blocks {e['prune_layers']} keep {e['keep']} → "
                          f"FLOPs ×{e['flops_ratio']:.3f}, "
                          f"{metric} drop {e['drop']:+.4f} (PyTorch)", highlight=False)
    for label, m in summary["measured"].items():
        if m:
            sp = ", ".join(f"b{b} {v:.3f}×" for b, v in m["speedups"].items())
            out_console.print(f"{label:>16}: model.onnx {metric} drop {m['drop']:+.4f}; measured speed-up {sp}",
                              highlight=False)
    out_console.print(f"verdict: {summary['verdict']}", highlight=False)
    out_console.print(f"wrote {out_dir}/{summary['winner_recipe']}, search.json, winner/"
                      + (", reference/" if summary["measured"]["reference"] else ""), highlight=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    _register_report_merge(app)
    app.command()(check)
    app.command()(sweep)
    app.command()(search)
