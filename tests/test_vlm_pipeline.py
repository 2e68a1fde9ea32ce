"""Visual-token graphs (task: visual-tokens): the unreduced graph reproduces the tower's own hidden
states, every tower × selector exports a static graph that matches PyTorch, the tiny LLaVA twins of
the user recipes run end to end (export, parity, generation), and bad visual recipes fail cleanly."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO
from test_cli_bad_input import assert_nothing_written, assert_one_line_error, recipe, run_cli, write

from tokexport.export import export_onnx
from tokexport.load import load_model
from tokexport.stages.runners import OrtRunner
from tokexport.vlm.graph import VisualTokenGraph
from tokexport.vlm.select import VISUAL_METHODS, VisualLayout

TOWERS = ["dinov2", "clip-vision", "siglip-vision"]


def _tower(tiny_models, kind):
    return load_model(str(tiny_models[kind]), tiny_models[kind].parent, task="feature-extraction")


@pytest.mark.parametrize("kind", TOWERS)
@pytest.mark.parametrize("feature_layer", [-2, 2, -1])
def test_unreduced_graph_is_the_towers_hidden_state(tiny_models, kind, feature_layer):
    lm = _tower(tiny_models, kind)
    g = lm.adapter.patch_size
    n = lm.image_size // g
    lay = VisualLayout(views=1, grid=(n, n))
    graph = VisualTokenGraph(lm.model, lm.adapter, lay, lm.image_size, feature_layer, "default")
    x = torch.randn(2, 3, lm.image_size, lm.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, pos = graph(x)
        ref = lm.model(pixel_values=x, output_hidden_states=True, **lm.adapter.forward_kwargs(lm.image_size))
    want = ref.hidden_states[feature_layer][:, lm.adapter.n_prefix() :]
    torch.testing.assert_close(tokens, want, atol=1e-5, rtol=1e-5)
    assert pos.tolist() == [list(range(n * n))] * 2
    # the tower is untouched afterwards
    assert len(lm.adapter.layers(lm.model)) == lm.adapter.num_layers


@pytest.mark.parametrize("kind", TOWERS)
# methods with further graph inputs (cdpruner: a CLIP checkpoint and the instruction): tests/test_vlm_cdpruner.py
@pytest.mark.parametrize("name", sorted(n for n, c in VISUAL_METHODS.items() if "instruction" not in c.needs))
def test_every_tower_and_selector_exports_static_and_matches(tiny_models, kind, name, tmp_path):
    lm = _tower(tiny_models, kind)
    n = lm.image_size // lm.adapter.patch_size
    lay = VisualLayout(views=5, grid=(n, n), sub_grid=(2, 2))
    cls = VISUAL_METHODS[name]
    fields = cls.config_cls.model_fields
    cfg = {"method": name, "keep": 2 * n * 2}  # a multiple of the row width
    if "source" in fields and lm.adapter.n_prefix() == 0:
        cfg["source"] = "received"  # SigLIP has no CLS token
    sel = cls(cls.config_cls(**cfg))
    k = sel.config.resolve_k(lay)
    graph = VisualTokenGraph(lm.model, lm.adapter, lay, lm.image_size, -2, "default", None, sel, k)
    x = torch.randn(1, 5, 3, lm.image_size, lm.image_size, generator=torch.Generator().manual_seed(1))

    def fn(v):
        t, p = graph(v)
        return {"visual_tokens": t, "positions": p}

    export_onnx(graph, fn, x, tmp_path / "v.onnx", 17, dynamic_batch=True)
    m = onnx.load(tmp_path / "v.onnx")
    assert not [nd for nd in m.graph.node if nd.op_type == "NonZero"]
    dims = [d.dim_value or d.dim_param for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[1] == k
    x2 = torch.randn(3, 5, 3, lm.image_size, lm.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = fn(x2)
    out = OrtRunner(tmp_path / "v.onnx").infer({"pixel_values": x2.numpy()})
    np.testing.assert_array_equal(out["positions"], ref["positions"].numpy())
    np.testing.assert_allclose(out["visual_tokens"], ref["visual_tokens"].numpy(), atol=1e-4)
    assert (np.diff(out["positions"], axis=1) > 0).all()


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    env = {"TOKEXPORT_MODELS_DIR": str(d)}
    for name in ("tiny-llava", "tiny-llava-next"):
        res = run_cli("models", "fetch", name, env=env)
        assert res.returncode == 0, res.stderr
    return env


@pytest.mark.parametrize("name,views,k", [("llava-1.5-tiny-fopru-rank", 1, 4), ("llava-next-tiny-hired", 5, 20)])
def test_llava_twin_recipes_end_to_end(twins, tmp_path, name, views, k):
    out = tmp_path / "o"
    res = run_cli("convert", str(REPO / "recipes" / "tiny" / f"{name}.yaml"), "--out", str(out), env=twins)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["kind"] == "visual-tokens"
    assert rep["reduction"]["layout"]["views"] == views
    assert rep["reduction"]["visual_tokens_in"] == views * 16 and rep["reduction"]["visual_tokens_out"] == k
    assert rep["parity"]["passed"] and rep["parity_baseline"]["passed"]
    assert rep["export"]["outputs"]["visual_tokens"][1] == k and rep["export"]["outputs"]["positions"] == ["batch", k]
    assert 0 < rep["llm"]["prefill_flops_saved"] < 1
    gen = rep["accuracy"]["generation"]
    assert len(gen["samples"]) == 2 and all(len(s["full"]) == len(s["reduced"]) == 4 for s in gen["samples"])
    m = rep["accuracy"]["metrics"]
    assert {
        "feature_cosine",
        "attn_pooled_cosine",
        "instance_top1",
        "attention_mass",
        "generation_exact_match",
        "generation_token_agreement",
    } <= set(m)
    assert 0 < m["attention_mass"]["value"] < 1
    assert "Visual tokens" in (out / "report.md").read_text()


def _visual(model, **over):
    base = {"task": "visual-tokens", "vision": {"feature_layer": -2}, "reduction": {"method": "fopru-rank", "keep": 4}}
    r = recipe(model, **{"reduction": base["reduction"], "task": "visual-tokens", "vision": base["vision"]})
    for key, v in over.items():
        cur = r
        *parents, last = key.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = v
    return r


@pytest.mark.parametrize(
    "over,needles",
    [
        ({"task": "auto"}, ["fopru-rank", "task: visual-tokens"]),
        ({"reduction": {"method": "zero-tprune", "prune_layers": [1], "keep_rate": 0.5}}, ["visual-token method"]),
        ({"reduction": {"method": "fopru-row", "keep": 5}}, ["keep", "whole rows", "nearest valid"]),
        ({"reduction": {"method": "fopru-rank", "keep": 4, "select_layer": 3}}, ["deeper than the feature layer"]),
        ({"vision.grid": [2, 3]}, ["square grids"]),
        ({"verify.accuracy.metrics": {"top1_agreement": {"min": 0.5}}}, ["top1_agreement", "not measured"]),
        ({"reduction": {"method": "fopru-rank", "keep": 400}}, ["keep", "exceeds"]),
    ],
)
def test_bad_visual_recipes(tmp_path, tiny_models, over, needles):
    out = tmp_path / "out"
    p = write(tmp_path, _visual(tiny_models["dinov2"], **over))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), *needles)
    assert_nothing_written(out)


def test_siglip_needs_received_significance(tmp_path, tiny_models):
    out = tmp_path / "out"
    p = write(tmp_path, _visual(tiny_models["siglip-vision"]))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), "CLS")
    assert_nothing_written(out)


def test_generation_needs_llava(tmp_path, tiny_models):
    out = tmp_path / "out"
    p = write(tmp_path, _visual(tiny_models["dinov2"], **{"verify.generation": {"prompts": ["hi"]}}))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), "verify.generation", "LLaVA")
    assert_nothing_written(out)


def test_feature_select_full_keeps_each_views_cls_first(tiny_models):
    lm = _tower(tiny_models, "clip-vision")
    n = lm.image_size // lm.adapter.patch_size
    lay = VisualLayout(views=5, grid=(n, n), sub_grid=(2, 2))
    sel = VISUAL_METHODS["fopru-rank"](VISUAL_METHODS["fopru-rank"].config_cls(method="fopru-rank", keep=6))
    graph = VisualTokenGraph(lm.model, lm.adapter, lay, lm.image_size, -2, "full", None, sel, 6)
    x = torch.randn(2, 5, 3, lm.image_size, lm.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens, pos = graph(x)
        ref = lm.model(
            pixel_values=x.reshape(-1, 3, lm.image_size, lm.image_size),
            output_hidden_states=True,
            **lm.adapter.forward_kwargs(lm.image_size),
        ).hidden_states[-2]
    assert tokens.shape[1] == 5 + 6 and pos.shape[1] == 5 + 6
    assert (pos[:, :5] == -1).all() and (pos[:, 5:] >= 0).all()
    # the first five tokens are the five views' CLS tokens, in view order
    torch.testing.assert_close(tokens[:, :5], ref[:, 0].reshape(2, 5, -1), atol=1e-5, rtol=1e-5)
