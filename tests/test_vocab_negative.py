"""Negative controls of the shipped vocab-trim recipes (honest verdicts): the recipe as shipped passes
(the session's one conversion: conftest ``shipped``), and the same recipe, with its own gates, run on a
deliberately broken vocabulary fails its accuracy gate (exit 4) on checks the shipped run passes.

The broken vocabulary has the size the shipped run kept (its ``model/new_to_old_ids.json``), but takes the
*least* frequent ids of the recipe's mining corpus (reversed frequency order; ids the corpus never uses come
first), through ``trim.keep_file``; the required ids (special tokens, byte symbols, config ids) and BPE merge
paths are added as for any keep list. A recipe whose gate this variant passes verifies nothing about the
vocabulary and its thresholds must be fixed (docs/vocab-trim.md, "Thresholds").

``CONTROLS`` lists every shipped vocab recipe (``test_every_shipped_vocab_recipe_is_covered`` fails for a
shipped recipe without a row); each case is one broken conversion beside the shared shipped one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, group, shipped_recipes
from test_negative_controls_vit import failed_checks

from tokexport.tasks.base import Stages
from tokexport.tasks.run import run
from tokexport.tasks.vocab_trim import VocabTrim
from tokexport.vocab.corpus import count_ids
from tokexport.vocab.recipe import VocabRecipe

RECIPES = REPO / "tokexport" / "recipes"
# shipped vocab recipe -> the bundled model it trims; a new shipped vocab recipe adds its row
CONTROLS = {
    "e5-small-vocab-en-pt": "e5-small",
    "minilm-l6-vocab-en": "minilm-l6",
    "smollm2-135m-vocab-en": "smollm2-135m",
    "gemma3-270m-vocab-fr": "gemma3-270m",
}


def _data(name: str) -> dict:
    data = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    data["bench"] = {"enabled": False}
    data["deploy"] = {"bundle": False}
    return data


def _keep_file_trim(data: dict, keep_file: Path) -> dict:
    """The recipe's trim with its selection (size, budget, ranking, self-generated mining) replaced by a keep list."""
    trim = data.setdefault("trim", {})
    for k in ("target_vocab_size", "max_params", "max_bytes", "self_generated", "ranking", "coverage"):
        trim.pop(k, None)
    trim["keep_file"] = str(keep_file)
    return data


def broken_keep_list(name: str, size: int, tmp_path: Path) -> list[int]:
    """The least frequent ids of the recipe's mining corpus: ``size`` ids with the required ones."""
    probe = tmp_path / "probe_keep_ids.txt"
    probe.write_text("0\n")  # loads tokenizer, corpus and required ids without the recipe's own selection
    task = VocabTrim(VocabRecipe.model_validate(_keep_file_trim(_data(name), probe)), RECIPES, name)
    task.load(Stages())
    tok = task.tok

    def enc_special(texts):
        return tok(texts, add_special_tokens=True)["input_ids"]

    def enc_plain(texts):
        return tok(texts, add_special_tokens=False)["input_ids"]

    counts = count_ids(task.corpus, enc_special, enc_plain, task.rows)
    emitted = task.info.vocab_size  # ids the tokenizer can produce (e5's embedding has a few rows more)
    forced = {i for ids in task.required.values() for i in ids}
    cand = np.setdiff1d(np.arange(emitted), np.fromiter(forced, dtype=np.int64))
    order = cand[np.lexsort((-cand, counts[cand]))]  # least frequent first (unseen ids first)
    return sorted(int(i) for i in order[: size - len(forced)])


def test_every_shipped_vocab_recipe_is_covered():
    assert sorted(shipped_recipes("vocab-trim")) == sorted(CONTROLS), "add the new vocab recipe to CONTROLS"
    for name, model in CONTROLS.items():
        assert yaml.safe_load((RECIPES / f"{name}.yaml").read_text())["model"] == model


def _case(name: str):
    marks = [group(name)] + ([pytest.mark.gemma] if CONTROLS[name] == "gemma3-270m" else [])
    return pytest.param(name, marks=marks)


@pytest.mark.real_model
@pytest.mark.parametrize("name", [_case(n) for n in CONTROLS])
def test_broken_keep_list_fails_the_gate(name, shipped, tmp_path):
    ref = shipped(name)
    assert ref.exit_code == 0 and failed_checks(ref.report) == set(), ref.report["failures"]
    size = len(json.loads((ref.out_dir / "model" / "new_to_old_ids.json").read_text()))
    keep = tmp_path / "broken_keep_ids.txt"
    keep.write_text("".join(f"{i}\n" for i in broken_keep_list(name, size, tmp_path)))
    data = _keep_file_trim(_data(name), keep)
    res = run(VocabRecipe.model_validate(data), RECIPES, tmp_path / "out", label=f"{name} (broken keep list)")
    r = res.report
    assert r["recipe"]["verify"] == ref.report["recipe"]["verify"]  # the shipped gates, as shipped
    assert r["tokenizer"]["vocab_size_trimmed"] >= size  # at least the shipped size: only its choice is bad
    assert r["parity"]["passed"] and r["parity_baseline"]["passed"]  # the graphs are right; the vocabulary is not
    failed = failed_checks(r)
    print(name, "failed gates:", sorted(failed), "coverage", r["coverage"]["heldout"]["token_coverage"])
    assert res.exit_code == 4 and not r["accuracy"]["passed"], r["failures"]
    assert failed - failed_checks(ref.report), (failed, r["failures"])  # checks the shipped run passes
