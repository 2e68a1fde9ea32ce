"""`tokexport sweep` and `tokexport search` on the other tasks, on tiny models: a random CLIP tower with
`task: visual-tokens` (sweep over keep rates, search over K) and a random 2-layer Llama with a byte-level
BPE tokenizer and `task: vocab-trim` (sweep over trim.target_vocab_size, search for the smallest one).
Every point and candidate is a full conversion through the one driver; bench repeats are tiny."""

from __future__ import annotations

import json

import pytest
import yaml
from test_cli_bad_input import (
    assert_nothing_written,
    assert_one_line_error,
    run_cli,
    write,
)
from test_task_vocab import _decoder_recipe, _tiny_decoder

from tokexport.recipe import load_recipe

SKIP_FILES = {".tokexport-output"}


@pytest.fixture(scope="module")
def visual_recipe(tmp_path_factory, tiny_models):
    tmp = tmp_path_factory.mktemp("visual")
    r = {
        "model": str(tiny_models["clip-vision"]),
        "task": "visual-tokens",
        "name": "tiny-clip",
        "vision": {"feature_layer": -2, "prompt_tokens": 32},
        "reduction": {"method": "fopru-rank", "keep": 4},
        "verify": {
            "parity": {"atol": 1e-4, "mean_atol": 1e-5, "samples": 2},
            "accuracy": {
                "samples_per_class": 1,
                "prototypes_per_class": 1,
                "metrics": {"feature_cosine": {"min": 0.5}},
            },
        },  # >= 0.78 measured
        "bench": {"batch_sizes": [1], "warmup": 1, "repeats": 2},
        "deploy": {"bundle": False},
    }
    return write(tmp, r, "tiny-clip.yaml")


@pytest.fixture(scope="module")
def vocab_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    _tiny_decoder(root)  # 60 mined ids reach min_frequency 2
    r = _decoder_recipe(2, 3)
    r["bench"] = {"warmup": 1, "repeats": 2}
    r["deploy"] = {"bundle": False}
    return write(root, yaml.safe_dump(r, sort_keys=False), "tiny-vocab.yaml")


def _report(out, run_dir):
    return json.loads((out / run_dir / "report.json").read_text())


def _files(out):
    return {p.name for p in out.iterdir()} - SKIP_FILES


# ------------------------------------------------------------------------------------------------ sweep


def test_visual_sweep_varies_k(visual_recipe, tmp_path):
    out = tmp_path / "sweep"
    res = run_cli("sweep", str(visual_recipe), "--keep-rates", "0.5,0.25", "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _files(out) == {"sweep.json", "sweep.html", "pareto.png", "runs"}
    s = json.loads((out / "sweep.json").read_text())
    assert s["task_kind"] == "visual-tokens" and s["metric"] == "instance_top1" and s["x"]["key"] == "prefill_speedup"
    assert [p["keep_rate"] for p in s["points"]] == [0.5, 0.25]
    for p in s["points"]:
        rep = _report(out, p["run_dir"])
        assert rep["recipe"]["reduction"]["keep_rate"] == p["keep_rate"]
        assert p["tokens"] == [rep["reduction"]["visual_tokens_out"]]
        m = rep["accuracy"]["metrics"]["instance_top1"]
        assert (p["metric"], p["metric_original"], p["metric_better"]) == (m["reduced"], m["original"], "higher")
        assert p["metric_drop"] == pytest.approx(m["original"] - m["reduced"])
        assert p["llm_prefill_flops_saved"] == rep["llm"]["prefill_flops_saved"]
        assert p["prefill_speedup"] == pytest.approx(1 / (1 - rep["llm"]["prefill_flops_saved"]))
        assert p["speedup"] == rep["bench"]["batches"]["1"]["speedup"]
    assert [p["tokens"] for p in s["points"]] == [[8], [4]]  # 16 patches × 0.5, × 0.25
    assert s["points"][1]["prefill_speedup"] > s["points"][0]["prefill_speedup"] > 1
    assert "fopru-rank" in (out / "sweep.html").read_text()


def test_vocab_sweep_varies_the_target_vocabulary(vocab_recipe, tmp_path):
    out = tmp_path / "sweep"
    res = run_cli("sweep", str(vocab_recipe), "--vocab-sizes", "20,50", "--out", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _files(out) == {"sweep.json", "sweep.html", "pareto.png", "runs"}
    s = json.loads((out / "sweep.json").read_text())
    # decoder default: the next-token agreement the recipe gates; x = parameters (what a trim buys)
    assert s["task_kind"] == "vocab-trim" and s["metric"] == "next_token_top1_agreement"
    assert s["x"] == {
        "key": "params_reduction",
        "label": "parameter reduction (original ÷ trimmed parameters)",
        "batch": 2,
    }
    assert [p["target_vocab_size"] for p in s["points"]] == [20, 50]
    assert [p["run_dir"] for p in s["points"]] == ["runs/v20", "runs/v50"]
    for p in s["points"]:
        rep = _report(out, p["run_dir"])
        assert rep["recipe"]["trim"]["target_vocab_size"] == p["target_vocab_size"] == rep["trim"]["mined"]
        assert p["vocab_size_trimmed"] == rep["tokenizer"]["vocab_size_trimmed"]
        assert p["params_trimmed"] == rep["model"]["params_trimmed"]
        assert p["params_reduction"] == pytest.approx(rep["model"]["params"] / rep["model"]["params_trimmed"])
        assert p["speedup"] == rep["bench"]["batches"]["2"]["speedup"]
        m = rep["accuracy"]["metrics"]["next_token_top1_agreement"]
        assert (p["metric"], p["metric_original"]) == (m["reduced"], m["original"])
    small, large = s["points"]
    assert (
        small["vocab_size_trimmed"] < large["vocab_size_trimmed"]
        and small["params_reduction"] > large["params_reduction"]
    )
    page = (out / "sweep.html").read_text()
    assert "parameter reduction" in page and 'href="runs/v20/report.md"' in page


def test_sweep_bad_options_per_task(visual_recipe, vocab_recipe, tmp_path):
    out = tmp_path / "o"
    for args, needles in [
        ((str(vocab_recipe), "--keep-rates", "0.5"), ("--keep-rates", "--vocab-sizes")),
        ((str(vocab_recipe), "--vocab-sizes", "20", "--methods", "random"), ("--methods", "vocab")),
        ((str(vocab_recipe),), ("--vocab-sizes",)),
        ((str(vocab_recipe), "--vocab-sizes", "20,x"), ("--vocab-sizes", "'x'")),
        ((str(vocab_recipe), "--vocab-sizes", "20", "--metric", "instance_top1"), ("--metric", "instance_top1")),
        ((str(visual_recipe), "--vocab-sizes", "20"), ("--vocab-sizes", "visual-tokens")),
        ((str(visual_recipe), "--keep-rates", "0.5", "--metric", "attention_mass"), ("--metric", "attention_mass")),
    ]:
        assert_one_line_error(run_cli("sweep", *args, "--out", str(out)), *needles)
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------------ search


def _check_search(out, s, value_of):
    """Files written, the winner feasible, no smaller evaluated candidate feasible, the bound kept."""
    assert {"search.json", "winner", "reference", s["winner_recipe"]} == _files(out)
    trace = s["trace"]
    assert s["evaluations"] == len(trace) <= s["max_evals"]
    assert len({t["value"] for t in trace}) == len(trace)  # no candidate converted twice
    w = s["winner"]
    assert w["feasible"] and w["drop"] <= s["max_drop"] + 1e-12 and not w["failed_thresholds"]
    assert not [t for t in trace if t["feasible"] and t["value"] < w["value"]]
    assert all(t["drop"] > s["max_drop"] or t["failed_thresholds"] for t in trace if not t["feasible"])
    assert trace[0]["role"].startswith("reference") and s["reference"] == trace[0]
    rep = json.loads((out / "winner" / "report.json").read_text())
    assert value_of(rep) == w["value"]
    m = rep["accuracy"]["metrics"][s["metric"]]
    assert s["measured"]["winner"]["reduced"] == m["reduced"]
    ref = json.loads((out / "reference" / "report.json").read_text())
    assert value_of(ref) == s["reference"]["value"]
    return load_recipe(out / s["winner_recipe"])


def test_visual_search_smallest_k(visual_recipe, tmp_path):
    out = tmp_path / "search"
    res = run_cli(
        "search",
        str(visual_recipe),
        "--max-drop",
        "0.05",
        "--metric",
        "feature_cosine",
        "--max-evals",
        "4",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((out / "search.json").read_text())
    assert s["knob"] == "reduction.keep" and s["task"] == "visual-tokens" and s["evaluations"] <= 4
    assert s["grid"] == {"min": 1, "max": 16, "step": 1, "size": 16}
    win = _check_search(out, s, lambda r: r["reduction"]["visual_tokens_out"])
    assert win.reduction.keep == s["winner"]["value"] and win.reduction.keep_rate is None
    assert win.verify.accuracy.metrics["feature_cosine"].max_drop == 0.05
    assert "evaluated" in res.stdout and "candidates" in res.stdout


def test_vocab_search_smallest_vocabulary(vocab_recipe, tmp_path):
    out = tmp_path / "search"
    res = run_cli(
        "search",
        str(vocab_recipe),
        "--max-drop",
        "0.02",
        "--metric",
        "heldout_token_coverage",
        "--max-evals",
        "4",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((out / "search.json").read_text())
    assert s["knob"] == "trim.target_vocab_size" and s["evaluations"] <= 4
    assert s["reference"]["value"] == 60  # the recipe keeps every mined id (target null)
    win = _check_search(out, s, lambda r: r["trim"]["mined"])
    assert win.trim.target_vocab_size == s["winner"]["value"] < 60
    # the winner's recipe stands on its own next to the outputs: model and corpus paths are absolute
    assert (
        (out / "winner" / "model").is_dir()
        and all(str(src.path).startswith("/") for src in win.corpus.sources)
        and win.model.startswith("/")
    )


def test_search_bad_options_per_task(visual_recipe, vocab_recipe, tmp_path):
    out = tmp_path / "o"
    for args, needles in [
        ((str(vocab_recipe), "--layers", "1"), ("--layers", "vocab-trim")),
        ((str(visual_recipe), "--layers", "1"), ("--layers", "visual-tokens")),
        ((str(vocab_recipe), "--metric", "feature_cosine"), ("--metric", "feature_cosine")),
        ((str(visual_recipe), "--metric", "attention_mass"), ("--metric", "attention_mass")),
        ((str(vocab_recipe), "--max-evals", "1"), ("--max-evals",)),
    ]:
        assert_one_line_error(run_cli("search", *args, "--max-drop", "0.1", "--out", str(out)), *needles)
    assert_nothing_written(out)
