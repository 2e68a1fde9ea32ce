#!/usr/bin/env python
"""FoPru significance by measurement: `source: cls` (attention of the CLS query) vs `source: received`
(attention each patch receives, averaged over all queries) — the two definitions the FoPru notes allow
(docs/methods/fopru.md; heads summed, which ranks like the head mean) — for fopru-rank and fopru-row at
the shipped recipes' budgets, with the honest baselines of the same run (random keep per image over
seeds, 2-D uniform lattice).

Each row is a full `tokexport convert` of the shipped recipe (static ONNX export, parity, accuracy from
model.onnx, baselines section) with only `reduction.source` changed, the recipe's gates replaced by a
bar nothing misses (this compares, it does not judge), and bench and deploy off. The evaluation
attention (vision.eval_layer/eval_source, the weights of attn_pooled_cosine) stays the recipe's, so
both variants are scored by the same yardstick.

    python scripts/bench_fopru_significance.py --out out/bench-fopru-significance
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokexport.recipe import load_recipe  # noqa: E402
from tokexport.tasks.run import run  # noqa: E402

RECIPES = ("dinov2-small-fopru-rank.yaml", "dinov2-small-fopru-row.yaml")
SOURCES = ("cls", "received")
FIGURES = ("feature_cosine", "attn_pooled_cosine", "instance_top1")


def measuring_recipe(path: Path, reduction: dict | None = None):
    """The shipped recipe with ``reduction`` fields overridden, ungated (every figure still measured and
    the baselines still computed), bench and deploy off."""
    base = load_recipe(path)
    data = base.model_dump(mode="json", exclude_none=True)
    data["reduction"].update(reduction or {})
    data["verify"]["accuracy"]["metrics"] = {"feature_cosine": {"min": -1.0}}
    data["verify"].pop("vs_baselines", None)
    data["bench"]["enabled"] = False
    data["deploy"] = {"bundle": False, "engines": False}
    return type(base).model_validate(data)


def row_of(report: dict, **extra) -> dict:
    """One table row from a visual-tokens report: the method's figures and its baselines section."""
    m, b = report["accuracy"]["metrics"], report["baselines"]
    red = report["reduction"]
    out = {
        **extra,
        "method": red["method"],
        "tokens": f"{red['visual_tokens_in']}→{red['visual_tokens_out']}",
        "prefill_saved": report["llm"]["prefill_flops_saved"],
        "samples": b["data"]["samples"],
        "top1_original": m["instance_top1"]["original"],
        "attention_mass": m["attention_mass"]["value"],
    }
    for f in FIGURES:
        out[f] = m[f]["reduced"]
        for name, run_ in b["baselines"].items():
            s = run_["metrics"][f]
            out[f"{f}.{name}"] = (s["mean"], s["sd"])
        mg = b["margins"][f]
        out[f"{f}.margin"] = (mg["margin"], mg["ci"][0], mg["ci"][1], mg["best_baseline"])
    return out


def fmt_margin(x) -> str:
    margin, lo, hi, best = x
    return f"{margin:+.3f} [{lo:+.3f}, {hi:+.3f}] vs {best}"


def fmt_base(x) -> str:
    mean, sd = x
    return f"{mean:.3f} ± {sd:.3f}" if sd else f"{mean:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out" / "bench-fopru-significance"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe_file in RECIPES:
        for source in SOURCES:
            recipe = measuring_recipe(REPO / "recipes" / recipe_file, {"source": source})
            t0 = time.time()
            res = run(
                recipe,
                REPO / "recipes",
                out / f"{recipe_file.split('.')[0]}-{source}",
                force=True,
                label=f"{recipe_file} source={source}",
            )
            rows.append(row_of(res.report, recipe=recipe_file, source=source, seconds=time.time() - t0))
            r = rows[-1]
            print(
                f"[{len(rows)}] {r['method']} {source}: cos {r['feature_cosine']:.4f} top1 {r['instance_top1']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    head = (
        "| method | source | visual tokens | cosine (mean-pooled) | margin over best baseline [95% CI] | "
        "instance top-1 (all → kept) | margin over best baseline [95% CI] | cosine (attn-pooled) | "
        "attention mass (info) |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(
            f"| {r['method']} | `{r['source']}` | {r['tokens']} | {r['feature_cosine']:.4f} | "
            f"{fmt_margin(r['feature_cosine.margin'])} | {r['top1_original']:.3f} → {r['instance_top1']:.3f} | "
            f"{fmt_margin(r['instance_top1.margin'])} | {r['attn_pooled_cosine']:.4f} | {r['attention_mass']:.3f} |"
        )
    print()
    print("Baselines at the same K on the same crops (random: mean ± sd over seeds, drawn per image):")
    print("| budget | baseline | cosine (mean-pooled) | instance top-1 | cosine (attn-pooled) |")
    print("|---|---|---|---|---|")
    seen = set()
    for r in rows:
        if r["tokens"] in seen:
            continue
        seen.add(r["tokens"])
        for name in ("random", "uniform"):
            print(
                f"| {r['tokens']} | {name} | {fmt_base(r[f'feature_cosine.{name}'])} | "
                f"{fmt_base(r[f'instance_top1.{name}'])} | {fmt_base(r[f'attn_pooled_cosine.{name}'])} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
