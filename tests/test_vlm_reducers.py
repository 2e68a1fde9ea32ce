"""The visual-token methods that read more than a significance map — DivPrune, DART (embedding-level),
VisionZip (merging) — against plain-PyTorch references of their official algorithms
(tests/visual_reference.py: greedy loops as Python loops), on random inputs over several seeds and
layouts: the static tensor code picks the SAME indices (and VisionZip builds the same merged tokens);
then the same modules exported to ONNX: no control flow, no scatter, no NonZero, constant TopK K < 3840,
clean for the jetpack-6.0 and jetpack-7.0 targets, and ONNX Runtime reproduces PyTorch.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from visual_reference import (
    cdpruner_reference,
    dart_reference,
    divprune_reference,
    dpp_map_reference,
    visionzip_reference,
)

from tokexport.export import pin_shapes, run_exporter
from tokexport.onnx_tools import check_target
from tokexport.vlm.select import VISUAL_METHODS, VisualLayout

FORBIDDEN = {"Loop", "If", "Scan", "ScatterND", "ScatterElements", "Scatter", "NonZero"}

LAYOUTS = {
    "1view-4x4": VisualLayout(1, (4, 4)),
    "1view-6x5": VisualLayout(1, (6, 5)),
    "1+2x2": VisualLayout(5, (4, 4), (2, 2)),
}


def make(name: str, **kw):
    cls = VISUAL_METHODS[name]
    return cls(cls.config_cls(method=name, **kw))


def rand_tokens(layout: VisualLayout, b: int, seed: int, d: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, layout.total, d, generator=g)


class _Reduce(torch.nn.Module):
    """tokens (+ signals) → (tokens, positions): the method as the graph runs it, without a tower."""

    def __init__(self, selector, layout, k, signal_names=()):
        super().__init__()
        self.selector, self.layout, self.k, self.signal_names = selector, layout, k, tuple(signal_names)

    def forward(self, tokens, *signals):
        return self.selector.reduce(tokens, dict(zip(self.signal_names, signals)), self.layout, self.k)


def export_and_check(module: _Reduce, example: tuple, path) -> onnx.ModelProto:
    """Export as tokexport does (torchscript exporter, batch the only dynamic axis, I/O shapes pinned and
    checked by strict shape inference), then the static rules and both Jetson targets."""
    names = ["tokens", *module.signal_names]
    outs = ["visual_tokens", "positions"]
    m = run_exporter(module, example, path, 17, "torchscript", names, outs, True)
    with torch.no_grad():
        ref = module(*example)
    shapes = {n: ["batch", *t.shape[1:]] for n, t in zip([*names, *outs], [*example, *ref])}
    pin_shapes(m, path, shapes)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & FORBIDDEN, ops & FORBIDDEN
    consts = {t.name: t for t in model.graph.initializer}
    consts.update({o: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant" for o in n.output})
    for n in model.graph.node:
        if n.op_type == "TopK":
            assert n.input[1] in consts, f"TopK {n.name} has a non-constant K"
            assert int(onnx.numpy_helper.to_array(consts[n.input[1]]).reshape(-1)[0]) < 3840
    for target in ("jetpack-6.0", "jetpack-7.0"):
        res = check_target(path, target, lint=False)
        assert res.passed, (target, [str(f) for f in res.findings])
    return model


# ---------------------------------------------------------------------------------------------- DivPrune


@pytest.mark.parametrize(
    "lay_name,k", [("1view-4x4", 1), ("1view-4x4", 6), ("1view-6x5", 17), ("1+2x2", 20), ("1+2x2", 79)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divprune_picks_the_reference_indices(lay_name, k, seed):
    lay = LAYOUTS[lay_name]
    x = rand_tokens(lay, 3, seed)
    sel = make("divprune", keep=k)
    tokens, pos = sel.reduce(x, {}, lay, k)
    assert pos.shape == (3, k) and pos.dtype == torch.int64
    for b in range(3):
        assert pos[b].tolist() == divprune_reference(x[b], k)
        torch.testing.assert_close(tokens[b], x[b, pos[b]])


def test_divprune_is_not_a_spatial_or_norm_rule():
    """Clustered tokens: K = number of clusters keeps exactly one token per cluster (what max–min does and
    a top-norm or lattice rule does not)."""
    lay = VisualLayout(1, (4, 4))
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 8, generator=g) * 5
    member = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 3])  # uneven clusters
    x = (centres[member] + 0.05 * torch.randn(16, 8, generator=g)).unsqueeze(0)
    _, pos = make("divprune", keep=4).reduce(x, {}, lay, 4)
    assert sorted(member[pos[0]].tolist()) == [0, 1, 2, 3]


def test_divprune_guards_already_picked_tokens():
    """Fewer distinct tokens than K (a blank image): the official greedy could pick a token twice; the
    static graph masks picked tokens, so K distinct positions come out (the documented deviation)."""
    lay = VisualLayout(1, (4, 4))
    x = torch.ones(2, 16, 6)
    x[:, 5] = -1.0  # two distinct directions only
    _, pos = make("divprune", keep=6).reduce(x, {}, lay, 6)
    assert all(len(set(r)) == 6 for r in pos.tolist())
    assert divprune_reference(x[0], 6).count(divprune_reference(x[0], 6)[0]) > 1  # the official form repeats


def test_divprune_checks_its_budget_and_input():
    lay = LAYOUTS["1view-4x4"]
    with pytest.raises(ValueError, match="outside"):
        make("divprune", keep=4).reduce(rand_tokens(lay, 1, 0), {}, lay, 17)
    with pytest.raises(ValueError, match=r"tokens \[B, 16, D\]"):
        make("divprune", keep=4).reduce(torch.randn(1, 15, 4), {}, lay, 4)
    with pytest.raises(NotImplementedError, match="use reduce"):
        make("divprune", keep=4).select(None, None, lay, 4)


@pytest.mark.parametrize("lay_name,k", [("1view-6x5", 8), ("1+2x2", 20)])
def test_divprune_exports_static_and_matches(lay_name, k, tmp_path):
    lay = LAYOUTS[lay_name]
    module = _Reduce(make("divprune", keep=k), lay, k)
    model = export_and_check(module, (rand_tokens(lay, 2, 0),), tmp_path / "d.onnx")
    assert sum(n.op_type == "ArgMax" for n in model.graph.node) == k  # one ArgMax per greedy step
    sess = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    for seed, b in [(5, 1), (6, 4)]:
        x = rand_tokens(lay, b, seed)
        got_t, got_p = sess.run(None, {"tokens": x.numpy()})
        want_t, want_p = module(x)
        np.testing.assert_array_equal(got_p, want_p.numpy())
        np.testing.assert_allclose(got_t, want_t.numpy(), atol=1e-6)
        assert [divprune_reference(x[i], k) for i in range(b)] == got_p.tolist()


# ---------------------------------------------------------------------------------------------- VisionZip


def rand_signals(layout: VisualLayout, b: int, seed: int, dh: int = 6):
    g = torch.Generator().manual_seed(seed)
    sig = torch.softmax(torch.randn(b, layout.views, layout.patches, generator=g) * 3, dim=-1)
    keys = torch.randn(b, layout.views, layout.patches, dh, generator=g)
    return sig, keys


def visionzip_expected(x, sig, keys, layout, k, share):
    """Per image: the reference run on every view with the static plan's per-view (D, C)."""
    from tokexport.vlm.visionzip import VisionZipConfig, plan_views

    plans = plan_views(VisionZipConfig(keep=k, contextual_share=share), layout, k)
    p = layout.patches
    pos, toks = [], []
    for pl in plans:
        sl = slice(pl.view * p, (pl.view + 1) * p)
        dom, dom_t, tgt, ctx = visionzip_reference(x[sl], sig[pl.view], keys[pl.view], pl.dominant, pl.contextual)
        pos += [pl.view * p + i for i in dom + tgt]
        toks += [*dom_t, *ctx]
    order = sorted(range(len(pos)), key=lambda i: pos[i])
    return [pos[i] for i in order], torch.stack([toks[i] for i in order])


@pytest.mark.parametrize(
    "lay_name,k,share",
    [
        ("1view-4x4", 8, 0.25),
        ("1view-6x5", 13, 10 / 64),
        ("1view-6x5", 30, 0.5),
        ("1view-4x4", 1, 0.5),
        ("1+2x2", 24, 10 / 64),
        ("1+2x2", 7, 0.3),
        ("1+2x2", 64, 0.2),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_visionzip_matches_the_reference(lay_name, k, share, seed):
    lay = LAYOUTS[lay_name]
    x = rand_tokens(lay, 3, seed)
    sig, keys = rand_signals(lay, 3, seed + 10)
    sel = make("visionzip", keep=k, contextual_share=share)
    tokens, pos = sel.reduce(x, {"select": sig, "keys": keys}, lay, k)
    assert tokens.shape == (3, k, x.shape[-1]) and pos.shape == (3, k)
    for b in range(3):
        want_pos, want_tok = visionzip_expected(x[b], sig[b], keys[b], lay, k, share)
        assert pos[b].tolist() == want_pos
        torch.testing.assert_close(tokens[b], want_tok, atol=1e-5, rtol=1e-5)
    # select() gives the same positions from the significance alone (what the baselines and packing read)
    assert torch.equal(sel.select(sig, None, lay, k), pos)


def test_visionzip_default_split_is_the_official_one():
    """64 tokens: 54 dominant patches + 10 contextual (the official 54:10 with CLS's slot as a patch)."""
    from tokexport.vlm.visionzip import OFFICIAL_SHARE, VisionZipConfig, plan_views

    assert VisionZipConfig(keep=64).contextual_share == OFFICIAL_SHARE == 10 / 64
    [pl] = plan_views(VisionZipConfig(keep=64), VisualLayout(1, (24, 24)), 64)
    assert (pl.dominant, pl.contextual, pl.remainder) == (54, 10, 522)
    assert pl.targets == tuple(range(0, 520, 52)) and len(pl.members) == 512
    # several views: K split evenly, each view's share split D:C
    plans = plan_views(VisionZipConfig(keep=66), VisualLayout(5, (24, 24), (2, 2)), 66)
    assert [(p.dominant, p.contextual) for p in plans] == [(12, 2)] + [(11, 2)] * 4


def test_visionzip_merges_members_into_their_most_similar_target():
    """Hand-made: one view of 8, 2 dominant (largest attention), 2 targets; the members whose keys point
    like a target's are averaged into it (target + mean of members)."""
    lay = VisualLayout(1, (2, 4))
    sig = torch.tensor([[[0.0, 0.9, 0.0, 0.0, 0.8, 0.0, 0.0, 0.0]]])
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    keys = torch.stack([e0, e1, e0, e0, e1, e1, e1, e0 + 0.1 * e1]).unsqueeze(0).unsqueeze(0)
    x = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1).repeat(1, 1, 2)
    tokens, pos = make("visionzip", keep=4, contextual_share=0.5).reduce(x, {"select": sig, "keys": keys}, lay, 4)
    # remainder [0, 2, 3, 5, 6, 7], step 3: targets 0 (e0) and 5 (e1); members 2, 3, 7 → 0; 6 → 5
    assert pos.tolist() == [[0, 1, 4, 5]]
    assert tokens[0, :, 0].tolist() == [0 + (2 + 3 + 7) / 3, 1, 4, 5 + 6]


@pytest.mark.parametrize("lay_name,k", [("1view-6x5", 12), ("1+2x2", 24)])
def test_visionzip_exports_static_and_matches(lay_name, k, tmp_path):
    lay = LAYOUTS[lay_name]
    module = _Reduce(make("visionzip", keep=k), lay, k, ("select", "keys"))
    export_and_check(module, (rand_tokens(lay, 2, 0), *rand_signals(lay, 2, 1)), tmp_path / "v.onnx")
    sess = ort.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"])
    for seed, b in [(5, 1), (6, 4)]:
        x = rand_tokens(lay, b, seed)
        sig, keys = rand_signals(lay, b, seed + 1)
        got_t, got_p = sess.run(None, {"tokens": x.numpy(), "select": sig.numpy(), "keys": keys.numpy()})
        want_t, want_p = module(x, sig, keys)
        np.testing.assert_array_equal(got_p, want_p.numpy())
        np.testing.assert_allclose(got_t, want_t.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------- DART


@pytest.mark.parametrize(
    "lay_name,k,pivots",
    [
        ("1view-4x4", 1, 4),
        ("1view-4x4", 3, 4),
        ("1view-4x4", 8, 4),
        ("1view-6x5", 17, 4),
        ("1view-6x5", 30, 2),
        ("1+2x2", 20, 4),
        ("1+2x2", 33, 8),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dart_picks_the_reference_indices(lay_name, k, pivots, seed):
    lay = LAYOUTS[lay_name]
    x = rand_tokens(lay, 3, seed)
    tokens, pos = make("dart", keep=k, pivots=pivots).reduce(x, {}, lay, k)
    assert pos.shape == (3, k)
    for b in range(3):
        assert pos[b].tolist() == dart_reference(x[b], k, pivots)
        torch.testing.assert_close(tokens[b], x[b, pos[b]])


def test_dart_counts_are_exact_and_static():
    from tokexport.vlm.dart import pivot_counts

    assert pivot_counts(64, 4) == [15, 15, 15, 15]
    assert pivot_counts(66, 4) == [16, 16, 15, 15]  # the remainder to the first pivots
    assert pivot_counts(3, 4) == [0, 0, 0] and pivot_counts(5, 4) == [1, 0, 0, 0]
    for k in range(1, 50):
        for p in (1, 2, 4, 7):
            assert min(p, k) + sum(pivot_counts(k, p)) == k


def test_dart_keeps_the_pivot_and_the_tokens_least_like_it():
    """One pivot (largest L1 norm) and 2 more: the two tokens pointing away from it, not the near-copies."""
    lay = VisualLayout(1, (2, 3))
    x = torch.tensor([[[3.0, 0.0], [1.0, 0.1], [0.9, -0.1], [-1.0, 0.2], [0.1, 1.0], [-0.8, -0.5]]])
    _, pos = make("dart", keep=3, pivots=1).reduce(x, {}, lay, 3)
    assert pos.tolist() == [[0, 3, 5]]


@pytest.mark.parametrize("lay_name,k", [("1view-6x5", 10), ("1+2x2", 26)])
def test_dart_exports_static_and_matches(lay_name, k, tmp_path):
    lay = LAYOUTS[lay_name]
    module = _Reduce(make("dart", keep=k), lay, k)
    model = export_and_check(module, (rand_tokens(lay, 2, 0),), tmp_path / "dart.onnx")
    assert sum(n.op_type == "TopK" for n in model.graph.node) == 2 + 4  # pivots, one per pivot, final sort
    sess = ort.InferenceSession(str(tmp_path / "dart.onnx"), providers=["CPUExecutionProvider"])
    for seed, b in [(5, 1), (6, 4)]:
        x = rand_tokens(lay, b, seed)
        got_t, got_p = sess.run(None, {"tokens": x.numpy()})
        want_t, want_p = module(x)
        np.testing.assert_array_equal(got_p, want_p.numpy())
        np.testing.assert_allclose(got_t, want_t.numpy(), atol=1e-6)
        assert [dart_reference(x[i], k, 4) for i in range(b)] == got_p.tolist()


# ---------------------------------------------------------------------------------------------- CDPruner


# token width 48 > the 30 tokens of a view: a full-rank kernel, as LLaVA's 4096-d tokens over 576 give
def rand_cdpruner_inputs(layout: VisualLayout, b: int, seed: int, e: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, layout.total, e, generator=g), torch.randn(b, e, generator=g)


def test_dpp_greedy_matches_the_reference_loop():
    from tokexport.vlm.cdpruner import dpp_greedy, dpp_kernel, relevance

    for seed in range(4):
        lay = LAYOUTS["1view-6x5"]
        x = rand_tokens(lay, 3, seed, d=48)
        img, txt = rand_cdpruner_inputs(lay, 3, seed + 50)
        kern = dpp_kernel(x, relevance(img, txt))
        for k in (1, 7, 29):
            got = dpp_greedy(kern, k)
            assert got.tolist() == [dpp_map_reference(kern[b], k) for b in range(3)]


@pytest.mark.parametrize("lay_name,k", [("1view-4x4", 5), ("1view-6x5", 12), ("1+2x2", 20), ("1+2x2", 23)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cdpruner_picks_the_reference_indices(lay_name, k, seed):
    from tokexport.vlm.cdpruner import cdpruner_positions
    from tokexport.vlm.select import split_evenly

    lay = LAYOUTS[lay_name]
    x = rand_tokens(lay, 3, seed, d=48)
    img, txt = rand_cdpruner_inputs(lay, 3, seed + 7)
    pos = cdpruner_positions(x, img, txt, lay, k)
    for b in range(3):
        assert pos[b].tolist() == cdpruner_reference(x[b], img[b], txt[b], split_evenly(k, lay.views), lay.patches)


def test_cdpruner_relevance_steers_the_selection():
    """Two identical-looking halves; the instruction points at one (in CLIP's space, with CDPruner's
    negated sign): every pick comes from the relevant half."""
    from tokexport.vlm.cdpruner import cdpruner_positions

    lay = VisualLayout(1, (2, 4))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 6, generator=g)
    img = torch.zeros(1, 8, 2)
    img[0, :4, 0], img[0, 4:, 1] = 1.0, 1.0
    img = img + 0.01 * torch.randn(1, 8, 2, generator=g)
    txt = torch.tensor([[-1.0, 0.0]])  # −cos is largest for tokens 0..3
    assert cdpruner_positions(x, img, txt, lay, 3)[0].tolist() and all(
        i < 4 for i in cdpruner_positions(x, img, txt, lay, 3)[0].tolist()
    )


class _CDCore(torch.nn.Module):
    def __init__(self, layout, k):
        super().__init__()
        self.layout, self.k, self.signal_names = layout, k, ("image_embeds", "instruction_embeds")

    def forward(self, tokens, image_embeds, text):
        from tokexport.vlm.cdpruner import cdpruner_positions

        idx = cdpruner_positions(tokens, image_embeds, text, self.layout, self.k)
        return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])), idx


@pytest.mark.parametrize("lay_name,k", [("1view-6x5", 9), ("1+2x2", 20)])
def test_cdpruner_exports_static_and_matches(lay_name, k, tmp_path):
    lay = LAYOUTS[lay_name]
    module = _CDCore(lay, k)
    export_and_check(module, (rand_tokens(lay, 2, 0, d=48), *rand_cdpruner_inputs(lay, 2, 1)), tmp_path / "cd.onnx")
    sess = ort.InferenceSession(str(tmp_path / "cd.onnx"), providers=["CPUExecutionProvider"])
    for seed, b in [(5, 1), (6, 3)]:
        x = rand_tokens(lay, b, seed, d=48)
        img, txt = rand_cdpruner_inputs(lay, b, seed + 1)
        got_t, got_p = sess.run(
            None, {"tokens": x.numpy(), "image_embeds": img.numpy(), "instruction_embeds": txt.numpy()}
        )
        want_t, want_p = module(x, img, txt)
        np.testing.assert_array_equal(got_p, want_p.numpy())
        np.testing.assert_allclose(got_t, want_t.numpy(), atol=1e-6)
