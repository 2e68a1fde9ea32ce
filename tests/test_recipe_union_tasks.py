"""Each recipe kind has its own ``reduction`` union: ViT recipes the methods of ``tokexport.reduce.METHODS``,
visual-token recipes those of ``VISUAL_METHODS``. The same method name may be registered in both (DivPrune inside
a ViT and on a VLM's visual tokens) and resolves by ``task``; a method of the other kind is a one-line error that
names the task to set."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import yaml
from conftest import REPO

from tokexport.errors import InputError
from tokexport.recipe import Recipe, VisualTokensRecipe, ViTRecipe, load_recipe
from tokexport.reduce import method_classes
from tokexport.vlm.select import VISUAL_METHODS


def _tags(cls) -> set[str]:
    ann = cls.model_fields["reduction"].annotation
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    return {typing.get_args(m.model_fields["method"].annotation)[0] for m in typing.get_args(ann)}


def test_each_kind_takes_its_own_registry():
    assert _tags(ViTRecipe) == set(method_classes())
    assert _tags(VisualTokensRecipe) == set(VISUAL_METHODS)


def _error(tmp_path, data) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InputError) as e:
        load_recipe(p)
    return str(e.value)


def test_a_vit_method_under_visual_tokens_names_the_task(tmp_path):
    msg = _error(
        tmp_path,
        {
            "model": "m",
            "task": "visual-tokens",
            "reduction": {"method": "zero-tprune", "prune_layers": [1], "keep_rate": 0.5},
        },
    )
    assert len(msg.splitlines()) == 1
    assert "reduction.method" in msg and "inside a ViT" in msg and "set task: auto" in msg and "fopru-rank" in msg


def test_a_visual_method_under_a_vit_task_names_the_task(tmp_path):
    for task in (None, "auto", "feature-extraction"):
        data = {"model": "m", "reduction": {"method": "fopru-rank", "keep": 4}} | ({"task": task} if task else {})
        msg = _error(tmp_path, data)
        assert len(msg.splitlines()) == 1
        assert "reduction.method" in msg and "set task: visual-tokens" in msg and "zero-tprune" in msg


def test_an_unknown_method_lists_the_tasks_own_methods(tmp_path):
    msg = _error(tmp_path, {"model": "m", "task": "visual-tokens", "reduction": {"method": "nope", "keep": 4}})
    assert "unknown method 'nope'" in msg and "fopru-rank" in msg and "zero-tprune" not in msg
    msg = _error(tmp_path, {"model": "m", "reduction": {"method": "nope"}})
    assert "unknown method 'nope'" in msg and "zero-tprune" in msg and "fopru-rank" not in msg


def test_recipe_model_validate_picks_the_kind_by_task():
    assert (
        type(
            Recipe.model_validate(
                {"model": "m", "reduction": {"method": "uniform", "prune_layers": [1], "keep_rate": 0.5}}
            )
        )
        is ViTRecipe
    )
    assert (
        type(
            Recipe.model_validate(
                {"model": "m", "task": "visual-tokens", "reduction": {"method": "fopru-rank", "keep": 4}}
            )
        )
        is VisualTokensRecipe
    )


SHARED_NAME = r"""
from typing import Literal
from tokexport.reduce.base import METHODS, Method, ReductionConfig
from tokexport.vlm.select import VISUAL_METHODS, VisualReductionConfig, VisualSelector

class ViTCfg(ReductionConfig):
    method: Literal["shared-name"] = "shared-name"
    vit_only: int = 1

@METHODS.register
class ViTShared(Method):
    name = "shared-name"
    config_cls = ViTCfg

class VisCfg(VisualReductionConfig):
    method: Literal["shared-name"] = "shared-name"
    visual_only: int = 2

@VISUAL_METHODS.register
class VisShared(VisualSelector):
    name = "shared-name"
    config_cls = VisCfg

from tokexport.recipe import validate_recipe
vit = validate_recipe("r.yaml", {"model": "m", "reduction": {"method": "shared-name", "prune_layers": [1],
                                                             "keep_rate": 0.5, "vit_only": 3}})
vis = validate_recipe("r.yaml", {"model": "m", "task": "visual-tokens",
                                 "reduction": {"method": "shared-name", "keep": 4, "visual_only": 5}})
assert type(vit.reduction) is ViTCfg and vit.reduction.vit_only == 3, vit
assert type(vis.reduction) is VisCfg and vis.reduction.visual_only == 5, vis
try:
    validate_recipe("r.yaml", {"model": "m", "reduction": {"method": "shared-name", "visual_only": 5}})
except Exception as e:
    assert "reduction.visual_only" in str(e), e
else:
    raise AssertionError("a visual-only field passed under task: auto")
print("ok")
"""


def test_one_name_in_both_registries_resolves_by_task():
    # a fresh interpreter: the unions are built when tokexport.recipe is imported, after both registrations
    res = subprocess.run(
        [sys.executable, "-c", SHARED_NAME],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
