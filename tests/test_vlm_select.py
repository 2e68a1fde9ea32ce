"""Visual-token selectors (tokexport.vlm.select) on hand-made significance maps, and their static export.

The contract and export tests run over every registered visual method, so a new one is covered once it
registers.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pydantic
import pytest
import torch

from tokexport.vlm.hired import HiRED, HiREDConfig, block_matrix, hired_quotas
from tokexport.vlm.select import (
    VISUAL_METHODS,
    VisualLayout,
    make_visual_selector,
    significance,
    spatial_positions,
    split_evenly,
)

# methods that select from significance maps (tokens-based ones: tests/test_vlm_reducers.py)
ALL = sorted(n for n, c in VISUAL_METHODS.items() if "tokens" not in c.needs)

LAYOUTS = {
    "1view-4x4": VisualLayout(1, (4, 4)),
    "1+2x2": VisualLayout(5, (4, 4), (2, 2)),
    "1+1x2": VisualLayout(3, (4, 4), (1, 2)),
    "1+2x1": VisualLayout(3, (4, 4), (2, 1)),
}
K = {"1view-4x4": 8, "1+2x2": 24, "1+1x2": 16, "1+2x1": 16}  # multiples of gw = 4 (fopru-row)


def make(name: str, **kw):
    return VISUAL_METHODS[name](VISUAL_METHODS[name].config_cls(**kw))


def rand_sig(layout: VisualLayout, b: int, seed: int, sharp: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, layout.views, layout.patches, generator=g) * sharp, dim=-1)


def per_view(idx: torch.Tensor, layout: VisualLayout) -> torch.Tensor:
    """[B, V] number of selected positions in each view."""
    views = idx // layout.patches
    return torch.stack([(views == v).sum(dim=1) for v in range(layout.views)], dim=1)


def block_map(layout: VisualLayout, weights: dict[int, float], base: float = 0.0) -> torch.Tensor:
    """View-0 significance [1, V, P] with value weights[i] on sub-image block i of view 0 (else base)."""
    m = block_matrix(layout)  # [P, n]
    v0 = torch.full((layout.patches,), base)
    for i, w in weights.items():
        v0 = torch.where(m[:, i] > 0, torch.tensor(w), v0)
    sig = torch.rand(1, layout.views, layout.patches, generator=torch.Generator().manual_seed(5))
    sig[0, 0] = v0
    return sig


# ---------------------------------------------------------------------------------------------- layout


def test_layout_properties_and_validation():
    lay = VisualLayout(5, (24, 24), (2, 2))
    assert (lay.patches, lay.total, lay.n_sub) == (576, 2880, 4)
    assert VisualLayout(1, [3, 5]).grid == (3, 5)
    with pytest.raises(ValueError, match="sub_grid"):
        VisualLayout(5, (4, 4))
    with pytest.raises(ValueError, match="does not match"):
        VisualLayout(4, (4, 4), (2, 2))
    with pytest.raises(ValueError, match="grid"):
        VisualLayout(1, (0, 4))
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        lay.views = 3  # frozen


# ---------------------------------------------------------------------------------------------- significance


def test_significance_cls_vs_received():
    # B=1, H=2, N=4 (CLS + 3 patches). Head 0: every query attends like row r; head 1 uniform.
    h0 = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    h1 = torch.full((4, 4), 0.25)
    attn = torch.stack([h0, h1])[None]
    cls = significance(attn, 1, "cls")
    assert torch.allclose(cls, torch.tensor([[0.6 + 0.25, 0.2 + 0.25, 0.1 + 0.25]]))
    # received: column means over all 4 queries, summed over heads
    rec = significance(attn, 1, "received")
    assert torch.allclose(rec, torch.tensor([[0.6 / 4 + 0.25, 0.2 / 4 + 0.25, 3.1 / 4 + 0.25]]))
    assert torch.allclose(significance(attn, 1, "received", heads="mean"), rec / 2)
    # CLS ranks patch 1 first, received ranks patch 3 first
    assert cls.argmax().item() == 0 and rec.argmax().item() == 2
    with pytest.raises(ValueError, match="CLS"):
        significance(attn, 0, "cls")
    assert significance(attn, 0, "received").shape == (1, 4)
    with pytest.raises(ValueError, match="heads"):
        significance(attn, 1, "cls", heads="max")


# ---------------------------------------------------------------------------------------------- config


def test_config_budget():
    lay = VisualLayout(5, (24, 24), (2, 2))
    cfg = VISUAL_METHODS["fopru-rank"].config_cls
    assert cfg(keep_rate=0.2).resolve_k(lay) == 576
    assert cfg(keep=100).resolve_k(lay) == 100
    assert cfg(keep_rate=1e-6).resolve_k(lay) == 1
    assert cfg(keep_rate=0.29).resolve_k(VisualLayout(1, (10, 10))) == 29  # not 28 (float)
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        cfg()
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        cfg(keep=3, keep_rate=0.5)
    with pytest.raises(pydantic.ValidationError):
        cfg(keep_rate=1.5)
    with pytest.raises(pydantic.ValidationError):
        cfg(keep=10, bogus=1)
    with pytest.raises(ValueError, match="^keep: .*exceeds"):
        cfg(keep=3000).resolve_k(lay)
    big = VisualLayout(10, (24, 24), (3, 3))
    with pytest.raises(ValueError, match="^keep_rate: .*3840"):
        cfg(keep_rate=0.7).resolve_k(big)


def test_registry_and_describe_json():
    assert {"fopru-rank", "fopru-row", "hired", "uniform-spatial", "random-visual"} <= set(VISUAL_METHODS)
    lay = LAYOUTS["1+2x2"]
    for name in ALL:
        sel = make(name, keep=24)
        for field, f in sel.config_cls.model_fields.items():
            assert f.description, f"{name}.{field} has no description"
        d = sel.describe(lay)
        json.dumps(d)
        assert d["k"] == 24
        assert make_visual_selector({"method": name, "keep": 24}).describe() == sel.describe()
    d = make("hired", keep_rate=0.2).describe(VisualLayout(5, (24, 24), (2, 2)))
    assert (d["k"], d["n_full_image"], d["n_sub_images"], d["select_layer"], d["alloc_layer"]) == (576, 288, 288, -2, 0)
    assert VISUAL_METHODS["hired"].needs == {"select", "alloc"}
    assert VISUAL_METHODS["fopru-rank"].needs == {"select"}
    assert VISUAL_METHODS["uniform-spatial"].needs == frozenset() == VISUAL_METHODS["random-visual"].needs


# ---------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("lay_name", list(LAYOUTS))
def test_contract(name, lay_name):
    lay, k = LAYOUTS[lay_name], K[lay_name]
    sel = make(name, keep=k)
    assert sel.resolve_k(lay) == k
    for seed, b in [(0, 3), (1, 1)]:
        sig, alloc = rand_sig(lay, b, seed), rand_sig(lay, b, seed + 100)
        idx = sel.select(sig if "select" in sel.needs else None, alloc if "alloc" in sel.needs else None, lay, k)
        if not sel.needs:
            assert idx.shape == (1, k)
            idx = sel.select(sig, alloc, lay, k)  # batch taken from a given map
        assert idx.shape == (b, k) and idx.dtype == torch.int64
        assert (idx >= 0).all() and (idx < lay.total).all()
        assert (idx[:, 1:] > idx[:, :-1]).all()  # strictly ascending => distinct


def test_select_checks_shapes():
    lay = LAYOUTS["1+2x2"]
    with pytest.raises(ValueError, match=r"\[B, 5, 16\]"):
        make("fopru-rank", keep=4).select(torch.rand(2, 4, 16), None, lay, 4)
    with pytest.raises(ValueError, match="needs"):
        make("hired", keep=4).select(torch.rand(2, 5, 16), None, lay, 4)


# ---------------------------------------------------------------------------------------------- FoPru


def test_fopru_rank_picks_k_highest():
    lay = LAYOUTS["1+2x2"]
    g = torch.Generator().manual_seed(3)
    vals = torch.randperm(lay.total, generator=g).float().reshape(1, lay.views, lay.patches)
    idx = make("fopru-rank", keep=10).select(vals, None, lay, 10)
    want = sorted((vals.flatten() >= lay.total - 10).nonzero().flatten().tolist())
    assert idx[0].tolist() == want


def test_fopru_row_picks_whole_rows():
    lay = LAYOUTS["1+2x2"]
    sig = torch.rand(2, lay.views, lay.patches) * 0.1
    sig[0, 0, 8:12] += 1.0  # view 0 row 2
    sig[0, 3, 4:8] += 2.0  # view 3 row 1
    sig[1, 4, 12:16] += 1.0  # view 4 row 3 ...
    sig[1, 1, 0] += 5.0  # ... and one very hot token lifts view 1 row 0
    idx = make("fopru-row", keep=8).select(sig, None, lay, 8)
    assert idx[0].tolist() == [8, 9, 10, 11, 3 * 16 + 4, 3 * 16 + 5, 3 * 16 + 6, 3 * 16 + 7]
    assert idx[1].tolist() == [16, 17, 18, 19, 4 * 16 + 12, 4 * 16 + 13, 4 * 16 + 14, 4 * 16 + 15]
    # random input: every selection is a union of complete rows
    idx = make("fopru-row", keep=12).select(rand_sig(lay, 4, 9), None, lay, 12)
    rows = idx.reshape(4, 3, 4)
    assert (rows % 4 == torch.arange(4)).all() and (rows[..., 1:] - rows[..., :-1] == 1).all()


def test_fopru_row_rejects_partial_rows():
    lay = VisualLayout(5, (24, 24), (2, 2))
    with pytest.raises(ValueError, match=r"^keep: .*multiple of 24.*nearest valid keep: 96, 120"):
        make("fopru-row", keep=100).resolve_k(lay)
    with pytest.raises(ValueError, match=r"^keep_rate: .*K=577.*nearest valid keep_rate") as e:
        make("fopru-row", keep_rate=0.2004).resolve_k(lay)
    # the suggested rates resolve to valid K
    for rate in (float(x.split(" ")[0]) for x in str(e.value).split("keep_rate: ")[-1].split(", ")):
        assert make("fopru-row", keep_rate=rate).resolve_k(lay) % 24 == 0
    assert make("fopru-row", keep_rate=0.2).resolve_k(lay) == 576
    with pytest.raises(ValueError, match="multiple"):
        make("fopru-row", keep=8).select(torch.rand(1, 5, 576), None, lay, 30)


# ---------------------------------------------------------------------------------------------- HiRED


def test_hired_quotas_unit():
    q = hired_quotas(torch.tensor([[3.0, 1.0], [1.0, 1.0], [0.0, 0.0]]), 8, 16)
    assert q.tolist() == [[6, 2], [4, 4], [4, 4]]
    # largest remainder: 10/3 each -> 3,3,3 + 1 unit to the first (tie -> lower index)
    assert hired_quotas(torch.tensor([[1.0, 1.0, 1.0]]), 10, 16).tolist() == [[4, 3, 3]]
    # fractional parts decide: ideal 5.6, 2.8, 1.6 -> floors 5, 2, 1 (8); 2 units to .8 and .6
    assert hired_quotas(torch.tensor([[5.6, 2.8, 1.6]]), 10, 16).tolist() == [[6, 3, 1]]
    assert hired_quotas(torch.tensor([[0.56, 0.28, 0.16]]), 10, 16).tolist() == [[6, 3, 1]]
    # capping with redistribution, cascading: 100:10:1:1 with 40 over cap 16
    assert hired_quotas(torch.tensor([[100.0, 10.0, 1.0, 1.0]]), 40, 16).tolist() == [[16, 16, 4, 4]]
    assert hired_quotas(torch.tensor([[100.0, 0.0, 0.0, 0.0]]), 40, 16).tolist() == [[16, 8, 8, 8]]
    assert hired_quotas(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 64, 16).tolist() == [[16, 16, 16, 16]]


def test_hired_quotas_sum_exactly_to_budget_random():
    g = torch.Generator().manual_seed(0)
    for n, cap in [(4, 16), (6, 7), (9, 576)]:
        for n_sub in (1, n, cap, n * cap // 2 + 1, n * cap):
            s = torch.exp(torch.randn(200, n, generator=g) * 3)
            s[:20, 1:] = 0  # one partition holds everything
            q = hired_quotas(s, n_sub, cap)
            assert (q.sum(dim=1) == n_sub).all() and (q >= 0).all() and (q <= cap).all()


@pytest.mark.parametrize("lay_name", ["1+2x2", "1+1x2", "1+2x1"])
def test_hired_budget_exact_many_inputs(lay_name):
    lay = LAYOUTS[lay_name]
    for k, alpha in [(K[lay_name], 0.5), (23, 0.3), (lay.total - 3, 0.2 if lay.views > 3 else 0.34), (1, 0.5)]:
        sel = make("hired", keep=k, alpha=alpha)
        k = sel.resolve_k(lay)
        n0 = int(np.floor(alpha * k + 1e-9))
        for seed, sharp in [(1, 1.0), (2, 5.0), (3, 20.0)]:
            sig, alloc = rand_sig(lay, 64, seed), rand_sig(lay, 64, seed + 50, sharp)
            idx = sel.select(sig, alloc, lay, k)
            counts = per_view(idx, lay)
            assert (counts.sum(dim=1) == k).all()
            assert (counts[:, 0] == n0).all()  # view 0 gets floor(alpha K)
            assert (counts <= lay.patches).all()
            assert torch.equal(counts, sel.quotas(alloc, lay, k))


def test_hired_selects_topk_within_each_view():
    lay = LAYOUTS["1+2x2"]
    sel = make("hired", keep=30)
    sig, alloc = rand_sig(lay, 8, 11), rand_sig(lay, 8, 12, 4.0)
    idx = sel.select(sig, alloc, lay, 30)
    quota = sel.quotas(alloc, lay, 30)
    for b in range(8):
        want = []
        for v in range(lay.views):
            n = int(quota[b, v])
            if n:
                want += (torch.topk(sig[b, v], n).indices + v * lay.patches).tolist()
        assert idx[b].tolist() == sorted(want)


def test_hired_cap_redistributes():
    lay = LAYOUTS["1+2x2"]  # P = 16
    sel = make("hired", keep=50, alpha=0.2)  # N_p0 = 10, N_sub = 40 > P
    alloc = block_map(lay, {0: 1.0}, base=0.001)  # the top-left sub-image dominates
    sig = rand_sig(lay, 1, 4)
    counts = per_view(sel.select(sig, alloc, lay, 50), lay)
    assert counts.tolist() == [[10, 16, 8, 8, 8]]


def test_hired_uses_allocation_significance():
    lay = LAYOUTS["1+2x2"]
    sel = make("hired", keep=24)  # N_p0 = 12, N_sub = 12
    sig = block_map(lay, {0: 1.0})  # selection layer: top-left hot
    alloc = block_map(lay, {3: 1.0})  # allocation layer: bottom-right hot
    counts = per_view(sel.select(sig, alloc, lay, 24), lay)
    assert counts.tolist() == [[12, 0, 0, 0, 12]]
    counts = per_view(sel.select(alloc, sig, lay, 24), lay)
    assert counts.tolist() == [[12, 12, 0, 0, 0]]


def test_hired_grid_order_h_w():
    top = torch.ones(4, 4)
    top[:2] = 3.0  # view 0 significance concentrated in the TOP half: top block 24, bottom 8
    for lay_name, want in [("1+2x1", [8, 6, 2]), ("1+1x2", [8, 4, 4])]:
        lay = LAYOUTS[lay_name]
        sig = rand_sig(lay, 1, 0)
        alloc = sig.clone()
        alloc[0, 0] = top.flatten()
        counts = per_view(make("hired", keep=16).select(sig, alloc, lay, 16), lay)
        assert counts[0].tolist() == want, lay_name


def test_hired_blocks_non_divisible_grid():
    lay = VisualLayout(5, (5, 5), (2, 2))
    # patch rows/cols 0,1 -> block 0; 2,3,4 -> block 1 (the block holding the patch centre)
    assert block_matrix(lay).sum(dim=0).tolist() == [4.0, 6.0, 6.0, 9.0]
    assert (block_matrix(lay).sum(dim=1) == 1).all()
    lay3 = VisualLayout(10, (24, 24), (3, 3))
    assert block_matrix(lay3).sum(dim=0).tolist() == [64.0] * 9


def test_hired_one_view_is_topk():
    lay = LAYOUTS["1view-4x4"]
    sig = rand_sig(lay, 5, 7)
    a = make("hired", keep=6).select(sig, None, lay, 6)
    b = make("fopru-rank", keep=6).select(sig, None, lay, 6)
    assert torch.equal(a, b)


def test_hired_budget_checks():
    lay = LAYOUTS["1+2x2"]
    with pytest.raises(ValueError, match="^alpha: .*view 0"):
        make("hired", keep=40, alpha=0.5).resolve_k(lay)  # 20 > P = 16
    with pytest.raises(ValueError, match="^alpha: .*sub-images"):
        make("hired", keep=72, alpha=0.1).resolve_k(lay)  # 65 > 4 * 16
    assert make("hired", keep_rate=0.2).resolve_k(VisualLayout(5, (24, 24), (2, 2))) == 576
    assert isinstance(make("hired", keep=4), HiRED) and HiREDConfig(keep=4).alpha == 0.5


# ---------------------------------------------------------------------------------------------- constant baselines


def test_uniform_spatial_exact_and_spread():
    lay = LAYOUTS["1view-4x4"]
    assert make("uniform-spatial", keep=4).select(None, None, lay, 4)[0].tolist() == [5, 7, 13, 15]
    lay = VisualLayout(5, (24, 24), (2, 2))
    for k in (1, 4, 5, 7, 288, 576, 577, 2879, 2880):
        idx = make("uniform-spatial", keep=k).select(None, None, lay, k)[0]
        assert len(idx) == k and len(set(idx.tolist())) == k
        assert per_view(idx[None], lay)[0].tolist() == split_evenly(k, 5)
    assert split_evenly(7, 5) == [2, 2, 1, 1, 1]
    for grid in [(24, 24), (5, 7), (1, 9), (27, 27)]:
        for n in range(grid[0] * grid[1] + 1):
            pos = spatial_positions(grid, n)
            assert len(pos) == n and len(set(pos)) == n and pos == sorted(pos)
            assert all(0 <= p < grid[0] * grid[1] for p in pos)
    # 25% of 24x24: every other row and column (2-D), not every 4th column of all rows
    pos = np.array(spatial_positions((24, 24), 144))
    assert len(set(pos // 24)) == 12 and len(set(pos % 24)) == 12


def test_random_visual_seeded():
    lay = LAYOUTS["1+2x2"]
    a = make("random-visual", keep=20, seed=0).select(None, None, lay, 20)
    b = make("random-visual", keep=20, seed=0).select(None, None, lay, 20)
    c = make("random-visual", keep=20, seed=1).select(None, None, lay, 20)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a[0].tolist())) == 20
    sig = rand_sig(lay, 3, 0)
    assert torch.equal(make("random-visual", keep=20).select(sig, None, lay, 20), a.expand(3, -1))


# ---------------------------------------------------------------------------------------------- export


class _Select(torch.nn.Module):
    def __init__(self, selector, layout, k):
        super().__init__()
        self.selector, self.layout, self.k = selector, layout, k

    def forward(self, sig, sig_alloc):
        return self.selector.select(sig, sig_alloc, self.layout, self.k)


def _non_constant_topk(model) -> list[str]:
    g = model.graph
    constants = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in g.node if n.op_type == "TopK" and n.input[1] not in constants]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("lay_name", ["1+2x2", "1+2x1"])
def test_export_matches_torch(name, lay_name, tmp_path):
    lay = LAYOUTS[lay_name]
    k = 40 if lay.views == 5 else 20  # hired with alpha 0.25: N_sub = 30 / 15 (capping at P = 16 possible)
    kw = {"alpha": 0.25} if name == "hired" else {}
    sel = make(name, keep=k, **kw)
    module = _Select(sel, lay, sel.resolve_k(lay))
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (rand_sig(lay, 2, 0), rand_sig(lay, 2, 1)),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["sig", "sig_alloc"],
            output_names=["idx"],
            dynamic_axes={"sig": {0: "batch"}, "sig_alloc": {0: "batch"}, "idx": {0: "batch"}},
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert "NonZero" not in ops
    assert "ScatterND" not in ops and len(model.graph.node) < 300  # constants built outside the trace
    assert not _non_constant_topk(model), f"TopK with non-constant K: {_non_constant_topk(model)}"
    for n in model.graph.node:
        if n.op_type == "TopK":
            k_init = next((t for t in model.graph.initializer if t.name == n.input[1]), None)
            if k_init is not None:
                assert int(onnx.numpy_helper.to_array(k_init).reshape(-1)[0]) < 3840

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = [i.name for i in sess.get_inputs()]
    for seed, batch, sharp in [(11, 1, 1.0), (12, 3, 8.0), (13, 7, 30.0)]:
        sig, alloc = rand_sig(lay, batch, seed), rand_sig(lay, batch, seed + 1, sharp)
        arrays = {"sig": sig.numpy(), "sig_alloc": alloc.numpy()}
        (got,) = sess.run(None, {f: arrays[f] for f in feeds})
        want = module(sig, alloc)
        assert got.dtype == np.int64 and got.shape == (batch, module.k)
        np.testing.assert_array_equal(got, want.numpy())


def test_export_hired_llava_next_size(tmp_path):
    """LLaVA-NeXT 2x2 anyres of CLIP-L/336: 5 x 576 tokens, 20% -> K = 576 (TopK well under 3840)."""
    lay = VisualLayout(5, (24, 24), (2, 2))
    sel = make("hired", keep_rate=0.2)
    module = _Select(sel, lay, sel.resolve_k(lay))
    path = tmp_path / "hired.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (rand_sig(lay, 1, 0), rand_sig(lay, 1, 1)),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["sig", "sig_alloc"],
            output_names=["idx"],
            dynamic_axes={"sig": {0: "batch"}, "sig_alloc": {0: "batch"}, "idx": {0: "batch"}},
        )
    model = onnx.load(str(path))
    assert not _non_constant_topk(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sig, alloc = rand_sig(lay, 2, 5), rand_sig(lay, 2, 6, 10.0)
    (got,) = sess.run(None, {"sig": sig.numpy(), "sig_alloc": alloc.numpy()})
    want = module(sig, alloc)
    np.testing.assert_array_equal(got, want.numpy())
    counts = per_view(want, lay)
    assert (counts.sum(dim=1) == 576).all() and (counts[:, 0] == 288).all()


def test_fopru_default_significance_is_the_measured_one():
    """FoPru's default `source` is the one chosen by measurement (README, visual tokens: FoPru
    significance, scripts/bench_fopru_significance.py); HiRED keeps the paper's CLS attention."""
    from tokexport.vlm.fopru import FoPruRankConfig, FoPruRowConfig
    from tokexport.vlm.hired import HiREDConfig

    assert FoPruRankConfig(keep=4).source == FoPruRowConfig(keep=4).source == "received"
    assert HiREDConfig(keep=4).source == "cls"
