#!/usr/bin/env python
"""The visual-token frontier on the bundled DINOv2-S as the vision tower: every visual-token method
against both honest baselines at 25%, 12.5% and 6.25% of the tokens, for one view and for the full view
+ 2×2 sub-images, with the margin over the best baseline and its paired-bootstrap 95% CI; writes a JSON
and regenerates the README's marked table from it.

    python scripts/bench_visual_frontier.py --out out/visual-frontier          # measure, write JSON, update README
    python scripts/bench_visual_frontier.py --from-json out/visual-frontier/frontier.json   # README only

How it measures (one pass of the tower per layout, then every method on the cached signals):
- crops: the bundled photographs' seeded random crops (``instance_recognition_set``) drawn with
  ``--seed`` (default 1; every shipped recipe and the tests use seed 0), ``--samples-per-class`` eval crops
  and ``--prototypes-per-class`` separate prototype crops per photograph. Nothing is chosen on them:
  every method runs with its defaults (FoPru ``received``, HiRED ``cls`` with α 0.5, VisionZip 54:10,
  DART 4 pivots), so they are held out from everything the methods or their recipes were set on.
- the tower runs once per layout through :class:`tokexport.vlm.graph.VisualTokenGraph` without a
  selector (features at the feature layer, significance at block −2 from the CLS query and as
  received, block 0 from the CLS query, block −2's head-averaged keys); each method then runs its
  ``reduce`` — the very code the exported graphs contain (their parity against it is checked in every
  convert and in tests/test_vlm_reducers.py) — on those signals, in PyTorch.
- figures and baselines exactly as a convert's report computes them (tokexport.vlm.baselines: the
  mean-pooled cosine against all tokens, instance top-1 with prototypes from all tokens, random keep
  drawn per image over 5 seeds, the 2-D uniform lattice, both at the method's K), margins over the
  better baseline with tokexport.stages.baselines (2000 paired resamples).

A method "beats the baselines" at a budget when the 95% CI lower bound of its feature-cosine margin over
the best baseline is above 0 (docs/verdicts.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

METHODS = ["fopru-rank", "fopru-row", "hired", "visionzip", "divprune", "dart"]
RATES = [0.25, 0.125, 0.0625]
LAYOUTS = {  # name: base recipe (tower, vision settings, export image size)
    "single view": "dinov2-small-fopru-rank.yaml",
    "full + 2x2 views": "dinov2-small-hired.yaml",
}
BEGIN, END = "<!-- visual-frontier:begin -->", "<!-- visual-frontier:end -->"
DEFAULTS: dict = {}  # the parser's defaults: the command recorded in the JSON names only what differs


def load_layout(recipe_file: str, seed: int, per_class: int, protos: int):
    """The loaded visual-token task of ``recipe_file`` (tower, layout, crops) with the held-out crop draw."""
    from tokexport.recipe import load_recipe
    from tokexport.tasks.base import Stages
    from tokexport.tasks.run import make_task

    recipe = load_recipe(REPO / "recipes" / recipe_file)
    data = recipe.model_dump(mode="json", exclude_none=True)
    data["verify"]["accuracy"].update(seed=seed, samples_per_class=per_class, prototypes_per_class=protos)
    recipe = type(recipe).model_validate(data)
    task = make_task(recipe, REPO / "recipes", recipe_file)
    task.load(Stages())
    return task


def tower_signals(task, x: np.ndarray, batch: int):
    """(patch tokens [N, V·P, D], signals {"cls": {select, alloc, keys}, "received": {select}}) over all
    crops, one tower pass each."""
    from tokexport.vlm.graph import VisualTokenGraph, block_index

    vm, lay = task.vm, task.layout
    g = VisualTokenGraph(vm.tower, vm.adapter, lay, vm.image_size, vm.feature_layer, vm.feature_select, vm.projector)
    g.score_blocks = {"select": block_index(-2, vm.adapter.num_layers), "alloc": block_index(0, vm.adapter.num_layers)}
    g.keys_block, g.source = g.score_blocks["select"], "cls"
    toks, sel_cls, alloc_cls, keys, sel_rec = [], [], [], [], []
    s, n_prefix = vm.image_size, vm.adapter.n_prefix()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))
            xb = xb.unsqueeze(1) if xb.dim() == 4 else xb
            feats, sig = g.tower_features(xb.reshape(-1, 3, s, s), also=("received",))
            b = xb.shape[0]
            patches = feats[:, n_prefix:]
            if vm.projector is not None:
                patches = vm.projector(patches)
            toks.append(patches.reshape(b, lay.total, -1))
            sel_cls.append(sig["select"].reshape(b, lay.views, lay.patches))
            alloc_cls.append(sig["alloc"].reshape(b, lay.views, lay.patches))
            keys.append(sig["keys"].reshape(b, lay.views, lay.patches, -1))
            sel_rec.append(sig["select/received"].reshape(b, lay.views, lay.patches))
    cat = torch.cat
    return cat(toks), {
        "cls": {"select": cat(sel_cls), "alloc": cat(alloc_cls), "keys": cat(keys)},
        "received": {"select": cat(sel_rec)},
    }


def run_method(selector, tokens, signals, layout, k: int, batch: int):
    """(tokens [N, K, D], positions [N, K]) of ``selector.reduce`` over all crops, and its seconds."""
    src = getattr(selector.config, "source", None)
    sig = signals[src or "cls"]
    for attr, block in (("select_layer", -2), ("alloc_layer", 0)):
        v = getattr(selector.config, attr, block)
        assert v == block, f"{selector.name}: {attr}={v}, the cached signals are at block {block}"
    out_t, out_p = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, tokens.shape[0], batch):
            sb = {kind: t[i : i + batch] for kind, t in sig.items()}
            t, p = selector.reduce(tokens[i : i + batch], sb, layout, k)
            out_t.append(t)
            out_p.append(p)
    return torch.cat(out_t).numpy(), torch.cat(out_p).numpy(), time.perf_counter() - t0


def measure(args) -> dict:
    from tokexport import metrics as M
    from tokexport.stages.baselines import baselines_section
    from tokexport.vlm.baselines import COMPARED, baseline_runs, per_sample
    from tokexport.vlm.select import make_visual_selector

    opts = [
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in ("out", "readme", "from_json") and v != DEFAULTS.get(k)
    ]
    command = " ".join(["python scripts/bench_visual_frontier.py", "--out", str(args.out), *opts])
    result = {
        "command": command,
        "seed": args.seed,
        "samples_per_class": args.samples_per_class,
        "prototypes_per_class": args.prototypes_per_class,
        "rows": [],
        "baselines": [],
    }
    for lay_name, recipe_file in LAYOUTS.items():
        t0 = time.perf_counter()
        task = load_layout(recipe_file, args.seed, args.samples_per_class, args.prototypes_per_class)
        lay, iset = task.layout, task.iset
        tokens, signals = tower_signals(task, task.eval_x, args.batch)
        proto_tokens, _ = tower_signals(task, task.proto_x, args.batch)
        orig = tokens.numpy()
        protos = M.class_prototypes(proto_tokens.numpy().mean(axis=1), iset.proto_y, iset.n_classes)
        w = signals["cls"]["select"].reshape(len(orig), lay.total)
        weights = (w / w.sum(dim=-1, keepdim=True)).numpy()  # the reports' eval attention: block -2 CLS
        labels = iset.eval_y
        top1_all = M.nearest_prototype_top1(orig.mean(axis=1), labels, protos)
        print(
            f"[{lay_name}] tower on {len(orig)} crops x {lay.views} view(s): {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        seeds = [args.seed * 1000 + i for i in range(5)]
        for rate in RATES:
            runs_by_k = {}
            for method in args.methods:
                sel = make_visual_selector({"method": method, "keep_rate": rate})
                k = sel.resolve_k(lay)
                if k not in runs_by_k:
                    runs_by_k[k] = baseline_runs(orig, weights, 0, protos, labels, lay, k, seeds)
                red, pos, secs = run_method(sel, tokens, signals, lay, k, args.batch)
                ps = per_sample(orig, red, pos, weights, 0, protos, labels)
                sec = baselines_section(
                    method,
                    {m: ps[m] for m in COMPARED},
                    runs_by_k[k],
                    {m: "higher" for m in COMPARED},
                    {"visual_tokens_kept": k, "of": lay.total, "views": lay.views},
                    {"samples": int(len(labels))},
                    None,
                    seed=args.seed,
                )
                row = {
                    "layout": lay_name,
                    "rate": rate,
                    "k": k,
                    "total": lay.total,
                    "method": method,
                    "params": sel.describe(lay, k),
                    "seconds": secs,
                    "top1_all": float(top1_all),
                    "samples": int(len(labels)),
                    **{m: float(ps[m].mean()) for m in (*COMPARED, "attention_mass")},
                    "margins": sec["margins"],
                    "baselines": sec["baselines"],
                }
                row["beats_baselines"] = row["margins"]["feature_cosine"]["ci"][0] > 0
                result["rows"].append(row)
                mg = row["margins"]["feature_cosine"]
                print(
                    f"[{lay_name} {100 * rate:g}% K={k}] {method}: cos {row['feature_cosine']:.4f} margin "
                    f"{mg['margin']:+.4f} [{mg['ci'][0]:+.4f}, {mg['ci'][1]:+.4f}] vs {mg['best_baseline']} "
                    f"({secs:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    return result


def _m(mg: dict) -> str:
    return f"{mg['margin']:+.4f} [{mg['ci'][0]:+.4f}, {mg['ci'][1]:+.4f}] vs {mg['best_baseline']}"


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"Generated by `{result['command']}` ({rows[0]['samples']} held-out crops per layout, crop seed "
        f"{result['seed']}; DINOv2-S, block −2 features; 2000 paired bootstrap resamples).",
        "",
        "| layout | budget (K of all) | method | cosine (mean-pooled) | margin over best baseline [95% CI] | beats both? "
        "| instance top-1 (all → kept) | top-1 margin [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {100 * r['rate']:g}% ({r['k']} of {r['total']}) | {r['method']} | "
            f"{r['feature_cosine']:.4f} | {_m(r['margins']['feature_cosine'])} | "
            f"{'**yes**' if r['beats_baselines'] else 'no'} | {r['top1_all']:.3f} → {r['instance_top1']:.3f} | "
            f"{_m(r['margins']['instance_top1'])} |"
        )
    lines += [
        "",
        "| layout | budget | random per image (mean ± sd over 5 seeds): cosine / top-1 | 2-D uniform lattice: "
        "cosine / top-1 |",
        "|---|---|---|---|",
    ]
    seen = set()
    for r in rows:
        key = (r["layout"], r["k"])
        if key in seen:
            continue
        seen.add(key)
        rnd, uni = r["baselines"]["random"]["metrics"], r["baselines"]["uniform"]["metrics"]
        lines.append(
            f"| {r['layout']} | {100 * r['rate']:g}% ({r['k']} of {r['total']}) | "
            f"{rnd['feature_cosine']['mean']:.4f} ± {rnd['feature_cosine']['sd']:.4f} / "
            f"{rnd['instance_top1']['mean']:.3f} ± {rnd['instance_top1']['sd']:.3f} | "
            f"{uni['feature_cosine']['mean']:.4f} / {uni['instance_top1']['mean']:.3f} |"
        )
    return "\n".join(lines)


def write_readme(result: dict, readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table(result)}\n{END}{tail}", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out" / "visual-frontier"))
    ap.add_argument("--from-json", default=None, help="only regenerate the README table from this JSON")
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--seed", type=int, default=1, help="crop seed (held out: the recipes and tests use 0)")
    ap.add_argument("--samples-per-class", type=int, default=8)
    ap.add_argument("--prototypes-per-class", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--readme", default=str(REPO / "README.md"), help="README to update ('' = none)")
    args = ap.parse_args()
    DEFAULTS.update({a.dest: a.default for a in ap._actions})
    torch.manual_seed(0)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        result = measure(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "frontier.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {out / 'frontier.json'}", file=sys.stderr)
    print(table(result))
    if args.readme:
        write_readme(result, Path(args.readme))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
