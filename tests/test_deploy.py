"""Tests for tokexport.deploy: no TensorRT, no GPU; onnxruntime stands in for TensorRT."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tokexport
from tokexport import deploy, onnx_tools
from tokexport.errors import EnvironmentProblem, InputError

POLYGRAPHY = str(Path(sys.executable).parent / "polygraphy")
if not Path(POLYGRAPHY).exists():
    POLYGRAPHY = shutil.which("polygraphy") or POLYGRAPHY
F = TensorProto.FLOAT


def tiny_model(path: Path, external: bool = True, batch=1, scale=2.0) -> Path:
    """y = x @ W + b; z = TopK(y, K=2).indices ; x:[B,6,4] -> y:[B,6,3]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((scale * rng.standard_normal((4, 3))).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "K"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("TopK", ["y", "K"], ["v", "z"], axis=1, sorted=1),
    ]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", F, [batch, 6, 4])],
                          [helper.make_tensor_value_info("y", F, [batch, 6, 3]),
                           helper.make_tensor_value_info("z", TensorProto.INT64, [batch, 2, 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx_tools.check_shapes(m)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=64)  # W external, K inline (onnx compares sys.getsizeof)
    else:
        onnx.save_model(m, str(path))
    return path


def run_ort(path: Path, feed: dict) -> dict:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feed)))


def polygraphy_run(bundle: Path, model_rel: str, inputs: str, expected: str, atol=1e-5, rtol=1e-5):
    cmd = [POLYGRAPHY, "run", model_rel, "--onnxrt", "--load-inputs", inputs, "--load-outputs", expected,
           "--atol", str(atol), "--rtol", str(rtol)]
    return subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def two_models(tmp_path):
    # Both graphs are called model.onnx with model.onnx.data: the bundle must keep them apart.
    a = tiny_model(tmp_path / "src_a" / "model.onnx", external=True, scale=2.0)
    b = tiny_model(tmp_path / "src_b" / "model.onnx", external=True, scale=3.0)
    x = np.random.default_rng(5).standard_normal((1, 6, 4)).astype(np.float32)
    feed = {"x": x}
    expected = {"orig": run_ort(a, feed), "evit": run_ort(b, feed)}
    return {"orig": a, "evit": b}, feed, expected


# ---------------------------------------------------------------- environment


def test_tensorrt_available_false_here():
    assert deploy.tensorrt_available() is False


def test_build_engine_without_tensorrt(tmp_path):
    p = tiny_model(tmp_path / "m.onnx")
    with pytest.raises(EnvironmentProblem, match="TensorRT is not installed.*build_engines.sh"):
        deploy.build_engine(p, tmp_path / "m.engine")
    assert EnvironmentProblem.exit_code == 5
    assert not (tmp_path / "m.engine").exists()


# ---------------------------------------------------------------- trtexec


def test_trtexec_command_static():
    cmd = deploy.trtexec_command("models/a/m.onnx", "engines/a.engine", {"x": [1, 197, 768]})
    assert cmd == "trtexec --onnx=models/a/m.onnx --saveEngine=engines/a.engine --fp16"
    assert "Shapes" not in cmd and "--skipInference" not in cmd
    assert "--fp16" not in deploy.trtexec_command("m.onnx", "m.engine", {"x": [1, 3]}, fp16=False)


def test_trtexec_command_dynamic_batch():
    cmd = deploy.trtexec_command("m.onnx", "m.engine", {"pixel_values": ["batch", 3, 224, 224], "mask": [1, 4]},
                                 batch=(1, 4, 8))
    args = shlex.split(cmd)
    assert args[0] == "trtexec"
    assert "--minShapes=pixel_values:1x3x224x224,mask:1x4" in args
    assert "--optShapes=pixel_values:4x3x224x224,mask:1x4" in args
    assert "--maxShapes=pixel_values:8x3x224x224,mask:1x4" in args
    assert "--fp16" in args
    with pytest.raises(InputError, match="axis 1"):
        deploy.trtexec_command("m.onnx", "m.engine", {"x": [1, "tokens", 768]})


# ---------------------------------------------------------------- bundle


def test_write_bundle_layout_and_roundtrip(tmp_path, two_models):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    paths, feed, expected = two_models
    dest = deploy.write_bundle(tmp_path / "bundle", paths, feed, expected, "8.6",
                               {"atol": 1e-4, "rtol": 1e-3, "evit": {"atol": 2e-2}})
    assert dest == tmp_path / "bundle"
    for f in ("inputs.json", "expected_orig.json", "expected_evit.json", "build_engines.sh",
              "verify_on_device.sh", "manifest.json", "README.md",
              "models/orig/model.onnx", "models/orig/model.onnx.data",
              "models/evit/model.onnx", "models/evit/model.onnx.data"):
        assert (dest / f).is_file(), f
    assert os.access(dest / "build_engines.sh", os.X_OK) and os.access(dest / "verify_on_device.sh", os.X_OK)

    # the copies load with their weights and hash like the originals
    for name, src in paths.items():
        assert onnx_tools.sha256_onnx(dest / "models" / name / "model.onnx") == onnx_tools.sha256_onnx(src)
        onnx_tools.load(dest / "models" / name / "model.onnx")

    # polygraphy reads back exactly what was given
    loaded_inputs = load_json(dest / "inputs.json")
    assert isinstance(loaded_inputs, list) and len(loaded_inputs) == 1
    assert list(loaded_inputs[0]) == ["x"]
    np.testing.assert_array_equal(loaded_inputs[0]["x"], feed["x"])
    for name in paths:
        rr = load_json(dest / f"expected_{name}.json")
        assert isinstance(rr, RunResults)
        assert list(rr.keys()) == [deploy.REFERENCE_RUNNER]
        (it,) = rr[deploy.REFERENCE_RUNNER]
        assert set(it.keys()) == set(expected[name])
        for k, v in expected[name].items():
            np.testing.assert_array_equal(it[k], v)
            assert it[k].dtype == v.dtype

    man = json.loads((dest / "manifest.json").read_text())
    assert man["tokexport_version"] == tokexport.__version__
    assert man["target_tensorrt"] == "8.6" and man["jetpack"] == "6.0"
    assert man["tolerances"] == {"orig": {"atol": 1e-4, "rtol": 1e-3}, "evit": {"atol": 2e-2, "rtol": 1e-3}}
    m = man["models"]["orig"]
    assert m["opset"] == 17
    assert m["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 6, 4]}]
    assert [o["name"] for o in m["outputs"]] == ["y", "z"]
    assert m["trt_findings"] == []
    listed = {f["path"]: f for f in man["files"]}
    for rel in ("models/orig/model.onnx.data", "inputs.json", "expected_evit.json", "verify_on_device.sh"):
        assert listed[rel]["sha256"] == onnx_tools.sha256_file(dest / rel)
        assert listed[rel]["bytes"] == (dest / rel).stat().st_size
    assert "manifest.json" not in listed
    data_entry = next(f for f in m["files"] if f["path"].endswith(".data"))
    assert data_entry["bytes"] > 0

    build = (dest / "build_engines.sh").read_text()
    assert '"$TRTEXEC" --onnx=models/orig/model.onnx --saveEngine=engines/orig.engine --fp16' in build
    verify = (dest / "verify_on_device.sh").read_text()
    assert "--trt --load-inputs inputs.json --load-outputs expected_evit.json --atol 0.02 --rtol 0.001" in verify
    for script in ("build_engines.sh", "verify_on_device.sh"):
        subprocess.run(["bash", "-n", str(dest / script)], check=True)
    assert "verify_on_device.sh" in (dest / "README.md").read_text()


def test_bundle_verifies_with_polygraphy_onnxrt(tmp_path, two_models):
    paths, feed, expected = two_models
    dest = deploy.write_bundle(tmp_path / "bundle", paths, feed, expected, "10.3", {"atol": 1e-5, "rtol": 1e-5})
    for name in paths:
        res = polygraphy_run(dest, f"models/{name}/model.onnx", "inputs.json", f"expected_{name}.json")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "PASSED" in res.stdout + res.stderr

    # A deliberately wrong reference must fail.
    bad = {k: dict(v) for k, v in expected.items()}
    bad["orig"]["y"] = bad["orig"]["y"] + 0.5
    dest2 = deploy.write_bundle(tmp_path / "bad", paths, feed, bad, "10.3", {"atol": 1e-5, "rtol": 1e-5})
    res = polygraphy_run(dest2, "models/orig/model.onnx", "inputs.json", "expected_orig.json")
    assert res.returncode != 0
    assert "FAILED" in res.stdout + res.stderr
    # the other model's reference is untouched and still passes
    assert polygraphy_run(dest2, "models/evit/model.onnx", "inputs.json", "expected_evit.json").returncode == 0


def _shim(tmp_path: Path) -> Path:
    """A `polygraphy` stand-in for verify_on_device.sh: TensorRT -> onnxruntime."""
    shim = tmp_path / "polygraphy-onnxrt"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        "args=()\nfor a in \"$@\"; do case \"$a\" in --trt) args+=(--onnxrt);; --fp16) ;; *) args+=(\"$a\");; esac; done\n"
        f"exec {shlex.quote(POLYGRAPHY)} \"${{args[@]}}\"\n"
    )
    shim.chmod(0o755)
    return shim


def test_verify_script_exit_codes(tmp_path, two_models):
    paths, feed, expected = two_models
    env = dict(os.environ, POLYGRAPHY=str(_shim(tmp_path)))
    good = deploy.write_bundle(tmp_path / "good", paths, feed, expected, "8.5", {"atol": 1e-5, "rtol": 1e-5})
    r = subprocess.run(["bash", str(good / "verify_on_device.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    bad_exp = {k: dict(v) for k, v in expected.items()}
    bad_exp["evit"]["y"] = -bad_exp["evit"]["y"]
    bad = deploy.write_bundle(tmp_path / "bad", paths, feed, bad_exp, "8.5", {"atol": 1e-5, "rtol": 1e-5})
    r = subprocess.run(["bash", str(bad / "verify_on_device.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "MISMATCH: evit" in r.stderr

    r = subprocess.run(["bash", str(good / "verify_on_device.sh")], env=dict(os.environ, POLYGRAPHY="/nonexistent/pg"),
                       capture_output=True, text=True)
    assert r.returncode == 5 and "pip install polygraphy" in r.stderr


def test_build_script_with_fake_trtexec(tmp_path, two_models):
    paths, feed, expected = two_models
    dest = deploy.write_bundle(tmp_path / "b", paths, feed, expected, "8.6")
    fake = tmp_path / "trtexec"
    fake.write_text("#!/usr/bin/env bash\nfor a in \"$@\"; do case \"$a\" in --saveEngine=*) : > \"${a#--saveEngine=}\";; esac; done\n")
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(dest / "build_engines.sh")], env=dict(os.environ, TRTEXEC=str(fake)),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (dest / "engines" / "orig.engine").exists() and (dest / "engines" / "evit.engine").exists()
    r = subprocess.run(["bash", str(dest / "build_engines.sh")], env=dict(os.environ, TRTEXEC="/nonexistent/trtexec"),
                       capture_output=True, text=True)
    assert r.returncode == 5 and "trtexec not found" in r.stderr


def test_per_model_inputs_file_when_inputs_differ(tmp_path):
    a = tiny_model(tmp_path / "a.onnx", external=False)
    x = np.ones((1, 6, 4), np.float32)
    feed = {"x": x, "aux": np.zeros((1, 2), np.float32)}
    dest = deploy.write_bundle(tmp_path / "b", {"a": a}, feed, {"a": run_ort(a, {"x": x})}, "10.3",
                               {"atol": 1e-5, "rtol": 1e-5})
    man = json.loads((dest / "manifest.json").read_text())
    assert man["models"]["a"]["inputs_file"] == "inputs_a.json"
    res = polygraphy_run(dest, "models/a/a.onnx", "inputs_a.json", "expected_a.json")
    assert res.returncode == 0, res.stdout[-2000:]


def test_write_bundle_input_errors(tmp_path, two_models):
    paths, feed, expected = two_models
    with pytest.raises(InputError, match="unknown TensorRT target"):
        deploy.write_bundle(tmp_path / "b1", paths, feed, expected, "7.0")
    with pytest.raises(InputError, match="lacks model input"):
        deploy.write_bundle(tmp_path / "b2", paths, {"q": feed["x"]}, expected, "8.6")
    with pytest.raises(InputError, match="shape"):
        deploy.write_bundle(tmp_path / "b3", paths, {"x": np.zeros((1, 5, 4), np.float32)}, expected, "8.6")
    with pytest.raises(InputError, match="expected outputs"):
        deploy.write_bundle(tmp_path / "b4", paths, feed, {"orig": {"nope": feed["x"]}, "evit": expected["evit"]}, "8.6")
    with pytest.raises(InputError, match="every model"):
        deploy.write_bundle(tmp_path / "b5", paths, feed, {"orig": expected["orig"]}, "8.6")
    with pytest.raises(InputError, match="file name"):
        deploy.write_bundle(tmp_path / "b6", {"a/b": paths["orig"]}, feed, {"a/b": expected["orig"]}, "8.6")
    (paths["orig"].parent / "model.onnx.data").unlink()
    with pytest.raises(InputError, match=r"model\.onnx\.data"):
        deploy.write_bundle(tmp_path / "b7", paths, feed, expected, "8.6")
    for i in range(1, 8):
        assert not (tmp_path / f"b{i}").exists()  # nothing written on bad input
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        deploy.write_bundle(tmp_path / "full", {"orig": paths["evit"]}, feed, {"orig": expected["evit"]}, "8.6")
