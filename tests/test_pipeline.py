"""The whole convert pipeline on tiny random checkpoints (fast), and its exit codes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image
from test_cli_bad_input import assert_nothing_written, recipe, run_cli, write

from tokexport.outdir import write_marker
from tokexport.pipeline import convert


def _imagefolder(root):
    rng = np.random.default_rng(0)
    for c in range(3):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_classifier_end_to_end(tmp_path, tiny_models):
    folder = _imagefolder(tmp_path / "folder")
    r = recipe(
        tiny_models["vit-classifier"],
        **{
            "reduction.method": "zero-tprune",
            "verify.accuracy.imagefolder": str(folder),
            # real floors on the tiny random classifier (measured: cosine 0.98, top-1 agreement 0.89); the random
            # ImageFolder photos carry no class, so imagefolder_top1 is measured and reported but not gated
            "verify.accuracy.metrics": {"feature_cosine": {"min": 0.9}, "top1_agreement": {"min": 0.5}},
            "bench": {"enabled": True, "batch_sizes": [1, 2], "warmup": 1, "repeats": 2},
        },
    )
    res = convert(write(tmp_path, r), tmp_path / "out")
    assert res.exit_code == 0, res.report["failures"]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "baseline.onnx", "report.json", "report.md"}
    rep = json.loads((out / "report.json").read_text())
    # the documented report contract
    assert rep["model"]["family"] == "vit" and rep["model"]["params"] > 0
    assert [s["tokens_out"] for s in rep["reduction"]["schedule"]] == [9, 5]  # 16 patches -> 8 -> 4, + CLS
    assert rep["artifacts"]["onnx"] == "model.onnx" and len(rep["artifacts"]["onnx_sha256"]) == 64
    assert rep["parity"]["passed"] and rep["parity"]["max_abs_diff"] <= rep["parity"]["atol"]
    assert set(rep["accuracy"]["metrics"]) == {"feature_cosine", "instance_top1", "top1_agreement", "imagefolder_top1"}
    for m in rep["accuracy"]["metrics"].values():
        assert set(m) == {"original", "reduced", "delta", "better", "threshold", "passed"}
    assert rep["accuracy"]["metrics"]["imagefolder_top1"]["passed"] is None  # no threshold: never counted as passed
    assert set(rep["bench"]["batches"]) == {"1", "2"}
    for b in rep["bench"]["batches"].values():
        assert b["baseline_ms"] > 0 and b["reduced_ms"] > 0 and b["speedup"] > 0
    fl = rep["bench"]["flops"]
    assert fl["reduced"] < fl["baseline"] and fl["predicted_speedup"] > 1
    assert rep["passed"] is True
    assert "PASS" in (out / "report.md").read_text()
    # no TensorRT here: a deploy bundle that verifies itself (sha256, then ONNX Runtime vs expected outputs)
    assert rep["deploy"]["kind"] == "bundle"
    manifest = json.loads((out / "deploy" / "manifest.json").read_text())
    assert manifest["tokexport_version"] and (out / "deploy" / "build_engine.sh").is_file()
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(out / "deploy" / "verify_on_device.py")], capture_output=True, text=True)
    assert res.returncode == 0 and "PASS" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    # the reduced graph really is smaller in tokens than the baseline
    assert rep["export"]["outputs"]["logits"] == ["batch", 5]


@pytest.mark.parametrize("kind", ["deit-teacher", "dinov2", "vit"])
def test_other_families_fixed_batch(tmp_path, tiny_models, kind):
    r = recipe(tiny_models[kind], **{"reduction.method": "random", "export.batch": 2})
    res = convert(write(tmp_path, r), tmp_path / "out")
    assert res.exit_code == 0, res.report["failures"]
    g = onnx.load(tmp_path / "out" / "model.onnx").graph
    assert g.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_parity_failure_exit_3_and_report_says_fail(tmp_path, tiny_models):
    r = recipe(tiny_models["dinov2"], **{"verify.parity": {"atol": 1e-30, "mean_atol": 1e-30, "samples": 2}})
    out = tmp_path / "out"
    res = run_cli("convert", str(write(tmp_path, r)), "--out", str(out))
    assert res.returncode == 3, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] is False and rep["parity"]["passed"] is False
    assert "FAIL" in res.stdout


def test_accuracy_failure_exit_4(tmp_path, tiny_models):
    r = recipe(tiny_models["dinov2"], **{"verify.accuracy.metrics": {"feature_cosine": {"min": 1.5}}})
    out = tmp_path / "out"
    res = run_cli("convert", str(write(tmp_path, r)), "--out", str(out))
    assert res.returncode == 4, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["parity"]["passed"] and not rep["accuracy"]["passed"]
    assert rep["accuracy"]["metrics"]["feature_cosine"]["passed"] is False


def test_force_replaces_and_bad_imagefolder_leaves_nothing(tmp_path, tiny_models):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    p = write(tmp_path, recipe(tiny_models["dinov2"]))
    res = run_cli("convert", str(p), "--out", str(out), "--force")  # not written by tokexport: refused
    assert res.returncode == 2 and "--force" in res.stderr and (out / "old.txt").exists(), res.stderr
    write_marker(out, "convert")  # a tokexport output is replaced
    res = run_cli("convert", str(p), "--out", str(out), "--force")
    assert res.returncode == 0, res.stderr
    assert not (out / "old.txt").exists() and (out / "report.json").exists()
    # a bad ImageFolder path on a classifier: one-line error, nothing written
    out2 = tmp_path / "out2"
    r = recipe(tiny_models["vit-classifier"], **{"verify.accuracy.imagefolder": "missing-folder"})
    res = run_cli("convert", str(write(tmp_path, r, "r2.yaml")), "--out", str(out2))
    assert res.returncode == 2 and "verify.accuracy.imagefolder" in res.stderr
    assert_nothing_written(out2)


def test_inspect_and_schema(tmp_path, tiny_models):
    r = recipe(tiny_models["dinov2"], **{"reduction.method": "zero-tprune"})
    out = tmp_path / "out"
    assert run_cli("convert", str(write(tmp_path, r)), "--out", str(out)).returncode == 0
    res = run_cli("inspect", str(out / "model.onnx"), "--json")
    info = json.loads(res.stdout)
    assert info["opset"] == 17
    ks = sorted(k["k"] for k in info["topk"])
    assert 8 in ks and 4 in ks  # the final keep counts of both stages are constant Ks
    assert "NonZero" not in info["op_histogram"]
    res = run_cli("inspect", str(out / "model.onnx"))
    assert res.returncode == 0 and "TopK" in res.stdout
    schema = json.loads(run_cli("recipes", "schema").stdout)
    assert "reduction" in schema["$defs"]["ViTRecipe"]["properties"]
    assert {"zero-tprune", "topk-cls", "random"} <= set(json.dumps(schema).replace('"', " ").split())
