"""CLI commands check-target, build, bundle (deployment targets). Registered on the main app by ``tokexport.cli``."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import typer

from ..targets import DEFAULT_TARGET, TARGET_NAMES

_TARGET_HELP = f"Deployment target: {', '.join(TARGET_NAMES)}."


def _sources(src: Path) -> dict[str, Path]:
    """{name: graph} from a convert output directory (model.onnx [+ baseline.onnx]) or one .onnx file."""
    from ..errors import InputError
    from ..files import os_problem, stat_regular

    try:
        is_dir = stat.S_ISDIR(os.stat(src).st_mode)
    except FileNotFoundError:
        raise InputError(f"{src}: not found; pass a `tokexport convert` output directory or an .onnx file") from None
    except OSError as e:
        raise InputError(
            f"{src}: cannot read it: {os_problem(e)}; pass a `tokexport convert` output directory or an .onnx file"
        ) from None
    if is_dir:
        found = {n: src / f"{n}.onnx" for n in ("model", "baseline") if (src / f"{n}.onnx").is_file()}
        if "model" not in found:
            raise InputError(
                f"{src}: no model.onnx inside; pass a `tokexport convert` output directory or an .onnx file"
            )
        return found
    stat_regular(src, "graph")  # a FIFO or a device: refused by what it is
    return {"model": src}


def _recipe_target(src: Path) -> str | None:
    """The target recorded in a convert output directory's report.json, if any.

    InputError (one line) when report.json exists but is not UTF-8 JSON or its target is not a string:
    the caller asks only when no --target was given, and guessing a target would bundle for the wrong device.
    """
    from ..errors import InputError
    from ..files import read_json

    rep = src / "report.json"
    try:
        if not (stat.S_ISDIR(os.stat(src).st_mode) and os.path.lexists(rep)):
            return None
    except OSError:
        return None  # _sources names the problem
    try:
        data = read_json(rep, "report")
    except InputError as exc:
        raise InputError(f"{exc}; or pass --target to choose the target without it") from None
    recipe = data.get("recipe") if isinstance(data, dict) else None
    export = recipe.get("export") if isinstance(recipe, dict) else None
    target = export.get("target") if isinstance(export, dict) else None
    if target is not None and not isinstance(target, str):
        raise InputError(f"{rep}: recipe.export.target is {target!r}, not a target name; pass --target")
    return target


def _contained(root: Path, rel: object, what: str) -> Path:
    """``root / rel`` when ``rel`` is a relative path that resolves inside ``root``; InputError otherwise."""
    from ..errors import InputError

    if not isinstance(rel, str) or not rel or "\0" in rel or Path(rel).is_absolute():
        raise InputError(
            f"{root / 'manifest.json'}: {what} {rel!r} is not a relative file name inside {root} "
            "(absolute paths lead outside it); refusing to read it"
        )
    try:
        path, top = (root / rel).resolve(), root.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        path = top = root
    if path == top or not path.is_relative_to(top):
        raise InputError(f"{root / 'manifest.json'}: {what} {rel!r} resolves outside {root}; refusing to read it")
    return path


def _convert_inputs(deploy: Path) -> dict | None:
    """The sample inputs `tokexport convert` put in its deploy/ (real evaluation data), if readable.

    None for an older or damaged deploy/ (generated inputs are used instead); InputError when its
    manifest.json lists an input file outside deploy/ (nothing outside is read).
    """
    from ..errors import InputError
    from ..files import load_array, read_json

    try:
        manifest = read_json(deploy / "manifest.json", "manifest")
        entries = manifest["inputs"].items()
        files = {name: _contained(deploy, i["file"], f"input {name!r}") for name, i in entries}
        return {name: load_array(path) for name, path in files.items()}
    except (InputError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, InputError) and "refusing to read" in str(e):
            raise
        return None  # an older or damaged deploy/: fall back to generated inputs


def _npz_inputs(path: Path, models: dict[str, Path]) -> dict:
    """The arrays of an --inputs .npz; InputError (one line) when it is not a readable .npz or holds an
    array no graph takes (its keys are names only: the bundle stores arrays by position)."""
    import numpy as np

    from ..errors import InputError
    from ..files import load_array
    from ..onnx_tools import inspect_model

    z = load_array(path)  # a regular file, never unpickled; InputError otherwise
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: a single array, not an .npz of named input arrays (np.savez)")
    try:
        with z:
            feed = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, BadZipFile, EOFError, ...: all mean unreadable
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"{path}: not a readable .npz of input arrays ({why})") from None
    wanted = list(dict.fromkeys(i["name"] for p in models.values() for i in inspect_model(p)["inputs"]))
    extra = [k for k in feed if k not in wanted]
    if extra:
        raise InputError(f"{path}: holds arrays no graph takes: {extra!r}; name them after the graph inputs {wanted!r}")
    return feed


def check_target_cmd(
    model: Path = typer.Argument(..., help="ONNX file."),
    target: str = typer.Option(DEFAULT_TARGET, "--target", "-t", help=_TARGET_HELP),
    lint: bool = typer.Option(
        True, "--lint/--no-lint", help="Also run `polygraphy check lint` (ONNX Runtime per node)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the check as JSON."),
) -> None:
    """Static checks of an ONNX graph against a target: opset, static shapes (batch may be dynamic), TopK K
    constant and < 3840, no data-dependent shapes, operators and attributes the target parses. Exit 9 on errors."""
    from rich.markup import escape
    from rich.table import Table

    from ..errors import TargetCheckFailed, TokexportError
    from ..onnx_tools import check_target
    from .ui import fail, out_console

    try:
        res = check_target(model, target, lint=lint)
    except TokexportError as e:
        fail(e)
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict(), indent=2) + "\n")
    else:
        if res.findings:
            t = Table("level", "code", "node", "problem", "fix", title=escape(f"{model} on {res.target.label}"))
            for f in res.findings:
                t.add_row(*(escape(str(c)) for c in (f.level, f.code, f.node or "(graph)", f.message, f.fix)))
            out_console.print(t)
        if res.lint is not None:
            lint_txt = (
                f"{res.lint['passing_nodes']} nodes pass, {len(res.lint['failing_nodes'])} fail"
                if res.lint.get("ran")
                else f"not run: {res.lint['reason']}"
            )
            out_console.print(f"polygraphy check lint: {lint_txt}", highlight=False)
        verdict = "PASS" if res.passed else "FAIL"
        out_console.print(
            escape(
                f"{verdict}: {model} on {res.target.label}, opset {res.opset}: "
                f"{len(res.errors)} error(s), {len(res.warnings)} warning(s)"
            ),
            highlight=False,
        )
    if not res.passed:
        raise typer.Exit(TargetCheckFailed.exit_code)


def bundle_cmd(
    out_dir: Path = typer.Argument(..., help="Bundle directory to write; OUT_DIR.tar.gz is written next to it."),
    source: Path = typer.Option(
        ...,
        "--from",
        help="A `tokexport convert` output directory (bundles model.onnx "
        "and baseline.onnx) or one .onnx file (bundled as model.onnx).",
    ),
    target: str | None = typer.Option(
        None, "--target", "-t", help=_TARGET_HELP + f" Default: the convert report's target, else {DEFAULT_TARGET}."
    ),
    inputs: Path | None = typer.Option(
        None,
        "--inputs",
        help=".npz of sample inputs (names = graph inputs); "
        "default: a convert directory's own deploy/inputs (real data), else "
        "seeded standard-normal arrays, batch 1.",
    ),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="Engines built on the device in FP16."),
    max_batch: int = typer.Option(8, "--max-batch", help="Largest batch of the engine profile (dynamic batch)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT_DIR and OUT_DIR.tar.gz."),
) -> None:
    """Write a deploy bundle: graphs, manifest.json (shapes, dtypes, target, opset, sha256 of every file),
    sample inputs and ONNX Runtime's expected outputs (.npy), build_engine.sh (trtexec), verify_on_device.py."""
    from rich.markup import escape

    from ..deploy import write_bundle
    from ..errors import TokexportError
    from ..targets import resolve
    from .ui import err_console, fail, out_console

    try:
        tgt = resolve(target or _recipe_target(source) or DEFAULT_TARGET)
        models = _sources(source)
        feed = None
        if inputs is not None:
            feed = _npz_inputs(inputs, models)
        elif source.is_dir() and (source / "deploy" / "manifest.json").is_file():
            feed = _convert_inputs(source / "deploy")
        with err_console.status(f"writing {out_dir}"):
            b = write_bundle(out_dir, models, tgt, feed, fp16=fp16, max_batch=max_batch, force=force)
    except TokexportError as e:
        fail(e)
    failed = []
    for name, m in b.manifest["models"].items():
        tc = m["target_check"]
        out_console.print(
            f"{name}.onnx on {tgt.label}: {'PASS' if tc['passed'] else 'FAIL'} "
            f"({tc['errors']} error(s), {tc['warnings']} warning(s))",
            highlight=False,
        )
        if not tc["passed"]:
            failed.append(f"{name}.onnx")
    out_console.print(
        escape(
            f"wrote {b.path}/ and {b.archive} ({len(b.manifest['files'])} files); on the device: "
            "./build_engine.sh && python3 verify_on_device.py"
        ),
        highlight=False,
    )
    if failed:  # written (the findings are in manifest.json), but the target would not build it as is
        from ..errors import TargetCheckFailed

        err_console.print(
            escape(
                f"target check failed: {', '.join(failed)} on {tgt.label} (see "
                f"`tokexport check-target`); the bundle is written but will not build as is"
            ),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(TargetCheckFailed.exit_code)


def build_cmd(
    source: Path = typer.Argument(
        ..., help="RECIPE.yaml (converted first), a convert output directory, or MODEL.onnx."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Where engines and build.json go (default: next to "
        "the graph; for a recipe, the convert output directory).",
    ),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="Build in FP16 (compared with FP16 tolerances)."),
    repeats: int = typer.Option(20, "--repeats", min=1, help="Timed engine runs."),
    force: bool = typer.Option(False, "--force", help="Replace an existing convert output (recipes)."),
) -> None:
    """Build TensorRT engines, time them and compare with ONNX Runtime. Needs `tensorrt` and an NVIDIA GPU:
    without them, one line and exit 8 (build on the device from `tokexport bundle`)."""
    from ..deploy import DEFAULT_TOLERANCES, build_and_compare, require_tensorrt, sample_inputs
    from ..errors import InputError, ParityError, TokexportError
    from ..onnx_tools import inspect_model
    from .ui import err_console, fail, out_console

    try:
        recipe = None
        if source.suffix in (".yaml", ".yml"):
            from ..recipe import load_recipe

            recipe = load_recipe(source)
        elif not source.exists():
            raise InputError(f"{source}: not found; pass a recipe, a convert output directory or an .onnx file")
        else:
            _sources(source)
        require_tensorrt()
        if recipe is not None:
            from ..pipeline import convert

            with err_console.status(f"converting {source}"):
                res = convert(source, out, force)
            source, out = res.out_dir, None
        models = _sources(source)
        dest = out or (source if source.is_dir() else source.parent)
        dest.mkdir(parents=True, exist_ok=True)
        tol = recipe.deploy.tolerances() if recipe is not None else dict(DEFAULT_TOLERANCES)
        results = {}
        for name, path in models.items():
            feed = sample_inputs(inspect_model(path))
            with err_console.status(f"building {name}.engine"):
                results[name] = build_and_compare(path, dest / f"{name}.engine", feed, tol, fp16, repeats=repeats)
        from ..outdir import write_file_atomic

        write_file_atomic(dest / "build.json", json.dumps(results, indent=2) + "\n")  # never through a link
    except TokexportError as e:
        fail(e)
    from ..deploy import format_row

    for name, r in results.items():
        out_console.print(
            f"{name}.engine: built in {r['build_s']:.1f} s, median {r['median_ms']:.3f} ms "
            f"(p90 {r['p90_ms']:.3f}), {'PASS' if r['passed'] else 'FAIL'} against ONNX Runtime",
            highlight=False,
        )
        for row in r["comparison"]:
            out_console.print(format_row(row), highlight=False)
    if not all(r["passed"] for r in results.values()):
        raise typer.Exit(ParityError.exit_code)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("check-target")(check_target_cmd)
    app.command("bundle")(bundle_cmd)
    app.command("build")(build_cmd)
