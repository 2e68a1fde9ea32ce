"""Never lose a user's data, part 2: a deploy bundle stays inside its directory whatever the graph's or
the npz's names are, verify_on_device.py reads nothing its manifest points at outside the bundle, and a
graph's external data must be inside the graph's folder and complete.

Every CLI case: exit 2, exactly one stderr line starting with ``error:``, no traceback, nothing written
or changed next to the output (tests/sentinel.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sentinel import assert_unchanged, make_tree, snapshot
from test_cli_bad_input import assert_one_line_error, run_cli
from test_deploy import tiny_model

from tokexport import deploy, onnx_tools
from tokexport.errors import InputError

F = TensorProto.FLOAT
LONG = "n" * 300  # longer than any file name may be (255 bytes)
IN_NAMES = ["../../../X", "a/b", LONG]
OUT_NAMES = ["../../../Y", "c/d", "o" * 300, "e:f*?<>|\n\t"]

# Runs a script (or `-m module`) with an audit hook that logs every path opened, to prove what was read.
AUDIT = r"""
import os, runpy, sys
log = open(os.environ["OPEN_LOG"], "w")
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        log.write(os.path.abspath(os.fsdecode(args[0])).replace("\n", "\\n") + "\n")
        log.flush()
sys.addaudithook(hook)
if sys.argv[1] == "-m":
    sys.argv = [sys.argv[2]] + sys.argv[3:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def hostile_graph(path: Path) -> Path:
    """Inputs/outputs named with ../, / and names no file system takes; [batch, 3] float32 each."""
    nodes = [
        helper.make_node("Add", IN_NAMES[:2], ["s"]),
        helper.make_node("Add", ["s", IN_NAMES[2]], ["t"]),
        helper.make_node("Identity", ["t"], [OUT_NAMES[0]]),
        helper.make_node("Neg", ["t"], [OUT_NAMES[1]]),
        helper.make_node("Abs", ["t"], [OUT_NAMES[2]]),
        helper.make_node("Relu", ["t"], [OUT_NAMES[3]]),
    ]
    g = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info(n, F, ["batch", 3]) for n in IN_NAMES],
        [helper.make_tensor_value_info(n, F, ["batch", 3]) for n in OUT_NAMES],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(m, str(path))
    return path


def external_graph(path: Path) -> Path:
    """y = x @ W + b with W and b in ``<name>.data`` next to the graph (size_threshold 0)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    g = helper.make_graph(
        nodes,
        "ext",
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 3])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        m,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=0,
    )
    return path


def set_external(path: Path, **entries: str | list[tuple[str, str]]) -> None:
    """Rewrite the external_data entries of every external tensor of the graph file (data untouched)."""
    m = onnx.load_model(str(path), load_external_data=False)
    for t in m.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        pairs = entries.get("pairs") or [(e.key, entries.get(e.key, e.value)) for e in t.external_data]
        del t.external_data[:]
        for k, v in pairs:
            t.external_data.add(key=k, value=v)
    path.write_bytes(m.SerializeToString())


def verify(bundle: Path, *args):
    return subprocess.run(
        [sys.executable, str(bundle / "verify_on_device.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def audited(tmp_path: Path, *argv, cwd=None):
    """Run argv (a script path, or "-m", module, args) under the audit hook; (result, resolved paths opened)."""
    hook = tmp_path / "audit_hook.py"
    hook.write_text(AUDIT)
    log = tmp_path / "opened.log"
    env = {**os.environ, "OPEN_LOG": str(log), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, str(hook), *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or Path(__file__).resolve().parents[1],
        timeout=300,
        check=False,
    )
    opened = [Path(p).resolve() for p in log.read_text().splitlines()] if log.is_file() else []
    return res, opened


def under(p: Path, root: Path) -> bool:
    return p == root.resolve() or p.is_relative_to(root.resolve())


@pytest.fixture()
def work(tmp_path):
    """A user's tree (tests/sentinel.py) with the graphs and the bundle's parent inside it."""
    root = make_tree(tmp_path / "work")
    (root / "deep" / "a" / "b").mkdir(parents=True)
    return root


BUNDLE = "deep/a/b/bundle"
ALLOW = (BUNDLE, BUNDLE + ".tar.gz")
FIXED = re.compile(
    r"(inputs/input_\d+\.npy|expected/model/output_\d+\.npy|model\.onnx|manifest\.json|README\.md|"
    r"build_engine\.sh|verify_on_device\.py|\.tokexport[\w.-]*)"
)


# ---------------------------------------------------------------- names never become file names


def test_hostile_io_names_stay_inside_the_bundle_and_verify(work):
    src = hostile_graph(work / "src" / "m.onnx")
    out = work / BUNDLE
    before = snapshot(work)
    res = run_cli("bundle", str(out), "--from", str(src), "--target", "onnxruntime")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert_unchanged(before, work, allow=ALLOW)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert all(FIXED.fullmatch(f) for f in files), files  # only index-based and fixed names
    man = json.loads((out / "manifest.json").read_text())
    assert man["format_version"] == 2
    assert {n: (i["index"], i["file"]) for n, i in man["inputs"].items()} == {
        n: (k, f"inputs/input_{k}.npy") for k, n in enumerate(IN_NAMES)
    }
    exp = man["models"]["model"]["expected"]
    assert {n: (e["index"], e["file"]) for n, e in exp.items()} == {
        n: (k, f"expected/model/output_{k}.npy") for k, n in enumerate(OUT_NAMES)
    }
    assert [o["name"] for o in man["models"]["model"]["outputs"]] == OUT_NAMES
    # the name map is right: expected output "c/d" is -("../../../X" + "a/b" + LONG)
    x = {n: np.load(out / i["file"]) for n, i in man["inputs"].items()}
    np.testing.assert_allclose(
        np.load(out / exp["c/d"]["file"]), -(x[IN_NAMES[0]] + x[IN_NAMES[1]] + x[LONG]), rtol=1e-6
    )
    r = verify(out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASS (onnxruntime")
    with tarfile.open(work / (BUNDLE + ".tar.gz")) as tar:
        names = tar.getnames()
    assert all(n == "bundle" or n.startswith("bundle/") for n in names) and not any(".." in n for n in names)
    assert_unchanged(before, work, allow=ALLOW)


def test_write_bundle_api_with_hostile_names(tmp_path):
    src = hostile_graph(tmp_path / "m.onnx")
    feed = {n: np.full((2, 3), k, np.float32) for k, n in enumerate(IN_NAMES)}
    extra = {"../../../extra": np.zeros(3, np.float32)}  # no graph takes it: left out, never a file
    b = deploy.write_bundle(tmp_path / "out" / "b", {"model": src}, "onnxruntime", {**feed, **extra}, archive=False)
    assert list(b.manifest["inputs"]) == IN_NAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]
    assert sorted(p.name for p in (b.path / "inputs").iterdir()) == ["input_0.npy", "input_1.npy", "input_2.npy"]
    for n, i in b.manifest["inputs"].items():
        np.testing.assert_array_equal(np.load(b.path / i["file"]), feed[n])
    assert verify(b.path).returncode == 0


def test_npz_keys_never_become_paths(work, tmp_path):
    src = tiny_model(work / "src" / "model.onnx")
    out = work / BUNDLE
    x = np.random.default_rng(1).standard_normal((1, 6, 4)).astype(np.float32)
    before = snapshot(work)
    # a key that is not a graph input (and looks like a path): one line, nothing written anywhere
    for i, arrays in enumerate(({"../x": x}, {"x": x, "../../../evil": x}, {"x": x, "../../notes.txt": x})):
        npz = tmp_path / f"in{i}.npz"
        np.savez(npz, **arrays)
        assert set(np.load(npz).files) == set(arrays)
        res = run_cli("bundle", str(out), "--from", str(src), "--target", "onnxruntime", "--inputs", str(npz))
        assert_one_line_error(res, str(npz), "no graph takes")
        assert_unchanged(before, work)
    # a missing input, a lone .npy, a broken zip: one line each, nothing written
    np.savez(tmp_path / "other.npz", y=x)
    np.save(tmp_path / "lone.npy", x)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for bad, needle in (
        (tmp_path / "other.npz", "no graph takes"),
        (tmp_path / "lone.npy", "single array"),
        (tmp_path / "broken.npz", "not a readable .npz"),
    ):
        res = run_cli("bundle", str(out), "--from", str(src), "--target", "onnxruntime", "--inputs", str(bad))
        assert_one_line_error(res, str(bad), needle)
        assert_unchanged(before, work)
    # a graph whose inputs really are named like paths: the npz keys match, files are still by index
    hostile = hostile_graph(work / "src" / "hostile.onnx")
    before = snapshot(work)
    feed = {n: np.full((1, 3), k + 1, np.float32) for k, n in enumerate(IN_NAMES)}
    npz = tmp_path / "hostile.npz"
    np.savez(npz, **feed)
    res = run_cli("bundle", str(out), "--from", str(hostile), "--target", "onnxruntime", "--inputs", str(npz))
    assert res.returncode == 0, res.stderr
    assert_unchanged(before, work, allow=ALLOW)
    man = json.loads((out / "manifest.json").read_text())
    for n, i in man["inputs"].items():
        np.testing.assert_array_equal(np.load(out / i["file"]), feed[n])
    assert verify(out).returncode == 0


# ---------------------------------------------------------------- manifest paths read by the bundle's consumers


@pytest.fixture()
def bundle(work):
    src = tiny_model(work / "src" / "model.onnx")
    out = work / BUNDLE
    assert run_cli("bundle", str(out), "--from", str(src), "--target", "onnxruntime").returncode == 0
    (work / "deep" / "a" / "outside").write_bytes(b"sentinel: not part of the bundle\n")
    return out


def _edit_manifest(bundle: Path, edit) -> None:
    man = json.loads((bundle / "manifest.json").read_text())
    edit(man)
    (bundle / "manifest.json").write_text(json.dumps(man))


def _one_error_line(r) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr and r.stdout == "", r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_verify_refuses_manifest_paths_outside_the_bundle(bundle, work, tmp_path):
    outside = work / "deep" / "a" / "outside"
    pristine = (bundle / "manifest.json").read_text()
    # control: the audit hook sees what the script reads (the intact bundle's own input file)
    res, opened = audited(tmp_path, bundle / "verify_on_device.py")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (bundle / "inputs" / "input_0.npy").resolve() in opened

    def add_file(m):
        m["files"].append({"path": "../../outside", "sha256": "0" * 64, "bytes": outside.stat().st_size})

    def input_abs(m):
        m["inputs"]["x"]["file"] = str(outside)

    def expected_up(m):
        m["models"]["model"]["expected"]["y"]["file"] = "expected/../../../outside"

    def graph_up(m):
        m["models"]["model"]["onnx"] = "../../outside"

    def engine_up(m):
        m["models"]["model"]["engine"] = "../../outside"

    for edit in (add_file, input_abs, expected_up, graph_up, engine_up):
        (bundle / "manifest.json").write_text(pristine)
        _edit_manifest(bundle, edit)
        before = snapshot(work)
        line = _one_error_line(verify(bundle))
        assert "outside the bundle" in line and "outside" in line, (edit.__name__, line)
        res, opened = audited(tmp_path, bundle / "verify_on_device.py")
        assert _one_error_line(res) == line
        assert outside.resolve() not in opened, edit.__name__
        assert not [p for p in opened if under(p, work) and not under(p, bundle)], edit.__name__
        assert_unchanged(before, work)

    # a file inside the bundle replaced by a symlink that leads out: also outside once resolved
    (bundle / "manifest.json").write_text(pristine)
    (bundle / "inputs" / "input_0.npy").unlink()
    (bundle / "inputs" / "input_0.npy").symlink_to(outside)
    res, opened = audited(tmp_path, bundle / "verify_on_device.py")
    assert "inputs/input_0.npy" in _one_error_line(res) and outside.resolve() not in opened

    # an unreadable manifest: one line too, not a traceback
    for text in (b"\xff\xfe not utf-8", b"{not json", b"[]", b'{"files": 3}'):
        (bundle / "manifest.json").write_bytes(text)
        assert "manifest.json" in _one_error_line(verify(bundle))


def test_bundle_from_a_convert_dir_refuses_deploy_inputs_outside(work, tmp_path):
    """`bundle --from DIR` reads DIR/deploy/manifest.json's inputs: a path leading out of deploy/ is refused."""
    src = work / "converted"
    tiny_model(src / "model.onnx")
    deploy.write_bundle(src / "deploy", {"model": src / "model.onnx"}, "jetpack-6.0", archive=False)
    outside = work / "outside.npy"
    np.save(outside, np.zeros((1, 6, 4), np.float32))
    man_path = src / "deploy" / "manifest.json"
    pristine = man_path.read_text()
    for rel in ("../../outside.npy", str(outside), "inputs/../../../outside.npy"):
        man = json.loads(pristine)
        man["inputs"]["x"]["file"] = rel
        man_path.write_text(json.dumps(man))
        before = snapshot(work)
        res, opened = audited(
            tmp_path, "-m", "tokexport", "bundle", work / BUNDLE, "--from", src, "--target", "onnxruntime"
        )
        assert_one_line_error(res, "manifest.json", "outside")
        assert outside.resolve() not in opened
        assert_unchanged(before, work)


# ---------------------------------------------------------------- external data


def test_external_data_outside_the_graph_folder_is_refused(work, tmp_path):
    g = external_graph(work / "g" / "m.onnx")
    data = work / "g" / "m.onnx.data"
    (work / "outside.data").write_bytes(data.read_bytes())  # a complete copy: only its place is wrong
    (work / "g" / "link.data").symlink_to(work / "outside.data")
    cases = {
        "../outside.data": "../outside.data",
        str(work / "outside.data"): str(work / "outside.data"),
        "link.data": "link.data",
        "sub/../../outside.data": "sub/../../outside.data",
    }
    for loc, shown in cases.items():
        set_external(g, location=loc)
        for fn in (onnx_tools.load, onnx_tools.onnx_files, onnx_tools.sha256_onnx, onnx_tools.inspect_model):
            with pytest.raises(InputError, match=re.escape(repr(shown))):
                fn(g)
        with pytest.raises(InputError, match="outside"):
            onnx_tools.check_target(g, "jetpack-6.0", lint=False)
        before = snapshot(work)
        for args in (
            ("inspect", str(g)),
            ("check-target", str(g), "--target", "jetpack-6.0", "--no-lint"),
            ("bundle", str(work / BUNDLE), "--from", str(g), "--target", "onnxruntime"),
        ):
            res = run_cli(*args)
            assert_one_line_error(res, str(g), repr(shown))
            assert "PASS" not in res.stdout
        with pytest.raises(InputError, match="outside"):
            deploy.write_bundle(work / BUNDLE, {"model": g}, "onnxruntime")
        assert_unchanged(before, work)
    # two location entries on one tensor (onnx's reader keeps the last one): refused
    set_external(g, pairs=[("location", "m.onnx.data"), ("location", "../outside.data")])
    with pytest.raises(InputError, match="repeats the external data key 'location'"):
        onnx_tools.inspect_model(g)
    # back to a sound location: everything works again
    set_external(g, pairs=[("location", "m.onnx.data")])
    assert onnx_tools.onnx_files(g) == [g, data]


def test_truncated_or_missing_external_data_fails_check_target(work):
    g = external_graph(work / "g" / "m.onnx")
    data = work / "g" / "m.onnx.data"
    full = data.read_bytes()
    assert len(full) == 60  # W (48 bytes) + b (12 bytes)
    res = run_cli("check-target", str(g), "--target", "jetpack-6.0", "--no-lint")
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout + res.stderr
    before = snapshot(work)
    for size in (30, 50, 0):  # W cut, b cut, empty
        data.write_bytes(full[:size])
        before = snapshot(work)
        res = run_cli("check-target", str(g), "--target", "jetpack-6.0", "--no-lint")
        assert_one_line_error(res, str(data), "truncated")
        assert "PASS" not in res.stdout
        assert_one_line_error(run_cli("inspect", str(g)), str(data), "truncated")
        assert_one_line_error(run_cli("bundle", str(work / BUNDLE), "--from", str(g)), "truncated")
        for fn in (onnx_tools.load, onnx_tools.onnx_files, onnx_tools.sha256_onnx):
            with pytest.raises(InputError, match="truncated"):
                fn(g)
        assert_unchanged(before, work)
    data.write_bytes(full)
    # an offset past the end, a length shorter than the tensor, a bad offset: all refused
    set_external(g, offset="1000")
    assert_one_line_error(run_cli("check-target", str(g), "--no-lint"), str(data), "truncated")
    set_external(g, offset="0", length="4")
    assert_one_line_error(run_cli("check-target", str(g), "--no-lint"), "declares 4 bytes")
    set_external(g, length="48", offset="-3")
    assert_one_line_error(run_cli("check-target", str(g), "--no-lint"), "offset '-3'")
    # missing
    external_graph(g)
    data.unlink()
    res = run_cli("check-target", str(g), "--target", "jetpack-6.0", "--no-lint")
    assert_one_line_error(res, str(data), "missing")
    assert "PASS" not in res.stdout


# ---------------------------------------------------------------- report.json of `bundle --from DIR`


def test_bundle_from_dir_with_unreadable_report(work):
    src = work / "converted"
    tiny_model(src / "model.onnx")
    out = work / BUNDLE
    rep = src / "report.json"
    for text in (b"\xff\xfe\x00{ not utf-8", b"{not json", b'{"recipe": {"export": {"target": 5}}}'):
        rep.write_bytes(text)
        before = snapshot(work)
        assert_one_line_error(run_cli("bundle", str(out), "--from", str(src)), str(rep), "--target")
        assert_unchanged(before, work)
    rep.write_bytes(b"\xff\xfe\x00{ not utf-8")  # an explicit --target does not need the report
    before = snapshot(work)
    res = run_cli("bundle", str(out), "--from", str(src), "--target", "jetpack-6.0")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert json.loads((out / "manifest.json").read_text())["target"]["name"] == "jetpack-6.0"
    assert_unchanged(before, work, allow=ALLOW)
