"""trim.keep_file, trim.max_params / max_bytes and ranking: coverage on a tiny random Llama with a
byte-level BPE tokenizer (merge paths matter there): the keep list a run writes reproduces the same
tokenizer files and tensors byte for byte; a keep list of token strings works the same way and the
report lists what was added; bad keep files exit 2 with one line and write nothing; a budget is met
exactly (merge paths counted) and a budget that cannot hold the required ids is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cli_runner
import numpy as np
import pytest
import yaml
from test_task_vocab import _decoder_recipe, _tiny_decoder

from tokexport.recipe import load_recipe
from tokexport.tasks.run import run

FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "new_to_old_ids.json",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep")
    _tiny_decoder(root)
    return root


def _recipe(root: Path, name: str, trim: dict) -> Path:
    data = _decoder_recipe(1, 2)
    data["bench"] = {"enabled": False}
    data["deploy"] = {"bundle": False}
    data["trim"] = trim
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(root: Path, name: str, trim: dict, out: Path):
    return run(load_recipe(_recipe(root, name, trim)), root, out, label=name)


@pytest.fixture(scope="module")
def first(root, tmp_path_factory):
    """A budgeted, coverage-ranked run: its keep_ids.txt is what the round trip reads back."""
    return _run(root, "budget", {"max_params": 45000, "ranking": "coverage"}, tmp_path_factory.mktemp("first") / "out")


def test_budget_is_met_exactly(first):
    r = first.report
    assert first.exit_code == 0, r["failures"]
    b = r["trim"]["budget"]
    assert r["model"]["params_trimmed"] == b["params"] <= 45000
    assert b["params"] == b["fixed_params"] + b["kept"] * b["params_per_token"]
    assert b["fixed_params"] + (b["max_tokens"] + 1) * b["params_per_token"] > 45000  # not one more id fits
    assert b["kept"] == r["tokenizer"]["vocab_size_trimmed"] <= b["max_tokens"]
    assert b["heldout_token_coverage"] == r["coverage"]["heldout"]["token_coverage"]
    assert r["trim"]["bpe_closure_added"] > 0  # merge paths were needed and counted inside the budget
    rk = r["trim"]["ranking"]
    assert rk["method"] == "coverage" and rk["trials"] and "chosen blend" in rk["heldout_ablation"]
    md = (first.out_dir / "report.md").read_text()
    assert "- Budget 45,000 parameters" in md and "keep_ids.txt" in md


def test_keep_file_round_trip_is_byte_identical(root, first, tmp_path):
    keep_ids = first.out_dir / "keep_ids.txt"
    ids = [int(x) for x in keep_ids.read_text().split()]
    assert ids == json.loads((first.out_dir / "model" / "new_to_old_ids.json").read_text())
    again = _run(root, "again", {"keep_file": str(keep_ids)}, tmp_path / "again")
    assert again.exit_code == 0, again.report["failures"]
    names = sorted(f.name for f in (first.out_dir / "model").iterdir())
    assert set(FILES) <= set(names), names
    assert names == sorted(f.name for f in (again.out_dir / "model").iterdir())
    for name in names:  # tokenizer files, weights, config, id map
        assert (first.out_dir / "model" / name).read_bytes() == (again.out_dir / "model" / name).read_bytes(), name
    assert (again.out_dir / "keep_ids.txt").read_bytes() == keep_ids.read_bytes()
    k = again.report["trim"]["keep_file"]
    assert k["format"] == "ids" and k["listed_ids"] == len(ids) and k["added_total"] == 0 and k["added"] == {}


def test_keep_file_of_token_strings_adds_what_the_tokenizer_needs(root, first, tmp_path):
    """A vocabulary chosen elsewhere, as token strings: the listed tokens, plus the special tokens, the
    byte alphabet and the merge paths — each reported by reason."""
    state = json.loads((root / "tiny-decoder" / "tokenizer.json").read_text())
    vocab = state["model"]["vocab"]
    wanted = ["Ġcat", "Ġgarden", "Ġmother"]
    (tmp_path / "keep.txt").write_text("\n".join(wanted) + "\n", encoding="utf-8")
    res = _run(root, "tokens", {"keep_file": str(tmp_path / "keep.txt")}, tmp_path / "out")
    r = res.report
    k = r["trim"]["keep_file"]
    assert k["format"] == "tokens" and k["listed_ids"] == 3
    assert set(k["added"]) >= {"special", "byte_alphabet", "bpe_merge_paths"}
    assert len(k["added"]["byte_alphabet"]) == 256
    closure = {x["token"] for x in k["added"]["bpe_merge_paths"]}
    assert closure and all(t in vocab for t in closure)
    kept = set(json.loads((res.out_dir / "model" / "new_to_old_ids.json").read_text()))
    assert {vocab[t] for t in wanted} <= kept and len(kept) == k["kept"] == 3 + k["added_total"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(res.out_dir / "model")
    assert tok.convert_ids_to_tokens(tok(" cat garden")["input_ids"]) == ["Ġcat", "Ġgarden"]
    assert "Keep file" in (res.out_dir / "report.md").read_text()


# ------------------------------------------------------------------------------------- bad keep files


def _cli(recipe: Path, out: Path) -> subprocess.CompletedProcess:
    return cli_runner.run_cli("convert", str(recipe), "--out", str(out), cwd=recipe.parent, timeout=600)


@pytest.mark.parametrize(
    "content, match",
    [
        ("Ġcat\nnot-a-token-here\n", "line 2: 'not-a-token-here' is not an entry of the tokenizer's vocabulary"),
        ("", "lists no entries (empty file)"),
        ("\n\n", "lists no entries (empty file)"),
        (b"\xff\xfe\x00cat\n", "is not UTF-8 text"),
        ("5\n999999\n", "line 2: id 999999 is outside the tokenizer's ids"),
        (None, "does not exist"),
    ],
)
def test_bad_keep_files_exit_2(root, tmp_path, content, match):
    keep = tmp_path / "keep.txt"
    if isinstance(content, bytes):
        keep.write_bytes(content)
    elif content is not None:
        keep.write_text(content, encoding="utf-8")
    recipe = _recipe(root, f"bad-{abs(hash(match))}", {"keep_file": str(keep)})
    res = _cli(recipe, tmp_path / "out")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "trim.keep_file" in lines[0] and str(keep) in lines[0] and match in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing written


@pytest.mark.parametrize(
    "trim, match",
    [
        ({"max_params": 20000}, "do not even hold the 257 required ids"),
        ({"max_bytes": 60000, "precision": "fp32"}, "do not even hold"),
        ({"max_params": 50000, "target_vocab_size": 10}, "not both"),
        ({"keep_file": "k.txt", "max_params": 50000}, "keep_file keeps exactly the listed ids; remove max_params"),
        ({"ranking": "coverage"}, "give a size"),
    ],
)
def test_bad_budgets_exit_2(root, tmp_path, trim, match):
    res = _cli(_recipe(root, f"budget-{abs(hash(match))}", trim), tmp_path / "out")
    assert res.returncode == 2 and match in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_max_bytes_counts_the_precision(root, tmp_path):
    """fp16 counts 2 bytes per parameter: 90,000 bytes buy what 45,000 fp32 parameters buy."""
    res = _run(root, "bytes", {"max_bytes": 90000, "precision": "fp16"}, tmp_path / "out")
    b = res.report["trim"]["budget"]
    assert res.exit_code == 0 and b["bytes_per_param"] == 2 and b["bytes"] == 2 * b["params"] <= 90000
    assert b["fixed_params"] + (b["max_tokens"] + 1) * b["params_per_token"] > 45000 >= b["params"]
    assert res.report["trim"]["ranking"]["method"] == "frequency"


# ------------------------------------------------------------------------------------- ranking units


def test_merge_paths_match_the_closure(root):
    from tokexport.vocab.rank import MergePaths
    from tokexport.vocab.tokenizer import bpe_closure

    state = json.loads((root / "tiny-decoder" / "tokenizer.json").read_text())
    paths = MergePaths(state)
    for i in (300, 450, 599):
        assert set(paths.needed(i, set())) == bpe_closure(state, {i})
        base = bpe_closure(state, {300})
        assert set(paths.needed(i, base)) | base == bpe_closure(state, base | {i})


def _evidence(words_good: bool):
    """A Zipf 'language' of 2,000 ids: a small train sample, a dev sample, and a word-list prior that
    is either the true distribution or unrelated to it."""
    from tokexport.vocab.rank import Evidence

    rng = np.random.default_rng(0)
    size = 2000
    p = 1 / np.arange(1, size + 1) ** 1.1
    p /= p.sum()
    train = np.bincount(rng.choice(size, 3000, p=p), minlength=size).astype(float)
    dev = np.bincount(rng.choice(size, 20000, p=p), minlength=size).astype(float)
    words = p.copy() if words_good else rng.permutation(p)
    return Evidence(size, ["xx"], {"xx": train}, {"xx": dev}, {"xx": words}), p


@pytest.mark.parametrize("words_good", [True, False])
def test_tune_keeps_an_ingredient_only_when_it_helps_on_dev(words_good):
    from tokexport.vocab.rank import MergePaths, Size, blend, choose, tune
    from tokexport.vocab.recipe import CoverageRanking

    ev, p = _evidence(words_good)
    paths = MergePaths({"model": {"type": "Unigram"}})
    best, trials = tune(ev, CoverageRanking(numbers=[0]), set(), paths, Size(total=400))
    corpus_only = next(t for t in trials if t["prior_strength"] == 0)
    assert best["dev_token_coverage"] >= corpus_only["dev_token_coverage"]
    assert (best["prior_strength"] > 0) == words_good
    # on fresh text from the same language the choice holds up (the dev split predicted it)
    score = blend(ev, ev.full(), best["prior_strength"], 0, 0)
    keep, _ = choose(score, score > 0, set(), paths, Size(total=400))
    base_keep, _ = choose(ev.full()["xx"], ev.full()["xx"] > 0, set(), paths, Size(total=400))
    if words_good:
        assert p[list(keep)].sum() > p[list(base_keep)].sum()
    else:  # the unrelated list is left out: the same ids as the corpus alone
        assert keep == base_keep


def test_coverage_ranking_with_the_models_own_tokens(root):
    """Decoders: the model's own greedy tokens are one more ingredient; their prompts come from the
    train split of the mining documents only (the dev split that chooses the blend stays unseen), and
    every share in the recipe's list is tried."""
    from tokexport.tasks.base import Stages
    from tokexport.tasks.vocab_trim import VocabTrim

    path = _recipe(
        root,
        "selfgen",
        {
            "max_params": 45000,
            "ranking": "coverage",
            "coverage": {"self_generated": [0, 0.5], "numbers": [0]},
            "self_generated": {"prompts": 400, "prompt_tokens": 3, "max_new_tokens": 4},
        },
    )
    task = VocabTrim(load_recipe(path), root, "selfgen")
    task.load(Stages())
    rk = task.ranking
    assert {t["self_generated"] for t in rk["trials"]} == {0, 0.5}
    train_docs = sum(len(v) for v in task.corpus.mining.values()) - sum(rk["dev_documents"].values())
    assert 0 < task.self_gen["prompts"] <= train_docs < sum(len(v) for v in task.corpus.mining.values())
    assert len(task.keep) <= task.budget.max_tokens
    assert "chosen blend" in rk["heldout_ablation"]
