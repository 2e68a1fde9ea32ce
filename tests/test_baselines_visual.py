"""The honest baselines of the visual-token task (tokexport.vlm.baselines): random keep drawn per image
over seeds and a true 2-D uniform lattice, at the method's K, on the same crops, in the same run; the
report's ``baselines`` section and the ``verify.vs_baselines`` gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokexport.recipe import Recipe
from tokexport.stages.report_schema import validate_report
from tokexport.tasks.run import run
from tokexport.vlm.baselines import gather, per_sample, random_positions, uniform_positions
from tokexport.vlm.select import UniformSpatial, VisualLayout, spatial_positions

# ---- positions ---------------------------------------------------------------------------------


def test_random_positions_are_drawn_per_image_and_per_seed():
    a = random_positions(6, 64, 10, seed=3)
    assert a.shape == (6, 10) and a.dtype == np.int64
    for row in a:
        assert len(set(row.tolist())) == 10 and list(row) == sorted(row) and 0 <= row.min() and row.max() < 64
    assert len({tuple(r) for r in a.tolist()}) == 6  # a fresh subset for every image
    assert np.array_equal(a, random_positions(6, 64, 10, seed=3))  # deterministic in the seed
    assert not np.array_equal(a, random_positions(6, 64, 10, seed=4))
    # unbiased: every position about equally often over many draws
    counts = np.bincount(random_positions(4000, 16, 4, seed=0).ravel(), minlength=16)
    assert counts.min() > 0.9 * 1000 and counts.max() < 1.1 * 1000
    with pytest.raises(ValueError):
        random_positions(2, 8, 9, seed=0)


def _rows_cols(pos, gw):
    return {p // gw for p in pos}, {p % gw for p in pos}


@pytest.mark.parametrize("n", [16, 64, 100, 128, 192])
def test_uniform_is_a_2d_lattice_not_stripes(n):
    """At every budget the kept positions cover the grid in both directions: no row or column band is
    left out wider than the lattice spacing (a 1-D stride at keep 0.5 keeps every other column)."""
    gh = gw = 16
    pos = spatial_positions((gh, gw), n)
    assert len(pos) == len(set(pos)) == n and pos == sorted(pos)
    rows, cols = _rows_cols(pos, gw)
    side = int(np.ceil(np.sqrt(n)))
    assert len(rows) >= min(gh, side - 1) and len(cols) >= min(gw, side - 1)
    # every row that holds kept tokens holds several columns (a 2-D lattice, not whole rows or columns)
    per_row = [sum(1 for p in pos if p // gw == r) for r in rows]
    assert max(per_row) < gw and min(per_row) >= n // len(rows) - 1


def test_uniform_64_of_256_is_the_8x8_lattice():
    pos = spatial_positions((16, 16), 64)
    rows, cols = _rows_cols(pos, 16)
    assert sorted(rows) == sorted(cols) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert pos == [r * 16 + c for r in sorted(rows) for c in sorted(cols)]


def test_uniform_baseline_positions_are_uniform_spatial():
    lay = VisualLayout(views=5, grid=(4, 4), sub_grid=(2, 2))
    u = uniform_positions(lay, 20, 3)
    assert u.shape == (3, 20) and (u == u[0]).all()
    assert u[0].tolist() == UniformSpatial.positions(lay, 20)
    assert [int(((u[0] >= v * 16) & (u[0] < (v + 1) * 16)).sum()) for v in range(5)] == [4] * 5


# ---- the gathered baseline is what the graph would output ------------------------------------------


@pytest.mark.parametrize("feature_select", ["default", "full"])
def test_gathered_baseline_equals_the_graph_with_that_selection(tiny_models, feature_select):
    """A baseline's tokens are the all-token output gathered at its positions: the same as running the
    visual-token graph with that selection (projector included, prefix tokens first for ``full``)."""
    from transformers import AutoModel

    from tokexport.adapters import adapter_for
    from tokexport.vlm.graph import VisualTokenGraph

    tower = AutoModel.from_pretrained(tiny_models["clip-vision"]).eval()
    ad = adapter_for(tower.config)
    size = tower.config.image_size
    g = size // ad.patch_size
    lay = VisualLayout(views=1, grid=(g, g))
    torch.manual_seed(0)
    proj = torch.nn.Sequential(torch.nn.Linear(tower.config.hidden_size, 8), torch.nn.GELU(), torch.nn.Linear(8, 8))
    k = max(1, lay.total // 3)
    sel = UniformSpatial(UniformSpatial.config_cls(keep=k))
    full = VisualTokenGraph(tower, ad, lay, size, -2, feature_select, proj, None)
    red = VisualTokenGraph(tower, ad, lay, size, -2, feature_select, proj, sel, k)
    x = torch.randn(3, 3, size, size)
    with torch.inference_mode():
        orig = full(x)[0].numpy()
        want_tokens, want_pos = (t.numpy() for t in red(x))
    n_prefix = orig.shape[1] - lay.total
    assert n_prefix == (ad.n_prefix() if feature_select == "full" else 0)
    tokens, pos = gather(orig, uniform_positions(lay, k, 3), n_prefix)
    assert np.array_equal(pos, want_pos)
    np.testing.assert_allclose(tokens, want_tokens, atol=1e-5)


def test_per_sample_figures():
    rng = np.random.default_rng(0)
    orig = rng.normal(size=(4, 6, 5))
    w = rng.uniform(size=(4, 6))
    w /= w.sum(axis=1, keepdims=True)
    protos = orig.mean(axis=1)  # each sample is its own class
    labels = np.arange(4)
    pos = np.tile(np.arange(6), (4, 1))
    ps = per_sample(orig, orig, pos, w, 0, protos, labels)  # keeping everything reproduces everything
    np.testing.assert_allclose(ps["feature_cosine"], 1.0)
    np.testing.assert_allclose(ps["attn_pooled_cosine"], 1.0)
    np.testing.assert_allclose(ps["attention_mass"], 1.0)
    assert ps["instance_top1"].tolist() == [1.0] * 4
    red, p = gather(orig, np.tile([0, 5], (4, 1)), 0)
    ps = per_sample(orig, red, p, w, 0, protos, labels)
    np.testing.assert_allclose(ps["attention_mass"], w[:, 0] + w[:, 5])
    assert (ps["feature_cosine"] < 1.0).all()


# ---- the report section through the driver ------------------------------------------------------

_VERIFY = {
    "parity": {"atol": 1e-4, "mean_atol": 1e-5, "samples": 2},
    "accuracy": {"samples_per_class": 2, "prototypes_per_class": 1, "metrics": {"feature_cosine": {"min": 0.5}}},
}  # tiny CLIP tower: >= 0.78 measured
_OFF = {"bench": {"enabled": False}, "deploy": {"bundle": False, "engines": False}}


def _recipe(tiny_models, method="fopru-rank", keep=4, **verify) -> Recipe:
    return Recipe.model_validate(
        {
            "model": str(tiny_models["clip-vision"]),
            "task": "visual-tokens",
            "vision": {"feature_layer": -2},
            "reduction": {"method": method, "keep": keep},
            "verify": {**_VERIFY, **verify},
            **_OFF,
        }
    )


def test_report_has_baselines_at_the_same_budget(tiny_models, tmp_path):
    res = run(_recipe(tiny_models, "uniform-spatial"), tiny_models["vit"].parent, tmp_path / "o", label="x.yaml")
    rep = res.report
    assert res.exit_code == 0, rep["failures"]
    assert validate_report(rep) == []
    b = rep["baselines"]
    k = rep["reduction"]["visual_tokens_out"]
    assert b["budget"]["visual_tokens_kept"] == k == 4
    assert b["data"]["samples"] == rep["accuracy"]["samples"]
    rnd, uni = b["baselines"]["random"], b["baselines"]["uniform"]
    assert len(rnd["seeds"]) == 5 and len(set(rnd["seeds"])) == 5
    for m in ("feature_cosine", "attn_pooled_cosine", "instance_top1"):
        assert len(rnd["metrics"][m]["values"]) == 5 and rnd["metrics"][m]["sd"] >= 0
        assert b["method"]["metrics"][m] == pytest.approx(rep["accuracy"]["metrics"][m]["reduced"])
        assert m in b["margins"] and b["margins"][m]["ci"][0] <= b["margins"][m]["margin"] <= b["margins"][m]["ci"][1]
    # the method IS the uniform lattice: its figures equal the uniform baseline's (same crops, same K)
    for m in ("feature_cosine", "attn_pooled_cosine"):
        assert uni["metrics"][m]["mean"] == pytest.approx(b["method"]["metrics"][m], abs=1e-5)
    assert uni["metrics"]["instance_top1"]["mean"] == pytest.approx(b["method"]["metrics"]["instance_top1"], abs=0.1)
    assert "attention_mass" not in b["margins"]  # information only, never compared
    assert b["gate"] is None
    md = (res.out_dir / "report.md").read_text()
    assert "## Against baselines at the same budget" in md and "random" in md and "uniform" in md


def test_vs_baselines_gate_fails_with_exit_4(tiny_models, tmp_path):
    recipe = _recipe(tiny_models, vs_baselines={"min_margin": 0.5, "bound": "estimate", "metrics": ["feature_cosine"]})
    res = run(recipe, tiny_models["vit"].parent, tmp_path / "o", label="x.yaml")
    assert res.exit_code == 4
    assert res.report["baselines"]["gate"]["passed"] is False
    assert any(f.startswith("vs_baselines: feature_cosine") for f in res.report["failures"])
    assert res.report["accuracy"]["metrics"]["feature_cosine"]["passed"] is True  # only the gate failed


def test_baselines_can_be_switched_off(tiny_models, tmp_path):
    recipe = _recipe(tiny_models, baselines={"enabled": False})
    res = run(recipe, tiny_models["vit"].parent, tmp_path / "o", label="x.yaml")
    assert res.exit_code == 0 and res.report.get("baselines") is None
