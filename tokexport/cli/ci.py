"""CLI commands check, sweep, search (issue 6). Registered on the main app by ``tokexport.cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# the Ray cluster option of sweep and search
_Address = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (default: RAY_ADDRESS, else a Ray instance started here)."),
]


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
            raise InputError(
                f"--set {pair!r}: the value is not a YAML scalar ({getattr(e, 'problem', None) or e})"
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
    out_path = check_out_file(
        os.path.expanduser(out),
        force,
        protect=(report, device),
        kind="merged report",
        recognise=_is_tokexport_report,
        recognised_as="a tokexport report",
    )
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
        device: Annotated[
            Path, typer.Argument(help="device_results.json written by the bundle's verify_on_device.py.")
        ],
        out: Annotated[Path, typer.Option("--out", "-o", help="Merged report to write (a new file).")],
        force: Annotated[
            bool, typer.Option("--force", help="Replace an existing merged report (a tokexport report only).")
        ] = False,
        allow_kind_change: Annotated[
            bool,
            typer.Option(
                "--allow-kind-change", help="Merge although the bundled graphs are not the report's (exit 7 otherwise)."
            ),
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
        result(
            f"wrote {out}: {report} + device results ({rt.get('name', 'no runtime')}"
            + (f" {rt['provider']}" if rt.get("provider") else "")
            + f", {'PASS' if d['passed'] else 'FAIL'})"
        )


# check's arguments and options
_CheckReport = Annotated[
    Path,
    typer.Argument(
        help="report.json to gate (written by `tokexport convert`), or the "
        "device_results.json a bundle's verify_on_device.py wrote."
    ),
]
_Baseline = Annotated[Path, typer.Option("--baseline", "-b", help="Baseline report.json to compare against.")]
_Tolerances = Annotated[Path | None, typer.Option("--tolerances", "-t", help="Tolerance YAML (docs/ci.md).")]
_AccuracyAbs = Annotated[float | None, typer.Option("--accuracy-abs", help="Allowed drop of every accuracy metric.")]
_SpeedupFactor = Annotated[
    float | None, typer.Option("--speedup-factor", help="Speed-ups may fall to this factor of the baseline's.")
]
_Set = Annotated[
    list[str] | None, typer.Option("--set", help="Any tolerance, dotted: metrics.instance_top1.abs=0.03 (repeatable).")
]
_FailMissing = Annotated[
    bool | None,
    typer.Option(
        "--fail-missing/--allow-missing",
        help="A baseline figure missing from the report fails (default) / is only listed as MISSING.",
    ),
]
_AllowKindChange = Annotated[
    bool,
    typer.Option(
        "--allow-kind-change",
        help="Compare a report of another kind, model or task than the baseline (exit 7 otherwise).",
    ),
]
_Json = Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")]


def check(
    report: _CheckReport,
    baseline: _Baseline,
    tolerances: _Tolerances = None,
    accuracy_abs: _AccuracyAbs = None,
    speedup_factor: _SpeedupFactor = None,
    set_: _Set = None,
    fail_missing: _FailMissing = None,
    allow_kind_change: _AllowKindChange = False,
    as_json: _Json = False,
) -> None:
    """Compare REPORT with a baseline report, figure by figure; exit 6 on regression or a missing figure, 7 on
    an unreadable report (non-finite or mistyped figures, another kind or model, nothing comparable). Given a
    device_results.json, gate what the device measured (sha256, every output within the bundle's tolerances)
    against the baseline report it was bundled from."""
    import json
    import sys

    from ..check import check as run_check
    from ..check import load_tolerances
    from ..errors import RegressionError, TokexportError
    from .ui import err_console, fail, print_check

    try:
        over = _overrides(set_ or [])
        labels = {k: "--set" for k in over}
        for key, flag, value in (
            ("accuracy.abs", "--accuracy-abs", accuracy_abs),
            ("speedup_factor", "--speedup-factor", speedup_factor),
            ("fail_missing", "--fail-missing/--allow-missing", fail_missing),
        ):
            if value is not None:
                over[key], labels[key] = value, flag
        tol = load_tolerances(tolerances, over, labels)
        result = run_check(report, baseline, tol, allow_kind_change)
    except TokexportError as e:
        fail(e)
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    else:
        print_check(result, f"{report} vs {baseline}")
    if result.failed:
        worse = [r.name for r in result.failed if r.current is not None]
        gone = [r.name for r in result.failed if r.current is None]
        err_console.print(
            "[bold red]regression:[/] "
            + "; ".join(
                ([", ".join(worse)] if worse else [])
                + ([f"missing from the report: {', '.join(gone)}"] if gone else [])
            ),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(RegressionError.exit_code)


# sweep's arguments and options
_Recipes = Annotated[
    list[Path],
    typer.Argument(
        metavar="RECIPE",
        help="Recipe YAML file(s); several make a matrix sweep (each takes the axis its task supports).",
    ),
]
_KeepRates = Annotated[
    str | None,
    typer.Option(
        "--keep-rates", "-k", help="ViT and visual-token recipes: comma-separated keep rates, e.g. 0.9,0.7,0.5,0.3."
    ),
]
_VocabSizes = Annotated[
    str | None,
    typer.Option(
        "--vocab-sizes",
        help="Vocab-trim recipes: comma-separated trim.target_vocab_size values, e.g. 8000,12000,16000.",
    ),
]
_Methods = Annotated[
    str | None,
    typer.Option(
        "--methods",
        "-m",
        help="Methods, comma-separated (default: the recipe's); any method of the recipe's task "
        "(docs/methods/; an unknown name lists the known ones).",
    ),
]
_Jobs = Annotated[
    str,
    typer.Option(
        "--jobs", "-j", metavar="N", help="Local backend: conversions run in parallel processes (1 to cores × 4)."
    ),
]
_SweepBackend = Annotated[
    str,
    typer.Option(
        "--backend", help="local (this machine) or ray (one Ray task per conversion; needs the ray extra, docs/ray.md)."
    ),
]
_SweepCpusPerJob = Annotated[
    str | None,
    typer.Option(
        "--cpus-per-job",
        metavar="N",
        help="CPUs reserved per conversion, also its torch and bench threads "
        "(default: 1 on Ray, cores ÷ jobs locally).",
    ),
]
_Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue a sweep into the same --out: points already complete (same recipe) are kept, the rest run.",
    ),
]
_SweepMetric = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help="Accuracy metric plotted (default: instance_top1; vocab: heldout_embedding_cosine for "
        "encoders, next_token_top1_agreement for decoders).",
    ),
]
_SweepOut = Annotated[
    Path | None,
    typer.Option(
        "--out", "-o", help="Output directory (default: out/<recipe>-sweep; several recipes: out/sweep-matrix)."
    ),
]
# sweep's and search's
_Force = Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")]


def sweep(
    recipes: _Recipes,
    keep_rates: _KeepRates = None,
    vocab_sizes: _VocabSizes = None,
    methods: _Methods = None,
    jobs: _Jobs = "1",
    backend: _SweepBackend = "local",
    address: _Address = None,
    cpus_per_job: _SweepCpusPerJob = None,
    resume: _Resume = False,
    metric: _SweepMetric = None,
    out: _SweepOut = None,
    force: _Force = False,
) -> None:
    """Convert at every keep rate (× method), or every vocabulary size; write sweep.json, sweep.html and
    pareto.png (several recipes: one folder each plus index.html)."""
    from ..errors import TokexportError
    from ..sweep import ALL_METRICS, exit_code, parse_keep_rates, parse_vocab_sizes
    from ..sweep import sweep as run_sweep
    from .ui import err_console, fail, print_sweep

    try:
        rates = (
            [_finite_in(r, "--keep-rates", f"{r}", 0.0, 1.0, lo_open=True) for r in parse_keep_rates(keep_rates)]
            if keep_rates is not None
            else None
        )
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

            summary, out_dir = run_sweep(
                list(recipes),
                rates,
                names,
                out,
                n_jobs,
                force,
                metric,
                on_done,
                sizes,
                backend=backend,
                address=address,
                cpus_per_job=n_cpus,
                resume=resume,
            )
    except TokexportError as e:
        fail(e)
    print_sweep(summary, out_dir)
    raise typer.Exit(exit_code(summary))


# search's arguments and options
_Recipe = Annotated[Path, typer.Argument(help="Recipe YAML file (model, method, eval set, thresholds).")]
_MaxDrop = Annotated[
    str, typer.Option("--max-drop", help="Accuracy budget: metric units (0.02) or percentage points (2pp).")
]
_SearchMetric = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help="Metric whose drop the budget bounds (default: instance_top1; vocab: "
        "heldout_embedding_cosine for encoders, next_token_top1_agreement for decoders).",
    ),
]
_Layers = Annotated[
    str | None,
    typer.Option(
        "--layers", help="Blocks the search may prune after, e.g. 2,5,8 (default: the recipe's prune_layers)."
    ),
]
_Step = Annotated[
    str | None,
    typer.Option(
        "--step",
        metavar="N",
        help="Grid step, >= 1: ViT tokens (default tokens/32); visual K or vocab size (default 1).",
    ),
]
_MaxEvals = Annotated[
    str | None,
    typer.Option(
        "--max-evals",
        metavar="N",
        help="Visual-token and vocab searches: conversions at most, >= 2, the "
        "recipe's own value included (default 12).",
    ),
]
_Reference = Annotated[
    bool, typer.Option("--reference/--no-reference", help="Also run the pipeline on the recipe's own schedule.")
]
_SearchBackend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="local, or ray: each round's candidates evaluated in parallel, each conversion a Ray task (same pick).",
    ),
]
_SearchCpusPerJob = Annotated[
    str | None,
    typer.Option(
        "--cpus-per-job",
        metavar="N",
        help="Ray: CPUs reserved per conversion or evaluator, also its torch and bench threads (default 1).",
    ),
]
_SearchOut = Annotated[
    Path | None, typer.Option("--out", "-o", help="Output directory (default: out/<recipe>-search).")
]


def search(
    recipe: _Recipe,
    max_drop: _MaxDrop,
    metric: _SearchMetric = None,
    layers: _Layers = None,
    step: _Step = None,
    max_evals: _MaxEvals = None,
    reference: _Reference = True,
    backend: _SearchBackend = "local",
    address: _Address = None,
    cpus_per_job: _SearchCpusPerJob = None,
    out: _SearchOut = None,
    force: _Force = False,
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
    from .ui import RichStages, err_console, fail, print_search

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
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            summary, out_dir = run_search(
                recipe,
                budget,
                metric,
                out,
                blocks,
                n_step,
                reference,
                force,
                RichStages(progress),
                n_evals,
                backend=backend,
                address=address,
                cpus_per_job=n_cpus,
            )
    except TokexportError as e:
        fail(e)
    print_search(summary, out_dir)
    raise typer.Exit(summary["winner_exit_code"])


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    _register_report_merge(app)
    app.command()(check)
    app.command()(sweep)
    app.command()(search)
