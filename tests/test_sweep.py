"""`tokexport sweep` on a tiny random DINOv2: 3 keep rates × 2 methods in 2 worker processes produce
sweep.json, sweep.html and pareto.png whose data are the per-run reports'; a failed point is recorded and the rest
go on, --resume keeps done points, --backend ray without Ray exits 5 (the Ray backend: tests/test_ray_backend.py)."""

from __future__ import annotations

import base64
import json
import re

import pytest
from PIL import Image
from test_cli_bad_input import (
    assert_nothing_written,
    assert_one_line_error,
    recipe,
    run_cli,
    write,
)

from tokexport.sweep import pareto_front
from tokexport.sweep_render import PLOT_DPI, PLOT_SIZE

RATES = [0.9, 0.6, 0.3]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_models):
    tmp = tmp_path_factory.mktemp("sweep")
    r = recipe(
        tiny_models["dinov2"],
        name="tiny-dinov2",
        reduction={"method": "zero-tprune", "prune_layers": [1, 2], "keep_rate": [0.9, 0.8], "init": "uniform"},
        bench={"enabled": True, "batch_sizes": [1, 2], "warmup": 1, "repeats": 3},
        deploy={"bundle": False},
    )
    out = tmp / "sweep"
    res = run_cli(
        "sweep",
        str(write(tmp, r)),
        "--keep-rates",
        ",".join(map(str, RATES)),
        "--methods",
        "zero-tprune,random",
        "--jobs",
        "2",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res


def test_sweep_files_match_the_reports(swept):
    out, res = swept
    assert {p.name for p in out.iterdir()} == {"sweep.json", "sweep.html", "pareto.png", "runs", ".tokexport-output"}
    s = json.loads((out / "sweep.json").read_text())
    assert s["kind"] == "sweep" and s["metric"] == "instance_top1" and s["jobs"] == 2
    assert s["x"] == {"key": "speedup", "label": "measured speed-up at batch 2", "batch": 2}
    assert [(p["method"], p["keep_rate"]) for p in s["points"]] == [
        (m, k) for m in ("zero-tprune", "random") for k in RATES
    ]
    for p in s["points"]:
        rep = json.loads((out / p["run_dir"] / "report.json").read_text())
        red = rep["recipe"]["reduction"]
        assert red["method"] == p["method"] and red["keep_rate"] == p["keep_rate"] and red["prune_layers"] == [1, 2]
        if p["method"] == "zero-tprune":
            assert red["init"] == "uniform"  # the recipe's own method keeps its fields
        m = rep["accuracy"]["metrics"]["instance_top1"]
        assert p["metric"] == m["reduced"] and p["metric_original"] == m["original"]
        assert p["speedup"] == rep["bench"]["batches"]["2"]["speedup"]
        assert p["flops_ratio"] == pytest.approx(rep["bench"]["flops"]["reduced"] / rep["bench"]["flops"]["baseline"])
        assert p["tokens"] == [st["tokens_out"] for st in rep["reduction"]["schedule"]]
        assert p["passed"] == rep["passed"] and p["exit_code"] == (0 if rep["passed"] else 4)
        assert rep["bench"]["threads"] >= 1 and (out / p["run_dir"] / "model.onnx").is_file()
    # 16 patches: keep 0.9 -> 14 -> 12, 0.6 -> 9 -> 5, 0.3 -> 4 -> 1 (+ CLS)
    assert [p["tokens"] for p in s["points"][:3]] == [[15, 13], [10, 6], [5, 2]]
    ratios = [p["flops_ratio"] for p in s["points"][:3]]
    assert ratios == sorted(ratios, reverse=True)  # fewer tokens, fewer FLOPs
    # the front over the points and the original model (speed-up 1, original accuracy)
    front = pareto_front(
        [p["speedup"] for p in s["points"]] + [1.0], [p["metric"] for p in s["points"]] + [s["original"]["metric"]]
    )[:-1]
    assert [p["pareto"] for p in s["points"]] == front
    assert "sweep.json" in res.stdout and "random" in res.stdout


def test_sweep_html_is_self_contained_and_carries_the_data(swept):
    out, _ = swept
    s = json.loads((out / "sweep.json").read_text())
    page = (out / "sweep.html").read_text()
    assert "<table>" in page and "http://" not in page and "https://" not in page
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png == (out / "pareto.png").read_bytes()
    data = json.loads(
        re.search(r'<script type="application/json" id="sweep-data">(.*?)</script>', page, re.DOTALL)
        .group(1)
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
    )
    assert data == s["points"]
    for p in s["points"]:
        assert f"{p['metric_original']:.4f} → {p['metric']:.4f}" in page
        assert f'href="{p["run_dir"]}/report.md"' in page


def test_pareto_png_is_a_valid_image_of_the_expected_size(swept):
    out, _ = swept
    with Image.open(out / "pareto.png") as im:
        im.verify()
    with Image.open(out / "pareto.png") as im:
        assert im.format == "PNG"
        assert im.size == (int(PLOT_SIZE[0] * PLOT_DPI), int(PLOT_SIZE[1] * PLOT_DPI))
        # not a blank canvas: the series and the front are drawn
        assert len(set(im.convert("RGB").getdata())) > 50


def test_pareto_front():
    assert pareto_front([1.0, 1.2, 1.5, 1.1], [0.9, 0.8, 0.5, 0.7]) == [True, True, True, False]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # ties dominate nothing


def test_sweep_bad_input(tmp_path, tiny_models):
    p = write(tmp_path, recipe(tiny_models["dinov2"]))
    out = tmp_path / "o"
    assert_one_line_error(run_cli("sweep", str(p), "--keep-rates", "0.9,abc", "--out", str(out)), "--keep-rates", "abc")
    assert_one_line_error(run_cli("sweep", str(p), "--keep-rates", "0.9,1.5", "--out", str(out)), "--keep-rates", "1.5")
    assert_one_line_error(
        run_cli("sweep", str(p), "--keep-rates", "0.5", "--methods", "zero-prune", "--out", str(out)),
        "--methods",
        "zero-prune",
    )
    assert_one_line_error(
        run_cli("sweep", str(p), "--keep-rates", "0.5", "--metric", "top5", "--out", str(out)), "--metric", "top5"
    )
    assert_nothing_written(out)
    out.mkdir()
    assert_one_line_error(
        run_cli("sweep", str(p), "--keep-rates", "0.5", "--out", str(out)), "already exists", "--force"
    )


def test_sweep_records_a_failed_point_goes_on_and_resumes(tmp_path, tiny_models):
    """A recipe whose bundled checkpoint is missing here fails its points (one line naming the model and the
    fix, exit 2) while the other recipe's points convert; --resume keeps the done points."""
    over = {"deploy": {"bundle": False}, "bench": {"enabled": True, "batch_sizes": [1], "warmup": 1, "repeats": 2}}
    good = write(tmp_path, recipe(tiny_models["dinov2"], name="tiny", **over), "tiny.yaml")
    absent = write(tmp_path, recipe("dinov2-small", name="absent", **over), "absent.yaml")
    out = tmp_path / "m"
    env = {"TOKEXPORT_MODELS_DIR": str(tmp_path / "empty-models")}
    res = run_cli("sweep", str(good), str(absent), "--keep-rates", "0.5", "--out", str(out), env=env)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    idx = json.loads((out / "index.json").read_text())
    assert [(e["dir"], e["points"], e["failed"]) for e in idx["recipes"]] == [("tiny", 1, 0), ("absent", 1, 1)]
    bad = json.loads((out / "absent" / "sweep.json").read_text())["points"][0]
    assert bad["status"] == "failed" and bad["exit_code"] == 2 and bad["run_dir"] is None
    assert "dinov2-small" in bad["error"] and "tokexport models fetch dinov2-small" in bad["error"]
    assert "shared directory" in bad["error"] and "\n" not in bad["error"]
    rec = json.loads((out / "absent" / "runs" / "topk-cls-k0.5.json").read_text())
    assert rec["status"] == "failed" and rec["error"] == bad["error"]
    assert "failed: topk-cls keep rate 0.5: exit 2:" in res.stdout
    assert "ratios measured inside one task" in res.stdout
    done = out / "tiny" / "runs" / "topk-cls-k0.5" / "report.json"
    stamp = done.stat().st_mtime_ns
    # without --resume (or --force) the existing output is refused
    assert_one_line_error(
        run_cli("sweep", str(good), "--keep-rates", "0.5", "--out", str(out / "tiny")), "already exists"
    )
    res = run_cli("sweep", str(good), str(absent), "--keep-rates", "0.5", "--out", str(out), "--resume", env=env)
    assert res.returncode == 2 and "1 point(s) kept from the earlier run (--resume)" in res.stdout
    s = json.loads((out / "tiny" / "sweep.json").read_text())
    assert s["resumed"] == 1 and s["points"][0]["resumed"] and done.stat().st_mtime_ns == stamp


def test_sweep_without_ray_exits_5(tmp_path, tiny_models):
    """--backend ray with the ray module hidden: one line naming the extra, exit 5, nothing written."""
    import subprocess
    import sys

    p = write(tmp_path, recipe(tiny_models["dinov2"]))
    out = tmp_path / "o"
    for cmd in (["sweep", str(p), "--keep-rates", "0.5"], ["search", str(p), "--max-drop", "0.1"]):
        code = (
            "import sys; sys.modules['ray'] = None; from tokexport.cli import main; "
            f"sys.argv = ['tokexport', *{cmd!r}, '--backend', 'ray', '--out', {str(out)!r}]; main()"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 5, (res.stdout, res.stderr)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Ray is not installed" in lines[0] and "tokexport[ray]" in lines[0]
        assert_nothing_written(out)


def test_sweep_backend_options_bad_input(tmp_path, tiny_models):
    p = write(tmp_path, recipe(tiny_models["dinov2"]))
    out = tmp_path / "o"
    assert_one_line_error(
        run_cli("sweep", str(p), "--keep-rates", "0.5", "--backend", "spark", "--out", str(out)), "--backend", "spark"
    )
    assert_one_line_error(
        run_cli("sweep", str(p), "--keep-rates", "0.5", "--backend", "ray", "--jobs", "2", "--out", str(out)),
        "--jobs",
        "--backend local",
    )
    assert_one_line_error(
        run_cli("sweep", str(p), "--keep-rates", "0.5", "--cpus-per-job", "0", "--out", str(out)), "--cpus-per-job"
    )
    assert_one_line_error(
        run_cli("sweep", str(p), "--keep-rates", "0.5", "--resume", "--force", "--out", str(out)), "--resume", "--force"
    )
    assert_one_line_error(
        run_cli("sweep", str(p), str(p), "--keep-rates", "0.5", "--out", str(out)), "distinct file names"
    )
    assert_nothing_written(out)
    conv = tmp_path / "conv"
    conv.mkdir()
    (conv / ".tokexport-output").write_text('{"tool": "tokexport", "kind": "convert"}')
    assert_one_line_error(
        run_cli("sweep", str(p), "--keep-rates", "0.5", "--resume", "--out", str(conv)), "not by a sweep"
    )
