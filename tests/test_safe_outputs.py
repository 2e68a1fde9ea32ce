"""Never lose a user's data: every command that writes a directory (convert, sweep, search, bundle,
models fetch) refuses dangerous output locations with one line and exit 2 before loading anything,
replaces only directories tokexport wrote (``.tokexport-output``), claims its output exclusively,
swaps it in atomically and cleans up what dead runs left behind.

Every refusal is checked against a sentinel tree: nothing outside the output may change. The cases
that aim at ``/`` and the home directory run in-process with every deleting/renaming function
guarded, so that a regression cannot delete real files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO
from sentinel import assert_unchanged, make_tree, snapshot
from test_cli_bad_input import recipe, run_cli, write
from test_held_up import _wait_for_line

from tokexport import outdir
from tokexport.errors import InputError, OutputWriteError
from tokexport.outdir import MARKER, OWNER, check_out_dir, claim_out_dir, staged_dir, write_marker
from tokexport.tasks.run import HOLD_ENV

# ----------------------------------------------------------------------------------------------- helpers


def one_error(res, *needles) -> str:
    """Exit 2, exactly one non-empty stderr line, starting with ``error:``, no traceback anywhere."""
    code = res.returncode if hasattr(res, "returncode") else res.exit_code
    out, err = res.stdout, res.stderr
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def leftovers(parent: Path, name: str) -> list[str]:
    """Hidden siblings of output ``name`` (locks, temporary and old containers)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture
def world(tmp_path, tiny_models):
    """A sentinel tree holding the recipe (recipes/r.yaml), a copy of the model (models/dinov2) and the
    working directory (work/, itself full of user files)."""
    w = make_tree(tmp_path / "world")
    model = w / "models" / "dinov2"
    shutil.copytree(tiny_models["dinov2"], model)
    (w / "recipes").mkdir()
    r = write(w / "recipes", recipe(model))
    work = make_tree(w / "work")
    mine = make_tree(w / "mine")  # a directory of the user's, not written by tokexport
    return SimpleNamespace(root=w, recipe=r, model=model, work=work, mine=mine, before=snapshot(w))


@pytest.fixture
def guard(monkeypatch, tmp_path):
    """shutil.rmtree, os.rename/replace/unlink/remove/rmdir raise (and record) any call on a path outside
    tmp_path: an in-process command that regresses cannot delete or move real files."""
    root = os.path.realpath(tmp_path)
    violations: list[str] = []

    def check(path, dir_fd=None):
        if isinstance(path, int):
            return
        p = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(p):
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        p = os.path.abspath(p)
        full = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        if not full.startswith(root + os.sep):
            violations.append(full)
            raise PermissionError(f"test guard: refusing to delete or move {full} (outside {root})")

    real = {n: getattr(os, n) for n in ("rename", "replace", "unlink", "remove", "rmdir")}
    real_rmtree = shutil.rmtree

    def two(name):
        def f(src, dst, *a, src_dir_fd=None, dst_dir_fd=None, **kw):
            check(src, src_dir_fd)
            check(dst, dst_dir_fd)
            return real[name](src, dst, *a, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kw)

        return f

    def one(name):
        def f(path, *a, dir_fd=None, **kw):
            check(path, dir_fd)
            return real[name](path, *a, dir_fd=dir_fd, **kw)

        return f

    def rmtree(path, *a, **kw):
        check(path, kw.get("dir_fd"))
        return real_rmtree(path, *a, **kw)

    for n in ("rename", "replace"):
        monkeypatch.setattr(os, n, two(n))
    for n in ("unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, n, one(n))
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    yield violations
    assert not violations, violations


def invoke(*args):
    """The CLI in this process (click's runner keeps stdout and stderr apart)."""
    from typer.testing import CliRunner

    from tokexport.cli import app

    return CliRunner().invoke(app, list(args))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def stale_container(parent: Path, name: str, tag: str, pid: int | None) -> Path:
    """What a killed run leaves: .NAME.tmp-XXXX/NAME (partial), with an owner record unless pid is None."""
    box = parent / f".{name}{tag}{pid or 'norecord'}"
    (box / name).mkdir(parents=True)
    (box / name / "partial.onnx").write_bytes(b"half")
    if pid is not None:
        (box / OWNER).write_text(
            json.dumps({"tool": "tokexport", "output": name, "pid": pid, "host": socket.gethostname(), "start": None})
        )
    return box


# ------------------------------------------------------------------------------ convert: where it may write


@pytest.mark.parametrize(
    "out,needle",
    [
        (".", "current directory"),
        ("sub/..", "'..'"),
        ("docs/..", "'..'"),
        ("WORLD", "parent of the current directory"),
    ],
)
def test_convert_refuses_cwd_and_its_parents(world, out, needle):
    out = str(world.root) if out == "WORLD" else out
    res = run_cli("convert", str(world.recipe), "--out", out, "--force", cwd=world.work)
    one_error(res, out, needle)
    assert_unchanged(world.before, world.root)


@pytest.mark.parametrize("target", ["model", "model-parent", "recipe-dir"])
@pytest.mark.parametrize("marked", [False, True])
def test_convert_refuses_the_model_and_the_recipe(world, target, marked):
    """Even a directory carrying the marker (e.g. a vocab-trim output's model/) is never replaced while
    the run reads from it."""
    out = {"model": world.model, "model-parent": world.model.parent, "recipe-dir": world.recipe.parent}[target]
    if marked:
        write_marker(out, "convert")
        world.before = snapshot(world.root)
    res = run_cli("convert", str(world.recipe), "--out", str(out), "--force", cwd=world.work)
    one_error(res, str(out), "which this run reads")
    assert_unchanged(world.before, world.root)


def test_force_needs_the_marker(world):
    res = run_cli("convert", str(world.recipe), "--out", str(world.mine), "--force", cwd=world.work)
    one_error(res, str(world.mine), "not written by tokexport", MARKER)
    res = run_cli("convert", str(world.recipe), "--out", str(world.mine), cwd=world.work)
    one_error(res, str(world.mine), "already exists", "--force")
    assert_unchanged(world.before, world.root)


def test_root_and_home_in_process(world, guard, monkeypatch):
    """`--out /` and `--out ~` (expanded, as the shell does), in-process with deletion guarded; the home
    directory is a sentinel tree (HOME points at it) and the real one is only checked, never written."""
    from test_deploy import tiny_model

    real_home = os.environ.get("HOME")
    graph = tiny_model(world.root / "graphs" / "m.onnx")
    home = make_tree(world.root / "home")
    world.before = snapshot(world.root)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(world.work)
    one_error(invoke("convert", str(world.recipe), "--out", "/", "--force"), "root directory")
    one_error(invoke("convert", str(world.recipe), "--out", str(home), "--force"), str(home), "home directory")
    one_error(invoke("bundle", "/", "--from", str(graph), "--force"), "root directory")
    one_error(invoke("bundle", str(home), "--from", str(graph), "--force"), "home directory")
    one_error(
        invoke("sweep", str(world.recipe), "--keep-rates", "0.5", "--out", str(home), "--force"), "home directory"
    )
    one_error(invoke("search", str(world.recipe), "--max-drop", "0.1", "--out", "/", "--force"), "root directory")
    assert_unchanged(world.before, world.root)
    if real_home:  # the real home directory and its parent: only checked, nothing is written
        monkeypatch.setenv("HOME", real_home)
        for p in (Path(real_home), Path(real_home).parent):
            if p != Path("/"):
                with pytest.raises(InputError, match="is your home directory"):
                    check_out_dir(p, True)
    with pytest.raises(InputError, match="is the root directory"):
        check_out_dir("/", True)
    assert not guard


@pytest.mark.parametrize("kind", ["proc", "below-file", "long-name", "symlink"])
def test_unusable_location_fails_before_loading(world, kind):
    """The model path does not exist: an error naming the output (not the model) proves the output
    was checked before anything was loaded."""
    r = write(world.root / "recipes", recipe(world.root / "no-such-model"), "missing.yaml")
    (world.root / "link").symlink_to(world.work)
    world.before = snapshot(world.root)
    out = {
        "proc": "/proc/tokexport-test-out",
        "below-file": str(world.root / "notes.txt" / "out"),
        "long-name": str(world.root / ("o" * 300)),
        "symlink": str(world.root / "link" / "out"),
    }[kind]
    needle = {"proc": "/proc", "below-file": "is a file", "long-name": "too long", "symlink": "symbolic link"}[kind]
    line = one_error(run_cli("convert", str(r), "--out", out, cwd=world.work), out, needle)
    assert "no-such-model" not in line
    assert_unchanged(world.before, world.root)


# ------------------------------------------------------------------ convert: replacing, claiming, crashing


def test_force_replaces_a_tokexport_output_and_keeps_it_when_the_new_run_fails(world, tiny_models):
    out = world.root / "out"
    out.mkdir()
    write_marker(out, "convert")
    (out / "report.json").write_text('{"old": true}')
    dead = dead_pid()
    stale = stale_container(world.root, "out", outdir.TMP_TAG, dead)
    stale_old = stale_container(world.root, "out", outdir.OLD_TAG, dead)
    bad = write(
        world.root / "recipes",
        recipe(tiny_models["vit-classifier"], **{"verify.accuracy.imagefolder": "missing-folder"}),
        "bad.yaml",
    )
    before = snapshot(world.root)
    # fails after the claim and the load: the old output is untouched, nothing left behind
    one_error(run_cli("convert", str(bad), "--out", str(out), "--force", cwd=world.work), "verify.accuracy.imagefolder")
    assert_unchanged(before, world.root, allow=(stale.name, stale_old.name))
    assert (out / "report.json").read_text() == '{"old": true}'
    assert not stale.exists() and not stale_old.exists()  # the dead run's leftovers were cleaned
    # a working run replaces it; a leftover without an owner record is named in a warning and kept
    foreign = stale_container(world.root, "out", outdir.TMP_TAG, None)
    before = snapshot(world.root)
    res = run_cli("convert", str(world.recipe), "--out", str(out), "--force", cwd=world.work)
    assert res.returncode == 0, res.stderr
    assert str(foreign) in res.stderr and "owner record" in res.stderr  # named in a warning
    assert json.loads((out / "report.json").read_text())["passed"] is True
    assert json.loads((out / MARKER).read_text())["kind"] == "convert"
    assert json.loads((out / "deploy" / MARKER).read_text())["kind"] == "bundle"
    assert (foreign / "out" / "partial.onnx").read_bytes() == b"half"
    assert leftovers(world.root, "out") == [foreign.name]
    assert_unchanged(before, world.root, allow=("out",))


def test_two_concurrent_converts_one_wins(world):
    """The first run holds the output's lock at a known stage ($TOKEXPORT_TEST_HOLD_AT: its graphs are
    staged); a second run into the same output then fails at once (exit 2, one line) while the first
    still holds it; released, the first completes. The loser is decided by the lock, not by timing."""
    out = world.root / "race"
    cmd = [sys.executable, "-m", "tokexport", "convert", str(world.recipe), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        cmd,
        cwd=world.work,
        env={**env, HOLD_ENV: "exported"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_line(first, "tokexport: holding at exported")
        lost = subprocess.run(cmd, cwd=world.work, env=env, capture_output=True, text=True, timeout=600)
        assert first.poll() is None  # the winner was still holding the output when the loser gave up
        _, e = first.communicate("\n", timeout=900)  # release it
    finally:
        if first.poll() is None:
            first.kill()
    one_error(lost, str(out), "another tokexport run")
    assert first.returncode == 0, e[-2000:]
    assert (out / "report.json").is_file() and (out / MARKER).is_file()
    assert leftovers(world.root, "race") == []
    assert_unchanged(world.before, world.root, allow=("race",))


def test_claim_is_exclusive_and_a_killed_run_is_cleaned_up(tmp_path, caplog):
    """A writer is SIGKILLed in the middle: its lock dies with it, the next run takes the output,
    removes the dead run's container and warns about (but keeps) one without an owner record."""
    out = tmp_path / "o"
    code = (
        "import sys, time\nfrom tokexport.outdir import claim_out_dir\n"
        "with claim_out_dir(sys.argv[1], False, kind='convert') as c, c.staged() as tmp:\n"
        "    (tmp / 'model.onnx').write_bytes(b'partial')\n"
        "    print('ready', flush=True)\n    time.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(InputError, match=f"another tokexport run \\(pid {p.pid}\\)") as e:
            with claim_out_dir(out, False, kind="convert"):
                pass
        assert "\n" not in str(e.value)
        busy = [q for q in tmp_path.iterdir() if q.name.startswith(".o.tmp-")]
        assert len(busy) == 1 and (busy[0] / "o" / "model.onnx").is_file()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    foreign = stale_container(tmp_path, "o", outdir.TMP_TAG, None)
    other = stale_container(tmp_path, "o.tmp-x", outdir.TMP_TAG, dead_pid())  # another output's: not ours
    with (
        caplog.at_level(logging.WARNING, logger="tokexport"),
        claim_out_dir(out, False, kind="convert") as claim,
        claim.staged() as tmp,
    ):
        (tmp / "model.onnx").write_bytes(b"complete")
    assert not busy[0].exists()
    assert foreign.exists() and str(foreign) in caplog.text and "owner record" in caplog.text
    assert other.exists()
    assert (out / "model.onnx").read_bytes() == b"complete" and (out / MARKER).is_file()
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(["o", foreign.name, other.name])


def test_swap_restores_the_old_output_when_the_rename_fails(tmp_path, monkeypatch):
    out = tmp_path / "o"
    with staged_dir(out, kind="convert") as tmp:
        (tmp / "v").write_text("1")
    real_rename = os.rename

    def failing(src, dst, *a, **kw):
        if Path(src).parent.name.startswith(".o.tmp-") and Path(dst) == out:
            raise OSError(28, "No space left on device")
        return real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OutputWriteError, match="No space"), staged_dir(out, force=True, kind="convert") as tmp:
        (tmp / "v").write_text("2")  # a full disk: exit 10 (docs/files.md), the old output kept
    assert (out / "v").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt), staged_dir(out, force=True, kind="convert") as tmp:  # Ctrl-C
        (tmp / "v").write_text("3")
        raise KeyboardInterrupt
    assert (out / "v").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


# --------------------------------------------------------------------------------- sweep, search, bundle


@pytest.mark.parametrize("cmd", [["sweep", "--keep-rates", "0.5"], ["search", "--max-drop", "0.1"]])
def test_sweep_and_search_follow_the_same_rules(world, cmd):
    name, *opts = cmd
    one_error(run_cli(name, str(world.recipe), *opts, "--out", ".", "--force", cwd=world.work), "current directory")
    one_error(
        run_cli(name, str(world.recipe), *opts, "--out", str(world.mine), "--force", cwd=world.work),
        "not written by tokexport",
    )
    one_error(
        run_cli(name, str(world.recipe), *opts, "--out", str(world.model.parent), "--force", cwd=world.work),
        str(world.model.parent),
    )
    assert_unchanged(world.before, world.root)


def test_bundle_rules(world):
    from test_deploy import tiny_model

    src = tiny_model(world.root / "graphs" / "m.onnx")
    world.before = snapshot(world.root)
    run = lambda *a: run_cli("bundle", *a, cwd=world.work)  # noqa: E731
    one_error(run("docs/..", "--from", str(src), "--force"), "'..'")
    one_error(run(".", "--from", str(src), "--force"), "current directory")
    one_error(run(str(world.mine), "--from", str(src), "--force"), "not written by tokexport")
    write_marker(src.parent, "bundle")  # even a bundle directory is not replaced by one made from it
    world.before = snapshot(world.root)
    one_error(run(str(src.parent), "--from", str(src), "--force"), "which this run reads")
    # an archive next to the bundle that tokexport did not write
    (world.root / "b.tar.gz").write_bytes(b"my archive")
    world.before = snapshot(world.root)
    one_error(run(str(world.root / "b"), "--from", str(src)), "b.tar.gz", "already exists")
    one_error(run(str(world.root / "b"), "--from", str(src), "--force"), "b.tar.gz", "not an archive tokexport")
    assert_unchanged(world.before, world.root)
    # its own archive is replaced with --force
    (world.root / "b.tar.gz").unlink()
    res = run(str(world.root / "b"), "--from", str(src), "--target", "onnxruntime")
    assert res.returncode == 0, res.stderr
    assert outdir.is_bundle_archive(world.root / "b.tar.gz", "b")
    res = run(str(world.root / "b"), "--from", str(src), "--force", "--target", "onnxruntime")
    assert res.returncode == 0, res.stderr
    assert leftovers(world.root, "b") == [] and (world.root / "b" / MARKER).is_file()


# ---------------------------------------------------------------------------------------------- models


def test_models_fetch_rules(tmp_path):
    root = tmp_path / "models"
    mine = make_tree(root / "tiny-llava")
    before = snapshot(tmp_path)
    env = {"TOKEXPORT_MODELS_DIR": str(root)}
    one_error(run_cli("models", "fetch", "tiny-llava", env=env), str(mine), "not written by tokexport")
    one_error(run_cli("models", "fetch", "tiny-llava", "--force", env=env), str(mine), "not written by tokexport")
    # the current directory (or a parent of it) is never replaced, even when tokexport fetched it
    write_marker(mine, "model")
    before = snapshot(tmp_path)
    one_error(run_cli("models", "fetch", "tiny-llava", "--force", env=env, cwd=mine), "current directory")
    one_error(
        run_cli("models", "fetch", "tiny-llava", "--force", env=env, cwd=mine / "docs"),
        "parent of the current directory",
    )
    assert_unchanged(before, tmp_path)
    # a tokexport-fetched folder is rebuilt with --force, also one fetched before the marker existed
    (mine / MARKER).unlink()
    shutil.rmtree(mine)
    res = run_cli("models", "fetch", "tiny-llava", env=env)
    assert res.returncode == 0, res.stderr
    (mine / MARKER).unlink()  # as fetched by an earlier version: only tokexport-fetch.json
    res = run_cli("models", "fetch", "tiny-llava", "--force", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads((mine / MARKER).read_text())["kind"] == "model"
    assert sorted(p.name for p in root.iterdir()) == ["tiny-llava"]
