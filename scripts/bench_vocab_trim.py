"""Vocabulary-trim benchmark: run the shipped vocab-trim recipes and tabulate, per model, parameters,
vocabulary, ONNX size, forward latency and load time before/after, coverage, and the accuracy checks.

    python scripts/bench_vocab_trim.py --out out/bench-vocab                      # all four recipes
    python scripts/bench_vocab_trim.py --out out/smoke --recipes minilm-l6-vocab-en --repeats 2 --samples 8
    python scripts/bench_vocab_trim.py --out out/all --reports out/a/e5-small-vocab-en-pt out/b/minilm-l6-vocab-en

Each recipe runs through the normal pipeline (tokexport convert) into OUT/<recipe>/; OUT/summary.md
and OUT/summary.json collect the numbers. Latencies are only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["e5-small-vocab-en-pt", "minilm-l6-vocab-en", "smollm2-135m-vocab-en", "gemma3-270m-vocab-fr"]


def _row(name: str, r: dict) -> dict:
    m, t, art, b = r["model"], r["tokenizer"], r["artifacts"], r.get("bench") or {}
    acc = {
        k: v["value"] if v.get("info") else v["reduced"]
        for k, v in r["accuracy"]["metrics"].items()
        if not isinstance(v.get("value"), (dict, list))
    }
    row = next(iter((b.get("batches") or {}).values()), {})
    return {
        "recipe": name,
        "passed": r["passed"],
        "params": m["params"],
        "params_trimmed": m["params_trimmed"],
        "vocab": t["vocab_size"],
        "vocab_trimmed": t["vocab_size_trimmed"],
        "onnx_bytes": art["baseline_onnx_bytes"],
        "onnx_bytes_trimmed": art["onnx_bytes"],
        "baseline_ms": row.get("baseline_ms"),
        "trimmed_ms": row.get("reduced_ms"),
        "load_s": b.get("load_s"),
        "lm_head_share": b.get("lm_head_share"),
        "heldout_coverage": r["coverage"]["heldout"]["token_coverage"],
        "heldout_coverage_by_language": {
            k: v["token_coverage"] for k, v in r["coverage"]["heldout_by_language"].items()
        },
        "parity_max_abs": r["parity"]["max_abs_diff"],
        "accuracy": acc,
        "failures": r["failures"],
        "budget": r["trim"].get("budget"),
        "ranking": _ranking(r["trim"].get("ranking")),
        "generations_identical": (
            sum(g["identical"] for g in r["accuracy"]["generations"]),
            len(r["accuracy"]["generations"]),
        )
        if r["accuracy"].get("generations")
        else None,
    }


def _ranking(rk: dict | None) -> dict | None:
    if not rk:
        return None
    return {k: v for k, v in rk.items() if k != "trials"} | {"blends_tried": len(rk.get("trials") or [])}


def _markdown(rows: list[dict]) -> str:
    head = [
        "recipe",
        "params (M)",
        "vocab",
        "ONNX (MB)",
        "forward ms",
        "ONNX load s",
        "held-out coverage",
        "checks",
        "result",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms = f"{r['baseline_ms']:.1f} → {r['trimmed_ms']:.1f}" if r["baseline_ms"] else "—"
        load = f"{r['load_s']['onnx_original']:.2f} → {r['load_s']['onnx_trimmed']:.2f}" if r["load_s"] else "—"
        checks = "; ".join(f"{k} {v:.4g}" for k, v in r["accuracy"].items() if isinstance(v, (int, float)))
        if r["generations_identical"]:
            checks += f"; {r['generations_identical'][0]}/{r['generations_identical'][1]} generations identical"
        cov = f"{100 * r['heldout_coverage']:.2f}%"
        if len(r["heldout_coverage_by_language"]) > 1:
            cov += " (" + ", ".join(f"{k} {100 * v:.2f}%" for k, v in r["heldout_coverage_by_language"].items()) + ")"
        out.append(
            "| "
            + " | ".join(
                [
                    r["recipe"],
                    f"{r['params'] / 1e6:.1f} → {r['params_trimmed'] / 1e6:.1f}",
                    f"{r['vocab']:,} → {r['vocab_trimmed']:,}",
                    f"{r['onnx_bytes'] / 1e6:.0f} → {r['onnx_bytes_trimmed'] / 1e6:.0f}",
                    ms,
                    load,
                    cov,
                    checks,
                    "PASS" if r["passed"] else "FAIL",
                ]
            )
            + " |"
        )
    budget = [r for r in rows if r["budget"] or (r["ranking"] and r["ranking"].get("method") == "coverage")]
    if budget:
        out += [
            "",
            (
                "| recipe | budget | bought: ids, parameters | ranking (chosen on the dev split) | held-out token "
                "coverage at that size, by ranking |"
            ),
            "|---|---|---|---|---|",
        ]
        for r in budget:
            b, rk = r["budget"], r["ranking"] or {}
            lim = (
                "—"
                if not b
                else " / ".join(
                    x
                    for x in (
                        f"{b['max_params'] / 1e6:g}M parameters" if b["max_params"] else "",
                        f"{b['max_bytes'] / 1e6:g} MB at {b['precision']}" if b["max_bytes"] else "",
                    )
                    if x
                )
            )
            bought = "—" if not b else f"{b['kept']:,} ids, {b['params'] / 1e6:.2f}M"
            if rk.get("method") == "coverage":
                c = rk["chosen"]
                how = (
                    f"coverage: prior strength {c['prior_strength']:g}, numbers {c['numbers']:g}, own tokens "
                    f"{c['self_generated']:g} ({rk['blends_tried']} blends)"
                )
                abl = "; ".join(_abl(k, v) for k, v in (rk.get("heldout_ablation") or {}).items())
            else:
                how, abl = "frequency", "—"
            out.append(f"| {r['recipe']} | {lim} | {bought} | {how} | {abl} |")
    return "\n".join(out) + "\n"


def _abl(name: str, v: dict) -> str:
    if "heldout_token_coverage" not in v:
        return f"{name}: n/a"
    langs = v.get("by_language") or {}
    per = f" ({', '.join(f'{k} {100 * x:.2f}' for k, x in langs.items())})" if len(langs) > 1 else ""
    return f"{name} {100 * v['heldout_token_coverage']:.2f}%{per}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    ap.add_argument("--repeats", type=int, default=None, help="bench.repeats override (default: the recipe's)")
    ap.add_argument("--samples", type=int, default=None, help="verify.accuracy.samples override (smoke tests)")
    ap.add_argument("--force", action="store_true", help="replace existing per-recipe output folders")
    ap.add_argument(
        "--reports",
        type=Path,
        nargs="+",
        default=None,
        help="tabulate these finished convert outputs (folders holding report.json) instead of running; "
        "e.g. the per-recipe folders of runs made in parallel",
    )
    args = ap.parse_args(argv)
    if args.reports:
        rows = [
            _row(
                json.loads((d / "report.json").read_text())["recipe"].get("name") or d.name,
                json.loads((d / "report.json").read_text()),
            )
            for d in args.reports
        ]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "summary.md").write_text(_markdown(rows))
        print(_markdown(rows))
        return 0

    from tokexport.errors import TokexportError
    from tokexport.pipeline import run
    from tokexport.vocab.recipe import validate_vocab_recipe

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.recipes:
        path = REPO / "recipes" / f"{name}.yaml"
        data = yaml.safe_load(path.read_text())
        if args.repeats is not None:
            data.setdefault("bench", {})["repeats"] = args.repeats
        if args.samples is not None:
            data.setdefault("verify", {}).setdefault("accuracy", {})["samples"] = args.samples
        recipe = validate_vocab_recipe(str(path), data)
        try:
            res = run(recipe, path.parent, args.out / name, force=args.force, label=str(path.relative_to(REPO)))
        except TokexportError as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            return e.exit_code
        rows.append(_row(name, res.report))
        print(
            f"{name}: {'PASS' if res.report['passed'] else 'FAIL'} "
            f"{rows[-1]['params'] / 1e6:.1f}M -> {rows[-1]['params_trimmed'] / 1e6:.1f}M parameters",
            flush=True,
        )
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "summary.md").write_text(_markdown(rows))
    print(_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
