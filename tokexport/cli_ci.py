"""CLI commands check, sweep, search (issue 6). Registered on the main app by ``tokexport.cli``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _fmt(v) -> str:
    from .report import fmt_value

    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    small_or_huge = isinstance(v, float) and (abs(v) < 1e-3 or abs(v) >= 1e4)
    return fmt_value(v, float_format=".4g" if small_or_huge else None)


def _overrides(pairs: list[str]) -> dict:
    """``--set key=value`` pairs; values parsed as YAML scalars (numbers, booleans)."""
    import yaml

    from .errors import InputError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set metrics.instance_top1.abs=0.03")
        out[key.strip()] = yaml.safe_load(value)
    return out


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command()
    def check(
        report: Annotated[Path, typer.Argument(help="report.json to gate (written by `tokexport convert`).")],
        baseline: Annotated[Path, typer.Option("--baseline", "-b", help="Baseline report.json to compare against.")],
        tolerances: Annotated[Path | None,
            typer.Option("--tolerances", "-t", help="Tolerance YAML (docs/ci.md).")] = None,
        accuracy_abs: Annotated[float | None,
            typer.Option("--accuracy-abs", help="Allowed drop of every accuracy metric.")] = None,
        speedup_factor: Annotated[float | None,
            typer.Option("--speedup-factor", help="Speed-ups may fall to this factor of the baseline's.")] = None,
        set_: Annotated[list[str] | None,
            typer.Option("--set", help="Any tolerance, dotted: metrics.instance_top1.abs=0.03 (repeatable).")] = None,
        fail_missing: Annotated[bool,
            typer.Option("--fail-missing", help="Fail when a baseline figure is missing.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    ) -> None:
        """Compare REPORT with a baseline report, figure by figure; exit 6 on regression, 7 on an unreadable report."""
        import json
        import sys

        from rich.table import Table

        from .check import check as run_check
        from .check import load_tolerances
        from .cli import _fail, err_console, out_console
        from .errors import RegressionError, TokexportError

        try:
            over = _overrides(set_ or [])
            if accuracy_abs is not None:
                over["accuracy.abs"] = accuracy_abs
            if speedup_factor is not None:
                over["speedup_factor"] = speedup_factor
            if fail_missing:
                over["fail_missing"] = True
            tol = load_tolerances(tolerances, over)
            result = run_check(report, baseline, tol)
        except TokexportError as e:
            _fail(e)
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
            n_cmp = sum(r.status != "MISSING" for r in result.rows)
            out_console.print(f"{n_cmp} figures compared, {len(result.failed)} failed, {len(result.missing)} missing",
                              highlight=False)
        if result.failed:
            err_console.print(f"[bold red]regression:[/] {', '.join(r.name for r in result.failed)}", highlight=False)
            raise typer.Exit(RegressionError.exit_code)

    @app.command()
    def sweep(
        recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (its prune layers and settings are kept).")],
        keep_rates: Annotated[str,
            typer.Option("--keep-rates", "-k", help="Comma-separated keep rates, e.g. 0.9,0.7,0.5,0.3.")],
        methods: Annotated[str | None, typer.Option(
            "--methods", "-m", help="Methods, comma-separated (default: the recipe's): zero-tprune,topk-cls,random.")
        ] = None,
        jobs: Annotated[int, typer.Option("--jobs", "-j", help="Conversions run in parallel processes.")] = 1,
        metric: Annotated[str | None,
            typer.Option("--metric", help="Accuracy metric plotted (default: instance_top1).")] = None,
        out: Annotated[Path | None,
            typer.Option("--out", "-o", help="Output directory (default: out/<recipe>-sweep).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    ) -> None:
        """Convert at every keep rate (× method); write sweep.json, sweep.html and pareto.png."""
        from rich.table import Table

        from .cli import _fail, err_console, out_console
        from .errors import TokexportError
        from .sweep import exit_code, parse_keep_rates
        from .sweep import sweep as run_sweep

        try:
            rates = parse_keep_rates(keep_rates)
            names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
            with err_console.status("sweeping") as status:
                done: list[str] = []

                def on_done(point, code):
                    done.append(point.label)
                    status.update(f"sweeping: {len(done)} done (last {point.label}, exit {code})")

                summary, out_dir = run_sweep(recipe, rates, names, out, jobs, force, metric, on_done)
        except TokexportError as e:
            _fail(e)
        x = summary["x"]
        t = Table("method", "keep rate", "tokens", x["label"], "FLOPs ratio", f"{summary['metric']}", "drop", "report",
                  "Pareto", show_edge=False)
        for p in summary["points"]:
            t.add_row(p["method"], f"{p['keep_rate']:g}", "→".join(map(str, p["tokens"])), f"{p[x['key']]:.3f}×",
                      _fmt(p["flops_ratio"]), f"{p['metric']:.4f}", f"{p['metric_drop']:+.4f}", _fmt(p["passed"]),
                      "★" if p["pareto"] else "")
        out_console.print(t)
        out_console.print(f"wrote {out_dir}/sweep.json, sweep.html, pareto.png, runs/", highlight=False)
        raise typer.Exit(exit_code(summary))

    @app.command()
    def search(
        recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (model, method, eval set, thresholds).")],
        max_drop: Annotated[str,
            typer.Option("--max-drop", help="Accuracy budget: metric units (0.02) or percentage points (2pp).")],
        metric: Annotated[str, typer.Option("--metric", help="Metric whose drop the budget bounds.")] = "instance_top1",
        layers: Annotated[str | None, typer.Option("--layers", help="Blocks the search may prune after, e.g. 2,5,8 "
                                             "(default: the recipe's prune_layers).")] = None,
        step: Annotated[int | None,
            typer.Option("--step", min=1, help="Token-count grid step (default: tokens/32).")] = None,
        reference: Annotated[bool, typer.Option("--reference/--no-reference",
                                       help="Also run the pipeline on the recipe's own schedule.")] = True,
        out: Annotated[Path | None,
            typer.Option("--out", "-o", help="Output directory (default: out/<recipe>-search).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    ) -> None:
        """Greedy layer-wise search: the fewest-FLOPs schedule within an accuracy budget; its recipe and report."""
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        from .cli import _fail, _RichStages, err_console, out_console
        from .errors import InputError, TokexportError
        from .search import parse_budget
        from .search import search as run_search

        try:
            budget = parse_budget(max_drop)
            try:
                blocks = [int(x) for x in layers.split(",")] if layers else None
            except ValueError:
                raise InputError(f"--layers: {layers!r}; give comma-separated block indices, e.g. 2,5,8") from None
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                          console=err_console, transient=True) as progress:
                summary, out_dir = run_search(recipe, budget, metric, out, blocks, step, reference, force,
                                              _RichStages(progress))
        except TokexportError as e:
            _fail(e)
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
        raise typer.Exit(summary["winner_exit_code"])
