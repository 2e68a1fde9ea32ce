"""Vocabulary-trim benchmark: run the shipped vocab-trim recipes and tabulate, per model, parameters,
vocabulary, ONNX size, forward latency and load time before/after, coverage, and the accuracy checks.

    python scripts/bench_vocab_trim.py --out out/bench-vocab                      # all four recipes
    python scripts/bench_vocab_trim.py --out out/smoke --recipes minilm-l6-vocab-en --repeats 2 --samples 8

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
    acc = {k: v["value"] if v.get("info") else v["reduced"] for k, v in r["accuracy"]["metrics"].items()
           if not isinstance(v.get("value"), (dict, list))}
    row = next(iter((b.get("batches") or {}).values()), {})
    return {"recipe": name, "passed": r["passed"], "params": m["params"], "params_trimmed": m["params_trimmed"],
            "vocab": t["vocab_size"], "vocab_trimmed": t["vocab_size_trimmed"], "onnx_bytes": art["baseline_onnx_bytes"],
            "onnx_bytes_trimmed": art["onnx_bytes"], "baseline_ms": row.get("baseline_ms"), "trimmed_ms": row.get("reduced_ms"),
            "load_s": b.get("load_s"), "lm_head_share": b.get("lm_head_share"),
            "heldout_coverage": r["coverage"]["heldout"]["token_coverage"], "parity_max_abs": r["parity"]["max_abs_diff"],
            "accuracy": acc, "failures": r["failures"]}


def _markdown(rows: list[dict]) -> str:
    head = ["recipe", "params (M)", "vocab", "ONNX (MB)", "forward ms", "ONNX load s", "held-out coverage", "checks", "result"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms = f"{r['baseline_ms']:.1f} → {r['trimmed_ms']:.1f}" if r["baseline_ms"] else "—"
        load = f"{r['load_s']['onnx_original']:.2f} → {r['load_s']['onnx_trimmed']:.2f}" if r["load_s"] else "—"
        checks = "; ".join(f"{k} {v:.4g}" for k, v in r["accuracy"].items())
        out.append("| " + " | ".join([
            r["recipe"], f"{r['params'] / 1e6:.1f} → {r['params_trimmed'] / 1e6:.1f}", f"{r['vocab']:,} → {r['vocab_trimmed']:,}",
            f"{r['onnx_bytes'] / 1e6:.0f} → {r['onnx_bytes_trimmed'] / 1e6:.0f}", ms, load, f"{100 * r['heldout_coverage']:.2f}%",
            checks, "PASS" if r["passed"] else "FAIL"]) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    ap.add_argument("--repeats", type=int, default=None, help="bench.repeats override (default: the recipe's)")
    ap.add_argument("--samples", type=int, default=None, help="verify.accuracy.samples override (smoke tests)")
    ap.add_argument("--force", action="store_true", help="replace existing per-recipe output folders")
    args = ap.parse_args(argv)

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
        print(f"{name}: {'PASS' if res.report['passed'] else 'FAIL'} "
              f"{rows[-1]['params'] / 1e6:.1f}M -> {rows[-1]['params_trimmed'] / 1e6:.1f}M parameters", flush=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "summary.md").write_text(_markdown(rows))
    print(_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
