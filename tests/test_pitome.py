"""PiToMe: the static merge (TopK argsort, GatherElements, one-hot MatMul) against a plain-PyTorch reference of
the official timm/DeiT path (argsort, index gathers, ``scatter_reduce``; written for this test from the published
algorithm, tests only), on random inputs and through a tiny DINOv2 (PyTorch and the exported graph); the schedule
(r = floor(T - T*rho), margins, bsm blocks), bad input, and the shipped recipe on the real DINOv2-S."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, group
from graph_checks import assert_static_and_trt_ready
from test_cli_bad_input import assert_one_line_error, recipe, run_cli, write

from tokexport.recipe import load_recipe
from tokexport.reduce import METHODS
from tokexport.reduce.patch import reduced
from tokexport.reduce.pitome import PiToMe, PiToMeConfig, margin_at, pitome_merge
from tokexport.reduce.schedule import plan

RECIPE = REPO / "recipes" / "dinov2-small-pitome.yaml"


# --- reference: the official algorithm, loops and scatter_reduce (never exported) ---------------------------


def reference_pitome(metric: torch.Tensor, r: int, margin: float, class_token: bool, bsm: bool, alpha=1.0):
    """The merge function of one official PiToMe step (``pitome`` or ``pitome_bsm``), batch element by element."""
    if class_token:
        metric = metric[:, 1:]
    plans = []
    for m in metric:  # one image at a time
        m = F.normalize(m, p=2, dim=-1)
        sim = m @ m.T
        energy = F.elu(sim - margin, alpha=alpha).mean(dim=-1)
        order = torch.argsort(energy, descending=True)
        if bsm:
            a, b = order[0::2], order[1::2]
            scores = sim[a][:, b]
            best, partner = scores.max(dim=-1)
            edges = torch.argsort(best, descending=True)
            plans.append(("bsm", a, b, edges[r:], edges[:r], partner[edges[:r]]))
        else:
            a, b, protected = order[: 2 * r][0::2], order[: 2 * r][1::2], order[2 * r :]
            partner = sim[a][:, b].max(dim=-1).indices
            plans.append(("pitome", a, b, protected, None, partner))

    def merge(x: torch.Tensor) -> torch.Tensor:  # mode "sum"
        out = []
        for i, (kind, a, b, keep, src, dst) in enumerate(plans):
            xi = x[i, 1:] if class_token else x[i]
            xa, xb = xi[a], xi[b].clone()
            if kind == "bsm":
                rest = xa[keep]
                xb = xb.scatter_reduce(0, dst[:, None].expand(-1, xi.shape[-1]), xa[src], reduce="sum")
            else:
                rest = xi[keep]
                xb = xb.scatter_reduce(0, dst[:, None].expand(-1, xi.shape[-1]), xa, reduce="sum")
            parts = ([x[i, :1]] if class_token else []) + [rest, xb]
            out.append(torch.cat(parts))
        return torch.stack(out)

    return merge


def reference_merge_wavg(merge, x, size):
    size = torch.ones_like(x[..., :1]) if size is None else size
    x = merge(x * size)
    size = merge(size)
    return x / size, size


# --- the static merge against the reference -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bsm", [False, True])
@pytest.mark.parametrize("n_prefix", [0, 1])
def test_static_merge_equals_the_reference(seed, bsm, n_prefix):
    g = torch.Generator().manual_seed(seed)
    n = 17 + seed  # odd and even token counts
    t = n - n_prefix
    r = [1, t // 4, t // 2, (t + 1) // 2 if bsm else t // 2, 3, 2][seed]
    x = torch.randn(3, n, 16, generator=g)
    keys = torch.randn(3, 4, n, 8, generator=g)  # continuous: ties have probability 0
    size = torch.randint(1, 5, (3, n, 1), generator=g).float()
    size[:, :n_prefix] = 1
    margin = [0.0, 0.25, 0.5, 0.75, 0.1, 0.6][seed]
    for s in (None, size):
        got, got_size = pitome_merge(x, keys, s, n_prefix, r, margin, 1.0, bsm=bsm)
        merge = reference_pitome(keys.mean(dim=1), r, margin, class_token=n_prefix == 1, bsm=bsm)
        want, want_size = reference_merge_wavg(merge, x, s)
        assert got.shape == (3, n - r, 16)
        torch.testing.assert_close(got_size, want_size, atol=0, rtol=0)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[:, :n_prefix], x[:, :n_prefix], atol=0, rtol=0)
        total = s if s is not None else torch.ones_like(size)
        torch.testing.assert_close((got * got_size).sum(1), (x * total).sum(1), atol=1e-4, rtol=1e-5)


def test_protection_is_what_the_energy_says():
    """The protected tokens are the low-energy (isolated) ones: with one isolated token among near-copies,
    that token survives unmerged and the near-copies merge."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 1, 8, generator=g)
    keys = base + 0.01 * torch.randn(1, 1, 9, 8, generator=g)
    keys[:, :, 5] = -base[0, 0, 0]  # token 5 (4 after the prefix) points the other way
    x = torch.arange(9, dtype=torch.float32)[None, :, None].expand(1, 9, 4).clone()
    out, size = pitome_merge(x, keys, None, 1, 3, margin=0.5, bsm=False)
    assert out.shape == (1, 6, 4)
    # 8 - 2r = 2 protected tokens, in descending energy: the isolated token (lowest energy) comes last, unmerged
    assert float(out[0, 2, 0]) == 5.0 and float(size[0, 2, 0]) == 1.0 and float(size[0, 1, 0]) == 1.0
    assert float(size[0, 3:].sum()) == 6.0  # the pool: six tokens, three A merged into the three B tokens


def test_merge_limits():
    x, keys = torch.randn(1, 18, 4), torch.randn(1, 2, 18, 4)  # 17 non-prefix tokens
    assert pitome_merge(x, keys, None, 1, 8, 0.5)[0].shape == (1, 10, 4)
    assert pitome_merge(x, keys, None, 1, 9, 0.5, bsm=True)[0].shape == (1, 9, 4)  # |A| = 9
    with pytest.raises(ValueError, match="outside"):
        pitome_merge(x, keys, None, 1, 9, 0.5)
    same, size = pitome_merge(x, keys, None, 1, 0, 0.5)
    assert same is x and torch.equal(size, torch.ones(1, 18, 1))


# --- schedule -----------------------------------------------------------------------------------------------


def test_plan_follows_the_official_ratio_rule():
    cfg = PiToMeConfig(ratio=0.9)
    stages = plan(cfg, 257, 1, 12)
    t, want = 256, []
    for _ in range(12):
        r = math.floor(t - t * 0.9)
        want.append((t + 1, t - r + 1))
        t -= r
    assert [(s.tokens_in, s.tokens_out) for s in stages] == want
    assert {s.kind for s in stages} == {"merge"} and not any(s.prop_attn for s in stages)  # official: no prop attn
    assert [s.layer for s in plan(PiToMeConfig(ratio=0.8, prune_layers=[3, 7]), 257, 1, 12)] == [3, 7]
    assert plan(PiToMeConfig(ratio=1.0), 257, 1, 12) == []
    assert [s.layer for s in plan(PiToMeConfig(ratio=[1.0] * 11 + [0.9]), 257, 1, 12)] == [11]


def test_margins_and_bsm_blocks_follow_the_official_deit_patch():
    assert [round(margin_at(0.75, i, 12), 6) for i in (0, 6, 11)] == [0.75, 0.375, 0.0625]
    m = PiToMe(PiToMeConfig(ratio=0.9))
    assert m.bsm_blocks(12) == 6 and m.bsm_blocks(5) == 3
    assert PiToMe(PiToMeConfig(ratio=0.9, bsm_blocks=0)).bsm_blocks(12) == 0


def test_knob_is_the_official_ratio():
    cfg = PiToMe.knob(None, 0.85, 12)
    assert cfg.ratio == 0.85 and cfg.keep_rate is None
    shipped = load_recipe(RECIPE).reduction
    again = PiToMe.knob(shipped, shipped.ratio, 12)
    assert again == shipped


# --- through a tiny DINOv2: PyTorch and the exported graph against the reference ---------------------------


@torch.no_grad()
def reference_dinov2_pitome(model, pixel_values, ratio: float, margin=0.75, prop_attn=False):
    """DINOv2 forward with official PiToMe merges between attention and MLP of every block (eager attention)."""
    x = model.embeddings(pixel_values)
    size = None
    blocks = model.encoder.layer
    n_bsm = math.ceil(len(blocks) * 0.5)
    for i, blk in enumerate(blocks):
        att = blk.attention
        h = blk.norm1(x)
        b, n, _ = h.shape
        heads, dh = att.num_attention_heads, att.head_dim
        q, k, v = (p(h).reshape(b, n, heads, dh).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj))
        logits = (q @ k.transpose(-1, -2)) * dh**-0.5
        if prop_attn and size is not None:
            logits = logits + size.log()[:, None, None, :, 0]
        o = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, heads * dh)
        x = x + blk.layer_scale1(att.o_proj(o))
        t = n - 1
        r = math.floor(t - t * ratio)
        if r > 0:
            m = margin - margin * (i / len(blocks))
            x, size = reference_merge_wavg(reference_pitome(k.mean(dim=1), r, m, True, bsm=i < n_bsm), x, size)
        x = x + blk.layer_scale2(blk.mlp(blk.norm2(x)))
    x = model.layernorm(x)
    return {"last_hidden_state": x, "pooler_output": x[:, 0]}


@pytest.mark.parametrize("prop_attn", [False, True])
def test_tiny_dinov2_and_its_graph_equal_the_reference(tiny_models, tmp_path, prop_attn):
    from tokexport.load import load_model
    from tokexport.stages.runners import OrtRunner
    from tokexport.tasks.vit_tokens import forward_fn

    lm = load_model(str(tiny_models["dinov2"]), REPO, None, "auto", 56)
    cfg = PiToMeConfig(ratio=0.75, prop_attn=prop_attn)
    method = METHODS["pitome"](cfg)
    stages = plan(cfg, lm.adapter.n_tokens(56), lm.adapter.n_prefix(), lm.adapter.num_layers)
    assert [s.tokens_out for s in stages] == [13, 10, 8, 7]  # 16 -> 12 -> 9 -> 7 -> 6 patches
    fn = forward_fn(lm)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 56, 56, generator=g)
    with torch.no_grad(), reduced(lm.model, lm.adapter, stages, method):
        got = fn(x)
    want = reference_dinov2_pitome(lm.model, x, 0.75, prop_attn=prop_attn)
    for name in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)
    plain = reference_dinov2_pitome(lm.model, x, 0.75, prop_attn=not prop_attn)
    assert (plain["pooler_output"] - want["pooler_output"]).abs().max() > 1e-4  # the flag does something

    from tokexport.export import export_onnx

    path = tmp_path / "pitome.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with reduced(lm.model, lm.adapter, stages, method):
            export_onnx(lm.model, fn, x[:1], path, 17, True, "auto")
    info = assert_static_and_trt_ready(path)
    assert {"Elu", "TopK", "GatherElements", "MatMul"} <= set(info["op_histogram"])
    out = OrtRunner(path).infer({"pixel_values": x.numpy()})
    for name in ("last_hidden_state", "pooler_output"):
        assert np.abs(out[name] - want[name].numpy()).max() <= 1e-4, name


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction,needles",
    [
        ({"method": "pitome", "ratio": 0.4}, ["reduction.ratio", "[0.5, 1]"]),
        ({"method": "pitome", "ratio": 0.9, "keep_rate": 0.5}, ["reduction:", "either ratio"]),
        ({"method": "pitome", "ratio": [0.9, 0.9]}, ["reduction.ratio:", "2 values", "4 blocks"]),
        ({"method": "pitome", "ratio": 0.9, "margin": 1.5}, ["reduction.margin"]),
        ({"method": "pitome", "prune_layers": [0], "keep_rate": 0.4}, ["reduction.keep_rate:", "at most half"]),
    ],
)
def test_bad_pitome_recipes_exit_2_one_line(tiny_models, tmp_path, reduction, needles):
    data = recipe(tiny_models["dinov2"], reduction=reduction)
    res = run_cli("convert", str(write(tmp_path, data)), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "out").exists()


# --- the shipped recipe on the real DINOv2-S ---------------------------------------------------------------


@pytest.mark.real_model
@group("dinov2-small-pitome")
def test_shipped_recipe_converts_static_with_parity(shipped):
    """The run's one conversion of the shipped recipe (its gate: tests/test_negative_controls_vit.py)."""
    conv = shipped("dinov2-small-pitome")
    rep = conv.report
    assert conv.exit_code == 0, rep["failures"]
    assert rep["parity"]["passed"] and rep["trt_check"]["errors"] == 0
    assert_static_and_trt_ready(conv.out_dir / "model.onnx")
    for target in ("jetpack-6.0", "jetpack-7.0"):
        chk = run_cli("check-target", str(conv.out_dir / "model.onnx"), "--target", target)
        assert chk.returncode == 0, chk.stdout + chk.stderr
