"""Gemma-3-270M FR vocabulary trim end to end (SentencePiece-BPE with byte fallback, tied head,
decoder ONNX). About 10 minutes on a 2-core CPU before the recipe mined the model's own generations
(trim.self_generated: 237 prompts, 715 s more on a loaded 2-core machine), so it is marked `gemma` and
left out of the default run (pyproject addopts); run it with `pytest -m gemma tests/test_vocab_gemma.py`."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tokexport import zoo
from tokexport.pipeline import run
from tokexport.vocab.recipe import VocabRecipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.gemma
def test_gemma_fr_end_to_end(tmp_path):
    zoo.fetch("gemma3-270m")
    data = yaml.safe_load((RECIPES / "gemma3-270m-vocab-fr.yaml").read_text())
    data["verify"]["accuracy"]["samples"] = 8
    data["bench"] = {"enabled": False}
    res = run(VocabRecipe.model_validate(data), RECIPES, tmp_path / "out", label="gemma3-270m-vocab-fr.yaml")
    r = res.report
    assert r["tokenizer"]["family"] == "byte-fallback-bpe" and r["model"]["tied_embeddings"]
    assert r["checkpoint"]["passed"] and r["checkpoint"]["tied_after_reload"]
    assert r["parity"]["passed"] and r["parity_baseline"]["passed"]
    assert r["model"]["params_trimmed"] <= 110e6 and r["model"]["params"] > 260e6
    m = r["accuracy"]["metrics"]
    assert m["tokenizer_remap_exact"]["reduced"] == 1.0
    assert r["coverage"]["heldout_oov"]["unk_tokens"] == 0 and r["coverage"]["heldout_oov"]["byte_tokens"] > 0
    assert r["trim"]["generation_config_ids"]["eos_token_id"] == [1, 1]
    # greedy generations: identical until the original picks a token that is not kept
    assert len(r["accuracy"]["generations"]) == 20 and m["generation_exact_match"]["reduced"] > 0.5
    assert m["generation_differences_explained"]["reduced"] == 1.0 and m["top1_agreement_where_kept"]["reduced"] >= 0.999
