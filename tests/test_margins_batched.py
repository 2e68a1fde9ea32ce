"""Selection margins (parity's near-tie detection): recorded for a batch, or by the parity reference while
it runs, they equal the per-sample ones."""

from __future__ import annotations

import numpy as np
import torch

from tokexport.reduce import METHODS
from tokexport.reduce.margins import recording, sample_margins
from tokexport.reduce.patch import reduced
from tokexport.reduce.schedule import plan
from tokexport.reduce.zero_tprune import ZeroTPruneConfig
from tokexport.tasks.vit_tokens import selection_margins


def _zero_tprune_fn(tiny_models):
    """Tiny ViT under Zero-TPrune (pruning after blocks 1 and 2): its forward, returning named outputs."""
    from tokexport.load import load_model

    lm = load_model(str(tiny_models["vit"]), tiny_models["vit"].parent, None, "auto", 56)
    cfg = ZeroTPruneConfig(prune_layers=[1, 2], keep=[12, 6])
    method = METHODS["zero-tprune"](cfg)
    stages = plan(cfg, 17, 1, lm.adapter.num_layers)

    def fn(t):
        with reduced(lm.model, lm.adapter, stages, method):
            return lm.adapter.outputs(lm.model, lm.model(pixel_values=t))

    return fn


def test_batched_margins_equal_per_sample_margins(tiny_models):
    fn = _zero_tprune_fn(tiny_models)
    x = np.random.default_rng(1).normal(size=(11, 3, 56, 56)).astype(np.float32)
    got = selection_margins(fn, x)
    one = []
    with torch.inference_mode():
        for i in range(len(x)):
            with recording() as rec:
                fn(torch.from_numpy(x[i : i + 1]))
            one += sample_margins(rec, 1)
    assert len(got) == 11 and all(np.isfinite(got))
    np.testing.assert_allclose(got, one, rtol=1e-6, atol=1e-9)


def test_the_parity_reference_records_the_margins_it_used(tiny_models):
    """The parity check's reference run records the selection margins (no second forward): the same values
    as selection_margins, in row order, over run_rows' chunks."""
    from tokexport.stages.runners import run_rows
    from tokexport.tasks.vit_tokens import MarginRecordingRunner

    fn = _zero_tprune_fn(tiny_models)
    x = np.random.default_rng(2).normal(size=(11, 3, 56, 56)).astype(np.float32)
    sink: list[float] = []
    out = run_rows(MarginRecordingRunner(fn, sink), {"pixel_values": x}, batch=4)
    assert len(sink) == 11 and len(next(iter(out.values()))) == 11
    np.testing.assert_allclose(sink, selection_margins(fn, x), rtol=1e-6, atol=1e-9)
