"""Tests for tokexport.onnx_tools, on tiny graphs built with onnx.helper (no torch)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tokexport import onnx_tools as ot
from tokexport.errors import InputError
from tokexport.targets import TARGET_NAMES

TARGETS = list(TARGET_NAMES)
TRT = [t for t in TARGETS if t != "onnxruntime"]

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
    inits = [
        w,
        sidx,
        numpy_helper.from_array(np.array([2], dtype=np.int64), "sq_axes"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "sq0"),
    ]
    if k_as_constant_node:
        nodes.insert(
            0,
            helper.make_node(
                "Constant", [], ["K"], value=numpy_helper.from_array(np.array([k], dtype=np.int64)), name="kconst"
            ),
        )
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


@pytest.mark.parametrize("target", TARGETS)
def test_clean_model_no_findings(target):
    m = clean_model()
    ot.check_shapes(m)
    assert ot.check_target(m, target).findings == []


def test_clean_model_runs_in_onnxruntime(tmp_path):
    m = clean_model()
    sess = ort.InferenceSession(m.SerializeToString())
    x = np.random.default_rng(1).standard_normal((1, 50, 8)).astype(np.float32)
    (kept,) = sess.run(None, {"x": x})
    assert kept.shape == (1, 10, 8)


def test_constant_node_k_is_constant(tmp_path):
    m = clean_model(k_as_constant_node=True, k=7)
    for t in TARGETS:
        assert ot.check_target(m, t).findings == []
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
    assert info["topk"] == [{"node": "topk", "k": 10, "k_constant": True, "largest": True, "sorted": True, "axis": -1}]
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
    assert info["topk"][0] == {
        "node": "t",
        "k": None,
        "k_constant": False,
        "largest": False,
        "sorted": False,
        "axis": 1,
    }


def _save_external(m, d, name="m.onnx"):
    p = d / name
    onnx.save_model(
        m, str(p), save_as_external_data=True, all_tensors_to_one_file=True, location=name + ".data", size_threshold=0
    )
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
    assert codes(ot.check_target(p, "8.5", lint=False).findings) == {"TOPK_K_EXTERNAL"}
    with pytest.raises(Exception, match="external"):
        ort.InferenceSession(str(p))
    p2 = tmp_path / "inline_k.onnx"
    onnx.save_model(
        clean_model(k=10), str(p2), save_as_external_data=True, location="inline_k.onnx.data", size_threshold=64
    )
    assert ot.check_target(p2, "8.5", lint=False).findings == []
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
    assert ot.check_target(m, "10.3", lint=False).findings and "DYNAMIC_DIM" in codes(
        ot.check_target(m, "10.3", lint=False).findings
    )
    ot.set_io_shapes(m, {"x": [1, 50, 8], "kept": [1, 10, 8]})
    ot.check_shapes(m)
    assert ot.check_target(m, "10.3", lint=False).findings == []
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


def check(m, target):
    return ot.check_target(m, target).findings


def test_opset_too_new():
    m = clean_model(opset=17)
    assert "OPSET_TOO_NEW" in codes(check(m, "tensorrt-8.5"), "error")
    assert check(m, "tensorrt-8.6") == []
    m18 = clean_model(opset=18)
    assert "OPSET_TOO_NEW" in codes(check(m18, "jetpack-6.0"), "error")
    assert check(m18, "tensorrt-10") == [] and check(m18, "onnxruntime") == []
    assert "OPSET_TOO_NEW" in codes(check(clean_model(opset=21), "jetpack-6.1"))


def test_topk_k_not_constant():
    m = _topk_model(k=None)
    assert "TOPK_K_NOT_CONSTANT" in codes(check(m, "jetpack-5.1"), "error")  # 8.5 importer: K must be an initializer
    for t in ("tensorrt-8.6", "tensorrt-10", "onnxruntime"):
        assert "TOPK_K_NOT_CONSTANT" in codes(check(m, t), "warning")


def test_topk_k_too_large():
    for t in TRT:
        f = check(_topk_model(k=4096), t)
        assert (
            "TOPK_K_TOO_LARGE" in codes(f, "error") and next(x for x in f if x.code == "TOPK_K_TOO_LARGE").node == "t"
        )
        assert "TOPK_K_TOO_LARGE" not in codes(check(_topk_model(k=3839), t))
    assert check(_topk_model(k=4096), "onnxruntime") == []  # a TensorRT limit only


def test_topk_unsorted_trt10_only():
    m = _topk_model(k=10, sorted_=0)
    assert "TOPK_UNSORTED" in codes(check(m, "jetpack-6.1"), "error")
    assert "TOPK_UNSORTED" not in codes(check(m, "tensorrt-8.6"))


def test_data_dependent_shape_ops():
    m = _model(
        [helper.make_node("NonZero", ["x"], ["nz"], name="nz"), helper.make_node("Unique", ["x"], ["u"], name="uq")],
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("nz", I64, [2, 3]), helper.make_tensor_value_info("u", F, [3])],
    )
    for t in TARGETS:
        f = check(m, t)
        nodes = {x.node for x in f if x.code == "DATA_DEPENDENT_SHAPE" and x.level == "error"}
        assert nodes == {"nz", "uq"}
        assert all(x.fix for x in f)
    assert "UNSUPPORTED_OP" in codes(check(m, "tensorrt-10"))  # Unique has no TensorRT importer at all


def _scatter_model(reduction, const_indices=True, then_div=False, op="ScatterElements"):
    inits = [numpy_helper.from_array(np.zeros((1, 4), dtype=np.float32), "base")]
    inputs = [helper.make_tensor_value_info("upd", F, [1, 4])]
    ind = np.array([[0, 1, 1, 2]], dtype=np.int64) if op == "ScatterElements" else np.array([[0]], dtype=np.int64)
    if const_indices:
        inits.append(numpy_helper.from_array(ind, "ind"))
    else:
        inputs.append(helper.make_tensor_value_info("ind", I64, list(ind.shape)))
    attrs = {"axis": 1} if op == "ScatterElements" else {}
    nodes = [helper.make_node(op, ["base", "ind", "upd"], ["y"], reduction=reduction, name="sc", **attrs)]
    out = "y"
    if then_div:
        inits.append(numpy_helper.from_array(np.full((1, 4), 2.0, dtype=np.float32), "cnt"))
        nodes.append(helper.make_node("Div", ["y", "cnt"], ["z"], name="div"))
        out = "z"
    return _model(nodes, inputs, [helper.make_tensor_value_info(out, F, [1, 4])], inits, opset=16)


def test_scatter_reduction():
    m = _scatter_model("add")
    for t in ("tensorrt-8.5", "jetpack-6.0"):
        assert "SCATTER_REDUCTION_IGNORED" in codes(check(m, t), "error")
    assert check(m, "tensorrt-10") == []  # 10.x imports ScatterElements reductions (plugin)
    assert check(_scatter_model("none"), "tensorrt-8.5") == []  # plain constant-index assignment
    nd = _scatter_model("add", op="ScatterND")
    assert "SCATTER_ND_REDUCTION" in codes(check(nd, "tensorrt-10"), "error")


def test_scatter_mean_is_flagged_on_every_target():
    m = _scatter_model("add", then_div=True)  # scatter-add then divide by counts: a scatter mean
    for t in TARGETS:
        assert "SCATTER_MEAN_LIKE" in codes(check(m, t))
    # dynamo's scatter_reduce(mean) -> reduction="none" with run-time indices
    m2 = _scatter_model("none", const_indices=False)
    for t in TARGETS:
        assert "SCATTER_MEAN_LIKE" in codes(check(m2, t), "warning")


def _reduce_model(opset, op="ReduceMean"):
    inits = []
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"))
        node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=0, name="red")
    else:
        node = helper.make_node(op, ["x"], ["y"], axes=[1], keepdims=0, name="red")
    return _model(
        [node],
        [helper.make_tensor_value_info("x", F, [1, 4, 3])],
        [helper.make_tensor_value_info("y", F, [1, 3])],
        inits,
        opset=opset,
    )


def test_reduce_axes_input_on_86():
    m = _reduce_model(18)
    ot.check_shapes(m)
    f = check(m, "tensorrt-8.6")
    assert {"OPSET_TOO_NEW", "REDUCE_AXES_INPUT"} <= codes(f, "error")
    assert next(x for x in f if x.code == "REDUCE_AXES_INPUT").node == "red"
    for op in ("ReduceMax", "ReduceL2"):
        assert "REDUCE_AXES_INPUT" in codes(check(_reduce_model(18, op), "jetpack-6.0"))
    assert check(m, "tensorrt-10") == []
    assert check(_reduce_model(17), "tensorrt-8.6") == []
    # ReduceSum has taken a (constant) axes input since opset 13; the 8.x parser reads it
    assert check(_reduce_model(18, "ReduceSum"), "tensorrt-10") == []
    assert "REDUCE_AXES_INPUT" not in codes(check(_reduce_model(18, "ReduceSum"), "tensorrt-8.6"))


def test_einsum_forms_on_8x():
    def einsum(eq, shapes, out):
        ins = [helper.make_tensor_value_info(f"i{k}", F, s) for k, s in enumerate(shapes)]
        return _model(
            [helper.make_node("Einsum", [f"i{k}" for k in range(len(shapes))], ["y"], equation=eq, name="es")],
            ins,
            [helper.make_tensor_value_info("y", F, out)],
            opset=16,
        )

    ok = einsum("bij,bjk->bik", [[1, 2, 3], [1, 3, 4]], [1, 2, 4])
    diag = einsum("bii->bi", [[1, 3, 3]], [1, 3])
    ell = einsum("...ij,...jk->...ik", [[1, 2, 3], [1, 3, 4]], [1, 2, 4])
    for t in ("tensorrt-8.5", "tensorrt-8.6"):
        assert check(ok, t) == []
        assert "EINSUM_FORM" in codes(check(diag, t), "error") and "EINSUM_FORM" in codes(check(ell, t), "error")
    assert check(diag, "tensorrt-10") == [] and check(ell, "jetpack-6.1") == []


def test_resize_modes():
    def resize(mode, scales):
        return _model(
            [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode=mode, name="rs")],
            [helper.make_tensor_value_info("x", F, [1, 2, 4, 4])],
            [helper.make_tensor_value_info("y", F, [1, 2, 8, 8])],
            [numpy_helper.from_array(np.array(scales, np.float32), "sc")],
        )

    assert check(resize("cubic", [1, 1, 2, 2]), "tensorrt-8.6") == []  # DINOv2's position-embedding resize
    assert "RESIZE_MODE" in codes(check(resize("cubic", [1, 2, 2, 2]), "tensorrt-8.6"), "error")
    assert "RESIZE_MODE" not in codes(check(resize("cubic", [1, 2, 2, 2]), "onnxruntime"))


def test_symbolic_non_batch_dims():
    m = clean_model()
    ot.set_io_shapes(m, {"x": ["batch", 50, 8]})
    assert check(m, "tensorrt-8.6") == []  # symbolic batch is fine
    ot.set_io_shapes(m, {"x": ["batch", "tokens", 8]})
    for t in TARGETS:
        f = [x for x in check(m, t) if x.code == "DYNAMIC_DIM"]
        assert len(f) == 1 and f[0].level == "error" and f[0].node == "x" and "axis 1" in f[0].message


def test_control_flow_error_and_layernorm():
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a"])], "t", [], [helper.make_tensor_value_info("a", F, [1, 4])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["b"])], "e", [], [helper.make_tensor_value_info("b", F, [1, 4])]
    )
    m = _model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")],
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
        opset=16,
    )
    for t in TRT:
        f = check(m, t)
        assert codes(f) == {"CONTROL_FLOW"} and all(x.level == "error" for x in f)
    assert check(m, "onnxruntime") == []

    ln = _model(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, name="ln")],
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "g"), numpy_helper.from_array(np.zeros(4, np.float32), "b")],
        opset=16,
    )
    f = check(ln, "jetpack-5.1")
    assert "UNSUPPORTED_OP" in codes(f, "error") and "opset <= 16" in next(x.fix for x in f if x.node == "ln")
    assert check(ln, "tensorrt-8.6") == []


def test_custom_domain_op():
    m = _model(
        [helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft", name="fg")],
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
    )
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for t in TRT:
        assert "CUSTOM_OP" in codes(check(m, t), "error")
    assert check(m, "onnxruntime") == []


def test_unknown_target(tmp_path):
    with pytest.raises(InputError, match="unknown target 'jetpack-4.6'.*jetpack-6.0"):
        ot.check_target(clean_model(), "jetpack-4.6")


def test_check_target_from_path_with_lint(tmp_path):
    p = tmp_path / "t.onnx"
    onnx.save_model(_topk_model(k=4000), str(p))
    res = ot.check_target(p, "tensorrt-10")
    assert "TOPK_K_TOO_LARGE" in codes(res.findings) and not res.passed
    d = res.to_dict()
    assert d["target"] == "tensorrt-10" and d["tensorrt"] == "10.3" and d["errors"] == len(res.errors)
    assert d["lint"]["ran"] is True and d["lint"]["failing_nodes"] == []  # ONNX Runtime runs it fine
    assert isinstance(res.findings[0], ot.Finding) and res.findings[0].to_dict()["level"] in ("error", "warning")


def test_lint_in_process_reports_what_the_polygraphy_cli_reports(tmp_path, monkeypatch):
    """polygraphy check lint runs in this process (its CLI entry point; the subprocess spends ~2 s on imports):
    same summary and findings as the subprocess, on a graph that lints clean and on one it rejects."""
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save_model(_topk_model(k=4), str(good))
    m = _topk_model(k=4)
    m.graph.node[0].op_type = "NoSuchOperator"  # the ONNX checker and ONNX Runtime both refuse it
    onnx.save_model(m, str(bad))
    inproc = {p: ot.polygraphy_lint(p) for p in (good, bad)}
    calls = []
    monkeypatch.setattr(ot.lint, "_lint_in_process", lambda p, o: calls.append(p) or False)
    sub = {p: ot.polygraphy_lint(p) for p in (good, bad)}
    assert calls == [good, bad]
    for p in (good, bad):
        assert inproc[p][0] == sub[p][0]
        assert [(f.level, f.code, f.message) for f in inproc[p][1]] == [(f.level, f.code, f.message) for f in sub[p][1]]
    assert inproc[good][0]["ran"] and not inproc[good][1]
    assert inproc[bad][0]["ran"] and any(f.level == "error" for f in inproc[bad][1])


# ---------------------------------------------------------------- shape checks without the weights' bytes


def _weighted(declared_rows: int = 24) -> onnx.ModelProto:
    """MatMul by a weight larger than the skeleton limit, then a Reshape by a small constant target."""
    w = numpy_helper.from_array(np.random.default_rng(0).random((256, 512), dtype=np.float32), "W")
    s = numpy_helper.from_array(np.array([0, -1, 64], dtype=np.int64), "S")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Reshape", ["y", "S"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 256])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", declared_rows, 64])],
        [w, s],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_check_shapes_reads_no_weight_bytes_and_leaves_the_model_alone():
    m = _weighted()
    before = m.SerializeToString()
    inferred = ot.check_shapes(m)
    assert m.SerializeToString() == before
    assert len(ot.shapes._skeleton(m).SerializeToString()) < 4096 < len(before)  # the weight is not copied
    shapes = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info
    }
    assert shapes["y"] == ["b", 3, 512]


def test_check_shapes_still_catches_a_wrong_declaration_a_wrong_weight_and_short_bytes():
    with pytest.raises(ValueError, match="Reshape"):
        ot.check_shapes(_weighted(declared_rows=25))  # the small constant target is still read
    m = _weighted()
    m.graph.initializer[0].dims[0] = 255
    with pytest.raises(ValueError, match="holds 524288 bytes"):
        ot.check_shapes(m)
    m = _weighted()
    m.graph.initializer[0].dims[:] = [255, 512]
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[: 255 * 512 * 4]
    with pytest.raises(ValueError, match="MatMul"):
        ot.check_shapes(m)  # consistent bytes, incompatible with x: shape inference sees the moved tensor's dims
