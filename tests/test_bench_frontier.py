"""scripts/bench_frontier.py's summary (the README's frontier table comes from it): rows, the Pareto front,
the headline under its accuracy bar, the README section it rewrites, and the baselines cache it shares
between methods at one schedule. Synthetic points; no model is loaded."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_frontier as F  # noqa: E402

N = 40
ORIG = np.ones(N)  # the original model hits every crop


def _point(method: str, budget: float, cos: float, hits: int, speed: tuple[float, float] | None, margin_lo: float):
    rng = np.random.default_rng(int(budget * 100) + len(method))
    cosv = np.clip(cos + rng.normal(0, 1e-4, N), -1, 1)
    hitv = np.array([1.0] * hits + [0.0] * (N - hits))
    per = {"method": {"feature_cosine": cosv.tolist(), "instance_top1": hitv.tolist()}}
    if method == "uniform":
        per["random"] = {"feature_cosine": (cosv - 0.01).tolist(), "instance_top1": hitv.tolist()}
    sp = (
        None
        if speed is None
        else {
            "1": {"vs_baseline": speed[0], "vs_optimum": speed[0] * 1.1},
            "8": {"vs_baseline": speed[1], "vs_optimum": speed[1] * 1.1},
        }
    )
    return {
        "method": method,
        "budget": budget,
        "flops_ratio": budget,
        "speed": sp,
        "tokens_per_stage": [{"layer": 2, "tokens_out": 200}],
        "nodes": {"model": 900, "baseline": 460},
        "forbidden_ops": [],
        "trt_check": {"jetpack-6.0": True, "jetpack-7.0": True},
        "per_sample": per,
        "baselines": {
            "margins": {
                "feature_cosine": {
                    "best_baseline": "uniform",
                    "margin": margin_lo + 0.001,
                    "ci": [margin_lo, margin_lo + 0.002],
                }
            }
        },
    }


def _rows():
    points = [
        _point("tome", 0.8, 0.995, N, (1.2, 1.3), +0.004),  # meets the bar, beats the baselines
        _point("hybrid", 0.8, 0.996, N, (1.1, 1.25), +0.005),  # meets it, slower than tome
        _point("tome", 0.5, 0.985, N - 4, (1.6, 1.9), +0.002),  # faster, but misses the bar (cosine, top-1)
        _point("zero-tprune", 0.8, 0.992, N, (1.25, 1.2), -0.003),  # meets it at b1 only best; no margin
        _point("uniform", 0.8, 0.991, N, (1.3, 1.35), 0.0),
    ]
    return F.rows(points, ORIG)


def test_rows_baselines_and_verdicts():
    rows = _rows()
    names = [(r["method"], r["budget"]) for r in rows]
    assert (
        ("uniform (lattice)", 0.8) in names and ("random (per image)", 0.8) in names and ("uniform", 0.8) not in names
    )
    by = {(r["method"], r["budget"]): r for r in rows}
    assert by[("tome", 0.8)]["beats_best_baseline"] is True
    assert by[("zero-tprune", 0.8)]["beats_best_baseline"] is False  # CI lower bound below 0
    assert "margin" not in by[("uniform (lattice)", 0.8)]  # a baseline has no margin over itself
    assert by[("tome", 0.5)]["top1_drop"] == pytest.approx(4 / N)
    lo, hi = by[("tome", 0.5)]["top1_drop_ci"]
    assert lo <= 4 / N <= hi


def test_pareto_front_over_speed_and_cosine():
    rows = _rows()
    front = {(r["method"], r["budget"]) for r in rows if r["pareto"]}
    # tome@0.5 is the fastest, hybrid@0.8 the most accurate, tome@0.8 sits between; the lattice (1.35x, 0.991)
    # beats zero-tprune (1.2x, 0.992)? no: zero-tprune is more accurate, so neither dominates the other
    assert ("tome", 0.5) in front and ("hybrid", 0.8) in front and ("tome", 0.8) in front
    assert ("random (per image)", 0.8) not in front  # same speed as the lattice, lower cosine


def test_headline_takes_the_fastest_row_under_the_bar():
    h = F.headline(_rows())
    assert h["b8_vs_baseline"]["method"] == "uniform (lattice)" and h["b8_vs_baseline"]["speedup"] == 1.35
    assert h["b1_vs_optimum"]["method"] == "uniform (lattice)"
    assert all(e["method"] != "random (per image)" for k, e in h.items() if k != "bar")
    assert all(not (e["method"] == "tome" and e["budget"] == 0.5) for k, e in h.items() if k != "bar")
    rows = [r for r in _rows() if r["method"] != "uniform (lattice)"]
    assert F.headline(rows)["b8_vs_baseline"]["method"] == "tome"  # the next fastest under the bar


def test_readme_section_is_replaced_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\nbefore\n{F.MARK_START}\nold table\n{F.MARK_END}\nafter\n")
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG fake")
    F.update_readme(readme, "new table\n", "python scripts/bench_frontier.py --update-readme", png)
    text = readme.read_text()
    assert "old table" not in text and "new table" in text and text.startswith("# t\nbefore\n")
    assert text.rstrip().endswith("after") and F.PLOT_IN_REPO.as_posix() in text
    assert (tmp_path / F.PLOT_IN_REPO).read_bytes() == png.read_bytes()
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        F.update_readme(readme, "x", "cmd", png)


def test_shipped_readme_has_the_frontier_section():
    text = (REPO / "README.md").read_text()
    assert text.count(F.MARK_START) == 1 and text.count(F.MARK_END) == 1
    assert (REPO / F.PLOT_IN_REPO).is_file()
