"""Device results come back: the deploy/ bundle of a tiny conversion runs its verify_on_device.py here
(the ONNX Runtime path), which writes device_results.json; `tokexport check` gates it against the
convert report (passes as written, exit 6 when an expected output is perturbed, exit 7 for results of
another graph or a malformed file); `tokexport report merge` adds it to the report under the output
rules of every command; trtexec's performance summary is parsed from build logs.

The two trtexec logs in tests/fixtures are written in trtexec's output format (TensorRT 10.3 on an
Orin); their numbers are made up for the parser, they are not measurements."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli_bad_input import recipe, run_cli, write
from test_deploy import tiny_model

from tokexport.deploy import parse_trtexec_log

FIXTURES = Path(__file__).parent / "fixtures"


def verify(bundle: Path, *args: str):
    return subprocess.run(
        [sys.executable, str(bundle / "verify_on_device.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_models):
    """A tiny conversion with its deploy/ bundle (model.onnx and baseline.onnx)."""
    tmp = tmp_path_factory.mktemp("dev")
    r = recipe(tiny_models["dinov2"], **{"deploy.bundle": True})
    out = tmp / "out"
    res = run_cli("convert", str(write(tmp, r)), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "deploy" / "verify_on_device.py").is_file()
    return out


@pytest.fixture()
def bundle(converted, tmp_path):
    dest = tmp_path / "deploy"
    shutil.copytree(converted / "deploy", dest)
    return dest


def test_verify_writes_device_results_and_check_passes(converted, bundle, tmp_path):
    r = verify(bundle)
    assert r.returncode == 0, r.stdout + r.stderr
    dev = json.loads((bundle / "device_results.json").read_text())
    assert dev["format"] == "tokexport-device-results" and dev["passed"] is True and dev["sha256"]["passed"]
    assert set(dev["models"]) == {"model", "baseline"} and dev["trtexec"] == {}
    assert dev["runtime"]["name"] == "onnxruntime" and dev["runtime"]["provider"] == "CPUExecutionProvider"
    assert dev["runtime"]["versions"]["onnxruntime"] and dev["runtime"]["versions"]["numpy"] == np.__version__
    rep = json.loads((converted / "report.json").read_text())
    assert dev["bundle"]["models"]["model"]["source_sha256"] == rep["artifacts"]["onnx_sha256"]
    assert dev["bundle"]["models"]["baseline"]["source_sha256"] == rep["artifacts"]["baseline_onnx_sha256"]
    for m in dev["models"].values():
        assert m["outputs"] and all(row["passed"] for row in m["outputs"])

    res = run_cli("check", str(bundle / "device_results.json"), "--baseline", str(converted / "report.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (
        "device.sha256" in res.stdout and "device.model." in res.stdout and "device runtime: onnxruntime" in res.stdout
    )

    # a results file elsewhere (--results) holds the same verdict
    r = verify(bundle, "--results", str(tmp_path / "elsewhere.json"), "--provider", "cpu")
    assert r.returncode == 0 and json.loads((tmp_path / "elsewhere.json").read_text())["passed"] is True


def _perturb_expected(bundle: Path, model: str = "model") -> str:
    man = json.loads((bundle / "manifest.json").read_text())
    out_name, entry = next(iter(man["models"][model]["expected"].items()))
    exp = bundle / entry["file"]
    arr = np.load(exp)
    np.save(exp, arr + np.float32(0.5) * (np.abs(arr).max() + 1))
    for f in man["files"]:  # re-sign it: only the comparison can catch it
        if f["path"] == entry["file"]:
            f["sha256"], f["bytes"] = hashlib.sha256(exp.read_bytes()).hexdigest(), exp.stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(man))
    return out_name


def test_perturbed_output_fails_the_gate(converted, bundle):
    name = _perturb_expected(bundle)
    r = verify(bundle)
    assert r.returncode == 1, r.stdout
    dev = json.loads((bundle / "device_results.json").read_text())
    assert dev["passed"] is False and dev["models"]["model"]["passed"] is False and dev["models"]["baseline"]["passed"]
    res = run_cli("check", str(bundle / "device_results.json"), "--baseline", str(converted / "report.json"))
    assert res.returncode == 6, res.stdout + res.stderr
    assert f"device.model.{name}" in res.stderr and "regression" in res.stderr


def test_damaged_bundle_results_fail_the_gate(converted, bundle):
    x = bundle / "inputs" / "input_0.npy"
    arr = np.load(x)
    arr.flat[0] += 1
    np.save(x, arr)
    assert verify(bundle).returncode == 2
    dev = json.loads((bundle / "device_results.json").read_text())
    assert dev["sha256"]["passed"] is False and dev["passed"] is False
    res = run_cli("check", str(bundle / "device_results.json"), "--baseline", str(converted / "report.json"))
    assert res.returncode == 6 and "device.sha256" in res.stderr


def test_results_of_another_graph_or_malformed_are_exit_7(converted, tmp_path):
    src = tiny_model(tmp_path / "src" / "model.onnx")
    other = tmp_path / "other"
    assert run_cli("bundle", str(other), "--from", str(src), "--target", "onnxruntime").returncode == 0
    assert verify(other).returncode == 0
    res = run_cli("check", str(other / "device_results.json"), "--baseline", str(converted / "report.json"))
    assert res.returncode == 7 and "not" in res.stderr and "model.onnx" in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    bad = json.loads((other / "device_results.json").read_text())
    bad["passed"] = "yes"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    res = run_cli("check", str(tmp_path / "bad.json"), "--baseline", str(converted / "report.json"))
    assert res.returncode == 7 and "passed" in res.stderr and "Traceback" not in res.stderr


def test_report_merge(converted, bundle, tmp_path):
    assert verify(bundle).returncode == 0
    dev_path, rep_path = bundle / "device_results.json", converted / "report.json"
    merged = tmp_path / "merged.json"
    res = run_cli("report", "merge", str(rep_path), str(dev_path), "--out", str(merged))
    assert res.returncode == 0, res.stderr
    m = json.loads(merged.read_text())
    assert (
        m["device_results"]["passed"] is True and m["device_results"]["runtime"]["provider"] == "CPUExecutionProvider"
    )
    rep = json.loads(rep_path.read_text())
    assert {k: v for k, v in m.items() if k != "device_results"} == rep  # nothing else changed
    assert run_cli("report", "validate", str(merged)).returncode == 0
    # the merged report still gates against the original, and carries the device verdict
    res = run_cli("check", str(merged), "--baseline", str(rep_path))
    assert res.returncode == 0 and "passed.device" in res.stdout, res.stdout + res.stderr

    before = merged.read_bytes()
    res = run_cli("report", "merge", str(rep_path), str(dev_path), "--out", str(merged))
    assert res.returncode == 2 and "--force" in res.stderr and merged.read_bytes() == before
    assert run_cli("report", "merge", str(rep_path), str(dev_path), "--out", str(merged), "--force").returncode == 0
    res = run_cli("report", "merge", str(rep_path), str(dev_path), "--out", str(rep_path), "--force")
    assert res.returncode == 2 and "REPORT file itself" in res.stderr, res.stderr
    assert json.loads(rep_path.read_text()) == rep
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    res = run_cli("report", "merge", str(rep_path), str(dev_path), "--out", str(notes), "--force")
    assert res.returncode == 2 and "not a tokexport report" in res.stderr and notes.read_text() == '{"mine": true}'
    res = run_cli("report", "merge", str(rep_path), str(dev_path), "--out", str(tmp_path / "no" / "m.json"))
    assert res.returncode == 2 and not (tmp_path / "no").exists()
    # results of another graph: exit 7, nothing written
    worse = copy.deepcopy(json.loads(dev_path.read_text()))
    worse["bundle"]["models"]["model"]["source_sha256"] = "0" * 64
    (tmp_path / "w.json").write_text(json.dumps(worse))
    res = run_cli("report", "merge", str(rep_path), str(tmp_path / "w.json"), "--out", str(tmp_path / "m2.json"))
    assert res.returncode == 7 and not (tmp_path / "m2.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_parse_trtexec_log_fixture():
    s = parse_trtexec_log((FIXTURES / "trtexec_10.3_build_model.log").read_text())
    assert s["tensorrt_version"] == "10.3.0" and s["throughput_qps"] == pytest.approx(243.615)
    assert s["latency_ms"] == {
        "min": 4.21289,
        "max": 6.05371,
        "mean": 4.38921,
        "median": 4.36572,
        "p90": 4.48047,
        "p95": 4.53955,
        "p99": 5.12695,
    }
    assert s["gpu_compute_ms"]["median"] == pytest.approx(4.01562) and s["gpu_compute_ms"]["p90"] == pytest.approx(
        4.12012
    )
    assert s["h2d_ms"]["median"] == pytest.approx(0.341309) and "enqueue_ms" in s
    # TensorRT 8.x encodes its version as major*1000 + minor*100 + patch; a log without a summary: None
    assert (
        parse_trtexec_log(
            "&&&& PASSED TensorRT.trtexec [TensorRT v8602]\n=== Performance summary ===\nThroughput: 10 qps\n"
        )["tensorrt_version"]
        == "8.6.2"
    )
    assert parse_trtexec_log("[I] Engine built in 3 sec.\n&&&& FAILED TensorRT.trtexec [TensorRT v100300]") is None


def test_trtexec_logs_in_the_bundle_come_back(converted, bundle):
    for name in ("model", "baseline"):
        shutil.copyfile(FIXTURES / f"trtexec_10.3_build_{name}.log", bundle / f"build_{name}.log")
    r = verify(bundle)
    assert r.returncode == 0 and "trtexec model: median 4.36572 ms, p90 4.48047 ms, 243.615 qps" in r.stdout, r.stdout
    dev = json.loads((bundle / "device_results.json").read_text())
    assert dev["trtexec"]["baseline"]["latency_ms"]["median"] == pytest.approx(7.11914)
    assert dev["trtexec"]["model"]["log"] == "build_model.log"
    res = run_cli("check", str(bundle / "device_results.json"), "--baseline", str(converted / "report.json"))
    assert res.returncode == 0 and f"{7.11914 / 4.36572:.3f}×" in res.stdout, res.stdout
