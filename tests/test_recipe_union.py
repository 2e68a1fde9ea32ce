"""Recipes are one pydantic union discriminated by ``task``: each kind resolves to its class, a recipe
with several errors reports every one (one line each, in document order), the union's JSON Schema
names every kind, and the recipe modules import one way only (no cycle)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from tokexport.errors import InputError
from tokexport.recipe import (
    Recipe,
    VisualTokensRecipe,
    ViTRecipe,
    VocabRecipe,
    load_recipe,
    recipe_schema_json,
)

VIT = {"model": "some-model", "reduction": {"method": "topk-cls", "prune_layers": [1, 2], "keep_rate": 0.5}}
VISUAL = {"model": "some-model", "task": "visual-tokens", "reduction": {"method": "fopru-rank", "keep": 4}}
VOCAB = {"model": "some-model", "task": "vocab-trim", "corpus": {"sources": [{"path": "corpus.txt"}]}}


def write(tmp_path: Path, data, name="r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def error_of(path: Path) -> str:
    with pytest.raises(InputError) as e:
        load_recipe(path)
    return str(e.value)


@pytest.mark.parametrize(
    "data,cls,task",
    [
        (VIT, ViTRecipe, "auto"),  # task absent: auto
        ({**VIT, "task": "auto"}, ViTRecipe, "auto"),
        ({**VIT, "task": "feature-extraction"}, ViTRecipe, "feature-extraction"),
        ({**VIT, "task": "image-classification"}, ViTRecipe, "image-classification"),
        (VISUAL, VisualTokensRecipe, "visual-tokens"),
        (VOCAB, VocabRecipe, "vocab-trim"),
    ],
)
def test_each_task_resolves_to_its_recipe_class(tmp_path, data, cls, task):
    r = load_recipe(write(tmp_path, data))
    assert type(r) is cls and r.task == task
    assert isinstance(r, Recipe) == (cls is not VocabRecipe)  # ViT and visual-token recipes are Recipes


def test_recipe_still_validates_every_image_task_directly():
    assert Recipe.model_validate(VISUAL).task == "visual-tokens"
    assert Recipe.model_validate(VIT).task == "auto"


def test_three_errors_in_three_sections_are_all_reported_in_document_order(tmp_path):
    # written bench, reduction, export: not the order the schema declares them in
    text = (
        "model: some-model\n"
        "bench: {repeats: 0}\n"
        "reduction: {method: topk-cls, prune_layers: [1, 2], kep_rate: 0.5}\n"
        "export: {opset: 99}\n"
    )
    p = write(tmp_path, text, name="three.yaml")
    lines = error_of(p).split("\n")
    assert len(lines) == 3, lines
    assert all(line.startswith(f"{p}: ") for line in lines), lines
    assert lines[0].startswith(f"{p}: bench.repeats: ") and "1..10000" in lines[0]
    assert lines[1] == f"{p}: reduction.kep_rate: unknown field; did you mean 'keep_rate'?"
    assert lines[2].startswith(f"{p}: export.opset: ") and "13..21" in lines[2]


def test_several_errors_of_a_vocab_recipe(tmp_path):
    text = (
        "task: vocab-trim\n"
        "verify: {parity: {atl: 1}}\n"
        "model: some-model\n"
        "corpus: {sources: [{path: corpus.txt}], heldout_fraction: 2}\n"
        "trim: {min_frequency: 0}\n"
    )
    p = write(tmp_path, text)
    lines = error_of(p).split("\n")
    assert [line.split(": ")[1] for line in lines] == [
        "verify.parity.atl",
        "corpus.heldout_fraction",
        "trim.min_frequency",
    ]
    assert "did you mean 'atol'?" in lines[0]


def test_missing_fields_come_after_the_written_ones(tmp_path):
    p = write(tmp_path, "reduction: {prune_layers: [1]}\n")
    lines = error_of(p).split("\n")
    assert [line.split(": ")[1] for line in lines] == ["reduction.method", "model"]


def test_one_error_is_one_line(tmp_path):
    p = write(tmp_path, {**VIT, "bench": {"repeats": 0}})
    msg = error_of(p)
    assert "\n" not in msg and msg.startswith(f"{p}: bench.repeats: ")


def test_one_union_field_reports_one_error(tmp_path):
    # corpus.sources[].path is `str | list[str]`: each alternative fails, the field is reported once
    p = write(tmp_path, {**VOCAB, "corpus": {"sources": [{"path": 5}]}})
    msg = error_of(p)
    assert "\n" not in msg and msg.startswith(f"{p}: corpus.sources[0].path: "), msg


def test_unknown_task_names_every_task(tmp_path):
    msg = error_of(write(tmp_path, {**VIT, "task": "visual-token"}))
    assert "task: unknown task 'visual-token'" in msg and "did you mean 'visual-tokens'?" in msg
    for task in ("auto", "feature-extraction", "image-classification", "visual-tokens", "vocab-trim"):
        assert task in msg


def test_union_json_schema_names_every_recipe_kind():
    schema = json.loads(recipe_schema_json())
    refs = [alt["$ref"] for alt in schema["oneOf"]]
    assert refs == ["#/$defs/ViTRecipe", "#/$defs/VisualTokensRecipe", "#/$defs/VocabRecipe"]
    for name in ("ViTRecipe", "VisualTokensRecipe", "VocabRecipe"):
        assert "reduction" in schema["$defs"][name]["properties"] or name == "VocabRecipe"
        assert "task" in schema["$defs"][name]["properties"]
    assert schema["$defs"]["VisualTokensRecipe"]["properties"]["task"]["const"] == "visual-tokens"
    assert "corpus" in schema["$defs"]["VocabRecipe"]["properties"]


def test_vocab_recipe_imports_alone():
    code = (
        "import sys, tokexport.vocab.recipe as v; "
        "assert 'tokexport.recipe' not in sys.modules, 'vocab.recipe imported tokexport.recipe'; "
        "print(v.VocabRecipe.__name__)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "VocabRecipe", res.stderr


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module as written, name) of every ``from X import name`` in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            out += [(mod, a.name) for a in node.names]
    return out


def test_recipe_modules_import_one_way_and_no_private_names():
    pkg = REPO / "tokexport"
    base, vocab, recipe = pkg / "recipe_base.py", pkg / "vocab" / "recipe.py", pkg / "recipe.py"
    assert not [m for m, _ in _imports(base) if m.lstrip(".") in ("recipe", "vocab.recipe", "vocab")]
    assert not [m for m, _ in _imports(vocab) if m in ("..recipe", "tokexport.recipe")]
    for f in (base, vocab, recipe):
        private = [(m, n) for m, n in _imports(f) if n.startswith("_") and m != "__future__"]
        assert not private, (f, private)


def test_cli_prints_every_schema_error_on_its_own_line(tmp_path):
    from test_cli_bad_input import run_cli

    p = tmp_path / "multi.yaml"
    p.write_text(
        "model: x\nreduction: {method: topk-cls, prune_layers: [1], kep_rate: 0.5}\n"
        "export: {opset: 99}\nbench: {repeats: 0}\n"
    )
    res = run_cli("convert", str(p), "--out", str(tmp_path / "out"))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(lines) == 3 and all(ln.startswith("error: ") for ln in lines), lines
    assert "reduction.kep_rate" in lines[0] and "export.opset" in lines[1] and "bench.repeats" in lines[2]
    assert not (tmp_path / "out").exists()
