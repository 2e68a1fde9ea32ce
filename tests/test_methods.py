"""Contract and behaviour tests of the token-reduction methods, on hand-made attention maps and keys.

The contract tests run over every registered method, so a new method is covered once it registers.
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

from tokexport.errors import InputError
from tokexport.reduce import METHODS, LayerInputs, MergingMethod, get_method
from tokexport.reduce.common import keep_topk
from tokexport.reduce.random_keep import RandomKeep, RandomKeepConfig
from tokexport.reduce.topk_cls import TopKCLS, TopKCLSConfig
from tokexport.reduce.uniform_keep import (
    UniformKeep,
    UniformKeepConfig,
    uniform_positions,
)
from tokexport.reduce.zero_tprune import (
    ZeroTPrune,
    ZeroTPruneConfig,
    head_mask,
    pagerank,
    paper_iterations,
    similarity_drop,
)

ALL = sorted(METHODS)
# Methods that select a keep set (the merging ones, ToMe, are tested in test_tome.py and test_contract.py).
SELECTING = sorted(name for name, cls in METHODS.items() if not issubclass(cls, MergingMethod))


def random_inputs(b=3, h=4, n=17, d=16, dh=8, n_prefix=1, layer=4, num_layers=12, seed=0, sharpness=3.0):
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(torch.randn(b, h, n, n, generator=g) * sharpness, dim=-1)
    keys = torch.randn(b, h, n, dh, generator=g)
    hidden = torch.randn(b, n, d, generator=g)
    return LayerInputs(hidden, attn, keys, n_prefix, layer, num_layers)


def inputs_from_attn(attn, keys=None, n_prefix=1, layer=4, num_layers=12):
    b, h, n, _ = attn.shape
    if keys is None:
        keys = torch.randn(b, h, n, 8, generator=torch.Generator().manual_seed(123))
    return LayerInputs(torch.zeros(b, n, 8), attn, keys, n_prefix, layer, num_layers)


def identical_rows(*head_weights):
    """Attention [1, H, N, N] where every row of head h equals head_weights[h].

    Then A^T s = w * sum(s) = w for any start s summing to 1: each head's PageRank score is w after any
    number of iterations and with either init, so the expected answers follow from w alone.
    """
    w = torch.tensor(head_weights, dtype=torch.float32)  # [H, N]
    n = w.shape[1]
    return w[None, :, None, :].expand(1, -1, n, -1).contiguous()


def make(name, **fields):
    cls = get_method(name)
    return cls(cls.config_cls(method=name, **fields))


# --- registry and configs ---------------------------------------------------------------------------


def test_registry_has_the_methods():
    assert {"zero-tprune", "topk-cls", "random", "uniform", "tome"} <= set(METHODS)
    assert "tome" not in SELECTING
    assert get_method("uniform") is UniformKeep
    with pytest.raises(InputError, match="unknown reduction method"):
        get_method("nope")


@pytest.mark.parametrize("name", ALL)
def test_config_contract(name):
    cls = METHODS[name]
    assert cls.name == name
    cfg = cls.config_cls(method=name)
    assert cfg.method == name
    for field, info in cls.config_cls.model_fields.items():
        assert info.description, f"{name}: field {field!r} has no description"
    with pytest.raises(pydantic.ValidationError):
        cls.config_cls(method=name, no_such_field=1)
    with pytest.raises(pydantic.ValidationError):
        cls.config_cls(method="some-other-method")


# --- the selection contract, every method ------------------------------------------------------------


@pytest.mark.parametrize("name", SELECTING)
@pytest.mark.parametrize("n_prefix", [1, 2])
@pytest.mark.parametrize("n_keep", [1, 5, 11])
def test_select_contract(name, n_prefix, n_keep):
    n = 17
    x = random_inputs(n=n, n_prefix=n_prefix)
    idx = make(name).select(x, n_keep)
    assert idx.shape == (3, n_keep)
    assert idx.dtype == torch.int64
    assert bool((idx >= n_prefix).all()) and bool((idx < n).all())
    assert bool((idx[:, 1:] > idx[:, :-1]).all()), "ascending and distinct per row"


@pytest.mark.parametrize("name", SELECTING)
@pytest.mark.parametrize("n_prefix", [1, 2])
def test_keep_everything(name, n_prefix):
    n = 17
    x = random_inputs(n=n, n_prefix=n_prefix)
    idx = make(name).select(x, n - n_prefix)
    assert torch.equal(idx, torch.arange(n_prefix, n).expand(3, -1))


@pytest.mark.parametrize("name", SELECTING)
@pytest.mark.parametrize("n_keep", [0, 17])
def test_n_keep_out_of_range(name, n_keep):
    with pytest.raises(ValueError):
        make(name).select(random_inputs(n=17, n_prefix=1), n_keep)


@pytest.mark.parametrize("name", SELECTING)
def test_describe_is_json(name):
    m = make(name)
    m.select(random_inputs(), 8)
    d = m.describe()
    assert d["method"] == name
    json.dumps(d)


# --- topk-cls ------------------------------------------------------------------------------------


def test_topk_cls_picks_most_attended_by_cls():
    # N = 8, n_prefix 1. Head 0's CLS row puts 0.6 on token 3, head 1's puts 0.6 on token 6; the rest is
    # spread evenly (0.4/7 each). Head mean: tokens 3 and 6 get 0.3 + 0.4/7, every other 0.4/7.
    # Rows other than CLS attend strongly to token 1, which must not matter.
    n = 8
    attn = torch.full((1, 2, n, n), 0.0)
    attn[:, :, 1:, 1] = 1.0
    attn[0, 0, 0] = 0.4 / 7
    attn[0, 0, 0, 3] = 0.6
    attn[0, 1, 0] = 0.4 / 7
    attn[0, 1, 0, 6] = 0.6
    idx = TopKCLS(TopKCLSConfig()).select(inputs_from_attn(attn), 2)
    assert idx.tolist() == [[3, 6]]


# --- Zero-TPrune ---------------------------------------------------------------------------------


def plain_pagerank(**fields):
    base = {"head_filter": False, "similarity_stage": False, "init": "uniform", "iterations": 1, "aggregation": "mean"}
    base.update(fields)
    return ZeroTPrune(ZeroTPruneConfig(**base))


@pytest.mark.parametrize("n_prefix", [1, 2])
def test_zero_tprune_one_uniform_iteration_is_column_sum(n_prefix):
    # Uniform start s0 = 1/N: s1_j = (1/N) sum_i A_ij per head; mean over heads = column sum of the
    # head-averaged attention, divided by N.
    x = random_inputs(n=17, n_prefix=n_prefix, seed=1)
    colsum = x.attn.mean(dim=1).sum(dim=-2)  # [B, N]
    m = plain_pagerank()
    torch.testing.assert_close(m.scores(x, 7), colsum[:, n_prefix:] / 17)
    assert torch.equal(m.select(x, 7), keep_topk(colsum[:, n_prefix:], 7, n_prefix))


@pytest.mark.parametrize("n_prefix", [1, 2])
def test_zero_tprune_keeps_hub(n_prefix):
    # Every row puts half of its attention on the last token: it dominates every column sum and every
    # PageRank iteration. Last position, so a wrong direction (A s instead of A^T s, which gives ties)
    # would not pick it by accident.
    x = random_inputs(b=2, n=10, n_prefix=n_prefix, seed=2)
    hub = torch.zeros(10)
    hub[-1] = 1.0
    x.attn = 0.5 * x.attn + 0.5 * hub
    idx = ZeroTPrune(ZeroTPruneConfig()).select(x, 1)
    assert idx.tolist() == [[9], [9]]


def test_zero_tprune_iterations_propagate_importance():
    # Tokens: 0 CLS, 1 hub H, 2 X, 3 Y, 4, 5. Every row but H's: 0.7 -> H, 0.25 -> Y, 0.05 -> 4.
    # H's row: 1.0 -> X. Uniform start 1/6.
    # 1 iteration: s = colsum / 6 = [0, 3.5, 1, 1.25, 0.25, 0] / 6 -> top 2 = {H, Y}.
    # 2 iterations: rows other than H carry 1/6 * (0 + 1 + 1.25 + 0.25 + 0) = 0.4167, H carries 0.5833:
    #   s_H = 0.7 * 0.4167 = 0.292, s_X = 0.583, s_Y = 0.25 * 0.4167 = 0.104 -> top 2 = {H, X}:
    #   X is important because the important token attends to it.
    row = torch.tensor([0.0, 0.7, 0.0, 0.25, 0.05, 0.0])
    a = row.expand(6, 6).clone()
    a[1] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    x = inputs_from_attn(a[None, None])
    assert plain_pagerank(iterations=1).select(x, 2).tolist() == [[1, 3]]
    assert plain_pagerank(iterations=2).select(x, 2).tolist() == [[1, 2]]


# S stage: N = 9, n_prefix 1, both heads' rows = w, so I' and I scores are w (see identical_rows).
# Ranking 8 > 7 > ... > 1: less important half A = {1, 2, 3, 4}, more important half B = {5, ..., 8}.
_W_S = [0.04, 0.05, 0.07, 0.09, 0.11, 0.13, 0.15, 0.17, 0.19]


def _s_stage_inputs(dup, of):
    attn = identical_rows(_W_S, _W_S)
    keys = torch.randn(1, 2, 9, 8, generator=torch.Generator().manual_seed(5))
    keys[:, :, dup] = keys[:, :, of]
    return inputs_from_attn(attn, keys)


def test_zero_tprune_s_stage_drops_duplicate_key():
    # Token 2 (in A) has the key of token 8 (in B): cosine similarity 1, the largest. Keep 7 of 8:
    # r_S = 1 drops token 2; without the S stage the I stage drops the least important token 1.
    x = _s_stage_inputs(dup=2, of=8)
    assert ZeroTPrune(ZeroTPruneConfig(similarity_fraction=1.0)).select(x, 7).tolist() == [[1, 3, 4, 5, 6, 7, 8]]
    # default fraction 0.5: r_S = floor(0.5 * 1 + 0.5) = 1 (round half up)
    assert ZeroTPrune(ZeroTPruneConfig()).select(x, 7).tolist() == [[1, 3, 4, 5, 6, 7, 8]]
    assert ZeroTPrune(ZeroTPruneConfig(similarity_stage=False)).select(x, 7).tolist() == [[2, 3, 4, 5, 6, 7, 8]]


def test_zero_tprune_s_stage_only_drops_from_less_important_half():
    # Token 7 duplicates token 8 but both are in B: the S stage drops one A token instead, and with
    # 7 of 8 kept, the 7 survivors are all kept, token 7 among them.
    x = _s_stage_inputs(dup=7, of=8)
    idx = ZeroTPrune(ZeroTPruneConfig(similarity_fraction=1.0)).select(x, 7)
    assert 7 in idx.tolist()[0]
    assert set(range(5, 9)) <= set(idx.tolist()[0])


def test_zero_tprune_similarity_drop_count():
    m = ZeroTPrune(ZeroTPruneConfig())  # fraction 0.5
    assert m.similarity_drops(8, 7) == 1  # 0.5 -> 1, round half up
    assert m.similarity_drops(8, 4) == 2
    assert m.similarity_drops(8, 1) == 4  # 3.5 -> 4 = |A|
    assert m.similarity_drops(8, 8) == 0
    assert ZeroTPrune(ZeroTPruneConfig(similarity_fraction=1.0)).similarity_drops(8, 1) == 4  # 7 clipped to |A|
    assert ZeroTPrune(ZeroTPruneConfig(similarity_fraction=1.0)).similarity_drops(9, 1) == 4  # |A| = floor(9/2)
    assert ZeroTPrune(ZeroTPruneConfig(similarity_stage=False)).similarity_drops(8, 1) == 0


# Head filter: N = 5, n_prefix 1, keep 1, S stage off. Each head's score = its row w (identical_rows).
# Variance of 5 * w over tokens 1..4:
#   informative [.10, .31, .29, .15, .15]: 5w = [1.55, 1.45, .75, .75], mean 1.125, var 0.141875 -> passes
#   flat        [.20, .18, .22, .20, .20]: 5w = [.9, 1.1, 1, 1],        mean 1,     var 0.005    < v_min
#   peaked      [0, 0, 0, 0, 1]:           5w = [0, 0, 0, 5],           mean 1.25,  var 4.6875   > v_max
_INFORMATIVE = [0.10, 0.31, 0.29, 0.15, 0.15]
_FLAT = [0.20, 0.18, 0.22, 0.20, 0.20]
_PEAKED = [0.0, 0.0, 0.0, 0.0, 1.0]


def _filter_method(**fields):
    return ZeroTPrune(ZeroTPruneConfig(similarity_stage=False, **fields))


def test_head_filter_drops_low_variance_head():
    # EIR with both heads: token 1: .31^2 + .18^2 = .1285 < token 2: .29^2 + .22^2 = .1325 -> token 2.
    # The flat head is filtered out: token 1 (.31 > .29).
    x = inputs_from_attn(identical_rows(_INFORMATIVE, _FLAT))
    assert _filter_method().select(x, 1).tolist() == [[1]]
    assert _filter_method(head_filter=False).select(x, 1).tolist() == [[2]]


def test_head_filter_drops_high_variance_head():
    # With the peaked head, token 4 wins (.15^2 + 1); filtered out, token 1 does.
    x = inputs_from_attn(identical_rows(_INFORMATIVE, _PEAKED))
    assert _filter_method().select(x, 1).tolist() == [[1]]
    assert _filter_method(head_filter=False).select(x, 1).tolist() == [[4]]


def test_head_filter_excludes_constant_head():
    # A head whose scores are all equal has variance 0 < v_min. (On its own it cannot change a ranking:
    # it adds the same amount to every token under both aggregations, hence the flat head above.)
    s = torch.tensor([[_INFORMATIVE, [0.2] * 5]])  # [1, 2, 5]
    assert head_mask(s, n_prefix=1, n_nodes=5, v_min=0.01, v_max=0.7).tolist() == [[1.0, 0.0]]


def test_head_filter_falls_back_to_all_heads():
    # v_min above every head's variance: no head passes, so all heads are used, as with the filter off.
    x = inputs_from_attn(identical_rows(_INFORMATIVE, _FLAT))
    m = _filter_method(v_min=1.0, v_max=2.0)
    assert bool(torch.isfinite(m.scores(x, 1)).all())
    assert m.select(x, 1).tolist() == [[2]]
    s = torch.tensor([[_INFORMATIVE, [0.2] * 5]])
    assert head_mask(s, 1, 5, v_min=1.0, v_max=2.0).tolist() == [[1.0, 1.0]]
    # and with the full default pipeline on random maps (S stage, survivors' sub-graph)
    x = random_inputs(seed=3)
    full = ZeroTPrune(ZeroTPruneConfig(v_min=100.0, v_max=200.0))
    assert bool(torch.isfinite(full.scores(x, 5)).all())


@pytest.mark.parametrize("init", ["cls", "uniform"])
def test_masked_pagerank_equals_sliced_graph(init):
    # The I stage zeroes the dropped columns and renormalises rows instead of slicing the attention to
    # the survivors (static shapes); check it computes the same scores as the sliced graph.
    n_prefix, r_s = 2, 5
    x = random_inputs(b=2, n=17, n_prefix=n_prefix, seed=4)
    first = pagerank(x.attn, 1, init, 17).mean(dim=1)
    keep = similarity_drop(first[:, n_prefix:], x.keys, n_prefix, r_s)
    assert keep.sum(dim=1).tolist() == [17.0 - r_s] * 2
    assert bool((keep[:, :n_prefix] == 1).all())
    masked = pagerank(x.attn, 6, init, 17 - r_s, keep)
    for b in range(2):
        surv = [i for i in range(17) if keep[b, i] == 1]
        sub = x.attn[b : b + 1][:, :, surv][:, :, :, surv]
        sub = sub / sub.sum(dim=-1, keepdim=True)
        torch.testing.assert_close(masked[b : b + 1, :, surv], pagerank(sub, 6, init, len(surv)))
        dropped = [i for i in range(17) if keep[b, i] == 0]
        assert bool((masked[b, :, dropped] == 0).all())


def test_zero_tprune_iterations():
    assert [paper_iterations(layer, 12) for layer in range(12)] == [30, 30, 30, 5, 5, 5, 5, 5, 5, 1, 1, 1]
    m = ZeroTPrune(ZeroTPruneConfig(prune_layers=[2, 5, 8], iterations=[7, 3, 1]))
    assert m.iterations_for(5, 12) == 3
    with pytest.raises(InputError):
        m.iterations_for(4, 12)
    with pytest.raises(pydantic.ValidationError):
        ZeroTPruneConfig(prune_layers=[2, 5, 8], iterations=[7, 3])
    with pytest.raises(pydantic.ValidationError):
        ZeroTPruneConfig(v_min=0.8, v_max=0.7)
    m = ZeroTPrune(ZeroTPruneConfig(prune_layers=[2, 5, 9]))
    for layer in (2, 5, 9):
        m.select(random_inputs(layer=layer), 8)
    assert m.describe()["iterations_by_layer"] == {2: 30, 5: 5, 9: 1}


def test_a_config_at_searched_counts_keeps_its_own_fields():
    """``at_counts`` (what `tokexport search` evaluates): the schedule becomes absolute counts at the searched
    blocks, the method's other fields stay, and Zero-TPrune's per-layer iterations follow their layers."""
    from tokexport.reduce.topk_cls import TopKCLSConfig

    cfg = TopKCLSConfig(prune_layers=[2, 5, 8], keep_rate=[0.9, 0.8, 0.7], rounding="ceil")
    got = cfg.at_counts({8: 100, 2: 200})
    assert (got.prune_layers, got.keep, got.keep_rate, got.rounding) == ([2, 8], [200, 100], None, "ceil")
    zt = ZeroTPruneConfig(prune_layers=[2, 5, 8], keep_rate=0.8, iterations=[7, 3, 1], head_filter=False)
    got = zt.at_counts({5: 150, 8: 90})
    assert (got.prune_layers, got.keep, got.iterations, got.head_filter) == ([5, 8], [150, 90], [3, 1], False)
    with pytest.raises(InputError, match=r"reduction.iterations: .* blocks \[4\]"):
        zt.at_counts({4: 150})
    free = ZeroTPruneConfig(prune_layers=[2], keep_rate=0.8, iterations=4).at_counts({4: 150})
    assert (free.prune_layers, free.iterations) == ([4], 4)  # one int covers any block


# --- random and uniform ----------------------------------------------------------------------------


def test_random_is_deterministic_and_seeded():
    x = random_inputs(n=51)
    a = RandomKeep(RandomKeepConfig(seed=0))
    first = a.select(x, 10)
    assert torch.equal(first, a.select(random_inputs(n=51, seed=9), 10))  # inputs do not matter
    assert torch.equal(first, RandomKeep(RandomKeepConfig(seed=0)).select(x, 10))  # fresh instance
    assert all(torch.equal(first[0], row) for row in first)  # same subset for every image
    assert not torch.equal(first, RandomKeep(RandomKeepConfig(seed=1)).select(x, 10))
    other_layer = random_inputs(n=51, layer=7)
    assert not torch.equal(first, a.select(other_layer, 10))
    # the recorded rule reproduces the subset
    g = torch.Generator().manual_seed(0 * 1_000_003 + 4)
    expected = keep_topk(torch.randperm(50, generator=g).float()[None], 10, 1)
    assert torch.equal(first[:1], expected)


def test_uniform_is_evenly_spread():
    assert uniform_positions(12, 4) == [1, 4, 7, 10]
    assert uniform_positions(10, 3) == [1, 5, 8]
    for m in range(1, 41):
        for k in range(1, m + 1):
            pos = uniform_positions(m, k)
            assert len(pos) == k and len(set(pos)) == k and 0 <= pos[0] and pos[-1] < m
            gaps = np.diff(pos)
            assert (gaps >= 1).all()
            if k > 1:
                assert gaps.max() - gaps.min() <= 1
    # the method itself is a 2-D lattice of the patch grid: 8 of a 4x4 grid is the checkerboard, not stripes
    x = random_inputs(n=18, n_prefix=2)  # 16 candidates = a 4x4 grid
    kept = [p - 2 for p in UniformKeep(UniformKeepConfig()).select(x, 8)[0].tolist()]
    assert kept == [r * 4 + c for r in range(4) for c in range(4) if (r + c) % 2 == 0]
    assert all(
        row == UniformKeep(UniformKeepConfig()).select(x, 8)[0].tolist()
        for row in UniformKeep(UniformKeepConfig()).select(x, 8).tolist()
    )  # same for every image


# --- ONNX export -----------------------------------------------------------------------------------


class _Select(torch.nn.Module):
    def __init__(self, method, n_keep, n_prefix, layer=1, num_layers=12):
        super().__init__()
        self.method, self.n_keep, self.n_prefix = method, n_keep, n_prefix
        self.layer, self.num_layers = layer, num_layers

    def forward(self, hidden, attn, keys):
        x = LayerInputs(hidden, attn, keys, self.n_prefix, self.layer, self.num_layers)
        return self.method.select(x, self.n_keep)


def _export(module, args, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["hidden", "attn", "keys"],
            output_names=["idx"],
            dynamic_axes={"hidden": {0: "batch"}, "attn": {0: "batch"}, "keys": {0: "batch"}, "idx": {0: "batch"}},
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


def _non_constant_topk(model) -> list[str]:
    g = model.graph
    constants = {t.name for t in g.initializer} | {
        o for node in g.node if node.op_type == "Constant" for o in node.output
    }
    return [node.name for node in g.node if node.op_type == "TopK" and node.input[1] not in constants]


def _keep_topk_k_is_constant(tmp_path) -> bool:
    class M(torch.nn.Module):
        def forward(self, s):
            return keep_topk(s[:, 1:], 5, 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(M(), (torch.rand(2, 17),), str(tmp_path / "k.onnx"), dynamo=False, opset_version=17)
    return not _non_constant_topk(onnx.load(str(tmp_path / "k.onnx")))


def test_keep_topk_exports_constant_k(tmp_path):
    assert _keep_topk_k_is_constant(tmp_path)


@pytest.mark.parametrize("name", SELECTING)
@pytest.mark.parametrize("n_prefix", [1, 2])
def test_export_matches_torch(name, n_prefix, tmp_path):
    n, n_keep = 17, 9
    method = make(name)
    module = _Select(method, n_keep, n_prefix)
    x = random_inputs(b=2, n=n, n_prefix=n_prefix, seed=10)
    model = _export(module, (x.hidden, x.attn, x.keys), tmp_path / f"{name}.onnx")
    ops = {node.op_type for node in model.graph.node}
    assert "NonZero" not in ops

    sess = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    feeds = [k for k in (i.name for i in sess.get_inputs())]
    for seed, batch in [(11, 2), (12, 3), (13, 1)]:
        y = random_inputs(b=batch, n=n, n_prefix=n_prefix, seed=seed)
        arrays = {"hidden": y.hidden.numpy(), "attn": y.attn.numpy(), "keys": y.keys.numpy()}
        (got,) = sess.run(None, {k: arrays[k] for k in feeds})
        want = module(y.hidden, y.attn, y.keys)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want.numpy())

    # every TopK (selection and the ascending sort of positions) has a constant K
    assert not _non_constant_topk(model), f"TopK with non-constant K: {_non_constant_topk(model)}"
