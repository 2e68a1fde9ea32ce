"""CDPruner through the visual-token task: the tiny LLaVA twin recipe (recipes/tiny/llava-1.5-tiny-cdpruner.yaml,
with the generated tiny CLIP as its ``clip_model``) runs end to end with the instruction embedding as a
second graph input; the instruction really conditions the exported selection; towers without an aligned
CLIP text tower (DINOv2) and CLIP checkpoints that do not match the tower are refused with one line naming
the recipe field, before anything is written. The selection arithmetic itself is checked against the
reference loop in tests/test_vlm_reducers.py."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from conftest import REPO

from tokexport.errors import InputError
from tokexport.recipe import Recipe, load_recipe
from tokexport.stages.report_schema import validate_report
from tokexport.stages.runners import OrtRunner
from tokexport.tasks.run import run

FORBIDDEN = {"Loop", "If", "Scan", "ScatterND", "ScatterElements", "Scatter", "NonZero"}
TWIN = REPO / "recipes" / "tiny" / "llava-1.5-tiny-cdpruner.yaml"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """tiny-llava, tiny-llava-next and tiny-clip in a private models directory (set for the module)."""
    from tokexport import zoo as Z

    d = tmp_path_factory.mktemp("zoo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKEXPORT_MODELS_DIR", str(d))
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in ("tiny-llava", "tiny-llava-next", "tiny-clip"):
            Z.fetch(name)
        yield d


def _recipe(**over) -> Recipe:
    data = load_recipe(TWIN).model_dump(mode="json", exclude_none=True)
    for key, v in over.items():
        cur = data
        *parents, last = key.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = copy.deepcopy(v)
    return Recipe.model_validate(data)


@pytest.mark.parametrize("case", ["llava", "llava-next"])
def test_twin_runs_end_to_end_with_the_instruction_input(zoo, tmp_path, case):
    over = {} if case == "llava" else {"model": "tiny-llava-next", "vision.grid": [2, 2], "reduction.keep": 20}
    res = run(_recipe(**over), REPO / "recipes" / "tiny", tmp_path / "out", label=f"{case}.yaml")
    rep = res.report
    assert res.exit_code == 0, rep["failures"]
    assert validate_report(rep) == []
    assert rep["parity"]["passed"] and rep["parity_baseline"]["passed"]
    assert rep["trt_check"]["passed"]
    views = 1 if case == "llava" else 5
    assert rep["export"]["inputs"] == {
        "pixel_values": ["batch", *([views] if views > 1 else []), 3, 56, 56],
        "instruction_embeds": ["batch", 32],
    }
    model = onnx.load(str(res.out_dir / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["pixel_values", "instruction_embeds"]
    assert not {n.op_type for n in model.graph.node} & FORBIDDEN
    base = onnx.load(str(res.out_dir / "baseline.onnx"))
    assert [i.name for i in base.graph.input] == ["pixel_values"]
    k = rep["reduction"]["visual_tokens_out"]
    assert k == (4 if case == "llava" else 20) and rep["reduction"]["params"]["per_view"] == (
        [4] if case == "llava" else [4, 4, 4, 4, 4]
    )
    # the generation check fed each prompt's own instruction embedding
    assert len(rep["accuracy"]["generation"]["samples"]) == 4
    # the deploy bundle carries both inputs
    assert set(__import__("json").loads((res.out_dir / "deploy" / "manifest.json").read_text())["inputs"]) == {
        "pixel_values",
        "instruction_embeds",
    }


def test_the_instruction_conditions_the_exported_selection(zoo, tmp_path):
    """model.onnx, the same images, two instruction embeddings (the recipe's, and its opposite: the random
    tiny text tower maps every text to nearly the same vector, so the second is set, not embedded): the
    kept positions differ, and each equals the PyTorch graph's for that embedding."""
    from tokexport.tasks.base import Stages
    from tokexport.tasks.run import make_task

    recipe = _recipe(**{"bench.enabled": False, "deploy": {"bundle": False, "engines": False}})
    res = run(recipe, REPO / "recipes" / "tiny", tmp_path / "out", label="cd.yaml")
    task = make_task(recipe, REPO / "recipes" / "tiny", "cd.yaml")
    task.load(Stages())
    x = task.eval_x[:12]
    runner = OrtRunner(res.out_dir / "model.onnx")
    kept = {}
    e0 = task.selector.input_values()["instruction_embeds"]
    assert e0.shape == (32,) and np.isfinite(e0).all()
    for text, e in (("recipe's", e0), ("opposite", -e0)):
        feed = {"pixel_values": x, "instruction_embeds": np.repeat(e[None], len(x), axis=0)}
        got = runner.infer(feed)["positions"]
        import torch

        with torch.inference_mode():
            _, want = task.red(torch.from_numpy(x), torch.from_numpy(feed["instruction_embeds"]))
        np.testing.assert_array_equal(got, want.numpy())
        kept[text] = got
    a, b = kept.values()
    assert (a != b).any(axis=1).sum() >= 3  # most images keep other tokens under another instruction


def test_dinov2_tower_is_refused(zoo, tiny_models, tmp_path):
    """A bare DINOv2 tower has no text tower aligned with its features: one line naming the field."""
    recipe = Recipe.model_validate(
        {
            "model": str(tiny_models["dinov2"]),
            "task": "visual-tokens",
            "vision": {"feature_layer": -2},
            "reduction": {"method": "cdpruner", "keep": 4, "clip_model": "tiny-clip"},
            "export": {"image_size": 56},
        }
    )
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        run(recipe, tmp_path, out, label="r.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("r.yaml: reduction.method: cdpruner")  # the recipe file named first
    assert "dinov2" in msg and "text tower" in msg
    assert not out.exists()


def test_mismatched_clip_checkpoint_is_refused(zoo, tiny_models, tmp_path):
    """The conftest CLIP tower has 4 blocks, the tiny CLIP 3: not the checkpoint the tower comes from."""
    recipe = Recipe.model_validate(
        {
            "model": str(tiny_models["clip-vision"]),
            "task": "visual-tokens",
            "vision": {"feature_layer": -2},
            "reduction": {"method": "cdpruner", "keep": 4, "clip_model": "tiny-clip"},
        }
    )
    with pytest.raises(InputError, match=r"^r\.yaml: reduction\.clip_model: its vision tower's num_hidden_layers is 3"):
        run(recipe, tmp_path, tmp_path / "out", label="r.yaml")
    recipe = Recipe.model_validate(
        {
            "model": str(tiny_models["clip-vision"]),
            "task": "visual-tokens",
            "reduction": {"method": "cdpruner", "keep": 4, "clip_model": str(tiny_models["vit"])},
        }
    )
    with pytest.raises(
        InputError, match=r"^r\.yaml: reduction\.clip_model: .* is not a CLIP checkpoint with a text tower"
    ):
        run(recipe, tmp_path, tmp_path / "out", label="r.yaml")
    assert not (tmp_path / "out").exists()


def test_clip_model_is_required():
    with pytest.raises(Exception, match="clip_model"):
        Recipe.model_validate({"model": "x", "task": "visual-tokens", "reduction": {"method": "cdpruner", "keep": 4}})
