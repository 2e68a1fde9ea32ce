"""Tests for tokexport.onnx_tools, on tiny graphs built with onnx.helper (no torch)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tokexport import onnx_tools as ot
from tokexport.errors import InputError

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", list(inputs), list(outputs), initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tokexport-test")
    m.ir_version = 8
    return m


def clean_model(opset=16, batch=1, k=10, k_as_constant_node=False):
    """x[B,50,8] @ W[8,8] -> score = ReduceSum-free path: TopK over a [B,49] score, Gather tokens."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "W")
    sidx = numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Gather", ["h", "zero"], ["h0"], axis=2, name="feat0"),  # [B,50,1]
        helper.make_node("Squeeze", ["h0", "sq_axes"], ["score"], name="sq"),  # [B,50]
        helper.make_node("TopK", ["score", "K"], ["vals", "idx"], axis=-1, largest=1, sorted=1, name="topk"),
        helper.make_node("Gather", ["h", "idx0"], ["kept"], axis=1, name="gather"),
    ]
    # Gather with batch 1: take the first row's indices.
    nodes.insert(4, helper.make_node("Squeeze", ["idx", "sq0"], ["idx0"], name="sq_idx"))
    inits = [w, sidx,
             numpy_helper.from_array(np.array([2], dtype=np.int64), "sq_axes"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "sq0")]
    if k_as_constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["K"], value=numpy_helper.from_array(np.array([k], dtype=np.int64)), name="kconst"))
    else:
        inits.append(numpy_helper.from_array(np.array([k], dtype=np.int64), "K"))
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [batch, 50, 8])],
        [helper.make_tensor_value_info("kept", F, [batch, k, 8])],
        inits,
        opset=opset,
    )


def codes(findings, level=None):
    return {f.code for f in findings if level is None or f.level == level}


# ---------------------------------------------------------------- clean model


@pytest.mark.parametrize("target", sorted(ot.TRT_TARGETS))
def test_clean_model_no_findings(target):
    m = clean_model()
    ot.check_shapes(m)
    assert ot.trt_check(m, target) == []


def test_clean_model_runs_in_onnxruntime(tmp_path):
    m = clean_model()
    sess = ort.InferenceSession(m.SerializeToString())
    x = np.random.default_rng(1).standard_normal((1, 50, 8)).astype(np.float32)
    (kept,) = sess.run(None, {"x": x})
    assert kept.shape == (1, 10, 8)


def test_constant_node_k_is_constant(tmp_path):
    m = clean_model(k_as_constant_node=True, k=7)
    for t in ot.TRT_TARGETS:
        assert ot.trt_check(m, t) == []
    p = tmp_path / "c.onnx"
    onnx.save_model(m, str(p))
    info = ot.inspect_model(p)
    assert info["topk"][0]["k"] == 7


# ---------------------------------------------------------------- inspect / files / hashes


def test_inspect_model(tmp_path):
    m = clean_model(k=10)
    p = tmp_path / "m.onnx"
    onnx.save_model(m, str(p))
    info = ot.inspect_model(p)
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 50, 8]}]
    assert info["outputs"] == [{"name": "kept", "dtype": "float32", "shape": [1, 10, 8]}]
    assert info["opset"] == 16 and info["ir_version"] == 8
    assert info["producer"].startswith("tokexport-test")
    assert info["nodes"] == 6
    assert info["op_histogram"] == {"Gather": 2, "Squeeze": 2, "MatMul": 1, "TopK": 1}
    assert list(info["op_histogram"].values()) == sorted(info["op_histogram"].values(), reverse=True)
    assert info["topk"] == [
        {"node": "topk", "k": 10, "k_constant": True, "largest": True, "sorted": True, "axis": -1}
    ]
    assert info["params"] == 64 + 1 + 1 + 1 + 1
    assert info["file_bytes"] == p.stat().st_size


def test_inspect_symbolic_and_dynamic_k(tmp_path):
    m = _model(
        [helper.make_node("TopK", ["s", "k"], ["v", "i"], sorted=0, largest=0, axis=1, name="t")],
        [helper.make_tensor_value_info("s", F, ["batch", 100]), helper.make_tensor_value_info("k", I64, [1])],
        [helper.make_tensor_value_info("v", F, ["batch", None]), helper.make_tensor_value_info("i", I64, None)],
    )
    p = tmp_path / "d.onnx"
    onnx.save_model(m, str(p))
    info = ot.inspect_model(p)
    assert info["inputs"][0]["shape"] == ["batch", 100]
    assert info["outputs"][0]["shape"] == ["batch", "?"]
    assert info["outputs"][1]["shape"] is None
    assert info["topk"][0] == {"node": "t", "k": None, "k_constant": False, "largest": False, "sorted": False, "axis": 1}


def _save_external(m, d, name="m.onnx"):
    p = d / name
    onnx.save_model(m, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name + ".data", size_threshold=0)
    return p


def test_external_data_files_hash_bytes(tmp_path):
    m = clean_model(k=10)
    p = _save_external(m, tmp_path)
    data = tmp_path / "m.onnx.data"
    assert data.is_file() and data.stat().st_size > 0
    assert ot.onnx_files(p) == [p, data]
    info = ot.inspect_model(p)
    assert info["file_bytes"] == p.stat().st_size + data.stat().st_size
    assert info["topk"][0]["k"] == 10  # K read from the external file
    assert info["params"] == 68
    # K itself went to the .data file (size_threshold=0): onnxruntime cannot load that graph
    assert codes(ot.trt_check(p, "8.5")) == {"TOPK_K_EXTERNAL"}
    with pytest.raises(Exception, match="external"):
        ort.InferenceSession(str(p))
    p2 = tmp_path / "inline_k.onnx"
    onnx.save_model(clean_model(k=10), str(p2), save_as_external_data=True, location="inline_k.onnx.data",
                    size_threshold=64)
    assert ot.trt_check(p2, "8.5") == []
    assert len(ot.onnx_files(p2)) == 2
    ort.InferenceSession(str(p2))

    h1 = ot.sha256_onnx(p)
    assert len(h1) == 64
    assert h1 == ot.sha256_onnx(p)
    # the weights are part of the hash
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert ot.sha256_onnx(p) != h1

    loaded = ot.load(p)
    assert numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == "W")).shape == (8, 8)


def test_missing_external_data_is_input_error(tmp_path):
    p = _save_external(clean_model(), tmp_path)
    (tmp_path / "m.onnx.data").unlink()
    for fn in (ot.onnx_files, ot.sha256_onnx, ot.load, ot.inspect_model):
        with pytest.raises(InputError, match=r"m\.onnx\.data"):
            fn(p)
    # graph alone still parses without weights
    with pytest.raises(InputError):
        ot.load(p, load_external=False)


def test_bad_paths_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ot.load(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a protobuf, just some text\n" * 3)
    with pytest.raises(InputError, match="junk.onnx"):
        ot.load(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.onnx"):
        ot.inspect_model(empty)
    with pytest.raises(InputError):
        ot.load(tmp_path)  # a directory


# ---------------------------------------------------------------- set_io_shapes / check_shapes


def test_set_io_shapes_and_check():
    m = clean_model()
    # simulate the TorchScript exporter: odd symbolic names everywhere
    ot.set_io_shapes(m, {"x": ["s0", "s1", 8], "kept": ["Gatherkept_dim_0", "Gatherkept_dim_1", 8]})
    assert ot.trt_check(m, "10.3") and "DYNAMIC_DIM" in codes(ot.trt_check(m, "10.3"))
    ot.set_io_shapes(m, {"x": [1, 50, 8], "kept": [1, 10, 8]})
    ot.check_shapes(m)
    assert ot.trt_check(m, "10.3") == []
    # a wrong static declaration is caught by strict inference
    ot.set_io_shapes(m, {"kept": [1, 11, 8]})
    with pytest.raises(ValueError, match="conflict"):
        ot.check_shapes(m)
    ot.set_io_shapes(m, {"kept": [1, 10, 8], "x": [1, 49, 8]})
    ot.check_shapes(m)  # 49 tokens: K=10 still fits
    with pytest.raises(ValueError, match="no graph input/output"):
        ot.set_io_shapes(m, {"nope": [1]})


# ---------------------------------------------------------------- findings


def _topk_model(k=None, sorted_=1, opset=17):
    inits, inputs = [], [helper.make_tensor_value_info("s", F, [1, 5000])]
    if k is None:
        inputs.append(helper.make_tensor_value_info("k", I64, [1]))
    else:
        inits.append(numpy_helper.from_array(np.array([k], dtype=np.int64), "k"))
    return _model(
        [helper.make_node("TopK", ["s", "k"], ["v", "i"], sorted=sorted_, name="t")],
        inputs,
        [helper.make_tensor_value_info("i", I64, [1, k if k is not None else "k"])],
        inits,
        opset=opset,
    )


def test_opset_too_new():
    m = clean_model(opset=17)
    assert "OPSET_TOO_NEW" in codes(ot.trt_check(m, "8.5"), "error")
    assert ot.trt_check(m, "8.6") == []
    m18 = clean_model(opset=18)
    assert "OPSET_TOO_NEW" in codes(ot.trt_check(m18, "8.6"), "error")
    assert ot.trt_check(m18, "10.3") == []
    assert "OPSET_TOO_NEW" in codes(ot.trt_check(clean_model(opset=21), "10.3"))


def test_topk_k_not_constant():
    m = _topk_model(k=None)
    for t in ("8.5", "8.6"):
        assert "TOPK_K_NOT_CONSTANT" in codes(ot.trt_check(m, t), "error")
    assert "TOPK_K_NOT_CONSTANT" in codes(ot.trt_check(m, "10.3"), "warning")


def test_topk_k_too_large():
    for t in ot.TRT_TARGETS:
        assert "TOPK_K_TOO_LARGE" in codes(ot.trt_check(_topk_model(k=3840), t), "error")
        assert "TOPK_K_TOO_LARGE" not in codes(ot.trt_check(_topk_model(k=3839), t))


def test_topk_unsorted_trt10_only():
    m = _topk_model(k=10, sorted_=0)
    assert "TOPK_UNSORTED" in codes(ot.trt_check(m, "10.3"), "error")
    assert "TOPK_UNSORTED" not in codes(ot.trt_check(m, "8.6"))


def test_data_dependent_shape_ops():
    m = _model(
        [helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
         helper.make_node("Unique", ["x"], ["u"], name="uq")],
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("nz", I64, [2, 3]), helper.make_tensor_value_info("u", F, [3])],
    )
    for t in ot.TRT_TARGETS:
        f = ot.trt_check(m, t)
        nodes = {x.node for x in f if x.code == "DATA_DEPENDENT_SHAPE" and x.level == "error"}
        assert nodes == {"nz", "uq"}


def _scatter_model(reduction, const_indices=True, then_div=False):
    inits = [numpy_helper.from_array(np.zeros((1, 4), dtype=np.float32), "base")]
    inputs = [helper.make_tensor_value_info("upd", F, [1, 4])]
    if const_indices:
        inits.append(numpy_helper.from_array(np.array([[0, 1, 1, 2]], dtype=np.int64), "ind"))
    else:
        inputs.append(helper.make_tensor_value_info("ind", I64, [1, 4]))
    nodes = [helper.make_node("ScatterElements", ["base", "ind", "upd"], ["y"], axis=1,
                              reduction=reduction, name="sc")]
    out = "y"
    if then_div:
        inits.append(numpy_helper.from_array(np.full((1, 4), 2.0, dtype=np.float32), "cnt"))
        nodes.append(helper.make_node("Div", ["y", "cnt"], ["z"], name="div"))
        out = "z"
    return _model(nodes, inputs, [helper.make_tensor_value_info(out, F, [1, 4])], inits, opset=16)


def test_scatter_reduction():
    m = _scatter_model("add")
    for t in ("8.5", "8.6"):
        assert "SCATTER_REDUCTION_IGNORED" in codes(ot.trt_check(m, t), "error")
    assert "SCATTER_REDUCTION_IGNORED" not in codes(ot.trt_check(m, "10.3"))
    assert ot.trt_check(_scatter_model("none"), "8.5") == []  # plain constant-index assignment


def test_scatter_mean_like_warning():
    m = _scatter_model("add", then_div=True)
    for t in ot.TRT_TARGETS:
        assert "SCATTER_MEAN_LIKE" in codes(ot.trt_check(m, t), "warning")
    # dynamo's scatter_reduce(mean) -> reduction="none" with run-time indices
    m2 = _scatter_model("none", const_indices=False)
    for t in ot.TRT_TARGETS:
        assert "SCATTER_MEAN_LIKE" in codes(ot.trt_check(m2, t), "warning")


def _reduce_model(opset, op="ReduceMean"):
    inits = []
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"))
        node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=0, name="red")
    else:
        node = helper.make_node(op, ["x"], ["y"], axes=[1], keepdims=0, name="red")
    return _model([node], [helper.make_tensor_value_info("x", F, [1, 4, 3])],
                  [helper.make_tensor_value_info("y", F, [1, 3])], inits, opset=opset)


def test_reduce_axes_input_on_86():
    m = _reduce_model(18)
    ot.check_shapes(m)
    f = ot.trt_check(m, "8.6")
    assert {"OPSET_TOO_NEW", "REDUCE_AXES_INPUT"} <= codes(f, "error")
    assert next(x for x in f if x.code == "REDUCE_AXES_INPUT").node == "red"
    for op in ("ReduceMax", "ReduceL2"):
        assert "REDUCE_AXES_INPUT" in codes(ot.trt_check(_reduce_model(18, op), "8.6"))
    assert ot.trt_check(m, "10.3") == []
    assert ot.trt_check(_reduce_model(17), "8.6") == []
    # ReduceSum has taken a (constant) axes input since opset 13; the 8.x parser reads it
    assert ot.trt_check(_reduce_model(18, "ReduceSum"), "10.3") == []
    assert "REDUCE_AXES_INPUT" not in codes(ot.trt_check(_reduce_model(18, "ReduceSum"), "8.6"))


def test_symbolic_non_batch_dims():
    m = clean_model()
    ot.set_io_shapes(m, {"x": ["batch", 50, 8]})
    assert ot.trt_check(m, "8.6") == []  # symbolic batch is fine
    ot.set_io_shapes(m, {"x": ["batch", "tokens", 8]})
    f = [x for x in ot.trt_check(m, "8.6") if x.code == "DYNAMIC_DIM"]
    assert len(f) == 1 and f[0].level == "error" and f[0].node == "x" and "axis 1" in f[0].message


def test_control_flow_warning_and_layernorm():
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "t", [],
                               [helper.make_tensor_value_info("a", F, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "e", [],
                               [helper.make_tensor_value_info("b", F, [1, 4])])
    m = _model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")],
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
        opset=16,
    )
    for t in ot.TRT_TARGETS:
        f = ot.trt_check(m, t)
        assert codes(f) == {"CONTROL_FLOW"} and all(x.level == "warning" for x in f)

    ln = _model(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, name="ln")],
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "g"), numpy_helper.from_array(np.zeros(4, np.float32), "b")],
        opset=17,
    )
    assert "LAYERNORM_OP" in codes(ot.trt_check(ln, "8.5"), "error")
    assert ot.trt_check(ln, "8.6") == []


def test_unknown_target_and_recommended_opset(tmp_path):
    with pytest.raises(InputError, match="8.5") as ei:
        ot.trt_check(clean_model(), "7.1")
    assert "10.3" in str(ei.value)
    with pytest.raises(InputError):
        ot.recommended_opset("9.9")
    assert ot.recommended_opset("8.5") == 16
    assert ot.recommended_opset("8.6") == 17
    assert ot.recommended_opset("10.3") == 17
    assert ot.recommended_opset("10.3.0") == 17  # full version strings map to major.minor
    for t, spec in ot.TRT_TARGETS.items():
        assert ot.recommended_opset(t) <= spec["max_opset"]


def test_trt_check_from_path(tmp_path):
    p = tmp_path / "t.onnx"
    onnx.save_model(_topk_model(k=4000), str(p))
    f = ot.trt_check(p, "10.3")
    assert "TOPK_K_TOO_LARGE" in codes(f)
    assert isinstance(f[0], ot.Finding) and f[0].to_dict()["level"] in ("error", "warning")
