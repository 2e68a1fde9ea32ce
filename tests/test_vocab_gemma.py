"""Gemma-3-270M FR vocabulary trim end to end, as shipped (SentencePiece-BPE with byte fallback, tied
head, decoder ONNX, the model's own greedy generations mined: trim.self_generated): the session's one
conversion of the recipe (conftest ``shipped``, shared with its negative control in
tests/test_vocab_negative.py). The slowest conversion of the suite: marked ``gemma`` as well as
``real_model`` so that it can be selected (`pytest -m gemma`) or left out (`-m "not gemma"`); the full
suite and CI run it (docs/ci.md gives its time)."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO, group

NAME = "gemma3-270m-vocab-fr"


@pytest.mark.real_model
@pytest.mark.gemma
@group(NAME)
def test_gemma_fr_end_to_end(shipped):
    res = shipped(NAME)
    r = res.report
    data = yaml.safe_load((REPO / "tokexport" / "recipes" / f"{NAME}.yaml").read_text())
    assert res.exit_code == 0, r["failures"]
    assert r["passed"] is True and r["accuracy"]["passed"] is True and r["failures"] == []
    assert "PASS" in res.stdout
    assert r["tokenizer"]["family"] == "byte-fallback-bpe" and r["model"]["tied_embeddings"]
    assert r["checkpoint"]["passed"] and r["checkpoint"]["tied_after_reload"]
    assert r["parity"]["passed"] and r["parity_baseline"]["passed"]
    assert r["model"]["params_trimmed"] <= 110e6 and r["model"]["params"] > 260e6
    m = r["accuracy"]["metrics"]
    assert m["tokenizer_remap_exact"]["reduced"] == 1.0
    assert r["coverage"]["heldout_oov"]["unk_tokens"] == 0 and r["coverage"]["heldout_oov"]["byte_tokens"] > 0
    assert r["trim"]["generation_config_ids"]["eos_token_id"] == [1, 1]
    # greedy generations: identical until the original picks a token that is not kept
    gen = data["verify"]["generation"]
    assert len(r["accuracy"]["generations"]) == len(gen["prompts"]) == 20
    assert m["generation_exact_match"]["reduced"] >= gen["min_exact_match"] and m["generation_exact_match"]["passed"]
    assert m["generation_differences_explained"]["reduced"] == 1.0
    assert m["top1_agreement_where_kept"]["reduced"] >= 0.999
    # the model's own greedy tokens were mined (trim.self_generated, mining-part prompts only)
    sg, cfg = r["trim"]["self_generated"], data["trim"]["self_generated"]
    assert 0 < sg["prompts"] <= cfg["prompts"] and sg["distinct_ids"] > 0
    assert 0 < sg["generated_tokens"] <= sg["prompts"] * cfg["max_new_tokens"]
    assert r["trt_check"]["errors"] == 0, r["trt_check"]
