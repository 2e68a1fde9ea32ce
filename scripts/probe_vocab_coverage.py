"""What limits held-out token coverage of a `trim.ranking: coverage` vocab recipe: tokenizer and
counting only (no export, no graphs). Runs the recipe's own load stage (corpus split, dev-split tuning,
budget, keep set), then prints

* the recipe's point: kept ids, parameters, held-out coverage per language;
* coverage vs kept ids along the chosen ranking (and the parameters each size costs), and the smallest
  size at which every language reaches --target;
* the held-out misses at the recipe's size per language, by kind (digits, with digits, capitalised,
  lower-case word pieces, other), how many have no evidence at all (never in the mining text nor in a
  word list: no ranking can keep them before every evidenced id), and the most frequent ones;
* each language ranked alone (its own score only): ids it needs for --target, and the union of them;
* the trade-off between languages: the score with language weights (w, 1 - w) instead of the mean,
  coverage on the dev split (train counts) and on held-out text (full counts).

    python scripts/probe_vocab_coverage.py recipes/e5-small-vocab-en-pt.yaml

Everything after the recipe's point is measurement: nothing here changes a recipe's selection, and
the held-out numbers must not be used to choose one (the recipe's blend is chosen on the dev split).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def kind(token: str) -> str:
    s = token.lstrip("▁Ġ ")
    if re.fullmatch(r"[0-9]+", s):
        return "digits"
    if re.search(r"[0-9]", s):
        return "with digits"
    if s[:1].isupper():
        return "capitalised"
    if s.isalpha():
        return "lower-case word piece"
    return "other"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--target", type=float, default=0.99, help="coverage every language should reach (default 0.99)")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="kept-id counts of the curve")
    ap.add_argument(
        "--weights",
        type=float,
        nargs="*",
        default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 1.0],
        help="first language's weight in the trade-off table (two-language recipes)",
    )
    ap.add_argument("--top", type=int, default=25, help="most frequent missed tokens listed per language")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    from tokexport.tasks.base import Stages
    from tokexport.tasks.vocab_trim import VocabTrim
    from tokexport.vocab import rank as R
    from tokexport.vocab.corpus import encode_all
    from tokexport.vocab.recipe import validate_vocab_recipe
    from tokexport.vocab.tokenizer import complete_keep

    recipe = validate_vocab_recipe(str(args.recipe), yaml.safe_load(args.recipe.read_text()))
    if recipe.trim.ranking != "coverage":
        print(
            f"{args.recipe}: trim.ranking is {recipe.trim.ranking!r}; this probe reads a coverage ranking",
            file=sys.stderr,
        )
        return 2
    task = VocabTrim(recipe, args.recipe.parent, str(args.recipe))
    task.load(Stages())
    tok, H, rows = task.tok, task.heldout_counts, task.rows
    langs = sorted(H)
    budget, chosen = task.budget, task.ranking["chosen"]

    # the evidence again (the task keeps only its result), exactly as the task gathers it
    def enc_special(t):
        return tok(t, add_special_tokens=True)["input_ids"]

    def enc_plain(t):
        return tok(t, add_special_tokens=False)["input_ids"]

    cfg, corpus = recipe.trim.coverage, task.corpus
    mining_rows = {lang: encode_all(enc_special, docs) for lang, docs in corpus.mining.items()}
    weighted_rows = {lang: encode_all(enc_plain, [t for t, _ in e]) for lang, e in corpus.weighted.items()}
    ev, _ = R.gather_evidence(
        corpus,
        mining_rows,
        enc_plain,
        rows,
        cfg.dev_fraction,
        recipe.corpus.seed,
        any(x > 0 for x in cfg.numbers),
        weighted_rows,
    )
    if ev.generated is None and task.self_gen is not None:
        print("note: trim.self_generated is not re-run here; the model's own tokens are left out", file=sys.stderr)
    forced = {i for ids in task.required.values() for i in ids}
    base = {int(i) for i in complete_keep(task.state, forced)[0]}
    paths = R.MergePaths(task.state)
    a, n = chosen["prior_strength"], chosen["numbers"]
    score = R.blend(ev, ev.full(), a, n, 0.0)
    total = sum(H.values())

    def measure(keep, counts=H) -> dict:
        m = np.zeros(rows, dtype=bool)
        m[list(keep)] = True
        return {k: float((v * m).sum() / v.sum()) for k, v in counts.items() if v.sum() > 0}

    def keep_at(sc, k):
        return R.choose(sc, sc > 0, base, paths, R.Size(total=k))[0]

    kept = len(task.keep)
    params = (lambda k: budget.params(k)) if budget else (lambda k: None)
    out = {
        "recipe": str(args.recipe),
        "kept": kept,
        "params": params(kept),
        "blend": chosen,
        "heldout": {"overall": float((total * task.keep_mask).sum() / total.sum()), **measure(task.keep)},
        "heldout_tokens": {k: int(v.sum()) for k, v in H.items()},
    }

    def pct(d: dict) -> str:
        return ", ".join(f"{k} {100 * v:.2f}%" for k, v in d.items())

    print(
        f"recipe point: {kept:,} ids, {params(kept) or 0:,} parameters, blend a={a:g} numbers={n:g}; held-out "
        f"{pct(out['heldout'])} (tokens: {out['heldout_tokens']})"
    )

    if ev.generated is None and task.self_gen is None and keep_at(score, kept) != {int(i) for i in task.keep}:
        print("note: the re-gathered ranking does not reproduce the recipe's keep set", file=sys.stderr)

    # curve along the chosen ranking
    everything = 10**9
    evidenced = len(keep_at(score, everything))  # every id with any evidence, its merge paths, required ids
    sizes = args.sizes or sorted({kept, *range(((kept // 1000) + 1) * 1000, evidenced + 1000, 1000), evidenced})
    curve = []
    for k in sizes:
        c = measure(keep_at(score, k))
        curve.append({"ids": k, "params": params(k), **c})
        print(f"  {k:>7,} ids  {params(k) or 0:>13,} params  " + pct(c))
    out["curve"] = curve
    lo, hi = len(base), evidenced
    if min(measure(keep_at(score, hi)).values()) >= args.target:
        while hi - lo > 10:  # bisection for the smallest size where every language reaches the target
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if min(measure(keep_at(score, mid)).values()) >= args.target else (mid, hi)
        out["smallest_for_target"] = {"ids": hi, "params": params(hi), **measure(keep_at(score, hi))}
        print(
            f"every language >= {100 * args.target:g}% from about {hi:,} ids ({params(hi) or 0:,} parameters; "
            "10-id resolution)"
        )
    else:
        out["smallest_for_target"] = None
        print(f"every language >= {100 * args.target:g}% is out of reach even with all {evidenced:,} evidenced ids")

    # misses at the recipe's size
    inv = tok.convert_ids_to_tokens
    out["misses"] = {}
    for lang in langs:
        h = H[lang]
        miss = np.flatnonzero((h > 0) & ~task.keep_mask)
        occ = h[miss]
        by_kind: dict[str, int] = {}
        for t, o in zip(inv(miss.tolist()), occ.tolist()):
            by_kind[kind(t)] = by_kind.get(kind(t), 0) + int(o)
        no_ev = int(h[(score <= 0) & ~task.keep_mask].sum())
        top = [(inv(int(i)), int(h[i])) for i in miss[np.argsort(-occ, kind="stable")][: args.top]]
        allowed = int(h.sum() * (1 - args.target))
        out["misses"][lang] = {
            "occurrences": int(occ.sum()),
            "distinct": len(miss),
            "allowed_for_target": allowed,
            "by_kind": by_kind,
            "no_evidence": no_ev,
            "top": top,
        }
        print(
            f"{lang}: {int(occ.sum())} missed occurrences ({len(miss)} distinct ids; {allowed} allowed for "
            f"{100 * args.target:g}%), by kind {by_kind}; {no_ev} have no evidence at all; most frequent: {top}"
        )

    # each language alone, and the weighted trade-off
    def lang_score(counts, lang):
        return R.blend(R.Evidence(ev.size, [lang], {}, {}, ev.words, ev.numbers), {lang: counts[lang]}, a, n, 0.0)

    full = ev.full()
    out["alone"] = {}
    for lang in langs:
        sc = lang_score(full, lang)
        lo, hi = len(base), len(keep_at(sc, everything))
        if measure(keep_at(sc, hi))[lang] < args.target:
            out["alone"][lang] = None
            continue
        while hi - lo > 50:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if measure(keep_at(sc, mid))[lang] >= args.target else (mid, hi)
        out["alone"][lang] = {"ids": hi, "keep": keep_at(sc, hi)}
    if all(out["alone"].values()):
        union = set().union(*(v["keep"] for v in out["alone"].values()))
        print(
            "each language ranked alone reaches the target with "
            + ", ".join(f"{k} {v['ids']:,}" for k, v in out["alone"].items())
            + f" ids (50-id resolution); their union: {len(union):,} ids"
        )
        out["alone_union"] = len(union)
    for v in out["alone"].values():
        if v:
            v.pop("keep")
    if len(langs) == 2:
        out["tradeoff"] = []
        print(f"language weights ({langs[0]}, {langs[1]}) at {kept:,} ids: dev split / held-out")
        for w in args.weights:

            def weighted(counts, w=w):
                return w * lang_score(counts, langs[0]) + (1 - w) * lang_score(counts, langs[1])

            dev, held = measure(keep_at(weighted(ev.train), kept), ev.dev), measure(keep_at(weighted(full), kept))
            out["tradeoff"].append({"weight": w, "dev": dev, "heldout": held})
            print(f"  w={w:<5g} dev {pct(dev)}  held-out {pct(held)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
