"""`tokexport bundle`: the bundle verifies itself through ONNX Runtime, a tampered file fails the
sha256 check, a wrong expected output fails the comparison, the .tar.gz unpacks into a working
bundle, and bad input leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from test_cli_bad_input import assert_one_line_error, run_cli
from test_deploy import tiny_model


def verify(bundle, *args):
    return subprocess.run(
        [sys.executable, str(bundle / "verify_on_device.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture()
def bundle(tmp_path):
    src = tiny_model(tmp_path / "src" / "model.onnx")
    out = tmp_path / "jp60"
    res = run_cli("bundle", str(out), "--from", str(src), "--target", "jetpack-6.0")
    assert res.returncode == 0, res.stderr
    assert "model.onnx on jetpack-6.0 (TensorRT 8.6.2, JetPack 6.0): PASS" in res.stdout.replace("\n", " ")
    return out


def test_bundle_verifies_itself_with_onnxruntime(bundle, tmp_path):
    r = verify(bundle)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sha256: " in r.stdout and r.stdout.strip().splitlines()[-1].startswith("PASS (onnxruntime")
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["target"]["name"] == "jetpack-6.0" and man["models"]["model"]["opset"] == 17
    # the archive unpacks into the same, working bundle
    with tarfile.open(bundle.with_name("jp60.tar.gz")) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert verify(tmp_path / "unpacked" / "jp60").returncode == 0


def test_tampered_file_fails_the_hash_check(bundle):
    rel = json.loads((bundle / "manifest.json").read_text())["inputs"]["x"]["file"]
    assert rel == "inputs/input_0.npy"  # files are named by position, the manifest maps names to them
    x = bundle / rel
    arr = np.load(x)
    arr[0, 0, 0] += 1.0
    np.save(x, arr)
    r = verify(bundle)
    assert r.returncode == 2 and f"FAIL sha256 {rel}" in r.stdout


def test_wrong_expected_output_fails_the_comparison(bundle):
    man = json.loads((bundle / "manifest.json").read_text())
    rel = man["models"]["model"]["expected"]["y"]["file"]
    assert rel == "expected/model/output_0.npy"
    exp = bundle / rel
    np.save(exp, np.load(exp) + 1.0)
    for f in man["files"]:  # re-sign it: only the comparison can catch it
        if f["path"] == rel:
            f["sha256"], f["bytes"] = hashlib.sha256(exp.read_bytes()).hexdigest(), exp.stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(man))
    r = verify(bundle)
    assert r.returncode == 1, r.stdout
    assert "FAIL y:" in r.stdout and "ok   z:" in r.stdout and r.stdout.strip().splitlines()[-1].startswith("FAIL")
    assert verify(bundle, "--runtime", "tensorrt").returncode == 5  # no TensorRT here: says so, distinct code


def test_bundle_bad_input(bundle, tmp_path):
    src = bundle.parent / "src" / "model.onnx"
    assert_one_line_error(run_cli("bundle", str(bundle), "--from", str(src)), "already exists", "--force")
    assert run_cli("bundle", str(bundle), "--from", str(src), "--force", "--target", "onnxruntime").returncode == 0
    assert json.loads((bundle / "manifest.json").read_text())["target"]["name"] == "onnxruntime"
    new = tmp_path / "new"
    assert_one_line_error(run_cli("bundle", str(new), "--from", str(src), "--target", "jetpack-9"), "unknown target")
    (tmp_path / "junk.onnx").write_text("not a model")
    assert_one_line_error(run_cli("bundle", str(new), "--from", str(tmp_path / "junk.onnx")), "junk.onnx")
    assert not new.exists() and not (tmp_path / "new.tar.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_build_without_tensorrt_exits_8(bundle):
    res = run_cli("build", str(bundle.parent / "src" / "model.onnx"))
    assert res.returncode == 8
    assert res.stderr.strip().count("\n") == 0 and "tensorrt" in res.stderr and "tokexport bundle" in res.stderr
    assert_one_line_error(run_cli("build", str(bundle.parent / "missing.onnx")), "missing.onnx", "not found")


def test_bundle_from_a_convert_directory_reuses_its_real_inputs_and_target(tmp_path):
    """`--from DIR` bundles model.onnx and baseline.onnx, takes the target from report.json and the
    sample inputs convert stored in DIR/deploy (real data), not generated ones."""
    from tokexport.deploy import write_bundle

    src = tmp_path / "converted"
    tiny_model(src / "model.onnx")
    tiny_model(src / "baseline.onnx", scale=3.0)
    x = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4) / 10  # not what sample_inputs would draw
    write_bundle(
        src / "deploy",
        {"model": src / "model.onnx", "baseline": src / "baseline.onnx"},
        "jetpack-5.1",
        {"x": x},
        archive=False,
    )
    (src / "report.json").write_text(json.dumps({"recipe": {"export": {"target": "jetpack-5.1"}}}))
    out = tmp_path / "bundle"
    res = run_cli("bundle", str(out), "--from", str(src))
    # the tiny graphs are opset 17, above TensorRT 8.5's: written, and exit 9 (target check failed)
    assert res.returncode == 9 and "target check failed" in res.stderr, res.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"]["name"] == "jetpack-5.1" and set(man["models"]) == {"model", "baseline"}
    assert np.array_equal(np.load(out / man["inputs"]["x"]["file"]), x)
    assert verify(out).returncode == 0
