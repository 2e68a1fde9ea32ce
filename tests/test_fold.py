"""export.fold (tokexport.fold): exported graphs lose the shape arithmetic that is constant for their
static shapes, keep their dynamic batch, and parity is checked on the folded graph."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tokexport.fold import fold_graph
from tokexport.onnx_tools import check_target
from tokexport.recipe import validate_recipe
from tokexport.tasks.run import run

# a real floor: the tiny DINOv2's reduced features measure >= 0.99 against the original's
ACC = {
    "parity": {"samples": 2},
    "accuracy": {"samples_per_class": 1, "prototypes_per_class": 1, "metrics": {"feature_cosine": {"min": 0.9}}},
}


def _convert(tiny_models, tmp_path, name: str, **export):
    data = {
        "model": str(tiny_models["dinov2"]),
        "export": {"image_size": 56, "target": "jetpack-6.0", **export},
        "reduction": {"method": "zero-tprune", "prune_layers": [1, 2], "keep_rate": [0.5, 0.5]},
        "verify": ACC,
        "bench": {"enabled": False},
        "deploy": {"bundle": False},
    }
    out = tmp_path / name
    res = run(validate_recipe(f"{name}.yaml", data), tmp_path, out, label=name)
    return res, out


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)


def _ort(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"pixel_values": x})


def test_static_batch_graph_has_no_shape_arithmetic_left(tiny_models, tmp_path):
    res, out = _convert(tiny_models, tmp_path, "static", batch=2)
    assert res.exit_code == 0, res.report["failures"]
    nodes = res.report["export"]["nodes"]
    for name in ("model", "baseline"):
        assert nodes[name]["folded"] < nodes[name]["exported"], nodes
        ops = _ops(out / f"{name}.onnx")
        assert sum(ops.values()) == nodes[name]["folded"]
        # every Shape (and the position-embedding Resize) is constant for a static graph: folded away
        assert ops["Shape"] == 0 and ops["Resize"] == 0 and ops["ConstantOfShape"] == 0, (name, ops)
    # parity ran on the folded graphs (the files written are the ones the driver compared)
    assert res.report["parity"]["passed"] and res.report["parity_baseline"]["passed"]
    assert res.report["export"]["fold"] is True and res.report["export"]["precision"] == "fp32"
    assert res.report["trt_check"]["errors"] == 0, res.report["trt_check"]["findings"]
    assert check_target(out / "baseline.onnx", "jetpack-6.0", lint=False).to_dict()["errors"] == 0


def test_dynamic_batch_survives_folding_and_matches_unfolded(tiny_models, tmp_path):
    res, out = _convert(tiny_models, tmp_path, "folded")
    assert res.exit_code == 0, res.report["failures"]
    res_raw, raw = _convert(tiny_models, tmp_path, "raw", fold=False)
    assert res_raw.exit_code == 0
    assert res_raw.report["export"]["fold"] is False and "nodes" not in res_raw.report["export"]
    for name in ("model", "baseline"):
        folded, unfolded = _ops(out / f"{name}.onnx"), _ops(raw / f"{name}.onnx")
        assert sum(folded.values()) < sum(unfolded.values())
        assert folded["Shape"] < unfolded["Shape"], (folded["Shape"], unfolded["Shape"])
        g = onnx.load(out / f"{name}.onnx", load_external_data=False).graph
        assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        for b in (1, 3):  # the batch is still dynamic, and the numbers are the unfolded graph's
            x = np.random.default_rng(b).standard_normal((b, 3, 56, 56)).astype(np.float32)
            for a, e in zip(_ort(out / f"{name}.onnx", x), _ort(raw / f"{name}.onnx", x)):
                assert a.shape == e.shape and a.shape[0] == b
                np.testing.assert_allclose(a, e, atol=1e-4, rtol=0)


def _reshape_graph() -> onnx.ModelProto:
    """x [batch, 4, 6] -> Reshape(x, [Shape(x)[0], 24]) -> Mul by a constant: the exporter's pattern."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
        helper.make_node("Concat", ["b1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Mul", ["r", "two"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([24], np.int64), "rest"),
        numpy_helper.from_array(np.full((24,), 2.0, np.float32), "two"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 24])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_batch_reshape_gets_a_constant_target(tmp_path):
    m = _reshape_graph()
    f = fold_graph(m, tmp_path)
    ops = Counter(n.op_type for n in f.graph.node)
    assert ops["Shape"] == 0 and ops["Gather"] == 0 and ops["Concat"] == 0, ops
    reshape = next(n for n in f.graph.node if n.op_type == "Reshape")
    target = {t.name: numpy_helper.to_array(t) for t in f.graph.initializer}[reshape.input[1]]
    assert target.tolist() in ([-1, 24], [0, 24])  # -1: inferred; 0: copied from x (ONNX Runtime's own rewrite)
    assert f.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert list(tmp_path.iterdir()) == []  # ONNX Runtime's temporary file is gone
    for b in (1, 5):
        x = np.random.default_rng(b).standard_normal((b, 4, 6)).astype(np.float32)
        (y,) = ort.InferenceSession(f.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        np.testing.assert_array_equal(y, x.reshape(b, 24) * 2)


def test_fold_refuses_non_standard_domains(tmp_path, monkeypatch):
    import tokexport.fold as F

    def contrib(model, workdir):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.node[-1].domain = "com.microsoft"
        return out

    monkeypatch.setattr(F, "_ort_basic", contrib)
    with pytest.raises(F.FoldError, match="com.microsoft"):
        fold_graph(_reshape_graph(), tmp_path)


def test_symbolic_pass_alone_rewrites_the_batch_reshape():
    import tokexport.fold as F

    m = _reshape_graph()
    assert F.fold_static_shapes(m) == (0, 1)  # nothing static to fold, one batch reshape
    F.drop_dead(m)
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops == Counter({"Reshape": 1, "Mul": 1}), ops
    reshape = m.graph.node[0]
    assert {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}[reshape.input[1]].tolist() == [-1, 24]
    x = np.ones((3, 4, 6), np.float32)
    (y,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == (3, 24)
