"""Current TensorRT targets (docs/tensorrt.md cites NVIDIA's page for each): TensorRT 10.16 (newest
10.x), TensorRT 11 (strongly typed only) and JetPack 7.0 (TensorRT 10.13); each passes check-target
on a tiny graph, and each bundle's build_engine.sh builds the way that TensorRT requires: --fp16 on
weakly typed TensorRT, --stronglyTyped and never --fp16 on TensorRT 11 or for an fp16 graph on 10.x."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli_bad_input import run_cli
from test_deploy import tiny_model

from tokexport import targets
from tokexport.deploy import graph_precision, strongly_typed_build, trtexec_command
from tokexport.onnx_tools import check_target
from tokexport.recipe import load_recipe

NEW = ("tensorrt-10.16", "tensorrt-11", "jetpack-7.0")


def fp16_model(path):
    """y = x @ W (float16 weights and I/O), the shape of an `export.precision: fp16` graph."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float16), "W")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "h",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 6, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 6, 3])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path


def test_new_targets_table():
    t10, t11, jp7 = (targets.resolve(n) for n in NEW)
    assert (t10.tensorrt, t10.strongly_typed, t10.max_opset) == ("10.16.1", False, 20)
    assert (t11.tensorrt, t11.strongly_typed, t11.max_opset, t11.opset) == ("11.5", True, 24, 17)
    assert "Swish" in t11.ops and "Swish" not in t10.ops  # the 11.0 parser added Swish
    assert (jp7.tensorrt, jp7.jetpack, jp7.strongly_typed) == ("10.13", "7.0/7.1", False)
    assert jp7.label == "jetpack-7.0 (TensorRT 10.13, JetPack 7.0/7.1)"
    assert targets.resolve("jetpack-6.1").tensorrt == "10.3"  # the profile's own version is untouched
    assert targets.resolve("tensorrt-11").to_dict()["strongly_typed"] is True


@pytest.mark.parametrize("name", NEW)
def test_new_targets_check_a_tiny_graph(tmp_path, name):
    src = tiny_model(tmp_path / "m.onnx", external=False)
    res = check_target(src, name, lint=False)
    assert res.passed and not res.errors, [str(f) for f in res.findings]
    out = run_cli("check-target", str(src), "--target", name, "--json", "--no-lint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["target"] == name


def test_recipe_accepts_new_targets(tmp_path):
    for name in NEW:
        p = tmp_path / f"{name}.yaml"
        p.write_text(
            f"model: dinov2-small\nreduction: {{method: random, prune_layers: [2], keep_rate: 0.5}}\n"
            f"export: {{target: {name}}}\n"
        )
        r = load_recipe(p)
        assert (r.export.target, r.export.opset) == (name, 17)


def test_trtexec_command_strongly_typed():
    shapes = {"x": ["batch", 6, 4]}
    weak = trtexec_command("m.onnx", "m.engine", shapes, fp16=True, batch=(1, 1, 8))
    strong = trtexec_command("m.onnx", "m.engine", shapes, fp16=True, batch=(1, 1, 8), strongly_typed=True)
    assert weak.endswith("--fp16") and "--stronglyTyped" not in weak
    assert strong.endswith("--stronglyTyped") and "--fp16" not in strong
    assert "--fp16" not in trtexec_command("m.onnx", "m.engine", shapes, fp16=False, batch=(1, 1, 8))


def test_strongly_typed_rule():
    t = targets.resolve
    assert strongly_typed_build(t("tensorrt-11"), "fp32") and strongly_typed_build(t("tensorrt-11"), "fp16")
    assert not strongly_typed_build(t("tensorrt-10.16"), "fp32") and strongly_typed_build(t("tensorrt-10.16"), "fp16")
    assert strongly_typed_build(t("jetpack-7.0"), "fp16") and not strongly_typed_build(t("jetpack-7.0"), "fp32")
    assert not strongly_typed_build(t("jetpack-6.0"), "fp16")  # TensorRT 8.6: weak typing, as before


# target -> (graph, --fp16 expected, --stronglyTyped expected)
CASES = {
    "jetpack-6.0": ("fp32", True, False),
    "tensorrt-10.16": ("fp32", True, False),
    "jetpack-7.0": ("fp32", True, False),
    "tensorrt-11": ("fp32", False, True),
    "tensorrt-11/fp16": ("fp16", False, True),
    "tensorrt-10.16/fp16": ("fp16", False, True),
}


@pytest.mark.parametrize("case", CASES)
def test_build_engine_sh_per_target(tmp_path, case):
    target = case.split("/")[0]
    precision, want_fp16, want_strong = CASES[case]
    src = (fp16_model if precision == "fp16" else lambda p: tiny_model(p, external=False))(tmp_path / "src" / "m.onnx")
    assert graph_precision(src) == precision
    out = tmp_path / "b"
    res = run_cli("bundle", str(out), "--from", str(src), "--target", target)
    assert res.returncode == 0, res.stdout + res.stderr
    script = (out / "build_engine.sh").read_text()
    line = next(ln for ln in script.splitlines() if "--saveEngine=model.engine" in ln)
    assert ("--fp16" in line) == want_fp16 and ("--stronglyTyped" in line) == want_strong, line
    if want_strong:
        assert f"model.onnx is an {precision} graph; built strongly typed" in script
    man = json.loads((out / "manifest.json").read_text())
    assert man["models"]["model"]["precision"] == precision
    assert man["models"]["model"]["strongly_typed"] is want_strong
    assert man["target"]["name"] == target
