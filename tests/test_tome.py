"""ToMe (token merging): the static one-hot/MatMul merge against a plain-PyTorch ``scatter_reduce``
reference written from the paper (tests only), the exported graph against that reference on the real
DINOv2-S, no Scatter op in the graph, the FLOP budget of the recipe, bad input, and the recipe
converting end to end with parity passed."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO, group
from test_cli_bad_input import assert_one_line_error, recipe, run_cli, write

from tokexport.adapters import adapter_for
from tokexport.data import Preprocess, natural_images
from tokexport.flops import encoder_flops
from tokexport.recipe import load_recipe
from tokexport.reduce import METHODS
from tokexport.reduce.schedule import plan
from tokexport.reduce.tome import bipartite_merge
from tokexport.stages.runners import OrtRunner

TOME_RECIPE = REPO / "recipes" / "dinov2-small-tome.yaml"
ZT_RECIPE = REPO / "recipes" / "dinov2-small-zero-tprune.yaml"


# --- reference: ToMe as in the paper, with scatter_reduce (never exported by tokexport) -------------


def reference_matching(metric: torch.Tensor, r: int, class_token: bool = True, distill_token: bool = False):
    """Bipartite soft matching: A = even positions, B = odd; protected tokens get -inf similarity.
    Returns ``merge(x, mode)`` that sums/averages the r most similar A tokens into their B partners."""
    protected = int(class_token) + int(distill_token)
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    if class_token:
        scores[:, 0, :] = -math.inf
    if distill_token:
        scores[:, :, 0] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edges = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edges[:, r:], edges[:, :r]
    dst_idx = node_idx[..., None].gather(1, src_idx)
    if class_token:
        unm_idx = unm_idx.sort(dim=1)[0]

    def merge(x: torch.Tensor, mode: str) -> torch.Tensor:
        src, dst = x[:, ::2], x[:, 1::2]
        n, t1, c = src.shape
        unm = src.gather(1, unm_idx.expand(n, t1 - r, c))
        src = src.gather(1, src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(1, dst_idx.expand(n, r, c), src, reduce=mode)
        if distill_token:
            return torch.cat([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], dim=1)
        return torch.cat([unm, dst], dim=1)

    return merge


def reference_merge_wavg(merge, x: torch.Tensor, size: torch.Tensor | None):
    size = torch.ones_like(x[..., :1]) if size is None else size
    x = merge(x * size, "sum")
    size = merge(size, "sum")
    return x / size, size


@torch.no_grad()
def reference_dinov2_tome(model, pixel_values: torch.Tensor, r: list[int], prop_attn: bool = True):
    """DINOv2 forward with ToMe, from the block's parameters: eager attention with + log(size) on the logits,
    merge between attention and MLP."""
    x = model.embeddings(pixel_values)
    size = None
    for blk, r_i in zip(model.encoder.layer, r):
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
        if r_i > 0:
            x, size = reference_merge_wavg(reference_matching(k.mean(dim=1), r_i), x, size)
        x = x + blk.layer_scale2(blk.mlp(blk.norm2(x)))
    x = model.layernorm(x)
    return {"last_hidden_state": x, "pooler_output": x[:, 0]}


def scatter_nodes(model: onnx.ModelProto) -> list[str]:
    """Every Scatter-family node (ScatterElements, ScatterND, Scatter), including in subgraphs."""
    found = []
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if node.op_type.startswith("Scatter"):
                found.append(f"{node.op_type} {node.name}")
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return found


# --- the static merge against the reference ---------------------------------------------------------


@pytest.mark.parametrize("n_prefix", [1, 2])
@pytest.mark.parametrize("n,r", [(17, 1), (17, 5), (18, 8), (33, 15)])
def test_static_merge_equals_scatter_reduce_reference(n_prefix, n, r):
    assert r <= (n - n_prefix) // 2  # every case is within ToMe's 50% limit (beyond it: test below)
    g = torch.Generator().manual_seed(n * 100 + r)
    x = torch.randn(3, n, 16, generator=g)
    keys = torch.randn(3, 4, n, 8, generator=g)
    size = torch.randint(1, 5, (3, n, 1), generator=g).float()
    size[:, :n_prefix] = 1  # prefix tokens are never merged
    for s in (None, size):
        got, got_size = bipartite_merge(x, keys, s, n_prefix, r)
        merge = reference_matching(keys.mean(dim=1), r, class_token=True, distill_token=n_prefix == 2)
        want, want_size = reference_merge_wavg(merge, x, s)
        assert got.shape == (3, n - r, 16)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got_size, want_size, atol=0, rtol=0)
        torch.testing.assert_close(got[:, :n_prefix], x[:, :n_prefix], atol=0, rtol=0)
        # a size-weighted mean keeps the size-weighted sum of the tokens
        total = s if s is not None else torch.ones_like(size)
        torch.testing.assert_close((got * got_size).sum(1), (x * total).sum(1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("n_prefix", [1, 2])
def test_merge_beyond_half_the_tokens_is_refused(n_prefix):
    n = 17
    limit = min(len(range(n_prefix + n_prefix % 2, n, 2)), len(range(n_prefix + 1 - n_prefix % 2, n, 2)))
    x, keys = torch.randn(1, n, 8), torch.randn(1, 2, n, 4)
    assert bipartite_merge(x, keys, None, n_prefix, limit)[0].shape == (1, n - limit, 8)
    with pytest.raises(ValueError, match="outside"):
        bipartite_merge(x, keys, None, n_prefix, limit + 1)


def test_merge_zero_and_registers():
    x, keys = torch.randn(2, 21, 8), torch.randn(2, 3, 21, 4)
    same, size = bipartite_merge(x, keys, None, 1, 0)
    assert same is x and torch.equal(size, torch.ones(2, 21, 1))
    # DINOv2 with registers: CLS + 4 registers stay first and untouched; the patches lose r tokens
    out, size = bipartite_merge(x, keys, None, 5, 8)
    assert out.shape == (2, 13, 8) and torch.equal(out[:, :5], x[:, :5])
    assert float(size.sum()) == 2 * 21 and torch.equal(size[:, :5], torch.ones(2, 5, 1))
    with pytest.raises(ValueError):
        bipartite_merge(x, keys, None, 5, 9)  # 16 patches: at most 8 merges


def test_scatter_detector_catches_the_reference_merge(tmp_path):
    """The no-Scatter check can fail: ToMe's own scatter_reduce merge exports a ScatterElements."""

    class Ref(torch.nn.Module):
        def forward(self, x, keys):
            return reference_merge_wavg(reference_matching(keys.mean(dim=1), 4), x, None)[0]

    x, keys = torch.randn(1, 17, 8), torch.randn(1, 2, 17, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Ref(), (x, keys), str(tmp_path / "ref.onnx"), dynamo=False, opset_version=17)
    assert scatter_nodes(onnx.load(str(tmp_path / "ref.onnx")))


# --- FLOPs ------------------------------------------------------------------------------------------


def _dims():
    """DINOv2-S's dimensions, from the config the zoo writes for it (no checkpoint is read)."""
    from tokexport.zoo_builders import _dinov2_small_config

    return adapter_for(_dinov2_small_config()).dims()


def _flops(path: Path) -> float:
    red = load_recipe(path).reduction
    method = METHODS[red.method](red)
    return encoder_flops(_dims(), 257, 1, plan(red, 257, 1, 12), 0, method=method)["flops"]  # as the reports do


def test_recipe_flops_equal_zero_tprune_schedule():
    tome, zt = _flops(TOME_RECIPE), _flops(ZT_RECIPE)
    assert abs(tome / zt - 1) < 0.01, (tome, zt)


def test_merge_flops_count_mlp_merge_and_proportional_attention():
    d = _dims()
    cfg = METHODS["tome"].config_cls(method="tome", prune_layers=[1], r=8)
    (s,) = plan(cfg, 257, 1, 12)
    assert (s.kind, s.prop_attn, s.tokens_in, s.tokens_out) == ("merge", True, 257, 249)
    base = encoder_flops(d, 257, 1, [], 0)["flops"]
    got = encoder_flops(d, 257, 1, [s], 0)
    h, dm, m = d.hidden, d.mlp, d.heads
    mlp_saved = 2 * (2 * 8 * h * dm)  # block 1's MLP runs on 249 tokens
    later_blocks = [249] * 10  # blocks 2..11, attention and MLP on 249 tokens
    saved_later = sum(
        2 * ((4 * 257 * h * h + 2 * 257**2 * h + 2 * 257 * h * dm) - (4 * n * h * h + 2 * n * n * h + 2 * n * h * dm))
        for n in later_blocks
    )
    merge = 2 * (128 * 128 * (h // m) + 8 * 128 * (h + 1))
    bias = sum(m * n * n for n in later_blocks)
    assert got["selection_flops"] == merge + bias
    assert got["flops"] == base - mlp_saved - saved_later + merge + bias
    off = METHODS["tome"].config_cls(method="tome", prune_layers=[1], r=8, prop_attn=False)
    assert encoder_flops(d, 257, 1, plan(off, 257, 1, 12), 0)["selection_flops"] == merge


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction,needles",
    [
        ({"method": "tome", "r": 9}, ["reduction.r:", "at most half", "max 8"]),  # 16 patches at 56 px
        ({"method": "tome", "r": [4, 4, 4, 4]}, ["reduction.r[3]:", "at most half"]),  # 16 -> 12 -> 8 -> 4, then 4 > 2
        ({"method": "tome", "r": [1, 1]}, ["reduction.r:", "2 values", "4 blocks"]),
        ({"method": "tome", "prune_layers": [0], "keep_rate": 0.4}, ["reduction.keep_rate:", "at most half"]),
        ({"method": "tome", "r": 2, "keep_rate": 0.5}, ["reduction:", "either r"]),
        ({"method": "tome", "r": [2, -1, 0, 0]}, ["reduction.r[1]:", "outside 0..3839"]),
    ],
)
def test_bad_tome_schedules_exit_2_one_line(tiny_models, tmp_path, reduction, needles):
    data = recipe(tiny_models["dinov2"], reduction=reduction)
    res = run_cli("convert", str(write(tmp_path, data)), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "out").exists()


def test_tome_on_a_family_without_cls_exits_2_one_line(tiny_models, tmp_path):
    data = recipe(tiny_models["siglip-vision"], reduction={"method": "tome", "r": 2})
    res = run_cli("convert", str(write(tmp_path, data)), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, "tome", "no CLS token")
    assert not (tmp_path / "out").exists()


# --- the recipe on the real DINOv2-S ----------------------------------------------------------------


@pytest.fixture
def converted(shipped) -> Path:
    """The shipped ToMe recipe as shipped (the session's one conversion: full accuracy set, baselines gate,
    bench and deploy)."""
    conv = shipped("dinov2-small-tome")
    assert conv.exit_code == 0, conv.stdout + conv.stderr
    return conv.out_dir


@pytest.mark.real_model
@group("dinov2-small-tome")
def test_recipe_converts_with_parity_passed(converted):
    rep = json.loads((converted / "report.json").read_text())
    assert rep["passed"] and rep["parity"]["passed"] and rep["parity_baseline"]["passed"]
    sched = rep["reduction"]["schedule"]
    assert [s["layer"] for s in sched] == list(range(12)) and {s["kind"] for s in sched} == {"merge"}
    assert sched[-1]["tokens_out"] == 257 - 12 * 9
    assert rep["export"]["outputs"]["last_hidden_state"] == ["batch", 149, 384]
    assert rep["trt_check"]["errors"] == 0, rep["trt_check"]
    assert 0.95 <= rep["accuracy"]["metrics"]["feature_cosine"]["reduced"] < 1.0


@pytest.mark.real_model
@group("dinov2-small-tome")
def test_exported_graph_has_no_scatter(converted):
    assert scatter_nodes(onnx.load(str(converted / "model.onnx"))) == []


@pytest.mark.real_model
@group("dinov2-small-tome")
def test_exported_graph_equals_scatter_reduce_reference_on_real_images(converted):
    from tokexport.load import load_model

    lm = load_model("dinov2-small", REPO, None, "auto", 224)
    pre = Preprocess(224, lm.mean, lm.std)
    x = np.stack([pre.center(img) for _, img in natural_images(include_optional=False)[:6]]).astype(np.float32)
    r = load_recipe(TOME_RECIPE).reduction.r
    want = reference_dinov2_tome(lm.model, torch.from_numpy(x), [r] * 12)
    got = OrtRunner(converted / "model.onnx").infer({"pixel_values": x})
    for name in ("last_hidden_state", "pooler_output"):
        assert got[name].shape == tuple(want[name].shape)
        assert np.abs(got[name] - want[name].numpy()).max() <= 1e-4, name
    # proportional attention is in the graph: the reference without it differs
    plain = reference_dinov2_tome(lm.model, torch.from_numpy(x), [r] * 12, prop_attn=False)
    assert np.abs(got["pooler_output"] - plain["pooler_output"].numpy()).max() > 1e-3
