"""DivPrune- and DART-style pruning steps inside a ViT: the static selections (unrolled, constant-K TopK, no
scatter) pick the SAME indices as plain-PyTorch references of the official algorithms written as Python loops
(tests only), on random inputs (several seeds; continuous inputs, so ties have probability 0) and on the tokens
and keys of a tiny DINOv2; the exported graphs are static and pass the TensorRT target checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from graph_checks import assert_static_and_trt_ready
from test_cli_bad_input import assert_one_line_error, recipe, run_cli, write

from tokexport.reduce import METHODS, LayerInputs
from tokexport.reduce.dart import DartConfig, per_pivot
from tokexport.reduce.divprune import DivPruneConfig
from tokexport.reduce.patch import reduced
from tokexport.reduce.schedule import plan

# --- references: the official greedy loops (never exported) ------------------------------------------------


def reference_divprune(h: torch.Tensor, k: int) -> list[int]:
    """DivPrune on one image's tokens h [M, D]: cosine distance, the most isolated token first, then
    argmax_j min over the picks of D[pick, j], recomputed from the picked rows at every step (no mask)."""
    x = F.normalize(h, dim=-1)
    dist = 1 - x @ x.T
    m = dist.shape[0]
    nearest_other = [sorted(dist[:, j].tolist())[1] for j in range(m)]
    picks = [int(np.argmax(nearest_other))]
    for _ in range(k - 1):
        score = [min(float(dist[s, j]) for s in picks) for j in range(m)]
        picks.append(int(np.argmax(score)))
    return sorted(picks)


def reference_dart(h: torch.Tensor, keys: torch.Tensor, k: int, pivots: int) -> list[int]:
    """DART on one image: h [M, D], keys [H, M, dh]. Pivots = top-p by the L1 norm of the concatenated heads'
    keys; then for each pivot (in descending norm) its t least cosine-similar tokens among those not yet kept."""
    m = h.shape[0]
    norms = [float(keys[:, u].abs().sum()) for u in range(m)]
    p = min(pivots, k)
    piv = sorted(range(m), key=lambda u: -norms[u])[:p]
    kept, remaining = list(piv), [u for u in range(m) if u not in piv]
    x = F.normalize(h, dim=-1)
    for pivot, t in zip(piv, per_pivot(k, p)):
        cos = {u: float(x[pivot] @ x[u]) for u in remaining}
        chosen = sorted(remaining, key=lambda u: cos[u])[:t]
        kept += chosen
        remaining = [u for u in remaining if u not in chosen]
    return sorted(kept)


def _inputs(seed: int, b=3, n=26, d=12, heads=3, dh=4, n_prefix=1, hidden=None) -> LayerInputs:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, n, d, generator=g) if hidden is None else hidden
    keys = torch.randn(b, heads, n, dh, generator=g)
    return LayerInputs(hidden=h, attn=None, keys=keys, n_prefix=n_prefix, layer=2, num_layers=12)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n_prefix", [0, 1, 5])
def test_divprune_picks_the_reference_indices(seed, n_prefix):
    x = _inputs(seed, n=24 + seed, n_prefix=n_prefix)
    m = x.hidden.shape[1] - n_prefix
    method = METHODS["divprune"](DivPruneConfig())
    for k in (1, 2, m // 3, m - 1, m):
        got = method.select(x, k)
        assert got.shape == (3, k) and got.dtype == torch.int64
        for b in range(3):
            want = [i + n_prefix for i in reference_divprune(x.hidden[b, n_prefix:], k)]
            assert got[b].tolist() == want, (seed, k, b)


def test_divprune_never_picks_a_token_twice_where_the_official_greedy_would():
    """The documented deviation: with duplicate tokens the official greedy may pick one twice (fewer distinct
    tokens); the static form keeps n_keep distinct ones."""
    h = torch.randn(1, 6, 8)
    h = torch.cat([h, h[:, :2]], dim=1)  # 8 tokens, two of them copies
    x = LayerInputs(
        hidden=torch.cat([torch.zeros(1, 1, 8), h], dim=1), attn=None, keys=None, n_prefix=1, layer=0, num_layers=2
    )
    got = METHODS["divprune"](DivPruneConfig()).select(x, 8)[0].tolist()
    assert got == list(range(1, 9))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("pivots", [1, 4, 7])
def test_dart_picks_the_reference_indices(seed, pivots):
    x = _inputs(seed, n=24 + seed)
    m = x.hidden.shape[1] - 1
    method = METHODS["dart"](DartConfig(pivots=pivots))
    for k in sorted({1, 3, pivots, pivots + 1, m // 2, m - 2, m}):
        got = method.select(x, k)
        assert got.shape == (3, k)
        for b in range(3):
            want = [i + 1 for i in reference_dart(x.hidden[b, 1:], x.keys[b, :, 1:], k, pivots)]
            assert got[b].tolist() == want, (seed, k, b)


def test_dart_keep_count_is_exact_and_spread_over_the_pivots():
    assert per_pivot(132, 4) == [32, 32, 32, 32]
    assert per_pivot(10, 4) == [2, 2, 1, 1]
    assert per_pivot(4, 4) == [] and per_pivot(3, 4) == []
    assert sum(per_pivot(101, 7)) == 94


def test_dart_pivots_are_the_largest_key_norms():
    x = _inputs(0, n=20)
    keys = x.keys.clone()
    keys[:, :, 7] *= 100  # token 7 has by far the largest keys: with one pivot and one kept token, it is kept
    x = LayerInputs(hidden=x.hidden, attn=None, keys=keys, n_prefix=1, layer=2, num_layers=12)
    assert METHODS["dart"](DartConfig(pivots=1)).select(x, 1).tolist() == [[7]] * 3


# --- through a tiny DINOv2: the selections see the block's real tokens and keys ----------------------------


class _Recording:
    """Wraps a method: every select's inputs and result are kept for the reference."""

    def __init__(self, method):
        self.method, self.calls = method, []

    def __getattr__(self, name):
        return getattr(self.method, name)

    def for_stage(self, stage):
        return self

    def select(self, x, n_keep):
        out = self.method.select(x, n_keep)
        self.calls.append(
            (x.hidden.detach().clone(), None if x.keys is None else x.keys.detach().clone(), n_keep, out.clone())
        )
        return out


@pytest.mark.parametrize("name", ["divprune", "dart"])
def test_tiny_dinov2_selections_equal_the_reference_and_export_static(tiny_models, tmp_path, name):
    from tokexport.export import export_onnx
    from tokexport.load import load_model
    from tokexport.stages.runners import OrtRunner
    from tokexport.tasks.vit_tokens import forward_fn

    lm = load_model(str(tiny_models["dinov2"]), REPO, None, "auto", 56)
    cfg = METHODS[name].config_cls(method=name, prune_layers=[1, 2], keep_rate=[0.75, 0.5])
    method = METHODS[name](cfg)
    stages = plan(cfg, lm.adapter.n_tokens(56), lm.adapter.n_prefix(), lm.adapter.num_layers)
    assert [s.n_keep for s in stages] == [12, 6]
    fn = forward_fn(lm)
    x = torch.randn(4, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    rec = _Recording(method)
    with torch.no_grad(), reduced(lm.model, lm.adapter, stages, rec):
        want = fn(x)
    assert len(rec.calls) == 2
    for hidden, keys, k, got in rec.calls:
        for b in range(4):
            if name == "divprune":
                ref = reference_divprune(hidden[b, 1:], k)
            else:
                ref = reference_dart(hidden[b, 1:], keys[b, :, 1:], k, cfg.pivots)
            assert got[b].tolist() == [i + 1 for i in ref]

    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with reduced(lm.model, lm.adapter, stages, method):
            export_onnx(lm.model, fn, x[:1], path, 17, True, "auto")
    assert_static_and_trt_ready(path)
    out = OrtRunner(path).infer({"pixel_values": x.numpy()})
    for key in ("last_hidden_state", "pooler_output"):
        assert np.abs(out[key] - want[key].numpy()).max() <= 1e-4, key


@pytest.mark.parametrize(
    "reduction,needles",
    [
        ({"method": "dart", "prune_layers": [1], "keep_rate": 0.5, "pivots": 0}, ["reduction.pivots"]),
        (
            {"method": "divprune", "prune_layers": [1], "keep_rate": 0.5, "pivots": 2},
            ["reduction.pivots", "unknown field"],
        ),
        ({"method": "divprune", "prune_layers": [9], "keep_rate": 0.5}, ["reduction.prune_layers[0]", "out of range"]),
    ],
)
def test_bad_selector_recipes_exit_2_one_line(tiny_models, tmp_path, reduction, needles):
    data = recipe(tiny_models["dinov2"], reduction=reduction)
    res = run_cli("convert", str(write(tmp_path, data)), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "out").exists()
