"""Targets: the JetPack -> TensorRT table, recipes naming targets (and the deprecated trt_target), the
check-target command on planted bad graphs for every target, and the shipped recipes' real exports."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import REPO
from onnx import TensorProto, helper, numpy_helper
from test_cli_bad_input import assert_one_line_error, run_cli, write

from tokexport import targets
from tokexport.onnx_tools import check_target
from tokexport.recipe import load_recipe

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def test_jetpack_table():
    want = {
        "jetpack-5.1": ("8.5.2", 16),
        "jetpack-6.0": ("8.6.2", 17),
        "jetpack-6.1": ("10.3", 17),
        "tensorrt-8.5": ("8.5.2", 16),
        "tensorrt-8.6": ("8.6.2", 17),
        "tensorrt-10": ("10.3", 17),
        "tensorrt-10.16": ("10.16.1", 17),
        "tensorrt-11": ("11.5", 17),
        "jetpack-7.0": ("10.13", 17),
        "onnxruntime": (None, 17),
    }
    assert set(targets.TARGET_NAMES) == set(want)
    for name, (trt, opset) in want.items():
        t = targets.resolve(name)
        assert (t.name, t.tensorrt, t.opset) == (name, trt, opset) and t.opset <= t.max_opset
    assert "LayerNormalization" not in targets.resolve("jetpack-5.1").ops  # operators.md 8.5: N
    assert "LayerNormalization" in targets.resolve("jetpack-6.0").ops
    assert targets.resolve("8.6").name == "tensorrt-8.6"  # legacy trt_target values


def _recipe_text(export: str) -> str:
    return f"model: dinov2-small\nreduction: {{method: random, prune_layers: [2], keep_rate: 0.5}}\nexport: {export}\n"


def test_recipe_targets(tmp_path, caplog):
    r = load_recipe(write(tmp_path, _recipe_text("{target: jetpack-5.1}")))
    assert (r.export.target, r.export.opset, r.export.trt_target) == ("jetpack-5.1", 16, "8.5")
    r = load_recipe(write(tmp_path, _recipe_text('{trt_target: "10.3"}')))
    assert r.export.target == "tensorrt-10" and "export.trt_target is deprecated" in caplog.text
    for shipped in sorted((REPO / "recipes").glob("dinov2-small-*.yaml")) + sorted(
        (REPO / "recipes" / "tiny").glob("*.yaml")
    ):
        assert "trt_target" not in shipped.read_text(), shipped
        assert load_recipe(shipped).export.target in targets.TARGET_NAMES


@pytest.mark.parametrize(
    "export,needles",
    [
        ("{target: jetpack-4.6}", ["export.target", "jetpack-6.0"]),
        ("{target: jetpack-5.1, opset: 17}", ["export", "opset 17 does not fit target jetpack-5.1", "TensorRT 8.5"]),
        ('{target: tensorrt-8.6, trt_target: "8.6"}', ["export.target only"]),
    ],
)
def test_recipe_target_errors_are_one_line(tmp_path, export, needles):
    out = tmp_path / "out"
    res = run_cli("convert", str(write(tmp_path, _recipe_text(export))), "--out", str(out))
    assert_one_line_error(res, *needles)
    assert not out.exists()


def _model(nodes, inputs, outputs, inits=(), opset=16):
    m = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, list(inits)), opset_imports=[helper.make_opsetid("", opset)]
    )
    m.ir_version = 8
    return m


def planted():
    """The issue's bad graphs: TopK K=4096, a NonZero, opset-18 ReduceMean, a ScatterElements mean."""
    x = helper.make_tensor_value_info("x", F, [1, 5000])
    topk = _model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")],
        [x],
        [helper.make_tensor_value_info("i", I64, [1, 4096])],
        [numpy_helper.from_array(np.array([4096]), "k")],
    )
    nonzero = _model(
        [helper.make_node("NonZero", ["x"], ["nz"], name="nonzero")],
        [x],
        [helper.make_tensor_value_info("nz", I64, [2, "n"])],
    )
    reduce18 = _model(
        [helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=0, name="mean")],
        [x],
        [helper.make_tensor_value_info("y", F, [1])],
        [numpy_helper.from_array(np.array([1]), "ax")],
        opset=18,
    )
    scatter = _model(
        [
            helper.make_node("ScatterElements", ["z", "idx", "u"], ["s"], axis=1, reduction="add", name="scatter"),
            helper.make_node("Div", ["s", "cnt"], ["mean"], name="div"),
        ],
        [helper.make_tensor_value_info("u", F, [1, 4]), helper.make_tensor_value_info("idx", I64, [1, 4])],
        [helper.make_tensor_value_info("mean", F, [1, 4])],
        [
            numpy_helper.from_array(np.zeros((1, 4), np.float32), "z"),
            numpy_helper.from_array(np.full((1, 4), 2.0, np.float32), "cnt"),
        ],
    )
    return {"topk": topk, "nonzero": nonzero, "mean": reduce18, "scatter": scatter}


# which target flags which planted node (ONNX Runtime runs TopK 4096 and opset-18 ReduceMean correctly)
FLAGGED = {
    "topk": {t for t in targets.TARGET_NAMES if t != "onnxruntime"},
    "nonzero": set(targets.TARGET_NAMES),
    "mean": {"tensorrt-8.5", "tensorrt-8.6", "jetpack-5.1", "jetpack-6.0"},
    "scatter": set(targets.TARGET_NAMES),
}


@pytest.mark.parametrize("target", targets.TARGET_NAMES)
def test_each_target_flags_planted_graphs(target):
    for node, m in planted().items():
        res = check_target(m, target)
        named = {f.node for f in res.findings}
        assert (node in named) == (target in FLAGGED[node]), (node, target, [str(f) for f in res.findings])
    assert "REDUCE_AXES_INPUT" in {f.code for f in check_target(planted()["mean"], "tensorrt-8.6").findings}


def test_check_target_command(tmp_path):
    bad = tmp_path / "bad.onnx"
    onnx.save_model(planted()["topk"], str(bad))
    res = run_cli("check-target", str(bad), "--target", "jetpack-6.0", "--json")
    assert res.returncode == 9, res.stderr
    rep = json.loads(res.stdout)
    assert rep["target"] == "jetpack-6.0" and rep["tensorrt"] == "8.6.2" and not rep["passed"]
    f = next(f for f in rep["findings"] if f["code"] == "TOPK_K_TOO_LARGE")
    assert f["node"] == "topk" and f["fix"] and rep["lint"]["ran"]
    res = run_cli("check-target", str(bad), "--target", "onnxruntime", "--no-lint")
    assert res.returncode == 0 and "PASS" in res.stdout
    assert_one_line_error(run_cli("check-target", str(bad), "--target", "tensorrt-7"), "unknown target")
    (tmp_path / "x.onnx").write_text("not a model")
    assert_one_line_error(run_cli("check-target", str(tmp_path / "x.onnx")), "x.onnx", "ONNX")


def test_tiny_recipe_export_passes_its_target(tiny_models, tmp_path):
    """The visual-token graph of recipes/tiny (fopru-rank, HiRED) on a tiny tower, checked like convert does."""
    import torch

    from tokexport.export import export_onnx
    from tokexport.load import load_model
    from tokexport.vlm.graph import VisualTokenGraph
    from tokexport.vlm.select import VISUAL_METHODS, VisualLayout

    lm = load_model(str(tiny_models["clip-vision"]), tiny_models["clip-vision"].parent, task="feature-extraction")
    n = lm.image_size // lm.adapter.patch_size
    for name, views, sub in (("fopru-rank", 1, None), ("hired", 5, (2, 2))):
        rec = load_recipe(
            REPO
            / "recipes"
            / "tiny"
            / ("llava-1.5-tiny-fopru-rank.yaml" if name == "fopru-rank" else "llava-next-tiny-hired.yaml")
        )
        lay = VisualLayout(views=views, grid=(n, n), sub_grid=sub)
        sel = VISUAL_METHODS[name](rec.reduction)
        graph = VisualTokenGraph(
            lm.model, lm.adapter, lay, lm.image_size, -2, "default", None, sel, sel.config.resolve_k(lay)
        )
        x = torch.randn(1, views, 3, lm.image_size, lm.image_size)

        def fn(v, graph=graph):
            t, p = graph(v)
            return {"visual_tokens": t, "positions": p}

        path = tmp_path / f"{name}.onnx"
        export_onnx(graph, fn, x, path, rec.export.opset, dynamic_batch=True)
        res = check_target(path, rec.export.target, lint=False)
        assert res.passed, [str(f) for f in res.findings]
        assert check_target(path, "tensorrt-10", lint=False).passed
