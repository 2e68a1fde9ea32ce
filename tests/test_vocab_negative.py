"""Negative controls of the shipped vocab-trim recipes (honest verdicts): the same recipe, with its
own gates, run on a deliberately broken vocabulary must fail its accuracy gate (exit 4).

The broken vocabulary has the size the recipe's own selection keeps, but takes the *least* frequent
ids of the recipe's mining corpus (reversed frequency order; ids the corpus never uses come first),
through ``trim.keep_file``; the required ids (special tokens, byte symbols, config ids) and BPE merge
paths are added as for any keep list. A recipe whose gate this variant passes verifies nothing about
the vocabulary and its thresholds must be fixed (docs/vocab-trim.md, "Thresholds").

Each case is two real conversions' worth of work (mining for the size, then the broken run): a few
minutes per recipe on a 2-core CPU. Gemma (about 10 minutes) runs with `pytest -m gemma`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tokexport import zoo
from tokexport.tasks.base import Stages
from tokexport.tasks.run import run
from tokexport.tasks.vocab_trim import VocabTrim
from tokexport.vocab.corpus import count_ids
from tokexport.vocab.recipe import VocabRecipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MODELS = {"e5-small-vocab-en-pt": "e5-small", "minilm-l6-vocab-en": "minilm-l6", "smollm2-135m-vocab-en": "smollm2-135m",
          "gemma3-270m-vocab-fr": "gemma3-270m"}


def _data(name: str) -> dict:
    data = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    data["bench"] = {"enabled": False}
    data["deploy"] = {"bundle": False}
    return data


def broken_keep_list(name: str) -> tuple[list[int], int]:
    """The least frequent ids of the recipe's mining corpus, as many as the recipe's own selection
    mines, and the size of the recipe's keep set."""
    recipe = VocabRecipe.model_validate(_data(name))
    task = VocabTrim(recipe, RECIPES, name)
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
    n = len(task.keep) - len(forced)
    return sorted(int(i) for i in order[:n]), len(task.keep)


def _negative(name: str, tmp_path: Path) -> None:
    zoo.fetch(MODELS[name])
    ids, size = broken_keep_list(name)
    keep = tmp_path / "broken_keep_ids.txt"
    keep.write_text("".join(f"{i}\n" for i in ids))
    data = _data(name)
    trim = data.setdefault("trim", {})
    for k in ("target_vocab_size", "max_params", "max_bytes", "self_generated", "ranking", "coverage"):
        trim.pop(k, None)
    trim["keep_file"] = str(keep)
    res = run(VocabRecipe.model_validate(data), RECIPES, tmp_path / "out", label=f"{name} (broken keep list)")
    r = res.report
    assert r["tokenizer"]["vocab_size_trimmed"] >= size  # at least the recipe's own size: only its choice is bad
    assert r["parity"]["passed"] and r["parity_baseline"]["passed"]  # the graphs are right; the vocabulary is not
    failed = [k for k, m in r["accuracy"]["metrics"].items() if m.get("passed") is False]
    print(name, "failed gates:", failed, "coverage", r["coverage"]["heldout"]["token_coverage"])
    assert res.exit_code == 4 and not r["accuracy"]["passed"] and failed, r["failures"]


@pytest.mark.parametrize("name", ["e5-small-vocab-en-pt", "minilm-l6-vocab-en", "smollm2-135m-vocab-en"])
def test_broken_keep_list_fails_the_gate(name, tmp_path):
    _negative(name, tmp_path)


@pytest.mark.gemma
def test_gemma_broken_keep_list_fails_the_gate(tmp_path):
    _negative("gemma3-270m-vocab-fr", tmp_path)
