"""What users of a command-line tool expect: `--version`, `-v`/`-q`/`--log-file`, errors printed
literally on one line, fast answers to bad input (no torch import), shipped recipes by name, a wheel
that carries its recipes, and no path outside the repository."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_cli_bad_input import assert_one_line_error, run_cli

import tokexport
from tokexport.cli.ui import reset_logging
from tokexport.shipped import find_shipped_recipe, shipped_recipes

HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "optimum")
SHIPPED = sorted(
    p.relative_to(REPO / "tokexport" / "recipes").as_posix() for p in (REPO / "tokexport" / "recipes").rglob("*.yaml")
)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _imported(*args, cwd=None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the CLI under ``-X importtime``; (result, top-level names of every module imported)."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tokexport", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    mods = {
        ln.rsplit("|", 1)[1].strip().split(".")[0]
        for ln in res.stderr.splitlines()
        if ln.startswith("import time:") and "|" in ln
    }
    assert "tokexport" in mods, res.stderr[-2000:]
    return res, mods


# --- --version and fast paths -----------------------------------------------------------------------


def test_version_prints_versions_and_does_not_import_torch():
    res, mods = _imported("--version")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = _lines(res.stdout)
    assert lines[0] == f"tokexport {tokexport.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", tokexport.__version__)
    for dep in ("python", "torch", "transformers", "onnx", "onnxruntime"):
        assert re.search(rf"\b{dep} \S", lines[1]), lines
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["recipes", "list"],
        ["convert", "missing.yaml"],
        ["convert", "--help"],
        ["-q", "convert", "nope"],
        ["inspect", "missing.onnx"],
    ],
)
def test_fast_commands_import_no_heavy_module(args, tmp_path):
    res, mods = _imported(*args, cwd=tmp_path)
    assert res.returncode in (0, 2), res.stderr[-2000:]
    assert not mods & set(HEAVY), (args, sorted(mods & set(HEAVY)))


def test_version_is_written_once():
    """pyproject.toml reads the version from tokexport.__version__ (no second copy to forget)."""
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', text, flags=re.M)
    assert 'version = { attr = "tokexport.__version__" }' in text
    assert not re.search(r'^version = "', text, flags=re.M)


# --- one-line errors, printed literally ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["[bold]x[/].yaml", "a\\[red]b[/red].yaml", "[/]"])
def test_markup_in_a_path_is_printed_literally(tmp_path, name):
    res = run_cli("convert", name, cwd=tmp_path)
    assert_one_line_error(res, name, "not found")


def test_markup_in_a_recipe_value_is_printed_literally(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"model": "dinov2-small", "reduction": {"method": "[bold]x[/]"}}))
    res = run_cli("convert", str(p), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, "'[bold]x[/]'", "reduction.method")
    assert not (tmp_path / "out").exists()


def test_fail_joins_a_multiline_message_into_one_line():
    from typer.testing import CliRunner

    from tokexport.cli import app

    try:
        res = CliRunner().invoke(app, ["-q", "convert", "first line\nsecond [bold]line[/]"])
    finally:
        reset_logging()
    assert res.exit_code == 2
    out = _lines(res.output)
    assert len(out) == 1 and out[0].startswith("error: first line second [bold]line[/]"), res.output


# --- -q / -v / --log-file -------------------------------------------------------------------------------


@pytest.fixture
def a_file(tmp_path) -> Path:
    """An existing regular file, as --out: convert resolves and validates the recipe, then refuses it."""
    f = tmp_path / "afile"
    f.write_text("mine")
    return f


def test_quiet_prints_only_the_error(tmp_path, a_file):
    res = run_cli("-q", "convert", "dinov2-small-zero-tprune", "--out", str(a_file), cwd=tmp_path)
    assert_one_line_error(res, str(a_file), "not a directory")
    assert a_file.read_text() == "mine"


def test_quiet_keeps_the_result_lines():
    res = run_cli("-q", "recipes", "list")
    assert res.returncode == 0 and res.stderr == ""
    assert "dinov2-small-zero-tprune.yaml" in res.stdout


def test_default_and_verbose_messages(tmp_path, a_file):
    default = run_cli("convert", "dinov2-small-zero-tprune", "--out", str(a_file), cwd=tmp_path)
    lines = _lines(default.stderr)
    assert default.returncode == 2 and len(lines) == 2, default.stderr
    assert "shipped recipe" in lines[0] and lines[1].startswith("error:")
    assert "debug:" not in default.stderr

    verbose = run_cli("-v", "convert", "dinov2-small-zero-tprune", "--out", str(a_file), cwd=tmp_path)
    lines = _lines(verbose.stderr)
    assert verbose.returncode == 2 and lines[-1].startswith("error:"), verbose.stderr
    assert any(ln.startswith("debug: recipe: ") for ln in lines), verbose.stderr
    assert any("imported in" in ln for ln in lines), verbose.stderr


def test_log_file_gets_every_message_with_timestamps_appended(tmp_path, a_file):
    log = tmp_path / "run.log"
    res = run_cli(
        "--log-file", str(log), "-q", "convert", "dinov2-small-zero-tprune", "--out", str(a_file), cwd=tmp_path
    )
    assert_one_line_error(res, "not a directory")  # the console stays quiet ...
    first = log.read_text().splitlines()
    assert first and all(TIMESTAMP.match(ln) for ln in first), first
    text = "\n".join(first)  # ... the log has everything: the command, the info note, debug lines, the error
    assert "-q convert dinov2-small-zero-tprune --out" in text
    assert "shipped recipe" in text and "DEBUG" in text and "ERROR" in text and "not a directory" in text
    assert "exit code 2" in text

    res = run_cli("--log-file", str(log), "recipes", "list", cwd=tmp_path)
    assert res.returncode == 0
    second = log.read_text().splitlines()
    assert second[: len(first)] == first, "appended, not overwritten"
    assert any("recipes list" in ln for ln in second[len(first) :]) and "exit code 0" in second[-1]


def test_log_file_that_cannot_be_opened(tmp_path):
    res = run_cli("--log-file", str(tmp_path / "no-such-dir" / "x.log"), "recipes", "list")
    assert_one_line_error(res, "--log-file", "no-such-dir")
    res = run_cli("--log-file", str(tmp_path), "recipes", "list")  # a directory
    assert_one_line_error(res, "--log-file")


def test_verbose_and_quiet_together_is_an_error():
    assert_one_line_error(run_cli("-v", "-q", "recipes", "list"), "--verbose", "--quiet")


def test_stage_messages_are_logged_literally(tmp_path, capsys):
    """Progress hooks: stage starts/ends are debug messages with durations, ``log`` lines are info
    messages, and text in brackets (search logs "[deepest layer first] ...") is never eaten as markup."""
    from tokexport.cli import ui as cli_ui

    log = tmp_path / "stages.log"
    try:
        cli_ui.setup_logging(verbose=True, log_file=log)
        with cli_ui.progress_stages() as stages:
            with stages.stage("export [bold]graphs[/]") as advance:
                advance()
            stages.log("[deepest layer first] keep 153 -> ok")
        err = capsys.readouterr().err
        text = log.read_text()
    finally:
        cli_ui.reset_logging()  # leave the logger as a library user finds it
    assert "debug: stage: export [bold]graphs[/]" in err and "[deepest layer first] keep 153 -> ok" in err
    assert re.search(r"DEBUG .*stage done: export \[bold\]graphs\[/\] \(\d+\.\d s\)", text), text
    assert "INFO    tokexport: [deepest layer first] keep 153 -> ok" in text


# --- shipped recipes -------------------------------------------------------------------------------------


def test_recipes_live_in_the_package_and_the_top_level_link_points_there():
    link = REPO / "recipes"
    assert link.is_symlink() and os.readlink(link) == "tokexport/recipes"
    assert (REPO / "tokexport" / "recipes").is_dir() and not (REPO / "tokexport" / "recipes").is_symlink()
    assert "dinov2-small-zero-tprune.yaml" in SHIPPED and "tiny/llava-next-tiny-hired.yaml" in SHIPPED
    assert [name for name, _ in shipped_recipes()] == SHIPPED


def test_recipes_list_reads_the_package():
    res = run_cli("recipes", "list", env={"COLUMNS": "300"}, cwd=REPO / "tests")
    assert res.returncode == 0, res.stderr
    for name in SHIPPED:
        assert name in res.stdout, name
    assert str(REPO / "tokexport" / "recipes") in res.stdout


def test_recipes_list_says_every_shipped_schedule():
    """The schedule column comes from each method's own config (``summary``): every shipped recipe's, a
    hybrid's steps included (the column once read "visual tokens keep None" for the ViT hybrid and PiToMe)."""
    from tokexport.cli.app import _schedule

    for name, path in shipped_recipes():
        method, sched = _schedule(yaml.safe_load(path.read_text()))
        assert "None" not in sched and "does not validate" not in sched, (name, sched)
        if "visual tokens" in sched:
            assert yaml.safe_load(path.read_text())["task"] == "visual-tokens", (name, sched)
    hybrid = _schedule(yaml.safe_load((REPO / "recipes" / "dinov2-small-hybrid.yaml").read_text()))
    assert hybrid[0] == "hybrid" and hybrid[1].startswith("divprune after [2] keep") and "then tome merge" in hybrid[1]
    assert _schedule({"model": "m", "reduction": {"method": "tome", "r": "x"}}) == (
        "tome",
        "(reduction does not validate: `tokexport convert` says why)",
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("dinov2-small-tome", "dinov2-small-tome.yaml"),
        ("dinov2-small-tome.yaml", "dinov2-small-tome.yaml"),
        ("recipes/dinov2-small-tome.yaml", "dinov2-small-tome.yaml"),
        ("tiny/llava-next-tiny-hired", "tiny/llava-next-tiny-hired.yaml"),
        ("recipes/tiny/llava-next-tiny-hired.yaml", "tiny/llava-next-tiny-hired.yaml"),
        ("no-such-recipe", None),
        ("../pyproject.toml", None),
        ("/etc/hostname", None),
        ("", None),
        ("tiny", None),
    ],
)
def test_find_shipped_recipe(name, expected):
    found = find_shipped_recipe(name)
    if expected is None:
        assert found is None
    else:
        assert found == REPO / "tokexport" / "recipes" / expected


def test_convert_by_name_runs_the_shipped_recipe(tmp_path, a_file):
    """From a directory without the recipe: the shipped one is read (and said so), validated, and the
    run stops at the first check after that (--out is an existing file)."""
    res = run_cli("convert", "dinov2-small-zero-tprune", "--out", str(a_file), cwd=tmp_path)
    assert res.returncode == 2
    note, err = _lines(res.stderr)
    assert "dinov2-small-zero-tprune: no such file here; using the shipped recipe" in note
    assert str(REPO / "tokexport" / "recipes" / "dinov2-small-zero-tprune.yaml") in note
    assert err.startswith("error:") and str(a_file) in err and "not a directory" in err
    assert a_file.read_text() == "mine"


def test_a_local_file_wins_over_a_shipped_recipe(tmp_path, a_file):
    (tmp_path / "dinov2-small-zero-tprune").write_text("model: [unclosed\n")
    res = run_cli("convert", "dinov2-small-zero-tprune", "--out", str(a_file), cwd=tmp_path)
    assert_one_line_error(res, "YAML syntax error")


# --- the wheel --------------------------------------------------------------------------------------------


def test_wheel_install_lists_and_runs_the_shipped_recipes(tmp_path, a_file):
    """Build a wheel from a copy of the sources, install it into a plain directory, and run it there with
    the editable install switched off (-S: no .pth files, so the repository is not on the path)."""
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, src / f)
    shutil.copytree(REPO / "tokexport", src / "tokexport", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("tokexport-*.whl")
    site = tmp_path / "site"
    inst = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]), COLUMNS="300", HF_HUB_OFFLINE="1"
    )
    code = (
        "import sys, tokexport; print('tokexport from', tokexport.__file__, file=sys.stderr); "
        "from tokexport.cli import main; main()"
    )

    def run(*args):
        return subprocess.run(
            [sys.executable, "-S", "-c", code, *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )

    res = run("recipes", "list")
    assert res.returncode == 0, res.stderr[-3000:]
    origin = res.stderr.split("tokexport from", 1)[1].split()[0]
    assert Path(origin).is_relative_to(site), origin
    for name in SHIPPED:
        assert name in res.stdout, (name, res.stdout)
    assert str(site / "tokexport" / "recipes") in res.stdout

    res = run("convert", "dinov2-small-zero-tprune", "--out", str(a_file))
    lines = _lines(res.stderr)
    assert res.returncode == 2, res.stderr[-3000:]
    assert str(site / "tokexport" / "recipes" / "dinov2-small-zero-tprune.yaml") in res.stderr
    assert lines[-1].startswith("error:") and "not a directory" in lines[-1], lines


# --- structure ----------------------------------------------------------------------------------------------


def test_only_the_cli_package_imports_it():
    """The commands live in tokexport/cli/ (one module per command group, UI plumbing in tokexport.cli.ui); no
    module outside that package but the entry point (__main__) imports it, relative imports included."""
    for p in sorted((REPO / "tokexport").rglob("*.py")):
        rel = p.relative_to(REPO / "tokexport")
        if rel.parts[0] == "cli" or p.name == "__main__.py":
            continue
        package = ["tokexport", *rel.parts[:-1]]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
                for name in names:
                    assert not (name == "tokexport.cli" or name.startswith("tokexport.cli.")), (
                        f"{p.relative_to(REPO)} imports {name}"
                    )
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert not a.name.startswith("tokexport.cli"), f"{p.relative_to(REPO)} imports {a.name}"


def test_method_notes_exist_and_are_linked():
    notes = REPO / "docs" / "methods"
    pages = ["zero-tprune.md", "topk-cls-and-baselines.md", "fopru.md", "hired.md", "static-export.md", "vocab-trim.md"]
    index = (notes / "README.md").read_text()
    for page in pages:
        assert (notes / page).is_file() and f"]({page})" in index, page
    assert "docs/methods/README.md" in (REPO / "README.md").read_text()


def test_piped_tables_keep_their_cells(monkeypatch):
    """Output that is not a terminal (a pipe, a CI log) is drawn full width: rich's default of 80 columns
    squeezed the recipe table into "dinov2-small-zero-…" cells."""
    monkeypatch.delenv("COLUMNS", raising=False)
    res = subprocess.run(
        [sys.executable, "-m", "tokexport", "recipes", "list"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout
    for name, _ in shipped_recipes():
        assert name in res.stdout, name
    assert max(len(line) for line in res.stdout.splitlines()) > 80
