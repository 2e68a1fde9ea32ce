"""The tier guard of tests/conftest.py can fail: an unmarked test that touches a real checkpoint fails
(in its teardown, naming what it touched), the same test marked real_model passes, and a fast-tier
test that loads nothing real is left alone. Runs the suite's own conftest in a separate pytest."""

from __future__ import annotations

import pytest
from conftest import REPO

pytest_plugins = ["pytester"]

INNER = """
import os
from pathlib import Path

import pytest

import conftest
from tokexport import zoo


def test_unmarked_reads_the_real_models_dir():
    (conftest.REAL_MODELS / "some-model").mkdir(parents=True, exist_ok=True)
    with open(conftest.REAL_MODELS / "some-model" / "config.json", "w") as f:
        f.write("{}")


def test_unmarked_asks_for_the_real_dinov2():
    conftest.real_model_dir()


def test_unmarked_subprocess_fetches_a_real_model():
    # what `tokexport models fetch minilm-l6` in a subprocess leaves in $TOKEXPORT_MODELS_DIR (the tripwire)
    (Path(os.environ[zoo.ENV_MODELS_DIR]) / "minilm-l6").mkdir()


def test_unmarked_resolves_a_bundled_model(monkeypatch):
    (Path(os.environ[zoo.ENV_MODELS_DIR]) / "e5-small").mkdir()
    monkeypatch.setattr(zoo, "_problem", lambda model, path: None)  # as if a real fetch were there
    assert zoo.resolve_bundled("e5-small") is not None


@pytest.mark.real_model
def test_marked_asks_for_the_real_dinov2():
    conftest.real_model_dir()


def test_unmarked_tiny_work():
    assert os.environ[zoo.ENV_MODELS_DIR] != str(conftest.REAL_MODELS)
    assert zoo.resolve_bundled("not-a-bundled-name") is None
    zoo.fetch("tiny-llava")  # a generated tiny twin is no real checkpoint
"""

EXPECTED = {
    "test_unmarked_reads_the_real_models_dir": "open(",
    "test_unmarked_asks_for_the_real_dinov2": "conftest.real_model_dir()",
    "test_unmarked_subprocess_fetches_a_real_model": "fetched into $TOKEXPORT_MODELS_DIR: minilm-l6",
    "test_unmarked_resolves_a_bundled_model": "tokexport.zoo.resolve_bundled('e5-small')",
}


def test_an_unmarked_test_touching_a_real_checkpoint_fails(pytester, tmp_path):
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER)
    res = pytester.runpytest_subprocess(
        "-p", "no:xdist", "-p", "no:cacheprovider", "-rA", f"--basetemp={tmp_path / 'inner'}"
    )
    out = res.stdout.str()
    errors = {ln.split("::")[1].split(" ")[0] for ln in out.splitlines() if ln.startswith("ERROR test_inner.py::")}
    assert errors == set(EXPECTED), out[-4000:]
    for name, what in EXPECTED.items():
        assert what in out, (name, what, out[-4000:])
    assert out.count("not marked @pytest.mark.real_model") >= len(EXPECTED), out[-4000:]
    assert res.parseoutcomes().get("passed", 0) >= 2  # the marked test and the tiny one


@pytest.fixture
def pytester(pytester, tmp_path, monkeypatch):
    """The inner run sees a private "real" models directory (the guard is keyed to it)."""
    real = tmp_path / "real-models"
    real.mkdir(exist_ok=True)
    monkeypatch.setenv("TOKEXPORT_MODELS_DIR", str(real))
    monkeypatch.delenv("TOKEXPORT_TEST_SHIPPED_ROOT", raising=False)
    pytester.makepyfile(shipped_runs=(REPO / "tests" / "shipped_runs.py").read_text())  # conftest imports it
    return pytester


GROUPED = """
import os
from pathlib import Path

import pytest

import conftest

LOG = Path(os.environ["TOKEXPORT_TEST_GROUP_LOG"])


@pytest.mark.parametrize("i", range({n}))
@conftest.group("{g}")
def test_grouped(i):
    with open(LOG, "a") as f:
        f.write(f"{g} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")


@pytest.mark.parametrize("i", range(8))
def test_free(i):
    with open(LOG, "a") as f:
        f.write(f"free {{os.environ['PYTEST_XDIST_WORKER']}}\\n")
"""


def test_loadgroup_keeps_a_group_on_one_worker(pytester, tmp_path, monkeypatch):
    """The tests of one shipped conversion run on one worker (else each worker converts it again): two
    groups spread over two files, beside ungrouped tests, under the suite's own `-n 2 --dist loadgroup`."""
    log = tmp_path / "workers.log"
    monkeypatch.setenv("TOKEXPORT_TEST_GROUP_LOG", str(log))
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(
        test_one=GROUPED.format(n=6, g="alpha"),
        test_two=GROUPED.format(n=6, g="beta"),
        test_three=GROUPED.format(n=4, g="alpha"),
    )
    res = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}"
    )
    assert res.parseoutcomes().get("passed") == 6 + 6 + 4 + 3 * 8, res.stdout.str()[-3000:]
    seen: dict[str, set[str]] = {}
    for line in log.read_text().split("\n"):
        if line:
            what, worker = line.split()
            seen.setdefault(what, set()).add(worker)
    assert len(seen["alpha"]) == 1 and len(seen["beta"]) == 1, seen
    assert set().union(*seen.values()) == {"gw0", "gw1"}, seen  # both workers ran: the run was in parallel


MODULE_FIXTURE = """
import os
from pathlib import Path

import pytest

LOG = Path(os.environ["TOKEXPORT_TEST_GROUP_LOG"])


@pytest.fixture(scope="module")
def expensive():
    with open(LOG, "a") as f:
        f.write(f"fixture {os.environ['PYTEST_XDIST_WORKER']}\\n")
    return 1


@pytest.mark.parametrize("i", range(8))
def test_uses_it(i, expensive):
    assert expensive == 1


@pytest.mark.parametrize("i", range(8))
def test_free(i):
    with open(LOG, "a") as f:
        f.write(f"free {os.environ['PYTEST_XDIST_WORKER']}\\n")
"""


def test_a_module_fixture_is_computed_once_per_run(pytester, tmp_path, monkeypatch):
    """A module-scoped fixture of a test module (the sweep of test_sweep.py, the Ray instance of
    test_ray_backend.py) is computed once per run, not once per worker: conftest groups its tests."""
    log = tmp_path / "workers.log"
    monkeypatch.setenv("TOKEXPORT_TEST_GROUP_LOG", str(log))
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_mod=MODULE_FIXTURE)
    res = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}"
    )
    assert res.parseoutcomes().get("passed") == 16, res.stdout.str()[-3000:]
    lines = log.read_text().split()
    assert lines.count("fixture") == 1, lines
    # both workers ran tests (each gets work at the start): the run was in parallel. Which tests each ran
    # depends on which is free first, so nothing more is asserted about the free ones.
    assert set(lines[1::2]) == {"gw0", "gw1"}, lines


READS_SHIPPED = """
import conftest

NAME = "dinov2-small-zero-tprune"


@conftest.group(NAME)
def test_reads_the_premade_conversion(shipped):
    conv = shipped(NAME)
    assert conv.exit_code == 0 and conv.report == {"premade": True}
"""


def _premade(root, name: str, exit_code: int = 0) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "report.json").write_text('{"premade": true}')
    (root / f"{name}.conversion.json").write_text(f'{{"exit_code": {exit_code}, "stdout": "", "stderr": "x"}}')


def test_the_suite_reads_the_conversion_ci_made_before_it(pytester, tmp_path, monkeypatch):
    """.ci/run converts the default recipe before the suite (tests/shipped_runs.py) and passes the folder in
    $TOKEXPORT_TEST_SHIPPED_ROOT; the suite's tests read that conversion instead of converting again (here the
    folder holds a recorded conversion no real run could write: reading it proves nothing was converted)."""
    root = tmp_path / "shipped"
    _premade(root, "dinov2-small-zero-tprune")
    monkeypatch.setenv("TOKEXPORT_TEST_SHIPPED_ROOT", str(root))
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_inner=READS_SHIPPED)
    res = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'in'}")
    assert res.parseoutcomes().get("passed") == 1, res.stdout.str()[-3000:]


def test_shipped_runs_exits_with_the_conversions_code(tmp_path, capsys):
    from shipped_runs import main

    _premade(tmp_path, "a")
    _premade(tmp_path, "b", exit_code=4)  # accuracy failed: .ci/run must stop there
    assert main([str(tmp_path), "a"]) == 0
    assert main([str(tmp_path), "a", "b"]) == 4
    assert main([str(tmp_path)]) == 2
