"""The ViT task's honest baselines (tokexport.reduce.baselines_vit): per-image random keep over seeds and
the 2-D uniform lattice, at the method's schedule, inside every report; and the 2-D lattice itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli_bad_input import recipe, write

from tokexport.reduce.base import LayerInputs
from tokexport.reduce.baselines_vit import PerImageRandom, per_sample
from tokexport.reduce.uniform_keep import UniformKeep, UniformKeepConfig, lattice_order, lattice_select
from tokexport.stages.report_schema import Baselines


def _grid(keep, h, w):
    g = np.zeros((h, w), dtype=int)
    for p in keep:
        g[p // w, p % w] = 1
    return g


# ------------------------------------------------------------------ the 2-D lattice


@pytest.mark.parametrize("h,w", [(16, 16), (14, 14), (4, 4), (37, 37), (5, 3)])
def test_lattice_order_is_a_permutation(h, w):
    assert sorted(lattice_order(h, w)) == list(range(h * w))


def test_half_of_the_grid_is_a_checkerboard_not_stripes():
    g = _grid(lattice_order(16, 16)[:128], 16, 16)
    r, c = np.indices((16, 16))
    assert (g == ((r + c) % 2 == 0)).all()  # quincunx: every row and every column keeps half
    assert (g.sum(0) == 8).all() and (g.sum(1) == 8).all()
    q = _grid(lattice_order(16, 16)[:64], 16, 16)
    assert (q == ((r % 2 == 0) & (c % 2 == 0))).all()  # a quarter: the stride-2 square lattice


def test_partial_levels_spread_over_the_whole_grid():
    """Between two lattices the next level's cells are spread, not piled in one region: each quadrant
    of the grid gets its share of a 96-of-256 keep (64 = stride-2 lattice + 32 spread)."""
    g = _grid(lattice_order(16, 16)[:96], 16, 16)
    quads = [g[:8, :8].sum(), g[:8, 8:].sum(), g[8:, :8].sum(), g[8:, 8:].sum()]
    assert max(quads) - min(quads) <= 2, quads


def test_lattice_select_is_nested_by_original_position():
    h = w = 16
    order = lattice_order(h, w)
    first = lattice_select(h, w, 256, 230)  # stage 1: candidates = the whole grid
    assert [p for p in range(256) if p in set(order[:230])] == first
    # stage 2: the candidates are stage 1's survivors in ascending original order
    survivors = sorted(order[:230])
    second = lattice_select(h, w, 230, 184)
    assert sorted(survivors[i] for i in second) == sorted(order[:184])
    with pytest.raises(ValueError):
        lattice_select(h, w, 230, 231)


def test_uniform_method_through_the_patch_keeps_original_positions(tiny_models):
    """Two uniform stages on a real (tiny) ViT: the tokens left after stage 2 are the lattice's first
    n positions of the ORIGINAL 4x4 grid, found by tagging each patch token with its position."""
    from tokexport.load import load_model
    from tokexport.reduce.patch import reduced
    from tokexport.reduce.schedule import plan

    lm = load_model(str(tiny_models["vit"]), tiny_models["vit"].parent, None, "auto", 56)
    cfg = UniformKeepConfig(prune_layers=[0, 1], keep=[12, 6])
    stages = plan(cfg, lm.adapter.n_tokens(56), lm.adapter.n_prefix(), lm.adapter.num_layers)
    seen = {}
    method = UniformKeep(cfg)
    orig_select = method.select

    def spy(x: LayerInputs, n_keep: int):
        idx = orig_select(x, n_keep)
        seen[x.layer] = (x.grid, idx[0].tolist())
        return idx

    method.select = spy
    with reduced(lm.model, lm.adapter, stages, method), torch.inference_mode():
        lm.model(pixel_values=torch.zeros(2, 3, 56, 56))
    assert seen[0][0] == (4, 4) and seen[1][0] == (4, 4)
    order = lattice_order(4, 4)
    stage1 = [p - 1 for p in seen[0][1]]  # absolute positions minus CLS = original patch indices
    assert stage1 == sorted(order[:12])
    stage2 = [stage1[p - 1] for p in seen[1][1]]
    assert stage2 == sorted(order[:6])


def test_replaying_the_prefix_blocks_changes_nothing(tiny_models):
    """The baselines start from the original model's recorded output of the first stage's block; the
    figures are those of a full forward."""
    from tokexport.load import load_model
    from tokexport.reduce.baselines_vit import baseline_runs, record_block
    from tokexport.reduce.schedule import plan
    from tokexport.stages.runners import TorchRunner, run_rows

    lm = load_model(str(tiny_models["vit"]), tiny_models["vit"].parent, None, "auto", 56)
    fwd = lambda t: lm.adapter.outputs(lm.model, lm.model(pixel_values=t))  # noqa: E731
    stages = plan(UniformKeepConfig(prune_layers=[1, 2], keep=[12, 6]), 17, 1, lm.adapter.num_layers)
    x = np.random.default_rng(0).normal(size=(10, 3, 56, 56)).astype(np.float32)
    with record_block(lm.model, lm.adapter, 1) as rec:
        run_rows(TorchRunner(fwd), {"pixel_values": x}, batch=4)
    assert rec["hidden"].shape[:2] == (10, 17)
    feat = lm.adapter.feature_output(list(run_rows(TorchRunner(fwd), {"pixel_values": x[:1]})))
    figures = lambda out: {"f": out[feat][:, 0].astype(np.float64)}  # noqa: E731
    a = baseline_runs(lm.model, lm.adapter, fwd, stages, x, figures, range(5), recorded=rec)
    b = baseline_runs(lm.model, lm.adapter, fwd, stages, x, figures, range(5))
    for ra, rb in zip(a, b):
        for da, db in zip(ra.per_sample["f"], rb.per_sample["f"]):
            np.testing.assert_allclose(da, db, atol=1e-5)
    assert isinstance(lm.adapter.layers(lm.model)[0], type(lm.adapter.layers(lm.model)[3]))  # blocks restored


# ------------------------------------------------------------------ per-image random


def _inputs(b=3, n=17):
    return LayerInputs(hidden=torch.zeros(b, n, 4), attn=None, keys=None, n_prefix=1, layer=0, num_layers=2)


def test_per_image_random_differs_per_image_and_seed_and_repeats_per_seed():
    a = PerImageRandom(0).select(_inputs(), 8)
    assert a.shape == (3, 8) and (a >= 1).all() and (a <= 16).all()
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])  # a new subset for every image
    assert torch.equal(a, PerImageRandom(0).select(_inputs(), 8))  # deterministic given the seed
    assert not torch.equal(a, PerImageRandom(1).select(_inputs(), 8))
    assert (torch.diff(a, dim=1) > 0).all()  # ascending, distinct


def test_per_sample_means_are_the_report_metrics():
    from tokexport import metrics as M
    from tokexport import verify as V
    from tokexport.recipe import Threshold

    rng = np.random.default_rng(0)
    orig = {"f": rng.normal(size=(20, 8)), "logits": rng.normal(size=(20, 5))}
    red = {"f": orig["f"] + rng.normal(scale=0.8, size=(20, 8)), "logits": orig["logits"] + rng.normal(size=(20, 5))}
    proto_x, proto_y, y = rng.normal(size=(8, 8)), np.repeat(np.arange(4), 2), rng.integers(0, 4, 20)
    protos = M.class_prototypes(proto_x, proto_y, 4)
    ps = per_sample(["feature_cosine", "instance_top1", "top1_agreement"], orig, red, "f", protos, y)
    # thresholds only to build the metrics (their values are compared below); no verdict is asserted
    t = {"feature_cosine": Threshold(min=0.0), "instance_top1": Threshold(max_drop=1.0)}
    ref = V.feature_metrics(orig["f"], red["f"], proto_x, y, proto_y, 4, t)
    ref |= V.classifier_metrics(orig["logits"], red["logits"], {"top1_agreement": Threshold(min=0.0)})
    for name, v in ps.items():
        assert v.shape == (20,)
        assert float(np.mean(v)) == pytest.approx(ref[name].as_dict()["reduced"])


# ------------------------------------------------------------------ inside the report


def test_report_has_baselines_section_and_the_gate_can_fail(tmp_path, tiny_models):
    from tokexport.pipeline import convert

    r = recipe(
        tiny_models["vit-classifier"],
        **{
            "reduction.method": "topk-cls",
            "verify.accuracy.metrics": {"feature_cosine": {"min": 0.0}, "top1_agreement": {"min": 0.0}},
            "verify.baselines": {"random_seeds": 5, "resamples": 200},
            # a margin no method can reach: the gate must fail the conversion (exit 4)
            "verify.vs_baselines": {"min_margin": 0.9, "bound": "estimate"},
        },
    )
    res = convert(write(tmp_path, r), tmp_path / "out")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    b = rep["baselines"]
    Baselines.model_validate(b)
    assert set(b["baselines"]) == {"random", "uniform"}
    rnd = b["baselines"]["random"]
    assert rnd["seeds"] == [0, 1, 2, 3, 4] and len(rnd["metrics"]["feature_cosine"]["values"]) == 5
    assert set(b["margins"]) == {"feature_cosine", "top1_agreement"}
    n = rep["accuracy"]["samples"]
    assert b["data"]["samples"] == n and rep["accuracy"]["splits"]["eval"]["samples"] == n
    # the method's figure is the report's metric (both from model.onnx)
    assert b["method"]["metrics"]["feature_cosine"] == pytest.approx(
        rep["accuracy"]["metrics"]["feature_cosine"]["reduced"]
    )
    assert [s["tokens_out"] for s in b["budget"]["tokens_per_stage"]] == [
        s["tokens_out"] for s in rep["reduction"]["schedule"]
    ]
    assert res.exit_code == 4 and b["gate"]["passed"] is False
    assert any(f.startswith("vs_baselines:") for f in rep["failures"])
    assert "Against baselines" in (tmp_path / "out" / "report.md").read_text()


def test_baselines_can_be_disabled_and_a_gate_then_refused(tmp_path, tiny_models):
    from tokexport.pipeline import convert

    r = recipe(tiny_models["dinov2"], **{"verify.baselines": {"enabled": False}})
    res = convert(write(tmp_path, r), tmp_path / "out")
    assert res.exit_code == 0 and res.report.get("baselines") is None
    bad = recipe(
        tiny_models["dinov2"], **{"verify.baselines": {"enabled": False}, "verify.vs_baselines": {"min_margin": 0.0}}
    )
    from tokexport.errors import InputError

    with pytest.raises(InputError, match="vs_baselines"):
        convert(write(tmp_path, bad, "bad.yaml"), tmp_path / "out2")


# ------------------------------------------------------------------ the same runs in ONNX Runtime


def _tiny(tiny_models):
    from tokexport.load import load_model
    from tokexport.reduce.schedule import plan

    lm = load_model(str(tiny_models["vit"]), tiny_models["vit"].parent, None, "auto", 56)
    fwd = lambda t: lm.adapter.outputs(lm.model, lm.model(pixel_values=t))  # noqa: E731
    stages = plan(UniformKeepConfig(prune_layers=[1, 2], keep=[12, 6]), 17, 1, lm.adapter.num_layers)
    x = np.random.default_rng(0).normal(size=(30, 3, 56, 56)).astype(np.float32)  # 24 + a padded chunk of 6
    return lm, fwd, stages, x


def test_keep_plan_draws_what_the_pytorch_run_draws(tiny_models):
    """The positions handed to the tail graph are the ones the PyTorch run selects: same generator, same
    order of calls (chunk, then stage), for the random baseline and the lattice."""
    from tokexport.reduce import baselines_vit as B
    from tokexport.reduce.base import Method

    lm, fwd, stages, x = _tiny(tiny_models)
    for make in (lambda: B.PerImageRandom(3), lambda: UniformKeep(UniformKeepConfig())):
        seen: list[np.ndarray] = []
        method = make()
        original = type(method).select

        def spy(self, inputs, n_keep, _orig=original, _seen=seen):
            idx = _orig(self, inputs, n_keep)
            _seen.append(idx.numpy().copy())
            return idx

        method.select = spy.__get__(method, Method)
        B._torch_outputs(lm.model, lm.adapter, fwd, B.pruning_stages(stages), x, method, None)
        plan = B.keep_plan(make(), B.pruning_stages(stages), 17, 1, lm.adapter.num_layers, len(x), B.BATCH)
        flat = [k for chunk in plan for k in chunk]
        assert len(flat) == len(seen) == -(-len(x) // B.BATCH) * len(stages) and len(x) % B.BATCH  # a short chunk too
        for a, b in zip(flat, seen):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(
        B.keep_plan(B.PerImageRandom(0), stages, 17, 1, 4, 30, 24)[0][0],
        B.keep_plan(B.PerImageRandom(1), stages, 17, 1, 4, 30, 24)[0][0],
    )


def test_onnxruntime_baselines_equal_the_pytorch_ones(tiny_models, tmp_path):
    from tokexport.reduce.baselines_vit import baseline_runs, record_block, record_prefix
    from tokexport.stages.runners import TorchRunner, run_rows

    lm, fwd, stages, x = _tiny(tiny_models)
    with record_block(lm.model, lm.adapter, 1) as full:
        run_rows(TorchRunner(fwd), {"pixel_values": x}, batch=4)
    rec = record_prefix(lm.model, lm.adapter, fwd, 1, x)  # only blocks 0..1 ran
    assert torch.equal(rec["hidden"], full["hidden"]) and rec["as_tuple"] == full["as_tuple"]
    assert isinstance(lm.adapter.layers(lm.model)[0], type(lm.adapter.layers(lm.model)[3]))  # blocks restored
    feat = lm.adapter.feature_output(list(run_rows(TorchRunner(fwd), {"pixel_values": x[:1]})))

    def figures(out):
        return {
            "f": out[feat].reshape(len(x), -1)[:, 0].astype(np.float64),
            "c": out[feat].reshape(len(x), -1).mean(1).astype(np.float64),
        }

    info: dict = {}
    a = baseline_runs(
        lm.model,
        lm.adapter,
        fwd,
        stages,
        x,
        figures,
        range(5),
        recorded=rec,
        engine="onnxruntime",
        workdir=tmp_path,
        info=info,
    )
    assert info["engine"] == "onnxruntime" and info["check_max_abs_diff"] <= 1e-3, info
    b = baseline_runs(lm.model, lm.adapter, fwd, stages, x, figures, range(5), recorded=rec)
    for ra, rb in zip(a, b):
        assert ra.name == rb.name
        for name in ("f", "c"):
            for da, db in zip(ra.per_sample[name], rb.per_sample[name]):
                assert da.shape == (30,)
                np.testing.assert_allclose(da, db, atol=2e-5)
    assert isinstance(lm.adapter.layers(lm.model)[1], type(lm.adapter.layers(lm.model)[3]))  # blocks restored


def test_a_tail_graph_that_disagrees_is_not_used(tiny_models, tmp_path, monkeypatch):
    """The tail graph must reproduce the PyTorch run on its first rows; when it does not (here: a tolerance
    no graph meets), every baseline is computed in PyTorch and the report says why."""
    from tokexport.reduce import baselines_vit as B

    lm, fwd, stages, x = _tiny(tiny_models)
    rec = B.record_prefix(lm.model, lm.adapter, fwd, 1, x)
    monkeypatch.setattr(B, "CHECK_ATOL", -1.0)
    info: dict = {}
    feat = "last_hidden_state" if "last_hidden_state" in fwd(torch.from_numpy(x[:1])) else "logits"
    runs = B.baseline_runs(
        lm.model,
        lm.adapter,
        fwd,
        stages,
        x,
        lambda o: {"f": o[feat].reshape(len(x), -1)[:, 0]},
        range(5),
        recorded=rec,
        engine="onnxruntime",
        workdir=tmp_path,
        info=info,
    )
    assert info["engine"] == "torch" and "differs from PyTorch" in info["note"], info
    assert len(runs[0].per_sample["f"]) == 5


def test_record_prefix_keeps_what_fits_and_refuses_what_does_not(tiny_models, monkeypatch):
    """The size bound is on all rows of the block's output (not one chunk times the rows)."""
    from tokexport.reduce import baselines_vit as B

    lm, fwd, _, x = _tiny(tiny_models)
    full = B.record_prefix(lm.model, lm.adapter, fwd, 1, x)
    total = full["hidden"].numel() * full["hidden"].element_size()
    monkeypatch.setattr(B, "MAX_CACHE_BYTES", total)  # exactly fits: kept
    assert torch.equal(B.record_prefix(lm.model, lm.adapter, fwd, 1, x)["hidden"], full["hidden"])
    monkeypatch.setattr(B, "MAX_CACHE_BYTES", total - 1)  # one byte short: refused, blocks restored
    assert B.record_prefix(lm.model, lm.adapter, fwd, 1, x) == {}
    assert isinstance(lm.adapter.layers(lm.model)[1], type(lm.adapter.layers(lm.model)[3]))


# ------------------------------------------------------------------ judged against an earlier run's draws


def test_a_run_judged_against_an_earlier_runs_baselines_gets_its_figures_exactly(tmp_path, tiny_models):
    """``baselines_from``: the second method (uniform keep at topk-cls's schedule) is judged against the first
    run's draws, read from its report — the baselines and margins are those a computation would give (the
    same draws, figure for figure), and a run at another schedule or on other crops is refused."""
    from tokexport.errors import InputError
    from tokexport.recipe import load_recipe
    from tokexport.stages.baselines import runs_from_section
    from tokexport.tasks.run import run

    over = {
        "reduction.prune_layers": [1],
        "reduction.keep_rate": 0.5,
        "verify.accuracy.metrics": {"feature_cosine": {"min": 0.0}, "top1_agreement": {"min": 0.0}},
        "verify.baselines": {"random_seeds": 5, "resamples": 200},
        "verify.vs_baselines": {"min_margin": -1.0, "bound": "estimate"},
    }
    first = load_recipe(
        write(tmp_path, recipe(tiny_models["vit-classifier"], **{"reduction.method": "topk-cls", **over}), "a.yaml")
    )
    a = run(first, tmp_path, tmp_path / "a").report["baselines"]
    for entry in a["baselines"].values():  # every draw's per-sample values are in the report
        for m in entry["metrics"].values():
            assert len(m["per_sample"]) == a["data"]["samples"]
            assert float(np.mean(m["per_sample"])) == pytest.approx(m["mean"])
    second = load_recipe(
        write(tmp_path, recipe(tiny_models["vit-classifier"], **{"reduction.method": "uniform", **over}), "b.yaml")
    )
    computed = run(second, tmp_path, tmp_path / "b").report["baselines"]
    reused = run(second, tmp_path, tmp_path / "c", baselines_from=tmp_path / "a").report["baselines"]
    assert reused["baselines"] == computed["baselines"] == a["baselines"]
    assert reused["margins"] == computed["margins"] and reused["gate"] == computed["gate"]
    assert reused["method"]["name"] == "uniform" and "reused from" in reused["data"]["baselines_from"]
    assert "reused from" not in computed["data"]["baselines_from"]

    other = load_recipe(
        write(
            tmp_path,
            recipe(
                tiny_models["vit-classifier"], **{"reduction.method": "uniform", **over, "reduction.keep_rate": 0.75}
            ),
            "c.yaml",
        )
    )
    with pytest.raises(InputError, match=r"baselines_from: .*report.json: tokens_per_stage is .* there"):
        run(other, tmp_path, tmp_path / "d", baselines_from=tmp_path / "a")
    crops = load_recipe(
        write(
            tmp_path,
            recipe(tiny_models["vit-classifier"], **{"reduction.method": "uniform", **over, "verify.accuracy.seed": 1}),
            "d.yaml",
        )
    )
    with pytest.raises(InputError, match=r"verify.accuracy is .* there"):
        run(crops, tmp_path, tmp_path / "e", baselines_from=tmp_path / "a")
    with pytest.raises(InputError, match=r"baselines_from: .*nowhere.*report.json: cannot read it"):
        run(second, tmp_path, tmp_path / "f", baselines_from=tmp_path / "nowhere")
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()  # refused: nothing written
    assert not (tmp_path / "f").exists()
    old = json.loads((tmp_path / "a" / "report.json").read_text())["baselines"]
    del old["baselines"]["uniform"]["metrics"]["feature_cosine"]["per_sample"]
    with pytest.raises(ValueError, match=r"uniform.metrics.feature_cosine.per_sample: not in the report"):
        runs_from_section(old, ["feature_cosine"])
