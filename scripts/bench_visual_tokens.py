#!/usr/bin/env python
"""Visual-token selectors against the baselines at equal K, on the bundled DINOv2-S as the vision tower.

Each row is a full `tokexport convert` with task visual-tokens: static ONNX export of tower +
selection, parity, accuracy against all tokens (mean- and attention-pooled features rebuilt from the
kept tokens, instance recognition, retained attention mass), LLM prefill FLOPs saved (LLaMA-7B-sized
LLM, 64 text tokens), and latency of tower + selection vs the tower alone (onnxruntime CPU).

    python scripts/bench_visual_tokens.py --out out/bench-visual
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokexport.pipeline import run  # noqa: E402
from tokexport.recipe import load_recipe  # noqa: E402

# layout name: (base recipe, methods compared at that recipe's K)
SETS = {
    "single view, 64 of 256 (25%)": ("dinov2-small-fopru-rank.yaml",
                                      ["fopru-rank", "fopru-row", "uniform-spatial", "random-visual"]),
    "full + 2x2 views, 256 of 1280 (20%)": ("dinov2-small-hired.yaml",
                                            ["hired", "fopru-rank", "uniform-spatial", "random-visual"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out" / "bench-visual"))
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, (recipe_file, methods) in SETS.items():
        base = load_recipe(REPO / "recipes" / recipe_file)
        for method in methods:
            data = base.model_dump(mode="json", exclude_none=True)
            red = data["reduction"]
            keep = {k: red[k] for k in ("keep", "keep_rate") if k in red}
            data["reduction"] = {"method": method, **keep}
            if method == "hired":
                data["reduction"].update({k: red[k] for k in ("alpha", "alloc_layer") if k in red})
            # every metric reported; a bar nothing can miss, so the run always completes (the table compares)
            data["verify"]["accuracy"]["metrics"] = {"feature_cosine": {"min": -1.0}}
            if args.repeats:
                data["bench"]["repeats"] = args.repeats
            recipe = type(base).model_validate(data)
            t0 = time.time()
            r = run(recipe, REPO / "recipes", out / f"{recipe_file.split('.')[0]}-{method}", force=True,
                    label=f"{label}/{method}").report
            m, b = r["accuracy"]["metrics"], r["bench"]["batches"]
            rows.append({
                "layout": label, "method": method,
                "tokens": f"{r['reduction']['visual_tokens_in']}→{r['reduction']['visual_tokens_out']}",
                "prefill_saved": r["llm"]["prefill_flops_saved"],
                "cos_mean": m["feature_cosine"]["reduced"], "cos_attn": m["attn_pooled_cosine"]["reduced"],
                "top1_o": m["instance_top1"]["original"], "top1_r": m["instance_top1"]["reduced"],
                "mass": m["attention_mass"]["value"],
                "overhead_b1": b["1"]["selection_overhead"], "overhead_b8": b["8"]["selection_overhead"],
                "ms_b8": b["8"]["reduced_ms"], "parity": r["parity"]["max_abs_diff"], "seconds": time.time() - t0,
            })
            print(f"[{len(rows)}] {label} {method}: top1 {rows[-1]['top1_r']:.3f} mass {rows[-1]['mass']:.3f}",
                  file=sys.stderr, flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    head = ("| layout | method | visual tokens | LLM prefill saved | cosine (mean-pooled) | cosine (attn-pooled) | "
            "instance top-1 (all → kept) | attention mass kept | selection overhead b1 / b8 | parity max abs |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for x in rows:
        print(f"| {x['layout']} | {x['method']} | {x['tokens']} | {100 * x['prefill_saved']:.1f}% | {x['cos_mean']:.4f} | "
              f"{x['cos_attn']:.4f} | {x['top1_o']:.3f} → {x['top1_r']:.3f} | {x['mass']:.3f} | "
              f"{100 * x['overhead_b1']:+.1f}% / {100 * x['overhead_b8']:+.1f}% | {x['parity']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
