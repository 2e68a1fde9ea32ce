"""Nothing written or read outside, nothing unbounded (docs/files.md): one table of adversarial cases.

Each case builds its files inside a sentinel tree (``world``), runs one command and asserts: the
documented exit code, exactly one ``error:`` line on stderr (for a refusal), no traceback, every file
of the tree unchanged (only the paths the case names as its output may appear), and no partial output
(no ``.NAME.tmp-*`` container, no lock file, no half-written file).

Cases run in this process through click's runner where the command allows it; the ones that could
hang or grow without bound on a regression (FIFOs, devices, pipes) or that need a fresh interpreter
run as subprocesses under RLIMIT_AS and a generous timeout, so a regression fails instead of eating
the machine. A full disk is simulated with RLIMIT_FSIZE (the kernel answers EFBIG on the real write
path), never by filling a disk."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import REPO
from sentinel import assert_unchanged, make_tree, snapshot
from test_cli_bad_input import recipe

BASELINE_REPORT = REPO / "tests" / "baselines" / "dinov2-small-zero-tprune.report.json"
MODELS = Path(os.environ.get("TOKEXPORT_MODELS_DIR", REPO / "models"))
GiB = 2**30
EXIT_WRITE = 10  # cannot write the output (README's exit codes)


# ------------------------------------------------------------------------------------------- runners


@dataclass
class Run:
    """One command of a case and what it must end in."""

    args: list[str]
    code: int
    needles: tuple[str, ...] = ()
    how: str = "cli"  # cli: in this process; proc: `python -m tokexport`; script: a bundle's verify
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    allow: tuple[str, ...] = ()  # paths (relative to the world) the command may create or change
    absent: tuple[str, ...] = ()  # paths (relative to the world) that must not exist afterwards
    fsize: int | None = None  # RLIMIT_FSIZE while it runs: a full disk (EFBIG)
    address_space: int | None = GiB  # RLIMIT_AS of a subprocess
    stdin: bytes | None = None  # a pipe on the subprocess's stdin, holding these bytes
    error_line: bool = True  # a refusal: one `error:` line on stderr (exit 0: no requirement)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def file_size_limit(nbytes: int | None):
    """RLIMIT_FSIZE for this process (SIGXFSZ ignored, so a write past it fails with EFBIG)."""
    if nbytes is None:
        yield
        return
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def _in_process(run: Run, monkeypatch) -> Outcome:
    from typer.testing import CliRunner

    from tokexport.cli import app
    from tokexport.cli import ui as cli_ui

    for k, v in run.env.items():
        monkeypatch.setenv(k, v)
    if run.cwd is not None:
        monkeypatch.chdir(run.cwd)
    try:
        with file_size_limit(run.fsize):
            res = CliRunner().invoke(app, run.args)
    finally:
        cli_ui.reset_logging()
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        stderr += "Traceback (in process)\n" + "".join(traceback.format_exception(res.exception))
    return Outcome(res.exit_code, res.stdout, stderr)


def _limits(run: Run):
    def apply():
        if run.address_space:
            resource.setrlimit(resource.RLIMIT_AS, (run.address_space, run.address_space))
        if run.fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (run.fsize, run.fsize))

    return apply


def _subprocess(run: Run, argv: list[str]) -> Outcome:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        **run.env,
    }
    stdin = subprocess.DEVNULL
    r = w = None
    if run.stdin is not None:
        r, w = os.pipe()
        os.write(w, run.stdin)  # a pipe's buffer: the command must refuse it, never wait for its end
        stdin = r
    try:
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=run.cwd or REPO,
            env=env,
            stdin=stdin,
            timeout=120,
            preexec_fn=_limits(run),
        )
    except subprocess.TimeoutExpired as e:
        return Outcome(-1, str(e.stdout or ""), f"Traceback: timed out after 120 s (a hang)\n{e.stderr or ''}")
    finally:
        for fd in (r, w):
            if fd is not None:
                os.close(fd)
    return Outcome(res.returncode, res.stdout, res.stderr)


def execute(run: Run, monkeypatch) -> Outcome:
    if run.how == "cli":
        return _in_process(run, monkeypatch)
    if run.how == "proc":
        return _subprocess(run, [sys.executable, "-m", "tokexport", *run.args])
    return _subprocess(run, [sys.executable, *run.args])  # script: args[0] is the script


def check_outcome(res: Outcome, run: Run) -> None:
    where = f"exit {res.code}\nstdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, where
    assert res.code == run.code, where
    if run.code != 0 and run.error_line:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), where
        for n in run.needles:
            assert n in lines[0], (n, lines[0])


def partial_leftovers(root: Path) -> list[str]:
    """Temporary containers, lock files and temporary files anywhere under ``root``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if (
                name.startswith(".") and (".tmp-" in name or name.endswith(".lock") or ".old-" in name)
            ) or name.endswith(".tmp"):
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return out


# ------------------------------------------------------------------------------------------ fixtures


def _tiny_graph(path: Path, op: str = "Relu") -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    if op == "NonZero":  # a data-dependent shape: every TensorRT target refuses it
        y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, None])
    else:
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Built once: a small graph, a bundle of it, and the device results its verify_on_device.py wrote."""
    from tokexport.deploy import write_bundle

    root = tmp_path_factory.mktemp("io-shared")
    graph = _tiny_graph(root / "g.onnx")
    bundle = write_bundle(root / "bundle", {"model": graph}, "jetpack-6.0", archive=False).path
    res = subprocess.run(
        [sys.executable, str(bundle / "verify_on_device.py"), "--runtime", "onnxruntime", "--provider", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    device = root / "device_results.json"
    shutil.move(bundle / "device_results.json", device)
    return SimpleNamespace(graph=graph, bundle=bundle, device=device)


@pytest.fixture
def world(tmp_path, tiny_models, shared):
    """The sentinel tree every case runs in: user files, a recipe next to a copy of a tiny model, a
    graph, a bundle, the reports, a working directory and a home directory of its own."""
    w = make_tree(tmp_path / "world")
    model = w / "models" / "tiny"
    shutil.copytree(tiny_models["dinov2"], model)
    (w / "recipes").mkdir()
    r = w / "recipes" / "r.yaml"
    r.write_text(yaml.safe_dump(recipe(model)))
    shutil.copy(shared.graph, w / "g.onnx")
    shutil.copytree(shared.bundle, w / "bundle")
    shutil.copy(BASELINE_REPORT, w / "base.json")
    shutil.copy(shared.device, w / "device.json")
    (w / "victim.txt").write_text("the victim's data\n")
    make_tree(w / "work")
    make_tree(w / "home")
    (w / "mine").mkdir()
    (w / "mine" / "keep.txt").write_text("mine\n")
    return SimpleNamespace(
        root=w,
        model=model,
        recipe=r,
        graph=w / "g.onnx",
        bundle=w / "bundle",
        report=w / "base.json",
        device=w / "device.json",
    )


# ------------------------------------------------------------------------------------- case helpers


def fifo(w, name="fifo") -> Path:
    """A named pipe nobody writes to, beside the sentinel tree (a snapshot would wait on it)."""
    pipes = w.root.parent / "pipes"
    pipes.mkdir(exist_ok=True)
    p = pipes / name
    os.mkfifo(p)
    return p


def rewrite_manifest(bundle: Path, edit: Callable[[dict], None]) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2))


def replace_bundle_file(bundle: Path, rel: str, data: bytes) -> None:
    """Swap a bundle file and update manifest.json to match (what a tampered bundle looks like)."""
    import hashlib

    (bundle / rel).write_bytes(data)

    def edit(m):
        for e in m["files"]:
            if e["path"] == rel:
                e["sha256"], e["bytes"] = hashlib.sha256(data).hexdigest(), len(data)

    rewrite_manifest(bundle, edit)


def verify(w, *extra) -> list[str]:
    return [str(w.bundle / "verify_on_device.py"), "--runtime", "onnxruntime", "--provider", "cpu", *extra]


def vocab_recipe(w, keep_file: str | None, model: str = "minilm-l6") -> Path:
    """A valid vocab-trim recipe on the bundled MiniLM whose trim.keep_file is ``keep_file``."""
    (w.root / "recipes" / "corpus.txt").write_text("".join(f"the cat number {i} sat on the mat\n" for i in range(50)))
    p = w.root / "recipes" / "v.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "task": "vocab-trim",
                "model": model,
                "corpus": {"sources": [{"path": "corpus.txt"}]},
                "trim": {"keep_file": keep_file} if keep_file else {},
                "bench": {"enabled": False},
            }
        )
    )
    return p


def long_path(w) -> str:
    return str(w.root / (("x" * 200 + "/") * 25) / "f")  # ~5,000 characters: past PATH_MAX


def report_with(w, text: str, name="bad.json") -> Path:
    p = w.root / name
    p.write_text(text)
    return p


def with_metric(w, value, name="bad.json") -> Path:
    data = json.loads(w.report.read_text())
    metric = next(iter(data["accuracy"]["metrics"].values()))
    metric["reduced"] = value
    text = json.dumps(data, allow_nan=True)
    return report_with(w, text, name)


# --------------------------------------------------------------------------------------------- cases
# Each returns the Run; everything it creates before returning is part of the sentinel tree.


def case_verify_tmp_symlink(w):
    """A planted symlink at the results' temporary name must not redirect the write."""
    (w.bundle / "device_results.json.tmp").symlink_to(w.root / "victim.txt")
    return Run(verify(w), 0, how="script", address_space=None, allow=("bundle/device_results.json",))


def case_log_file_is_recipe(w):
    return Run(
        ["--log-file", str(w.recipe), "convert", str(w.recipe), "--out", str(w.root / "o")],
        2,
        ("--log-file", "not a tokexport log"),
        absent=("o",),
    )


def case_log_file_is_an_input(w):
    return Run(
        ["--log-file", str(w.model / "config.json"), "check", str(w.report), "--baseline", str(w.report)],
        2,
        ("--log-file", "not a tokexport log"),
    )


def case_log_file_inside_an_output(w):
    from tokexport.outdir import write_marker

    (w.root / "o").mkdir()
    write_marker(w.root / "o", "convert")
    return Run(
        ["--log-file", str(w.root / "o" / "run.log"), "convert", str(w.recipe), "--out", str(w.root / "o"), "--force"],
        2,
        ("--log-file", "tokexport output"),
    )


def case_user_lock_file(w):
    """A user's own file at the lock's name is neither truncated nor deleted."""
    (w.root / ".b.lock").write_text("my own notes, named like a lock\n")
    return Run(
        ["bundle", str(w.root / "b"), "--from", str(w.graph)],
        2,
        (".b.lock", "not a tokexport lock"),
        absent=("b", "b.tar.gz"),
    )


def case_lock_symlink(w):
    (w.root / ".b.lock").symlink_to(w.root / "victim.txt")
    return Run(
        ["bundle", str(w.root / "b"), "--from", str(w.graph)], 2, (".b.lock", "symbolic link"), absent=("b", "b.tar.gz")
    )


def case_stale_lock_of_a_dead_run(w):
    """Positive control: the lock a killed run left behind is taken over and removed."""
    (w.root / ".b.lock").write_text("999999 tokexport-lock\n")
    return Run(
        ["bundle", str(w.root / "b"), "--from", str(w.graph)],
        0,
        allow=("b", "b.tar.gz", ".b.lock"),
        absent=(".b.lock",),
    )


def case_models_dir_symlink(w):
    (w.root / "real").mkdir()
    (w.root / "link").symlink_to(w.root / "real")
    return Run(
        ["models", "fetch", "minilm-l6"],
        2,
        ("symbolic link", "TOKEXPORT_MODELS_DIR"),
        env={"TOKEXPORT_MODELS_DIR": str(w.root / "link")},
    )


def case_manifest_key_traversal(w):
    """A model key that walks out of the bundle: nothing outside is read (build_<name>.log)."""
    (w.root / "outside").mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "trtexec_10.3_build_model.log", w.root / "outside" / "secret.log")
    (w.bundle / "build_x").mkdir()

    def edit(m):
        m["models"]["x/../../outside/secret"] = m["models"].pop("model")

    rewrite_manifest(w.bundle, edit)
    return Run(
        verify(w),
        2,
        ("manifest.json", "x/../../outside/secret"),
        how="script",
        address_space=None,
        absent=("bundle/device_results.json",),
    )


def case_manifest_path_dotdot(w):
    def edit(m):
        m["inputs"][next(iter(m["inputs"]))]["file"] = "inputs/../inputs/input_0.npy"

    rewrite_manifest(w.bundle, edit)
    return Run(
        verify(w), 2, ("manifest.json", ".."), how="script", address_space=None, absent=("bundle/device_results.json",)
    )


def case_external_data_outside(w):
    from onnx import TensorProto, helper

    (w.root / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [4], np.zeros(4, np.float32).tobytes(), raw=True)
    bias.data_location = TensorProto.EXTERNAL
    bias.ClearField("raw_data")
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        bias.external_data.add(key=k, value=v)
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "g", [x], [y], [bias])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    replace_bundle_file(w.bundle, "model.onnx", model.SerializeToString())
    return Run(
        verify(w),
        2,
        ("external data", "../secret.bin"),
        how="script",
        address_space=None,
        absent=("bundle/device_results.json",),
    )


def case_pickled_npy(w):
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    replace_bundle_file(w.bundle, "inputs/input_0.npy", buf.getvalue())
    return Run(
        verify(w),
        2,
        ("inputs/input_0.npy", "pickle"),
        how="script",
        address_space=None,
        absent=("bundle/device_results.json",),
    )


def case_validate_dev_zero(w):
    return Run(["report", "validate", "/dev/zero"], 7, ("/dev/zero", "character device"), how="proc")


def case_validate_fifo(w):
    return Run(["report", "validate", str(fifo(w))], 7, ("fifo", "named pipe"), how="proc")


def case_validate_stdin_pipe(w):
    return Run(["report", "validate", "/dev/stdin"], 7, ("/dev/stdin", "named pipe"), how="proc", stdin=b"y\n" * 1000)


def case_check_fifo(w):
    return Run(["check", str(fifo(w)), "--baseline", str(w.report)], 7, ("fifo", "named pipe"), how="proc")


def case_check_tolerances_dev_zero(w):
    return Run(
        ["check", str(w.report), "--baseline", str(w.report), "--tolerances", "/dev/zero"],
        2,
        ("/dev/zero", "character device"),
        how="proc",
    )


def case_convert_fifo_recipe(w):
    return Run(
        ["convert", str(fifo(w, "r.yaml")), "--out", str(w.root / "o")],
        2,
        ("r.yaml", "named pipe"),
        how="proc",
        absent=("o",),
    )


def case_keep_file_dev_zero(w):
    return Run(
        ["convert", str(vocab_recipe(w, "/dev/zero")), "--out", str(w.root / "o")],
        2,
        ("trim.keep_file", "/dev/zero", "character device"),
        how="proc",
        address_space=2 * GiB,
        env={"TOKEXPORT_MODELS_DIR": str(MODELS)},
        absent=("o",),
    )


def case_keep_file_fifo(w):
    return Run(
        ["convert", str(vocab_recipe(w, str(fifo(w, "keep.txt")))), "--out", str(w.root / "o")],
        2,
        ("trim.keep_file", "named pipe"),
        how="proc",
        address_space=2 * GiB,
        env={"TOKEXPORT_MODELS_DIR": str(MODELS)},
        absent=("o",),
    )


def case_model_dir_fifo(w):
    """A model directory whose tokenizer.json is a FIFO (links to the real MiniLM for everything else)."""
    pipe = fifo(w, "tokenizer.json")
    model = pipe.parent / "minilm"
    model.mkdir()
    for f in (MODELS / "minilm-l6").iterdir():
        if f.name != "tokenizer.json":
            (model / f.name).symlink_to(f)
    pipe.rename(model / "tokenizer.json")
    return Run(
        ["convert", str(vocab_recipe(w, None, str(model))), "--out", str(w.root / "o")],
        2,
        ("tokenizer.json", "named pipe"),
        how="proc",
        address_space=2 * GiB,
        absent=("o",),
    )


def case_long_path_convert(w):
    return Run(["convert", long_path(w)], 2, ("too long",))


def case_long_path_check(w):
    return Run(["check", long_path(w), "--baseline", str(w.report)], 7, ("too long",))


def case_long_path_inspect(w):
    return Run(["inspect", long_path(w)], 2, ("too long",))


def case_long_path_bundle(w):
    return Run(["bundle", str(w.root / "b"), "--from", long_path(w)], 2, ("too long",), absent=("b",))


def case_long_path_check_target(w):
    return Run(["check-target", long_path(w)], 2, ("too long",))


def case_config_nan(w):
    cfg = json.loads((w.model / "config.json").read_text())
    cfg["layer_norm_eps"] = float("nan")
    (w.model / "config.json").write_text(json.dumps(cfg))
    return Run(
        ["convert", str(w.recipe), "--out", str(w.root / "o")],
        2,
        ("config.json", "layer_norm_eps", "NaN"),
        absent=("o",),
    )


def case_disk_full_bundle(w):
    return Run(
        ["bundle", str(w.root / "b"), "--from", str(w.graph)],
        EXIT_WRITE,
        ("b", "cannot write"),
        fsize=2000,
        absent=("b", "b.tar.gz"),
    )


def case_disk_full_models_fetch(w):
    return Run(
        ["models", "fetch", "minilm-l6"],
        EXIT_WRITE,
        ("cannot write",),
        fsize=1 << 20,
        env={"TOKEXPORT_MODELS_DIR": str(w.root / "models-new")},
        absent=("models-new",),
    )


def case_disk_full_report_merge(w):
    return Run(
        ["report", "merge", str(w.report), str(w.device), "--out", str(w.root / "merged.json"), "--allow-kind-change"],
        EXIT_WRITE,
        ("merged.json", "cannot write"),
        fsize=4096,
        absent=("merged.json",),
    )


def case_disk_full_convert(w):
    return Run(
        ["convert", str(w.recipe), "--out", str(w.root / "o")],
        EXIT_WRITE,
        ("o", "cannot write"),
        how="proc",
        address_space=None,
        fsize=200_000,
        absent=("o",),
    )


def case_merge_out_proc(w):
    return Run(
        ["report", "merge", str(w.report), str(w.device), "--out", "/proc/x.json", "--allow-kind-change"],
        2,
        ("/proc/x.json", "/proc"),
    )


def case_merge_out_symlink(w):
    (w.root / "merged.json").symlink_to(w.root / "victim.txt")
    return Run(
        [
            "report",
            "merge",
            str(w.report),
            str(w.device),
            "--out",
            str(w.root / "merged.json"),
            "--allow-kind-change",
            "--force",
        ],
        2,
        ("merged.json", "symbolic link"),
    )


def case_nested_report_validate(w):
    return Run(["report", "validate", str(report_with(w, "[" * 100_000))], 7, ("bad.json", "nested"))


def case_nested_report_check(w):
    return Run(["check", str(report_with(w, "[" * 100_000)), "--baseline", str(w.report)], 7, ("bad.json", "nested"))


def case_report_nested_past_the_limit(w):
    data = json.loads(w.report.read_text())
    deep: dict = {}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    data["extra"] = deep
    return Run(["report", "validate", str(report_with(w, json.dumps(data)))], 7, ("bad.json", "nested"))


def case_validate_bare_nan_figure(w):
    return Run(["report", "validate", str(with_metric(w, float("nan")))], 7, ("bad.json", "reduced"))


def case_validate_string_metric(w):
    return Run(["report", "validate", str(with_metric(w, "0.9"))], 7, ("bad.json", "reduced"))


def case_duplicate_key_report(w):
    text = w.report.read_text().rstrip().rstrip("}") + ', "passed": true}'
    data = json.loads(w.report.read_text())
    assert "passed" in data
    p = report_with(w, text)
    return Run(["check", str(p), "--baseline", str(w.report)], 7, ("bad.json", "'passed'", "twice"))


def case_duplicate_key_recipe(w):
    text = w.recipe.read_text() + "model: elsewhere\n"
    p = w.root / "recipes" / "dup.yaml"
    p.write_text(text)
    return Run(["convert", str(p), "--out", str(w.root / "mine")], 2, ("dup.yaml", "'model'", "twice"))


def case_duplicate_key_tolerances(w):
    p = w.root / "tol.yaml"
    p.write_text("accuracy:\n  abs: 0.01\naccuracy:\n  abs: 0.5\n")
    return Run(
        ["check", str(w.report), "--baseline", str(w.report), "--tolerances", str(p)],
        2,
        ("tol.yaml", "'accuracy'", "twice"),
    )


def case_duplicate_key_device_results(w):
    text = w.device.read_text().rstrip().rstrip("}") + ', "passed": true}'
    p = report_with(w, text, "dev.json")
    return Run(["check", str(p), "--baseline", str(w.report)], 7, ("dev.json", "'passed'", "twice"))


def case_bundle_fails_target_check(w):
    g = _tiny_graph(w.root / "nz.onnx", "NonZero")
    return Run(["bundle", str(w.root / "b"), "--from", str(g)], 9, allow=("b", "b.tar.gz"), error_line=False)


def case_range_error_names_recipe(w):
    d = yaml.safe_load(w.recipe.read_text())
    d["reduction"]["prune_layers"] = [1, 9]
    w.recipe.write_text(yaml.safe_dump(d))
    return Run(
        ["convert", str(w.recipe), "--out", str(w.root / "o")],
        2,
        (f"error: {w.recipe}: reduction.prune_layers[1]", "out of range"),
        absent=("o",),
    )


def case_pickle_checkpoint_refused(w):
    import torch
    from transformers import AutoModel

    m = AutoModel.from_pretrained(w.model)
    (w.model / "model.safetensors").unlink()
    torch.save(m.state_dict(), w.model / "pytorch_model.bin")
    return Run(
        ["convert", str(w.recipe), "--out", str(w.root / "o")],
        2,
        ("pytorch_model.bin", "allow_pickle: true"),
        absent=("o",),
    )


def case_out_tilde_is_home(w):
    return Run(
        ["bundle", "~", "--from", str(w.graph)],
        2,
        ("home directory",),
        cwd=w.root / "work",
        env={"HOME": str(w.root / "home")},
        absent=("work/~",),
    )


def case_out_tilde_expands(w):
    """Positive control: a leading ~ is the home directory, as in the shell."""
    return Run(
        ["bundle", "~/b", "--from", str(w.graph)],
        0,
        cwd=w.root / "work",
        env={"HOME": str(w.root / "home")},
        allow=("home/b", "home/b.tar.gz"),
        absent=("work/~",),
    )


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")}


# cases that fetch a real bundled checkpoint (the zoo's real loading path): the real_model tier
REAL = {"models_dir_symlink", "disk_full_models_fetch"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.real_model) if n in REAL else n for n in sorted(CASES)]
)
def test_case(name, world, monkeypatch):
    run = CASES[name](world)
    before = snapshot(world.root)
    leftovers_before = set(partial_leftovers(world.root))
    res = execute(run, monkeypatch)
    check_outcome(res, run)
    assert_unchanged(before, world.root, allow=run.allow)
    for rel in run.absent:
        assert not os.path.lexists(world.root / rel), rel
    new = sorted(set(partial_leftovers(world.root)) - leftovers_before)
    assert not new, new


# ------------------------------------------------------------------------------- beyond the table

HEAVY = ("torch._C", "transformers", "onnxruntime", "onnx", "optimum")


def _heavy_after(code: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``code`` in a fresh interpreter; which heavy modules it executed (printed on its last line)."""
    probe = (
        "import sys, json\ntry:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + f"finally:\n    print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    res = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        preexec_fn=_limits(Run([], 0)),
    )
    return res, json.loads(res.stdout.strip().splitlines()[-1])


def test_validating_a_recipe_imports_nothing_heavy(tmp_path):
    """`import tokexport.recipe` and validating a recipe: no torch, transformers, ONNX or ONNX Runtime."""
    res, heavy = _heavy_after(
        "from tokexport.recipe import load_recipe\n"
        "r = load_recipe(sys.argv[1])\nassert r.reduction.method == 'zero-tprune'",
        str(REPO / "tokexport" / "recipes" / "dinov2-small-zero-tprune.yaml"),
    )
    assert res.returncode == 0, res.stderr
    assert heavy == [], heavy


def test_a_bad_recipe_is_answered_before_any_heavy_import(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: dinov2-small\nreductoin: {method: random}\n")
    res, heavy = _heavy_after(
        "from tokexport.cli import main\nsys.argv = ['tokexport', 'convert', sys.argv[1]]\nmain()", str(p)
    )
    assert res.returncode == 2, res.stderr
    assert "reductoin: unknown field; did you mean 'reduction'?" in res.stderr
    assert heavy == [], heavy
    # negative control: the probe does see torch once something uses it
    res, heavy = _heavy_after(
        "from tokexport.reduce.common import keep_topk\nimport tokexport.lazy as L\nL.torch.zeros(1)"
    )
    assert "torch._C" in heavy, (heavy, res.stderr)


@pytest.mark.parametrize(
    "code, expected",
    [
        ("ENOSPC", EXIT_WRITE),
        ("EFBIG", EXIT_WRITE),
        ("EDQUOT", EXIT_WRITE),
        ("EROFS", EXIT_WRITE),
        ("EACCES", EXIT_WRITE),
        ("ENOENT", 2),
    ],
)
def test_a_write_failure_anywhere_in_the_output_is_exit_10(world, monkeypatch, code, expected):
    """Fault injection on the bundle's real write path: every errno that means 'cannot write' is exit 10
    with one line and nothing left; another OS error (ENOENT, the negative control) is not."""
    import errno

    from tokexport import deploy

    real = deploy._fill_bundle

    def failing(root, *a, **k):
        real(root, *a, **k)  # writes the whole bundle first: the failure comes at the end
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(root / "manifest.json"))

    monkeypatch.setattr(deploy, "_fill_bundle", failing)
    before = snapshot(world.root)
    run = Run(
        ["bundle", str(world.root / "b"), "--from", str(world.graph)],
        expected,
        ("cannot write the output",) if expected == EXIT_WRITE else ("manifest.json",),
    )
    res = execute(run, monkeypatch)
    check_outcome(res, run)
    assert_unchanged(before, world.root)
    assert not partial_leftovers(world.root)


def test_a_library_wrapping_the_os_error_is_recognised():
    """Writers that wrap the OS error in their own exception (safetensors' Rust error, an exporter's)."""
    from tokexport.errors import write_error

    class RustError(Exception):
        pass

    assert (
        write_error(
            RustError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                '"No space left on device" })'
            ),
            "o",
        ).exit_code
        == EXIT_WRITE
    )
    try:
        try:
            raise OSError(27, "File too large")
        except OSError as e:
            raise RuntimeError("ONNX export failed") from e
    except RuntimeError as wrapped:
        assert write_error(wrapped, "o") is not None
    assert write_error(ValueError("bad value"), "o") is None


def test_trt_check_names_the_final_path(world):
    """No path into the (deleted) staging directory survives in report.json."""
    import tokexport

    out = world.root / "o"
    result = tokexport.convert(str(world.recipe), out=str(out))
    text = (out / "report.json").read_text()
    assert ".tmp-" not in text
    assert result.report["trt_check"]["model"] == str(out / "model.onnx")


def test_allow_pickle_opts_in_to_a_pickle_checkpoint(world):
    """The positive control of the pickle refusal: with the opt-in, the same checkpoint loads."""
    import torch
    from transformers import AutoModel

    from tokexport.checkpoints import pickle_policy
    from tokexport.errors import InputError
    from tokexport.load import load_model
    from tokexport.recipe import recipe_schema

    m = AutoModel.from_pretrained(world.model)
    (world.model / "model.safetensors").unlink()
    torch.save(m.state_dict(), world.model / "pytorch_model.bin")
    with pytest.raises(InputError, match="allow_pickle: true"):
        load_model(str(world.model), world.root)
    lm = load_model(str(world.model), world.root, allow_pickle=True)
    assert torch.equal(next(lm.model.parameters()), next(m.parameters()))
    with pickle_policy(True):  # what the driver sets from the recipe
        load_model(str(world.model), world.root)
    defs = recipe_schema()["$defs"]
    assert all("allow_pickle" in defs[k]["properties"] for k in ("ViTRecipe", "VocabRecipe"))


def test_yaml_merge_keys_still_override():
    """A key given twice is refused, but YAML's merge key `<<` still provides overridable defaults."""
    import yaml as _yaml

    from tokexport.files import loads_yaml

    assert loads_yaml("base: &b {a: 1, c: 3}\nx:\n  <<: *b\n  a: 2\n")["x"] == {"a": 2, "c": 3}
    with pytest.raises(_yaml.YAMLError, match="appears twice"):
        loads_yaml("x:\n  a: 1\n  a: 2\n")
