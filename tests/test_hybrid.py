"""Hybrid schedules (``method: hybrid``): every step is a registered method's own config, validated by its class
(errors name ``reduction.steps[i].field``); steps chain their token counts in block order and never share a
block; the patch runs prune and merge stages in one forward (sizes gathered with the pruned tokens, proportional
attention once sizes exist), against an eager reference built from the ToMe and DivPrune references; the graph is
static; FLOPs, describe() and the schedule are per stage; a single-method schedule is unchanged."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import REPO, group
from graph_checks import assert_static_and_trt_ready
from test_cli_bad_input import assert_one_line_error, recipe, run_cli, write
from test_tome import reference_matching, reference_merge_wavg
from test_vit_selectors import reference_divprune

from tokexport.errors import InputError
from tokexport.recipe import load_recipe, validate_recipe
from tokexport.reduce import METHODS, get_method
from tokexport.reduce.hybrid import HybridConfig
from tokexport.reduce.patch import reduced
from tokexport.reduce.schedule import plan

RECIPE = REPO / "recipes" / "dinov2-small-hybrid.yaml"
STEPS = [{"method": "tome", "prune_layers": [0, 1], "r": 2}, {"method": "divprune", "prune_layers": [2], "keep": [6]}]


def _hybrid(steps) -> HybridConfig:
    return validate_recipe("r.yaml", {"model": "m", "reduction": {"method": "hybrid", "steps": steps}}).reduction


def test_steps_chain_in_block_order():
    stages = plan(_hybrid(STEPS), 17, 1, 4)  # a tiny model: 16 patches, 4 blocks
    assert [(s.layer, s.kind, s.tokens_in, s.tokens_out, s.method, s.step) for s in stages] == [
        (0, "merge", 17, 15, "tome", 0),
        (1, "merge", 15, 13, "tome", 0),
        (2, "prune", 13, 7, "divprune", 1),
    ]
    assert stages[2].as_dict()["method"] == "divprune" and stages[2].as_dict()["step"] == 1
    single = plan(METHODS["tome"].config_cls(r=2, prune_layers=[0]), 17, 1, 4)
    assert "method" not in single[0].as_dict() and "step" not in single[0].as_dict()  # reports as before


@pytest.mark.parametrize(
    "steps,needle",
    [
        (
            [{"method": "tome", "r": 2, "prune_layrs": [0]}],
            "reduction.steps[0].prune_layrs: unknown field; did you mean 'prune_layers'?",
        ),
        (
            [{"method": "tome", "r": 2}, {"method": "dart", "prune_layers": [3], "keep_rate": 0.5, "pivots": 0}],
            "reduction.steps[1].pivots",
        ),
        ([{"method": "nope"}], "reduction.steps[0].method: 'nope' cannot be a step"),
        (
            [{"method": "hybrid", "steps": [{"method": "tome", "r": 1}]}],
            "reduction.steps[0].method: 'hybrid' cannot be a step",
        ),
        ([], "reduction.steps"),
    ],
)
def test_step_errors_name_the_step(tmp_path, steps, needle):
    p = tmp_path / "r.yaml"
    p.write_text(json.dumps({"model": "m", "reduction": {"method": "hybrid", "steps": steps}}))
    with pytest.raises(InputError) as e:
        load_recipe(p)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)


def test_the_schedule_belongs_in_the_steps():
    with pytest.raises(InputError, match="given in each step"):
        _hybrid_with_top({"prune_layers": [1]})


def _hybrid_with_top(extra):
    return validate_recipe("r.yaml", {"model": "m", "reduction": {"method": "hybrid", "steps": STEPS, **extra}})


@pytest.mark.parametrize(
    "steps,needles",
    [
        (
            [
                {"method": "divprune", "prune_layers": [2], "keep_rate": 0.5},
                {"method": "tome", "r": 1, "prune_layers": [1]},
            ],
            ["reduction.steps[1]", "block order"],
        ),
        (
            [{"method": "tome", "r": 1}, {"method": "divprune", "prune_layers": [3], "keep_rate": 0.5}],
            ["reduction.steps[1]", "block order"],
        ),  # ToMe's r without prune_layers covers every block
        (
            [
                {"method": "divprune", "prune_layers": [0], "keep_rate": 0.5},
                {"method": "tome", "r": 5, "prune_layers": [1]},
            ],
            ["reduction.steps[1].r", "at most half"],
        ),  # 8 tokens left after step 0
        ([{"method": "divprune", "prune_layers": [0], "keep_rate": 1.5}], ["reduction.steps[0].keep_rate[0]"]),
    ],
)
def test_plan_errors_name_the_step(steps, needles):
    with pytest.raises(InputError) as e:
        plan(_hybrid(steps), 17, 1, 4)
    assert all(n in str(e.value) for n in needles), str(e.value)


def test_bad_hybrid_recipe_exits_2_one_line(tiny_models, tmp_path):
    data = recipe(
        tiny_models["dinov2"],
        reduction={
            "method": "hybrid",
            "steps": [
                {"method": "divprune", "prune_layers": [2], "keep_rate": 0.5},
                {"method": "tome", "r": 1, "prune_layers": [1]},
            ],
        },
    )
    res = run_cli("convert", str(write(tmp_path, data)), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, "reduction.steps[1]", "block order")
    assert not (tmp_path / "out").exists()
    data = recipe(
        tiny_models["siglip-vision"],
        reduction={"method": "hybrid", "steps": [{"method": "tome", "r": 1, "prune_layers": [1]}]},
    )
    res = run_cli("convert", str(write(tmp_path, data)), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, "reduction.steps[0]", "no CLS token")


# --- FLOPs and describe() per stage ------------------------------------------------------------------------


def test_flops_and_describe_are_per_stage():
    from tokexport.adapters import Dims
    from tokexport.flops import encoder_flops, merge_macs

    d = Dims(hidden=32, heads=2, mlp=64, layers=4, patch=14, channels=3)
    cfg = _hybrid(STEPS)
    method = get_method("hybrid")(cfg)
    stages = plan(cfg, 17, 1, 4)
    got = encoder_flops(d, 17, 1, stages, 0, method=method)
    merges = sum(merge_macs(s, 1, d) for s in stages[:2])
    divprune = 12 * 12 * 32 + 6 * 12  # M^2 D cosines + n_keep M updates
    bias = 2 * (15**2 + 13**2 + 7**2)  # proportional attention in blocks 1, 2 and 3
    assert got["selection_flops"] == 2 * (merges + divprune) + bias
    assert [s["method"] for s in method.describe()["steps"]] == ["tome", "divprune"]
    assert method.for_stage(stages[2]).name == "divprune" and method.for_stage(stages[0]).name == "tome"


# --- through a tiny DINOv2: merge stages, then a prune stage that carries the sizes --------------------------


@torch.no_grad()
def reference_dinov2_hybrid(model, pixel_values, r_blocks: dict[int, int], prune_block: int, keep: int):
    """Eager DINOv2: ToMe merges (with proportional attention) in ``r_blocks``, then DivPrune after
    ``prune_block`` keeping ``keep`` tokens with their sizes."""
    x = model.embeddings(pixel_values)
    size = None
    for i, blk in enumerate(model.encoder.layer):
        att = blk.attention
        h = blk.norm1(x)
        b, n, _ = h.shape
        heads, dh = att.num_attention_heads, att.head_dim
        q, k, v = (p(h).reshape(b, n, heads, dh).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj))
        logits = (q @ k.transpose(-1, -2)) * dh**-0.5
        if size is not None:
            logits = logits + size.log()[:, None, None, :, 0]
        o = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, heads * dh)
        x = x + blk.layer_scale1(att.o_proj(o))
        if i in r_blocks:
            x, size = reference_merge_wavg(reference_matching(k.mean(dim=1), r_blocks[i]), x, size)
        x = x + blk.layer_scale2(blk.mlp(blk.norm2(x)))
        if i == prune_block:
            idx = torch.tensor([[0] + [j + 1 for j in reference_divprune(x[row, 1:], keep)] for row in range(b)])
            x = torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))
            size = torch.gather(size, 1, idx[:, :, None])
    x = model.layernorm(x)
    return {"last_hidden_state": x, "pooler_output": x[:, 0]}


def test_tiny_dinov2_hybrid_equals_the_reference_and_exports_static(tiny_models, tmp_path):
    from tokexport.export import export_onnx
    from tokexport.load import load_model
    from tokexport.stages.runners import OrtRunner
    from tokexport.tasks.vit_tokens import forward_fn

    lm = load_model(str(tiny_models["dinov2"]), REPO, None, "auto", 56)
    cfg = _hybrid(STEPS)
    method = get_method("hybrid")(cfg)
    stages = plan(cfg, lm.adapter.n_tokens(56), lm.adapter.n_prefix(), lm.adapter.num_layers)
    fn = forward_fn(lm)
    x = torch.randn(4, 3, 56, 56, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), reduced(lm.model, lm.adapter, stages, method):
        got = fn(x)
    want = reference_dinov2_hybrid(lm.model, x, {0: 2, 1: 2}, 2, 6)
    for name in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)
    assert got["last_hidden_state"].shape == (4, 7, 32)

    path = tmp_path / "hybrid.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with reduced(lm.model, lm.adapter, stages, method):
            export_onnx(lm.model, fn, x[:1], path, 17, True, "auto")
    assert_static_and_trt_ready(path)
    out = OrtRunner(path).infer({"pixel_values": x.numpy()})
    for name in ("last_hidden_state", "pooler_output"):
        assert np.abs(out[name] - want[name].numpy()).max() <= 1e-4, name


# --- the shipped recipe on the real DINOv2-S ---------------------------------------------------------------


@pytest.mark.real_model
@group("dinov2-small-hybrid")
def test_shipped_recipe_converts_static_with_parity(shipped):
    """The run's one conversion of the shipped recipe (its gate: tests/test_negative_controls_vit.py)."""
    conv = shipped("dinov2-small-hybrid")
    rep = conv.report
    assert conv.exit_code == 0, rep["failures"]
    assert rep["parity"]["passed"] and rep["trt_check"]["errors"] == 0
    assert [s["method"] for s in rep["reduction"]["schedule"]] == ["divprune"] + ["tome"] * 9
    assert rep["artifacts"]["onnx_nodes"] > rep["artifacts"]["baseline_onnx_nodes"]
    assert_static_and_trt_ready(conv.out_dir / "model.onnx")
