"""`tokexport search` on a tiny random DINOv2: the greedy passes respect the budget and monotonic counts,
the winner is the fewest-FLOPs feasible schedule evaluated, and its recipe + report are written."""

from __future__ import annotations

import json

import pytest
import yaml
from test_cli_bad_input import (
    assert_nothing_written,
    assert_one_line_error,
    recipe,
    run_cli,
    write,
)

from tokexport.recipe import load_recipe
from tokexport.search import Evaluation, greedy_search, parse_budget


def test_parse_budget():
    assert parse_budget("0.02") == 0.02
    assert parse_budget("0.5pp") == pytest.approx(0.005) and parse_budget("2%") == pytest.approx(0.02)
    with pytest.raises(Exception, match="^max_drop: ") as err:  # the library names its parameter ...
        parse_budget("-1")
    assert err.value.lines(cli=True)[0].startswith("--max-drop: -1 is negative")  # ... the CLI its flag


def _fake(drop_of):
    """An evaluator whose drop is a known function of the schedule (no model), recording the calls."""
    calls = []

    def evaluate(keep):
        calls.append(dict(keep))
        d = drop_of(keep)
        return Evaluation(keep, [], 0.0, 0.0, {}, d, d <= 0.1 + 1e-9)

    return evaluate, calls


def test_greedy_pass_finds_the_budget_edge_and_keeps_counts_non_increasing():
    # drop grows as tokens go: 0.02 per token removed after block 5, 0.01 per token removed after block 8
    def drop(keep):
        k5 = keep.get(5, 100)
        return (100 - k5) * 0.02 + (k5 - keep.get(8, k5)) * 0.01

    evaluate, calls = _fake(drop)
    keep = greedy_search(evaluate, [5, 8], 100, 1, deepest_first=True)
    assert keep[8] == 90  # block 8 alone spends the budget: 10 tokens × 0.01
    assert keep[5] == 100  # nothing left for block 5 (keeping everything there is no stage)
    assert all(k[5] >= k[8] for k in calls if 5 in k and 8 in k)  # monotonic in every candidate
    evaluate, calls = _fake(drop)
    keep = greedy_search(evaluate, [5, 8], 100, 1, deepest_first=False)
    assert keep == {5: 95, 8: 95}  # block 5 spends it (5 × 0.02); block 8 may not exceed block 5
    assert len(calls) <= 2 * 8  # binary search: ~log2(100) evaluations per layer


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_models):
    tmp = tmp_path_factory.mktemp("search")
    r = recipe(
        tiny_models["dinov2"],
        **{
            "name": "tiny-dinov2",
            "reduction": {"method": "topk-cls", "prune_layers": [1, 2], "keep_rate": [0.5, 0.5]},
            "verify.accuracy": {
                "samples_per_class": 2,
                "prototypes_per_class": 1,
                "metrics": {"feature_cosine": {"min": 0.0}},
            },
            "bench": {"enabled": True, "batch_sizes": [2], "warmup": 1, "repeats": 2},
            "deploy": {"bundle": False},
        },
    )
    path = write(tmp, r)
    ref = run_cli(
        "search", str(path), "--max-drop", "0.02", "--metric", "feature_cosine", "--step", "2", "--out", str(tmp / "s")
    )
    return tmp / "s", path, ref


def test_search_writes_winner_recipe_and_report(searched):
    out, _, res = searched
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {
        "search.json",
        "tiny-dinov2-search.yaml",
        "winner",
        "reference",
        ".tokexport-output",
    }
    s = json.loads((out / "search.json").read_text())
    assert s["kind"] == "search" and s["metric"] == "feature_cosine" and s["max_drop"] == 0.02
    feasible = [t for t in s["trace"] if t["feasible"]]
    assert all(t["drop"] <= 0.02 + 1e-12 for t in feasible)
    assert all(t["drop"] > 0.02 for t in s["trace"] if not t["feasible"])
    for t in s["trace"]:  # counts never grow with depth
        assert t["keep"] == sorted(t["keep"], reverse=True) and t["prune_layers"] == sorted(t["prune_layers"])
    # the winner has the fewest FLOPs of every feasible schedule evaluated, the recipe's own included
    assert s["winner"]["flops"] == min(t["flops"] for t in feasible)
    assert s["winner"]["flops"] <= s["reference"]["flops"] or not s["reference"]["feasible"]
    assert s["reference"]["keep"] == [8, 4]  # 16 patches × 0.5, then × 0.5
    # the written recipe is valid and is the winner's schedule, gated on the budget
    win = load_recipe(out / "tiny-dinov2-search.yaml")
    assert win.reduction.prune_layers == s["winner"]["prune_layers"] and win.reduction.keep == s["winner"]["keep"]
    assert win.verify.accuracy.metrics["feature_cosine"].max_drop == 0.02
    assert win.reduction.method == "topk-cls"
    # its report: the full pipeline on the winner (ONNX parity, accuracy on model.onnx, bench)
    rep = json.loads((out / "winner" / "report.json").read_text())
    assert [st["n_keep"] for st in rep["reduction"]["schedule"]] == s["winner"]["keep"]
    assert rep["parity"]["passed"] and rep["bench"]["flops"]["reduced"] == pytest.approx(s["winner"]["flops"])
    m = rep["accuracy"]["metrics"]["feature_cosine"]
    assert s["measured"]["winner"]["drop"] == pytest.approx(m["original"] - m["reduced"])
    ref = json.loads((out / "reference" / "report.json").read_text())
    assert [st["n_keep"] for st in ref["reduction"]["schedule"]] == [8, 4]
    assert "verdict:" in res.stdout and s["verdict"]
    # held out: chosen on the search split, judged on the convert's eval split (disjoint crops), both named
    sp = s["splits"]
    assert sp["search"]["samples"] == s["eval"]["samples"] and sp["held_out"]["samples"] == rep["accuracy"]["samples"]
    assert sp["search"]["crops"] != sp["held_out"]["crops"]
    h = s["held_out"]["winner"]
    assert h["searched_drop"] == s["winner"]["drop"] and h["held_out_drop"] == s["measured"]["winner"]["drop"]
    assert h["moved"] == pytest.approx(h["held_out_drop"] - h["searched_drop"])
    assert "held-out split" in s["verdict"]
    assert yaml.safe_load((out / "tiny-dinov2-search.yaml").read_text())["name"] == "tiny-dinov2-search"


def test_search_bad_input(tmp_path, tiny_models, searched):
    _, recipe_path, _ = searched
    out = tmp_path / "o"
    assert_one_line_error(run_cli("search", str(recipe_path), "--max-drop", "x", "--out", str(out)), "--max-drop")
    assert_one_line_error(
        run_cli("search", str(recipe_path), "--max-drop", "0.1", "--metric", "top5", "--out", str(out)),
        "--metric",
        "top5",
    )
    assert_one_line_error(
        run_cli("search", str(recipe_path), "--max-drop", "0.1", "--layers", "1,9", "--out", str(out)), "--layers", "9"
    )
    vis = write(
        tmp_path,
        {"model": "tiny-llava", "task": "visual-tokens", "reduction": {"method": "fopru-rank", "keep": 4}},
        "v.yaml",
    )
    # a visual-token search varies K (tests/test_sweep_search_tasks.py): no layer-wise schedule, no --layers
    assert_one_line_error(
        run_cli("search", str(vis), "--max-drop", "0.1", "--layers", "1", "--out", str(out)),
        "--layers",
        "visual-tokens",
    )
    assert_one_line_error(
        run_cli("search", str(recipe_path), "--max-drop", "0.1", "--max-evals", "3", "--out", str(out)), "--max-evals"
    )
    assert_nothing_written(out)


def test_parallel_rounds_take_the_sequential_path():
    """The Ray backend's rounds (both greedy passes at once, several steps of each binary search ahead) end
    where the sequential search ends, whatever the feasibility pattern (monotone or not) and the width."""
    import random

    from tokexport.search import bisect_smallest, greedy_parallel

    rng = random.Random(0)
    for _ in range(100):
        table = {}

        def evaluate(keep, table=table):
            d = table.setdefault(tuple(sorted(keep.items())), rng.random() * 0.2)
            return Evaluation(dict(keep), [], float(sum(keep.values())), 0.0, {}, d, d <= 0.1)

        layers, n, step = rng.sample(range(12), 3), rng.randint(5, 60), rng.randint(1, 4)
        seq = {
            o: greedy_search(evaluate, layers, n, step, d)
            for o, d in (("deepest layer first", True), ("shallowest layer first", False))
        }
        for width in (1, 2, 3, 8):
            calls = []

            def many(keeps, calls=calls):
                calls.append(len(keeps))
                return [evaluate(k) for k in keeps]

            keeps, paths, counts = greedy_parallel(many, layers, n, step, width)
            assert keeps == seq and max(calls, default=0) <= max(width, 2)
            on_path = {tuple(sorted(e.keep.items())) for path in paths.values() for e in path}
            assert counts["evaluations_run"] - counts["speculative"] == len(on_path)
        grid = list(range(1, rng.randint(3, 50)))
        ok = {g: rng.random() < 0.5 for g in grid} | {grid[-1]: True}
        for max_evals in (2, 3, 100):
            want = bisect_smallest(grid, len(grid) - 1, ok.get, max_evals)
            for width in (2, 3, 7):
                fetched = set()

                def answer(v, fetched=fetched, ok=ok):
                    assert v in fetched  # every step answered from what the round prefetched
                    return ok[v]

                got = bisect_smallest(grid, len(grid) - 1, answer, max_evals, prefetch=fetched.update, width=width)
                assert got == want
