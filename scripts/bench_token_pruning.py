#!/usr/bin/env python
"""Every reduction method × several schedules on the bundled DINOv2-S, in one run.

Each row is a full `tokexport convert` (static ONNX export, parity against PyTorch, accuracy
against the original on the bundled photographs, onnxruntime CPU latency of baseline.onnx and
model.onnx interleaved in the same process). Prints a Markdown table and writes every report plus a
summary JSON under --out.

ToMe merges in every block instead of pruning at the schedule's blocks: its row uses the constant r
whose analytic FLOPs are closest to the Zero-TPrune row of the same schedule (selection overhead and
proportional attention included), so it is compared at equal FLOPs.

The accuracy columns come from each report's ``baselines`` section (issue 14): the method against random
keep drawn per image (mean ± sd over the seeds) and the 2-D uniform lattice at the same schedule, on the
same crops, and the method's margin over the best baseline with its 95% bootstrap CI. ``--no-bench``
skips the latency measurement (and the deploy bundle): the accuracy figures are deterministic, the
timings depend on the machine.

    python scripts/bench_token_pruning.py --out out/bench            # all methods × schedules
    python scripts/bench_token_pruning.py --methods random topk-cls --schedules zt
    python scripts/bench_token_pruning.py --schedules zt --no-bench        # accuracy and baselines only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokexport.errors import InputError
from tokexport.flops import encoder_flops
from tokexport.load import LoadedModel, load_model
from tokexport.pipeline import run
from tokexport.recipe import load_recipe
from tokexport.reduce import METHODS as REGISTRY
from tokexport.reduce.schedule import plan

# name: (prune_layers, keep_rate, note)
SCHEDULES = {
    "zt": ([2, 5, 8], [0.9, 0.8, 0.7], "Zero-TPrune code: after 2/5/8 keep 0.9/0.8/0.7"),
    "evit": ([3, 6, 9], [0.7, 0.7, 0.7], "EViT: after 3/6/9 keep 0.7 each"),
    "half": ([3, 6, 9], [0.5, 0.5, 0.5], "aggressive: after 3/6/9 keep 0.5 each"),
}
# label: (method, extra fields)
METHODS = {
    "zero-tprune": ("zero-tprune", {}),
    "zero-tprune-uni": ("zero-tprune", {"init": "uniform"}),
    "topk-cls": ("topk-cls", {}),
    "random": ("random", {"seed": 0}),
    "uniform": ("uniform", {}),
    "tome": ("tome", {}),  # r per schedule: equal FLOPs to zero-tprune (tome_r_at_equal_flops)
}


def schedule_flops(lm: LoadedModel, reduction: dict) -> int:
    """Analytic FLOPs per image of a reduction, as the report computes them (each method's selection cost)."""
    ad = lm.adapter
    n, p = ad.n_tokens(lm.image_size), ad.n_prefix()
    cls = REGISTRY[reduction["method"]]
    method = cls(cls.config_cls(**reduction))
    stages = plan(method.config, n, p, ad.num_layers)
    return encoder_flops(ad.dims(), n, p, stages, ad.head_macs(lm.model), method=method)["flops"]


def tome_r_at_equal_flops(lm: LoadedModel, target: int) -> tuple[int, int]:
    """(r, FLOPs): the constant ToMe r (merging in every block) whose FLOPs are closest to ``target``."""
    best = None
    for r in range(1, lm.adapter.n_tokens(lm.image_size)):
        try:
            f = schedule_flops(lm, {"method": "tome", "r": r})
        except InputError:  # some block would have to merge more than half of its tokens
            break
        if best is None or abs(f - target) < abs(best[1] - target):
            best = (r, f)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--recipe",
        default=str(REPO / "recipes" / "dinov2-small-zero-tprune.yaml"),
        help="base recipe (model, export, verify, bench settings)",
    )
    ap.add_argument("--out", default=str(REPO / "out" / "bench"))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--repeats", type=int, default=None, help="override bench.repeats")
    ap.add_argument("--no-bench", action="store_true", help="skip latency and the deploy bundle (accuracy only)")
    args = ap.parse_args()

    base = load_recipe(args.recipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(base.model, Path(args.recipe).resolve().parent, base.family, base.task, base.export.image_size)
    rows = []
    for sched in args.schedules:
        layers, rates, _ = SCHEDULES[sched]
        zt_flops = schedule_flops(loaded, {"method": "zero-tprune", "prune_layers": layers, "keep_rate": rates})
        for label in args.methods:
            method, extra = METHODS[label]
            data = base.model_dump(mode="json", exclude_none=True)
            if method == "tome":
                r, _ = tome_r_at_equal_flops(loaded, zt_flops)
                data["reduction"] = {"method": "tome", "r": r, **extra}
            else:
                data["reduction"] = {
                    "method": method,
                    "prune_layers": layers,
                    "keep_rate": rates,
                    "rounding": "floor",
                    **extra,
                }
            # only the reduction changes; thresholds are reported, not enforced, in a sweep
            data["verify"]["accuracy"]["metrics"] = {k: {"min": -1.0} for k in data["verify"]["accuracy"]["metrics"]}
            data["verify"].pop("vs_baselines", None)  # margins are reported, not enforced, in a sweep
            data["verify"]["baselines"] = {**data["verify"].get("baselines", {}), "enabled": True}
            if args.repeats:
                data["bench"]["repeats"] = args.repeats
            if args.no_bench:
                data["bench"]["enabled"] = False
                data["deploy"] = {**data.get("deploy", {}), "bundle": False, "engines": False}
            recipe = type(base).model_validate(data)
            t0 = time.time()
            res = run(recipe, REPO, out / f"{sched}-{label}", force=True, loaded=loaded, label=f"{sched}/{label}")
            r = res.report
            row = report_row(r, sched, label)
            row["seconds"] = time.time() - t0
            rows.append(row)
            print(
                f"[{len(rows)}] {sched}/{label}: cos {row['cosine']:.4f} (random {row['random']['feature_cosine'][0]:.4f}, "
                f"uniform {row['uniform']['feature_cosine']:.4f}), top1 {row['top1_reduced']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    bench = r.get("bench") or {}
    (out / "summary.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "schedules": {k: v[2] for k, v in SCHEDULES.items()},
                "threads": bench.get("threads"),
                "runtime": bench.get("runtime"),
            },
            indent=2,
        )
    )
    print(table(rows, bench, r["accuracy"]))
    return 0


def report_row(r: dict, sched: str, label: str) -> dict:
    """One table row, read from a report (accuracy and ``baselines`` sections; bench when measured)."""
    b, m, bl = r.get("bench") or {}, r["accuracy"]["metrics"], r["baselines"]
    runs = bl["baselines"]
    fl = bl["budget"]["flops_per_image"]
    return {
        "schedule": sched,
        "method": label,
        "tokens": tokens_label(r["reduction"]["schedule"]),
        "flops_ratio": fl["method"] / fl["original"],
        "predicted": b["flops"]["predicted_speedup"] if b else fl["original"] / fl["method"],
        "measured_b1": b["batches"].get("1", {}).get("speedup") if b else None,
        "measured_b8": b["batches"].get("8", {}).get("speedup") if b else None,
        "cosine": m["feature_cosine"]["reduced"],
        "top1_original": m["instance_top1"]["original"],
        "top1_reduced": m["instance_top1"]["reduced"],
        "random": {k: (v["mean"], v["sd"]) for k, v in runs["random"]["metrics"].items()},
        "random_seeds": len(runs["random"]["seeds"]),
        "uniform": {k: v["mean"] for k, v in runs["uniform"]["metrics"].items()},
        "margins": {
            k: {"margin": v["margin"], "ci": v["ci"], "vs": v["best_baseline"]} for k, v in bl["margins"].items()
        },
        "samples": bl["data"]["samples"],
        "parity_max_abs": r["parity"]["max_abs_diff"],
        "parity_passed": r["parity"]["passed"],
    }


def tokens_label(schedule: list[dict]) -> str:
    """Tokens after each stage; ToMe's one merge per block is shown as its r and the final count."""
    if schedule and schedule[0].get("kind") == "merge":
        rs = [s["tokens_in"] - s["tokens_out"] for s in schedule]
        r = f"r={rs[0]}" if len(set(rs)) == 1 else "r=" + "/".join(map(str, rs))
        return f"{r} × {len(schedule)} blocks → {schedule[-1]['tokens_out']}"
    return "→".join(str(s["tokens_out"]) for s in schedule)


def _margin(row: dict, metric: str) -> str:
    g = row["margins"].get(metric)
    return "—" if g is None else f"{g['margin']:+.4f} [{g['ci'][0]:+.4f}, {g['ci'][1]:+.4f}] vs {g['vs']}"


def table(rows, bench, acc) -> str:
    """The README's table: every figure from the reports (accuracy.metrics and the baselines section)."""
    timed = any(r["measured_b8"] is not None for r in rows)
    head = (
        "| schedule | method | tokens after each stage | FLOPs ratio | "
        + ("measured b8 | " if timed else "")
        + "feature cosine | random (mean ± sd) | uniform 2-D | margin over best [95% CI] | "
        "instance top-1 | random | uniform | margin over best [95% CI] |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        rc, rt = r["random"]["feature_cosine"], r["random"]["instance_top1"]
        lines.append(
            f"| {r['schedule']} | {r['method']} | {r['tokens']} | {r['flops_ratio']:.3f} | "
            + (f"{r['measured_b8']:.3f}× | " if timed else "")
            + f"{r['cosine']:.4f} | {rc[0]:.4f} ± {rc[1]:.4f} | {r['uniform']['feature_cosine']:.4f} | "
            f"{_margin(r, 'feature_cosine')} | {r['top1_reduced']:.3f} | {rt[0]:.3f} ± {rt[1]:.3f} | "
            f"{r['uniform']['instance_top1']:.3f} | {_margin(r, 'instance_top1')} |"
        )
    lines.append("")
    seeds = rows[0]["random_seeds"] if rows else "?"
    lines.append(
        f"{rows[0]['samples'] if rows else '?'} eval samples, original instance top-1 "
        f"{rows[0]['top1_original']:.3f}; random = keep drawn per image over {seeds} seeds; uniform = 2-D "
        f"lattice; margin = method − best baseline, 95% paired bootstrap over samples"
        + (
            f"; {bench['runtime']}, {bench['threads']} threads, median of {bench['repeats']} interleaved runs"
            if timed and bench
            else ""
        )
        + f". Accuracy: {acc['description']}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
