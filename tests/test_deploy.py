"""tokexport.deploy without TensorRT or a GPU: the FP16 comparison, trtexec lines, the engine path's
distinct failure, and write_bundle's layout; ONNX Runtime stands in for TensorRT."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tokexport
from tokexport import deploy, onnx_tools
from tokexport.errors import InputError, TensorRTUnavailable

F = TensorProto.FLOAT
TOL = deploy.DEFAULT_TOLERANCES


def tiny_model(path, external=True, batch="batch", scale=2.0):
    """y = x @ W + b; z = TopK(y, K=2).indices ; x:[B,6,4] -> y:[B,6,3], z:[B,2,3]."""
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
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", F, [batch, 6, 4])],
        [
            helper.make_tensor_value_info("y", F, [batch, 6, 3]),
            helper.make_tensor_value_info("z", TensorProto.INT64, [batch, 2, 3]),
        ],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx_tools.check_shapes(m)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(
            m,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=64,
        )
    else:
        onnx.save_model(m, str(path))
    return path


# ---------------------------------------------------------------- comparison


def test_compare_outputs_fp16_tolerances():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((2, 50, 16)).astype(np.float32) * 3
    fp16 = e.astype(np.float16).astype(np.float32)  # what an FP16 engine roughly returns
    rows = deploy.compare_outputs({"h": fp16}, {"h": e}, TOL)
    assert rows[0]["passed"] and rows[0]["max_abs"] > 1e-4  # not a 1e-5 absolute check
    wrong = e + 0.5
    r = deploy.compare_outputs({"h": wrong}, {"h": e}, TOL)[0]
    assert not r["passed"] and r["median_abs"] == pytest.approx(0.5, abs=1e-5)
    # a few outliers pass under the 0.99 quantile, many do not
    few, many = e.copy(), e.copy()
    few.reshape(-1)[:10] += 1.0
    many.reshape(-1)[:100] += 1.0
    assert deploy.compare_outputs({"h": few}, {"h": e}, TOL)[0]["passed"]
    assert not deploy.compare_outputs({"h": many}, {"h": e}, TOL)[0]["passed"]


def test_compare_outputs_logits_ints_shapes_nan():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.9]], np.float32)
    swapped = np.array([[3.0, 1.0, 0.0], [0.0, 1.9, 2.0]], np.float32)  # close values, other argmax
    r = deploy.compare_outputs({"logits": swapped}, {"logits": logits}, TOL)[0]
    assert r["top1_agreement"] == 0.5 and not r["passed"]
    pos = np.arange(10, dtype=np.int64)[None]
    assert deploy.compare_outputs({"positions": pos}, {"positions": pos}, TOL)[0]["passed"]
    assert not deploy.compare_outputs({"positions": pos[:, ::-1]}, {"positions": pos}, TOL)[0]["passed"]
    assert "shape" in deploy.compare_outputs({"a": np.zeros((1, 3))}, {"a": np.zeros((1, 4))}, TOL)[0]["problem"]
    assert "missing" in deploy.compare_outputs({}, {"a": np.zeros(1)}, TOL)[0]["problem"]
    assert "non-finite" in deploy.compare_outputs({"a": np.full(3, np.nan)}, {"a": np.zeros(3)}, TOL)[0]["problem"]
    assert all(deploy.format_row(r) for r in deploy.compare_outputs({"a": np.zeros(2)}, {"a": np.zeros(2)}, TOL))


# ---------------------------------------------------------------- TensorRT absent


def test_no_tensorrt_here_is_a_distinct_error(tmp_path):
    assert deploy.tensorrt_available() is False and "tensorrt" in deploy.tensorrt_problem()
    p = tiny_model(tmp_path / "m.onnx")
    with pytest.raises(TensorRTUnavailable, match="cannot build TensorRT engines here.*tokexport bundle"):
        deploy.build_and_compare(p, tmp_path / "m.engine", {"x": np.zeros((1, 6, 4), np.float32)})
    assert TensorRTUnavailable.exit_code == 8
    assert not (tmp_path / "m.engine").exists()


# ---------------------------------------------------------------- trtexec


def test_trtexec_command():
    cmd = deploy.trtexec_command("m.onnx", "m.engine", {"x": [1, 197, 768]}, timing_cache="timing.cache")
    assert cmd == "trtexec --onnx=m.onnx --saveEngine=m.engine --timingCacheFile=timing.cache --fp16"
    assert "--fp16" not in deploy.trtexec_command("m.onnx", "m.engine", {"x": [1, 3]}, fp16=False)
    args = shlex.split(
        deploy.trtexec_command(
            "m.onnx", "m.engine", {"pixel_values": ["batch", 3, 224, 224], "mask": [1, 4]}, batch=(1, 4, 8)
        )
    )
    assert "--minShapes=pixel_values:1x3x224x224,mask:1x4" in args
    assert "--maxShapes=pixel_values:8x3x224x224,mask:1x4" in args
    with pytest.raises(InputError, match="axis 1"):
        deploy.trtexec_command("m.onnx", "m.engine", {"x": [1, "tokens", 768]})


# ---------------------------------------------------------------- bundle


def test_write_bundle_layout(tmp_path):
    # two graphs with the same file names and external data: the bundle keeps them apart
    a = tiny_model(tmp_path / "a" / "model.onnx", scale=2.0)
    b = tiny_model(tmp_path / "b" / "model.onnx", scale=3.0)
    res = deploy.write_bundle(tmp_path / "out", {"model": a, "baseline": b}, "jetpack-5.1", fp16=True, max_batch=4)
    dest, man = res.path, res.manifest
    assert res.archive == tmp_path / "out.tar.gz" and res.archive.is_file()
    for f in (
        "model.onnx",
        "baseline.onnx",
        "manifest.json",
        "README.md",
        "build_engine.sh",
        "verify_on_device.py",
        "inputs/input_0.npy",
        "expected/model/output_0.npy",
        "expected/baseline/output_1.npy",
    ):
        assert (dest / f).is_file(), f
    assert os.access(dest / "build_engine.sh", os.X_OK) and os.access(dest / "verify_on_device.py", os.X_OK)
    assert man == json.loads((dest / "manifest.json").read_text())
    assert man["tokexport_version"] == tokexport.__version__
    assert man["target"] == {
        "name": "jetpack-5.1",
        "runtime": "tensorrt",
        "tensorrt": "8.5.2",
        "jetpack": "5.1",
        "opset": 16,
        "max_opset": 16,
        "strongly_typed": False,
    }
    m = man["models"]["model"]
    assert m["opset"] == 17 and m["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 6, 4]}]
    assert [o["name"] for o in m["outputs"]] == ["y", "z"]
    assert m["target_check"]["errors"] == 1  # opset 17 on TensorRT 8.5: named in the manifest
    assert man["format_version"] == 2
    assert man["inputs"]["x"] == {"index": 0, "file": "inputs/input_0.npy", "dtype": "float32", "shape": [1, 6, 4]}
    assert {o: (e["index"], e["file"]) for o, e in m["expected"].items()} == {
        "y": (0, "expected/model/output_0.npy"),
        "z": (1, "expected/model/output_1.npy"),
    }
    # expected outputs are ONNX Runtime's on the stored inputs, for each graph
    from tokexport.stages.runners import OrtRunner

    x = np.load(dest / "inputs" / "input_0.npy")
    for name, src in (("model", a), ("baseline", b)):
        ref = OrtRunner(src).infer({"x": x})
        for out, arr in ref.items():
            np.testing.assert_array_equal(np.load(dest / man["models"][name]["expected"][out]["file"]), arr)
        # external data was re-saved per graph (small tensors inline): the copies run on their own
        assert onnx_tools.onnx_files(dest / f"{name}.onnx")[0] == dest / f"{name}.onnx"
        np.testing.assert_array_equal(OrtRunner(dest / f"{name}.onnx").infer({"x": x})["y"], ref["y"])
    listed = {f["path"]: f for f in man["files"]}
    assert set(listed) == {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} - {"manifest.json"}
    for rel, f in listed.items():
        assert f["sha256"] == onnx_tools.sha256_file(dest / rel)
    build = (dest / "build_engine.sh").read_text()
    assert (
        '"$TRTEXEC" --onnx=model.onnx --saveEngine=model.engine --timingCacheFile=timing.cache '
        "--minShapes=x:1x6x4 --optShapes=x:1x6x4 --maxShapes=x:4x6x4 --fp16"
    ) in build
    subprocess.run(["bash", "-n", str(dest / "build_engine.sh")], check=True)
    assert "tokexport" not in "".join(
        ln for ln in (dest / "verify_on_device.py").read_text().splitlines() if ln.startswith(("import", "from"))
    )


def test_build_script_with_fake_trtexec(tmp_path):
    res = deploy.write_bundle(tmp_path / "b", {"model": tiny_model(tmp_path / "m.onnx")}, "jetpack-6.0", archive=False)
    fake = tmp_path / "trtexec"
    fake.write_text(
        '#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in --saveEngine=*) : > "${a#--saveEngine=}";; '
        "esac; done\necho '=== Performance summary ==='\n"
    )
    fake.chmod(0o755)
    r = subprocess.run(
        ["bash", str(res.path / "build_engine.sh")],
        env=dict(os.environ, TRTEXEC=str(fake)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert (res.path / "model.engine").exists() and (res.path / "build_model.log").is_file()
    r = subprocess.run(
        ["bash", str(res.path / "build_engine.sh")],
        env=dict(os.environ, TRTEXEC="/nonexistent/trtexec"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 5 and "trtexec not found" in r.stderr


def test_write_bundle_bad_input_writes_nothing(tmp_path):
    m = tiny_model(tmp_path / "m.onnx", external=False)
    with pytest.raises(InputError, match="unknown target"):
        deploy.write_bundle(tmp_path / "b1", {"model": m}, "jetpack-4.6")
    with pytest.raises(InputError, match="lack 'x'"):
        deploy.write_bundle(tmp_path / "b2", {"model": m}, "onnxruntime", {"q": np.zeros((1, 6, 4), np.float32)})
    with pytest.raises(InputError, match="shape"):
        deploy.write_bundle(tmp_path / "b3", {"model": m}, "onnxruntime", {"x": np.zeros((1, 5, 4), np.float32)})
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        deploy.write_bundle(tmp_path / "b4", {"model": tmp_path / "junk.onnx"}, "onnxruntime")
    with pytest.raises(InputError, match="file name"):
        deploy.write_bundle(tmp_path / "b5", {"a/b": m}, "onnxruntime")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx", "m.onnx"]  # no bundle, no temp dir


def test_a_graph_no_sample_can_be_made_for_asks_for_inputs_where_they_can_be_given(tmp_path):
    """A symbolic non-batch dim: ``sample_inputs`` says what is wrong (``tokexport build`` has no inputs to
    offer); ``write_bundle`` adds its ``inputs`` argument, which the CLI (`tokexport bundle`) shows as --inputs."""
    from tokexport.deploy import sample_inputs, write_bundle
    from tokexport.errors import InputError
    from tokexport.onnx_tools import inspect_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InputError, match="no sample input can be made") as err:
        sample_inputs(inspect_model(path))
    assert "inputs" not in str(err.value)
    with pytest.raises(InputError, match=r"no sample input can be made for it; pass inputs$") as err:
        write_bundle(tmp_path / "b", {"model": path}, "jetpack-6.0")
    assert err.value.lines(cli=True)[0].endswith("; pass --inputs")
    assert not (tmp_path / "b").exists()
