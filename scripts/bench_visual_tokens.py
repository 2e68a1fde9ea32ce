#!/usr/bin/env python
"""Visual-token selectors against the honest baselines at equal K, on the bundled DINOv2-S as the
vision tower: the README's visual-tokens method table, generated from the reports' ``baselines`` fields.

Each row is a full `tokexport convert` with task visual-tokens (static ONNX export of tower + selection,
parity, accuracy of model.onnx against all tokens, and the report's ``baselines`` section: random keep
drawn per image over 5 seeds and the 2-D uniform lattice, at the same K on the same crops, with the
method's margin over the best baseline and its paired-bootstrap 95% CI). The recipe's gates are
replaced by a bar nothing misses (this compares; the shipped recipes judge), bench and deploy are off
unless --bench (latency of tower + selection vs the tower alone: the selection overhead).

    python scripts/bench_visual_tokens.py --out out/bench-visual [--reuse DIR ...] [--only 'single view']

--reuse DIR takes a row from DIR/*/report.json when that report ran the same model, vision, reduction,
image size, batch, evaluation data and baselines (the fields the figures depend on), e.g. the runs of
scripts/bench_fopru_significance.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_fopru_significance import fmt_base, fmt_margin, measuring_recipe, row_of  # noqa: E402

from tokexport.tasks.run import run  # noqa: E402

# layout name: (base recipe, methods compared at that recipe's K); the uniform lattice and per-image random
# keep are the baselines of every row; random-visual is the deployable FIXED random subset (one for all images)
SETS = {
    "single view, 64 of 256 (25%)": ("dinov2-small-fopru-rank.yaml", ["fopru-rank", "fopru-row", "random-visual"]),
    "full + 2x2 views, 256 of 1280 (20%)": ("dinov2-small-hired.yaml", ["hired", "fopru-rank", "random-visual"]),
}
SAME = ("model", "task", "vision", "reduction")  # and verify's data and baselines: what the figures depend on


def recipe_for(recipe_file: str, method: str, bench: bool, repeats: int | None):
    from tokexport.recipe import load_recipe

    shipped = load_recipe(REPO / "recipes" / recipe_file)
    if method == shipped.reduction.method:
        recipe = measuring_recipe(REPO / "recipes" / recipe_file)  # the shipped selection as it is
    else:
        red = shipped.reduction.model_dump(mode="json", exclude_none=True)
        keep = {k: red[k] for k in ("keep", "keep_rate") if k in red}
        recipe = measuring_recipe(REPO / "recipes" / recipe_file)
        data = recipe.model_dump(mode="json", exclude_none=True)
        data["reduction"] = {"method": method, **keep}  # the method's own defaults
        recipe = type(recipe).model_validate(data)
    if bench or repeats:
        data = recipe.model_dump(mode="json", exclude_none=True)
        data["bench"] = {
            **shipped.bench.model_dump(mode="json", exclude_none=True),
            "enabled": True,
            **({"repeats": repeats} if repeats else {}),
        }
        recipe = type(recipe).model_validate(data)
    return recipe


def _key(recipe_dump: dict) -> str:
    v = recipe_dump["verify"]
    acc = {k: x for k, x in v["accuracy"].items() if k != "metrics"}
    ex = {k: recipe_dump["export"].get(k) for k in ("image_size", "batch")}
    return json.dumps(
        {
            **{k: recipe_dump.get(k) for k in SAME},
            "accuracy": acc,
            "baselines": v.get("baselines"),
            "export": ex,
            "bench": recipe_dump["bench"]["enabled"],
        },
        sort_keys=True,
    )


def reusable(reuse: Path | None) -> dict[str, dict]:
    out = {}
    for p in sorted(reuse.glob("*/report.json")) if reuse else []:
        rep = json.loads(p.read_text())
        if rep.get("kind") == "visual-tokens" and rep.get("baselines"):
            out[_key(rep["recipe"])] = rep
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out" / "bench-visual"))
    ap.add_argument("--reuse", nargs="*", default=[], help="directories of earlier runs to take identical rows from")
    ap.add_argument(
        "--only",
        default=None,
        help="only the rows whose 'layout/method' contains this text (e.g. 'single view', '/hired')",
    )
    ap.add_argument("--bench", action="store_true", help="also time tower + selection vs the tower alone")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    for d in args.reuse:
        done.update(reusable(Path(d)))
    rows = []
    for label, (recipe_file, methods) in SETS.items():
        for method in methods:
            if args.only and args.only not in f"{label}/{method}":
                continue
            recipe = recipe_for(recipe_file, method, args.bench, args.repeats)
            t0 = time.time()
            rep = done.get(_key(recipe.model_dump(mode="json")))
            where = "reused"
            if rep is None:
                rep = run(
                    recipe,
                    REPO / "recipes",
                    out / f"{recipe_file.split('.')[0]}-{method}",
                    force=True,
                    label=f"{label}/{method}",
                ).report
                where = "ran"
            src = rep["reduction"]["params"].get("source")
            rows.append(
                row_of(rep, layout=label, source=src, seconds=time.time() - t0, where=where, bench=rep.get("bench"))
            )
            print(
                f"[{len(rows)}] {label} {method} ({where}): top1 {rows[-1]['instance_top1']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    head = (
        "| layout | method | LLM prefill saved | cosine (mean-pooled) | margin over best baseline [95% CI] | "
        "instance top-1 (all → kept) | margin over best baseline [95% CI] | cosine (attn-pooled) | "
        "attention mass (info) |" + (" selection overhead b1 / b8 |" if args.bench else "")
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        name = r["method"] + (f" (`{r['source']}`)" if r["source"] else "")
        line = (
            f"| {r['layout']} | {name} | {100 * r['prefill_saved']:.1f}% | {r['feature_cosine']:.4f} | "
            f"{fmt_margin(r['feature_cosine.margin'])} | {r['top1_original']:.3f} → {r['instance_top1']:.3f} | "
            f"{fmt_margin(r['instance_top1.margin'])} | {r['attn_pooled_cosine']:.4f} | {r['attention_mass']:.3f} |"
        )
        if args.bench and r.get("bench"):
            b = r["bench"]["batches"]
            line += " / ".join(f"{100 * b[k]['selection_overhead']:+.1f}%" for k in sorted(b, key=int)) + " |"
        print(line)
    print()
    print("| layout | baseline (same K, same crops) | cosine (mean-pooled) | instance top-1 | cosine (attn-pooled) |")
    print("|---|---|---|---|---|")
    seen = set()
    for r in rows:
        if r["layout"] in seen:
            continue
        seen.add(r["layout"])
        for name, what in (("random", "random per image, mean ± sd over 5 seeds"), ("uniform", "2-D uniform lattice")):
            print(
                f"| {r['layout']} | {what} | {fmt_base(r[f'feature_cosine.{name}'])} | "
                f"{fmt_base(r[f'instance_top1.{name}'])} | {fmt_base(r[f'attn_pooled_cosine.{name}'])} |"
            )
    print("\nEvaluation crops: " + ", ".join(sorted({f"{r['layout']}: {r['samples']}" for r in rows})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
