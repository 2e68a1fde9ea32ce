"""The Ray backend for real, on one local Ray instance with 2 CPUs shared by every test of this module, on a
tiny random DINOv2: a sweep gives the same points and the same accuracy figures as the local backend; a
matrix sweep records the points of a recipe whose checkpoint is missing on the worker (one line naming it and
the fix) while the other recipe's points go on, and writes one index page; ``--resume`` keeps the points
already complete; a crashed worker is recorded, not fatal; the ViT search and the visual-token bisection pick
what the local backend picks."""

from __future__ import annotations

import json
import os
import re

import pytest
from test_cli_bad_input import recipe, write
from test_sweep_search_tasks import visual_recipe  # noqa: F401  (fixture: a tiny CLIP tower, task visual-tokens)

try:
    import ray
except ImportError:  # CI installs the extra (scripts/install.sh); elsewhere: pip install 'tokexport[ray]'
    if os.environ.get("CI"):
        raise
    pytest.skip("Ray is not installed (pip install 'tokexport[ray]')", allow_module_level=True)

from tokexport.fanout import Fanout, PointSpec
from tokexport.search import search
from tokexport.sweep import exit_code, sweep

RATES = [0.9, 0.5]
SAME = (
    "method",
    "keep_rate",
    "tokens",
    "metric",
    "metric_original",
    "metric_drop",
    "flops_ratio",
    "passed",
    "exit_code",
    "parity_max_abs_diff",
    "status",
)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance (2 CPUs) for the module; tokexport uses it instead of starting its own. Ray's
    memory monitor is off: on a machine shared with other jobs it kills tasks for memory others use."""
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # as tokexport's own local instance (docs/ray.md)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_models):
    tmp = tmp_path_factory.mktemp("ray")
    r = recipe(
        tiny_models["dinov2"],
        name="tiny-dinov2",
        reduction={"method": "zero-tprune", "prune_layers": [1, 2], "keep_rate": [0.9, 0.8], "init": "uniform"},
        bench={"enabled": True, "batch_sizes": [1], "warmup": 1, "repeats": 2},
        deploy={"bundle": False},
    )
    good = write(tmp, r, "tiny-dinov2.yaml")
    missing = write(tmp, {**r, "model": str(tmp / "not-on-this-node"), "name": "tiny-missing"}, "tiny-missing.yaml")
    return tmp, good, missing


@pytest.fixture(scope="module")
def ray_sweep(cluster, tiny):
    tmp, good, _ = tiny
    summary, out = sweep(good, RATES, None, tmp / "ray-sweep", backend="ray", cpus_per_job=1)
    return summary, out


def test_ray_sweep_same_points_and_accuracy_as_local(tiny, ray_sweep):
    tmp, good, _ = tiny
    r_sum, r_out = ray_sweep
    l_sum, _ = sweep(good, RATES, None, tmp / "local-sweep", backend="local", cpus_per_job=1)
    assert r_sum["backend"]["name"] == "ray" and r_sum["backend"]["parallel"] == 2
    assert [p["status"] for p in r_sum["points"] + l_sum["points"]] == ["done"] * 4, [
        p.get("error") for p in r_sum["points"] + l_sum["points"]
    ]
    assert l_sum["backend"]["name"] == "local"
    assert [{k: p[k] for k in SAME} for p in r_sum["points"]] == [{k: p[k] for k in SAME} for p in l_sum["points"]]
    assert [p["keep_rate"] for p in r_sum["points"]] == RATES and r_sum["failed"] == 0
    for p in r_sum["points"]:  # every point's run directory and record are in the output, nowhere else
        rep = json.loads((r_out / p["run_dir"] / "report.json").read_text())
        assert rep["accuracy"]["metrics"]["instance_top1"]["reduced"] == p["metric"]
        assert rep["bench"]["threads"] == 1  # --cpus-per-job is the task's bench thread count
        rec = json.loads((r_out / "runs" / f"zero-tprune-k{p['keep_rate']:g}.json").read_text())
        assert rec["status"] == "done" and rec["backend"] == "ray" and "archive" not in rec
    assert "ratios measured inside one task" in r_sum["timing"]
    assert "ratios measured inside one task" in (r_out / "sweep.html").read_text()
    assert {p.name for p in r_out.iterdir()} == {"sweep.json", "sweep.html", "pareto.png", "runs", ".tokexport-output"}


def test_matrix_sweep_records_failures_and_resume_keeps_done_points(cluster, tiny):
    tmp, good, missing = tiny
    out = tmp / "matrix"
    summary, _ = sweep([good, missing], RATES, None, out, backend="ray")
    assert summary["kind"] == "sweep-matrix" and [e["dir"] for e in summary["recipes"]] == [
        "tiny-dinov2",
        "tiny-missing",
    ]
    ok, bad = summary["sweeps"]
    assert [p["status"] for p in ok["points"]] == ["done", "done"]
    assert [p["status"] for p in bad["points"]] == ["failed", "failed"] and bad["failed"] == 2
    for p in bad["points"]:  # one line naming the model and the fix; exit code of bad input
        assert p["exit_code"] == 2 and "\n" not in p["error"]
        assert "not-on-this-node" in p["error"] and "not found on worker" in p["error"]
        assert "shared directory" in p["error"]
    assert exit_code(summary) == 2
    # one index page with both plots, each recipe's own page and data
    page = (out / "index.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    assert 'href="tiny-dinov2/sweep.html"' in page and 'href="tiny-missing/sweep.html"' in page
    for sub in ("tiny-dinov2", "tiny-missing"):
        assert {p.name for p in (out / sub).iterdir()} >= {"sweep.json", "sweep.html", "pareto.png", "runs"}
    assert "exit code" in (out / "tiny-missing" / "sweep.html").read_text()

    # --resume with one more keep rate: the two done points are kept as they are, only the new one runs
    before = {
        k: (out / "tiny-dinov2" / "runs" / f"zero-tprune-k{k:g}" / "report.json").stat().st_mtime_ns for k in RATES
    }
    ran = []
    summary2, _ = sweep(
        [good, missing],
        [*RATES, 0.7],
        None,
        out,
        backend="ray",
        resume=True,
        on_done=lambda p, code: ran.append(p.label),
    )
    ok2, bad2 = summary2["sweeps"]
    assert [p["resumed"] for p in ok2["points"]] == [True, True, False] and ok2["resumed"] == 2
    assert [p["status"] for p in ok2["points"]] == ["done"] * 3
    assert [p["metric"] for p in ok2["points"][:2]] == [p["metric"] for p in ok["points"]]
    for k in RATES:
        assert (out / "tiny-dinov2" / "runs" / f"zero-tprune-k{k:g}" / "report.json").stat().st_mtime_ns == before[k]
    assert [p["status"] for p in bad2["points"]] == ["failed"] * 3  # failed points are tried again, still missing
    assert (out / "tiny-dinov2" / "runs" / "zero-tprune-k0.7" / "report.json").is_file()
    assert json.loads((out / "index.json").read_text())["recipes"][0]["resumed"] == 2


class _Crash:
    """Unpickling it ends the process at once: a worker that dies in the middle of a point."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_crashed_worker_is_recorded_and_the_rest_go_on(cluster, tmp_path):
    crash = PointSpec("crash", _Crash(), str(tmp_path), str(tmp_path / "a"), "crash")
    nomodel = PointSpec(
        "nomodel", type("R", (), {"model": str(tmp_path / "absent")})(), str(tmp_path), str(tmp_path / "b"), "nomodel"
    )
    with Fanout("ray") as fo:
        recs = fo.convert([crash, nomodel])
    assert recs[0]["status"] == "failed" and recs[0]["crashed"] and recs[0]["exit_code"] == 1
    assert recs[1]["status"] == "failed" and recs[1]["exit_code"] == 2 and "absent" in recs[1]["error"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert ray.is_initialized()  # a session tokexport did not start is left running


def test_ray_search_picks_the_local_schedule(cluster, tiny, tmp_path):
    _, good, _ = tiny
    kwargs = {"max_drop": 0.02, "metric": "feature_cosine", "layers": [1, 2], "step": 2, "reference": False}
    local, _ = search(good, out=tmp_path / "local", **kwargs)
    remote, out = search(good, out=tmp_path / "ray", backend="ray", cpus_per_job=1, **kwargs)
    assert remote["winner"]["keep"] == local["winner"]["keep"]
    assert remote["winner"]["prune_layers"] == local["winner"]["prune_layers"]
    assert remote["passes"] == local["passes"]
    assert [t["keep"] for t in remote["trace"]] == [t["keep"] for t in local["trace"]]
    par = remote["backend"]["parallel_search"]
    assert par["evaluators"] == 2 and par["evaluations_run"] >= len(remote["trace"]) - 1
    assert (out / "winner" / "report.json").is_file()


def test_ray_bisection_picks_the_local_value(cluster, visual_recipe, tmp_path):  # noqa: F811
    """Visual-token K: the bisection's possible next steps are converted at once as Ray tasks; the path on
    which the sequential search decides, and so the pick, are the local backend's."""
    kwargs = {"max_drop": 0.05, "metric": "feature_cosine", "max_evals": 4}
    local, _ = search(visual_recipe, out=tmp_path / "local", **kwargs)
    remote, out = search(visual_recipe, out=tmp_path / "ray", backend="ray", cpus_per_job=1, **kwargs)
    assert remote["winner"]["value"] == local["winner"]["value"] and remote["converged"] == local["converged"]
    path = [t for t in remote["trace"] if not t.get("speculative")]
    assert sorted(t["value"] for t in path) == sorted(t["value"] for t in local["trace"])
    for t in path:  # the same conversions, the same figures
        twin = next(x for x in local["trace"] if x["value"] == t["value"])
        assert (t["feasible"], t["drop"]) == (twin["feasible"], pytest.approx(twin["drop"], abs=1e-6))
    assert remote["speculative_evaluations"] == len(remote["trace"]) - len(path)
    assert remote["backend"]["name"] == "ray" and (out / "winner" / "report.json").is_file()
