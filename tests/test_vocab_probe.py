"""scripts/probe_vocab_coverage.py on a tiny random Llama (byte-level BPE, merge paths counted): its
numbers agree with the recipe's own run and with each other (the curve starts at the recipe's point
and never falls, the misses are what the coverage leaves out)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_task_vocab import _decoder_recipe, _tiny_decoder

from tokexport.recipe import load_recipe
from tokexport.tasks.run import run

REPO = Path(__file__).resolve().parents[1]


def _probe():
    spec = importlib.util.spec_from_file_location("probe_vocab_coverage", REPO / "scripts" / "probe_vocab_coverage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    _tiny_decoder(root)
    data = _decoder_recipe(1, 2)
    data["bench"] = {"enabled": False}
    data["deploy"] = {"bundle": False}
    data["trim"] = {"max_params": 45000, "ranking": "coverage"}
    path = root / "probe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_probe_agrees_with_the_run(recipe, tmp_path):
    res = run(load_recipe(recipe), recipe.parent, tmp_path / "out", label="probe")
    r = res.report
    out = tmp_path / "probe.json"
    assert _probe().main([str(recipe), "--json", str(out), "--target", "0.5"]) == 0
    p = json.loads(out.read_text())
    assert p["kept"] == r["trim"]["budget"]["kept"] and p["params"] == r["trim"]["budget"]["params"] <= 45000
    assert p["heldout"]["overall"] == pytest.approx(r["coverage"]["heldout"]["token_coverage"])
    curve = p["curve"]
    assert curve[0]["ids"] == p["kept"] and curve[0]["en"] == pytest.approx(p["heldout"]["en"])
    assert all(b["en"] >= a["en"] - 1e-12 for a, b in itertools.pairwise(curve))  # more ids never cover less
    m = p["misses"]["en"]
    tokens = p["heldout_tokens"]["en"]
    assert m["occurrences"] == round(tokens * (1 - p["heldout"]["en"]))
    assert sum(m["by_kind"].values()) == m["occurrences"] and 0 <= m["no_evidence"] <= m["occurrences"]
    assert np.isclose(max(c["en"] for c in curve), 1.0) or m["no_evidence"] > 0  # only unseen ids stay missing


def test_probe_refuses_a_frequency_recipe(recipe, tmp_path, capsys):
    data = yaml.safe_load(recipe.read_text())
    data["trim"] = {"target_vocab_size": 50}
    path = recipe.parent / "frequency.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _probe().main([str(path)]) == 2
    assert "coverage ranking" in capsys.readouterr().err
