"""Every kind of graph tokexport exports — each token-pruning method, ToMe, each visual-token selector,
and the unreduced baselines — has no control flow (If/Loop/Scan) and passes the TensorRT target check
with 0 errors (control flow is an error there: shapes are static, so a conditional is always an
exporter artefact). Vocab graphs are checked in tests/test_task_vocab.py."""

from __future__ import annotations

import onnx
import pytest

from tokexport.recipe import validate_recipe
from tokexport.tasks.run import run

# Real floors on the tiny random models (measured: >= 0.99 for every ViT method on the tiny DINOv2, >= 0.78 for
# every visual-token selector on the tiny CLIP tower): a run whose reduced features stop resembling the
# original's fails them (tests/test_fold.py and tests/test_task_visual.py use the same floors).
FLOOR = {"vit": 0.9, "visual-tokens": 0.5}


def _verify(task: str) -> dict:
    return {
        "parity": {"samples": 2},
        "accuracy": {
            "samples_per_class": 1,
            "prototypes_per_class": 1,
            "metrics": {"feature_cosine": {"min": FLOOR[task]}},
        },
    }


CASES = {
    **{
        m: ("dinov2", {"reduction": {"method": m, "prune_layers": [1, 2], "keep_rate": [0.5, 0.5]}})
        for m in ("zero-tprune", "topk-cls", "random", "uniform")
    },
    "tome": ("dinov2", {"reduction": {"method": "tome", "r": 2}}),
    **{
        m: ("clip-vision", {"task": "visual-tokens", "reduction": {"method": m, "keep": 4}})
        for m in ("fopru-rank", "fopru-row", "uniform-spatial", "random-visual")
    },
    "hired": (
        "clip-vision",
        {"task": "visual-tokens", "reduction": {"method": "hired", "keep": 4}, "vision": {"grid": [2, 2]}},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exported_graphs_have_no_control_flow(tiny_models, tmp_path, case):
    family, extra = CASES[case]
    data = {
        "model": str(tiny_models[family]),
        "export": {"image_size": 56, "target": "jetpack-6.0"},
        "verify": _verify(extra.get("task", "vit")),
        "bench": {"enabled": False},
        "deploy": {"bundle": False},
        **extra,
    }
    res = run(validate_recipe(f"{case}.yaml", data), tmp_path, tmp_path / "out", label=case)
    assert res.exit_code == 0, res.report["failures"]
    for name in ("model.onnx", "baseline.onnx"):
        g = onnx.load(tmp_path / "out" / name, load_external_data=False)
        ops = [n.op_type for n in g.graph.node]
        assert not {"If", "Loop", "Scan"} & set(ops), (name, sorted({o for o in ops if o in ("If", "Loop", "Scan")}))
    assert res.report["trt_check"]["errors"] == 0, res.report["trt_check"]["findings"]
