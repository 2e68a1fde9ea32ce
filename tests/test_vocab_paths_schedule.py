"""Vocab-trim recipes outside the conversion itself: `tokexport search` writes the winner's recipe next
to its outputs, so every recipe-relative path (trim.keep_file too) must be made absolute; `tokexport
recipes list` must show what a budget recipe keeps (its budget, not "all mined ids")."""

from __future__ import annotations

from pathlib import Path

import cli_runner
import yaml

from tokexport.cli.app import _schedule
from tokexport.search.knob import _absolute_paths
from tokexport.vocab.recipe import validate_vocab_recipe

REPO = Path(__file__).resolve().parents[1]


def _recipe(trim: dict):
    return validate_vocab_recipe(
        "r.yaml",
        {
            "task": "vocab-trim",
            "model": "e5-small",
            "corpus": {"sources": [{"path": "text/corpus.txt", "lang": "en"}]},
            "trim": trim,
        },
    )


def test_absolute_paths_makes_keep_file_absolute(tmp_path):
    r = _absolute_paths(_recipe({"keep_file": "lists/keep_ids.txt", "tokens_to_keep_file": "extra.txt"}), tmp_path)
    base = tmp_path.resolve()
    assert r.trim.keep_file == str(base / "lists" / "keep_ids.txt")
    assert r.trim.tokens_to_keep_file == str(base / "extra.txt")
    assert r.corpus.sources[0].path == str(base / "text" / "corpus.txt")
    assert r.model == "e5-small"  # bundled: left as it is


def test_absolute_paths_leaves_absolute_and_missing_keep_file(tmp_path):
    absolute = str(tmp_path / "elsewhere" / "keep.txt")
    assert _absolute_paths(_recipe({"keep_file": absolute}), tmp_path).trim.keep_file == absolute
    r = _absolute_paths(_recipe({"target_vocab_size": 100}), tmp_path)
    assert r.trim.keep_file is None and r.trim.tokens_to_keep_file is None


def test_schedule_shows_the_budget():
    d = yaml.safe_load((REPO / "recipes" / "e5-small-vocab-en-pt.yaml").read_text())
    method, sched = _schedule(d)
    assert method == "vocab-trim"
    assert "30,000,000 parameters" in sched and "coverage ranking" in sched and "all" not in sched
    _, sched = _schedule({"task": "vocab-trim", "trim": {"max_bytes": 60_000_000, "precision": "fp16"}})
    assert "60,000,000 bytes at fp16" in sched and "frequency ranking" in sched
    _, sched = _schedule({"task": "vocab-trim", "trim": {"max_params": 5, "max_bytes": 9}})
    assert "5 parameters" in sched and "9 bytes at fp32" in sched


def test_schedule_other_vocab_recipes():
    assert (
        _schedule({"task": "vocab-trim", "trim": {"target_vocab_size": 8000}})[1]
        == "keep 8000 mined ids (min frequency 2)"
    )
    assert _schedule({"task": "vocab-trim"})[1] == "keep all mined ids (min frequency 2)"
    assert "keep.txt" in _schedule({"task": "vocab-trim", "trim": {"keep_file": "keep.txt"}})[1]
    assert _schedule({"task": "vocab-trim", "trim": "bad"})[0] == "vocab-trim"  # a broken YAML still lists


def test_recipes_list_shows_the_budget():
    res = cli_runner.run_cli("recipes", "list", cwd=REPO, env={"COLUMNS": "400"})
    assert res.returncode == 0, res.stderr
    row = next(ln for ln in res.stdout.splitlines() if "e5-small-vocab-en-pt" in ln)
    assert "30,000,000 parameters" in row and "all mined" not in row
