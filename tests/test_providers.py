"""Execution providers (bench.provider / convert --provider): the one selection function, the
missing-provider path (exit 5, one line, before any model is loaded, nothing written), a session
that falls back to the CPU is an error and never a silent CPU run, and the report records the
provider that ran bench and parity."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from test_cli_bad_input import assert_nothing_written, recipe, run_cli, write
from test_deploy import tiny_model

from tokexport.errors import EnvironmentProblem, InputError
from tokexport.stages import runners
from tokexport.stages.runners import OrtRunner, check_provider, preflight, provider_list

GPU_HERE = bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()))


def test_provider_list_maps_names_and_options():
    assert provider_list("cpu") == [("CPUExecutionProvider", {})]
    assert provider_list(" CUDA ", {"device_id": 1}) == [
        ("CUDAExecutionProvider", {"device_id": "1"}),
        ("CPUExecutionProvider", {}),
    ]
    trt = provider_list("tensorrt", {"device_id": 0, "trt_fp16_enable": True, "trt_max_workspace_size": 2**30})
    assert trt == [
        ("TensorrtExecutionProvider", {"device_id": "0", "trt_fp16_enable": "1", "trt_max_workspace_size": str(2**30)}),
        ("CUDAExecutionProvider", {"device_id": "0"}),
        ("CPUExecutionProvider", {}),
    ]
    with pytest.raises(InputError, match="unknown execution provider 'gpu'.*cpu, cuda, tensorrt"):
        provider_list("gpu")


def test_check_provider_names_what_is_missing():
    cpu_only = ["CPUExecutionProvider"]
    assert check_provider("cpu", available=cpu_only) == [("CPUExecutionProvider", {})]
    with pytest.raises(EnvironmentProblem, match="needs CUDAExecutionProvider.*tokexport\\[gpu\\]") as e:
        check_provider("cuda", available=cpu_only)
    assert e.value.exit_code == 5 and "\n" not in str(e.value)
    with pytest.raises(EnvironmentProblem, match="needs TensorrtExecutionProvider"):
        check_provider("tensorrt", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert [p for p, _ in check_provider("tensorrt", {"device_id": 0}, available=gpu)] == gpu


def test_missing_provider_here_is_exit_5(monkeypatch):
    if GPU_HERE:  # a GPU build offers them: ask as a CPU-only onnxruntime would answer
        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert preflight("cpu") == [("CPUExecutionProvider", {})]
    for name in ("cuda", "tensorrt"):
        with pytest.raises(EnvironmentProblem) as e:
            preflight(name)
        assert e.value.exit_code == 5


def test_cpu_fallback_is_never_silent(tmp_path, monkeypatch):
    """onnxruntime-gpu without a usable GPU lists CUDA but starts the session on the CPU (a warning only):
    simulated by claiming CUDA is available to a CPU-only onnxruntime, which then does exactly that."""
    src = tiny_model(tmp_path / "m.onnx", external=False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if GPU_HERE:  # a real GPU would start CUDA: make every session do what a GPU build without a usable GPU does
        real = ort.InferenceSession
        monkeypatch.setattr(
            ort,
            "InferenceSession",
            lambda path, opts=None, providers=None: real(path, opts, providers=["CPUExecutionProvider"]),
        )
    with pytest.raises(EnvironmentProblem, match="started CPUExecutionProvider instead"):
        preflight("cuda")
    with pytest.raises(
        EnvironmentProblem, match="asked for CUDAExecutionProvider, onnxruntime started CPUExecutionProvider"
    ):
        OrtRunner(src, provider="cuda")
    monkeypatch.undo()
    r = OrtRunner(src)
    assert (r.provider, r.providers) == ("CPUExecutionProvider", ["CPUExecutionProvider"])
    assert r.infer({"x": np.ones((1, 6, 4), np.float32)})["y"].shape == (1, 6, 3)


def test_recipe_provider_field_is_validated(tmp_path, tiny_models):
    from tokexport.recipe import load_recipe

    r = load_recipe(
        write(
            tmp_path,
            recipe(tiny_models["dinov2"], **{"bench.provider": "cuda", "bench.provider_options": {"device_id": 0}}),
        )
    )
    assert (r.bench.provider, r.bench.provider_options) == ("cuda", {"device_id": 0})
    res = run_cli(
        "convert",
        str(write(tmp_path, recipe(tiny_models["dinov2"], **{"bench.provider": "gpu"}), "b.yaml")),
        "--out",
        str(tmp_path / "o"),
    )
    assert res.returncode == 2 and "bench.provider" in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.skipif(GPU_HERE, reason="this onnxruntime offers a GPU provider")
@pytest.mark.parametrize("how", ["recipe", "cli"])
def test_cuda_without_gpu_exits_5_with_one_line_before_loading(tmp_path, how):
    # the model path does not exist: the provider is refused before anything tries to load it
    r = recipe(tmp_path / "no-such-model", **({"bench.provider": "cuda"} if how == "recipe" else {}))
    out = tmp_path / "out"
    args = ["convert", str(write(tmp_path, r)), "--out", str(out)] + (["--provider", "cuda"] if how == "cli" else [])
    res = run_cli(*args)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 5, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "CUDAExecutionProvider" in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert_nothing_written(out)


def test_unknown_cli_provider_is_exit_2(tmp_path, tiny_models):
    res = run_cli(
        "convert",
        str(write(tmp_path, recipe(tiny_models["dinov2"]))),
        "--provider",
        "gpu",
        "--out",
        str(tmp_path / "o"),
    )
    assert res.returncode == 2 and "unknown execution provider 'gpu'" in res.stderr
    assert_nothing_written(tmp_path / "o")


def test_report_records_the_provider(tmp_path, tiny_models):
    r = recipe(
        tiny_models["dinov2"],
        **{
            "bench.enabled": True,
            "bench.repeats": 2,
            "bench.warmup": 0,
            "bench.batch_sizes": [1],
            "verify.parity.samples": 2,
        },
    )
    out = tmp_path / "out"
    res = run_cli("convert", str(write(tmp_path, r)), "--out", str(out), "--provider", "cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["bench"]["provider"] == "CPUExecutionProvider"
    assert rep["bench"]["runtime"].endswith("CPUExecutionProvider") and rep["recipe"]["bench"]["provider"] == "cpu"
    for key in ("parity", "parity_baseline"):
        assert rep[key]["provider"] == "CPUExecutionProvider" and rep[key]["providers"] == ["CPUExecutionProvider"]
    assert run_cli("report", "validate", str(out / "report.json")).returncode == 0


def test_bench_and_driver_do_not_hard_code_the_cpu():
    """The driver (parity, bench) and the bench stage take the provider from provider_list only."""
    from pathlib import Path

    import tokexport

    root = Path(tokexport.__file__).parent
    for rel in ("tasks/run.py", "stages/bench.py"):
        assert 'ExecutionProvider"' not in (root / rel).read_text(), rel
    assert runners.PROVIDERS == {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
    }


def test_bench_gpu_dry_run(tmp_path, tiny_models):
    """scripts/bench_gpu.py runs its whole path (convert per precision, interleaved timing per runtime
    and batch, table + JSON) on CPUExecutionProvider with tiny settings; without a GPU and without
    --dry-run it exits 5 with one line; an existing --out is refused without --force."""
    import subprocess
    import sys

    from conftest import REPO

    script = REPO / "scripts" / "bench_gpu.py"
    rec = write(tmp_path, recipe(tiny_models["dinov2"]))
    out = tmp_path / "bench"

    def run(*args):
        return subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
        )

    r = run("--dry-run", "--recipes", str(rec), "--out", str(out), "--batches", "1,2", "--repeats", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads((out / "bench_gpu.json").read_text())
    fp32 = [row for row in data["rows"] if row["precision"] == "fp32"]
    assert [(row["runtime"], row["batch"], row["status"]) for row in fp32] == [("cpu", 1, "ran"), ("cpu", 2, "ran")]
    assert all(row["speedup"] > 0 and row["baseline_ms"] > 0 and row["repeats"] == 2 for row in fp32)
    fp16 = [row for row in data["rows"] if row["precision"] == "fp16"]
    assert len(fp16) == 2 and all(row["status"] == "ran" or "export.precision" in row["note"] for row in fp16)
    table = (out / "bench_gpu.md").read_text()
    assert "| recipe | precision | runtime | batch |" in table and "ORT CPU EP" in table
    assert data["meta"]["dry_run"] is True and data["meta"]["runtimes"] == ["cpu"]

    r = run("--dry-run", "--recipes", str(rec), "--out", str(out))
    assert r.returncode == 2 and "--force" in r.stderr
    if not GPU_HERE:
        r = run("--recipes", str(rec), "--out", str(tmp_path / "gpu"))
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode == 5 and len(lines) == 1 and "--dry-run" in lines[0], r.stderr
        assert not (tmp_path / "gpu").exists()


def test_default_threads_follow_the_process_share(monkeypatch, tmp_path):
    """A session whose recipe sets no threads takes $OMP_NUM_THREADS (a CI worker's share), else the CPUs the
    process may use; the session really runs with that many."""
    import os

    import onnx
    from onnx import TensorProto, helper

    from tokexport.stages.runners import OrtRunner, default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    for junk in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", junk)
        assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == len(os.sched_getaffinity(0))
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = OrtRunner(path)
    assert runner.session.get_session_options().intra_op_num_threads == 1
