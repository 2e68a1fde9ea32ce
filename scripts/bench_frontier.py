#!/usr/bin/env python
"""The ViT accuracy–speed frontier on the bundled DINOv2-S, in one command.

Every ViT reduction method (zero-tprune, topk-cls, tome, pitome, divprune, dart, hybrid) and both baselines
(random keep drawn per image over 5 seeds, the 2-D uniform lattice) at several FLOPs budgets:

1. **schedule by FLOPs alone** — each method is placed at each budget (reduced / original analytic FLOPs,
   selection overhead included) by its own budget knob (``Method.knob``; ``tokexport.reduce.budget``), starting
   from its shipped recipe's reduction where there is one; nothing here looks at accuracy to choose;
2. **convert** — the full ``tokexport convert`` driver on that reduction (static export, parity against PyTorch,
   TensorRT target checks for jetpack-6.0, plus ``check-target`` for jetpack-7.0; graph node counts);
3. **held-out accuracy** — model.onnx (ONNX Runtime) on a crop split no recipe, schedule or search ever used
   (stream 3 of the photographs' crops, ``--crops-per-class`` × 18 photographs ≥ 288 crops; prototypes from the
   original model on the recipes' prototype crops): feature cosine and instance top-1 with 95% bootstrap
   intervals, and the margin over the best baseline AT THE METHOD'S OWN SCHEDULE with its paired-bootstrap
   interval (``tokexport.stages.baselines``, the machinery of every report);
4. **speed** — b1 and b8 latency of model.onnx interleaved with baseline.onnx and with Optimum's export of the
   same checkpoint (``scripts/bench_vs_optimum.py`` builds it in a side venv), ONNX Runtime CPU;
5. the Pareto front (b8 speed-up over Optimum's export against held-out feature cosine), a JSON, a Markdown
   table and a PNG; ``--update-readme`` rewrites the README section between the frontier markers.

The baseline rows: the uniform lattice is the deployable ``uniform`` method at the common pruning schedule
(blocks 2/5/8, one keep rate set by the budget; its own graph is timed), and random keep per image runs at that
same schedule (from the same point's baselines; not a graph: it has the lattice's token counts and speed).

Two passes. Accuracy first, point by point (deterministic, so it may run on a busy machine: ``--no-bench``), each
point cached as ``OUT/points/<method>@<budget>/result.json`` beside its ``model.onnx``; then speed, every graph
timed in one stretch (``speed.json``, keyed by the timing settings), which wants a quiet machine. A rerun skips
what is cached, so ``--no-bench`` under load and the same command without it later times only. Long on a 2-core
machine (a few minutes a point, ~90 MB of graph each): run it under ``nice``.

    nice python scripts/bench_frontier.py --out out/frontier --update-readme
    python scripts/bench_frontier.py --out out/frontier --methods pitome tome --budgets 0.65 --crops-per-class 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_vs_optimum as optimum  # noqa: E402  (its venv, export and session helpers)

METHODS = ("zero-tprune", "topk-cls", "tome", "pitome", "divprune", "dart", "hybrid", "uniform")
BASELINE_ROWS = ("random (per image)", "uniform (lattice)")
TEMPLATES = {  # the shipped recipe whose reduction each method starts from (its blocks, its parameters)
    "zero-tprune": "dinov2-small-zero-tprune",
    "topk-cls": "dinov2-small-topk-cls",
    "tome": "dinov2-small-tome",
    "pitome": "dinov2-small-pitome",
    "hybrid": "dinov2-small-hybrid",
}
BASE_RECIPE = "dinov2-small-zero-tprune"  # export/verify settings of every point
HELDOUT_STREAM = 3  # crops: default_rng([0, 3]); eval 0 = the recipes' verdicts, 1 = prototypes, 2 = search
MARK_START, MARK_END = "<!-- frontier:start -->", "<!-- frontier:end -->"
MIN_COSINE, MAX_DROP = 0.99, 0.01  # the headline's accuracy bar (issue 24)


def fail(msg: str, code: int = 2):
    print(f"bench_frontier: {msg}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------------------------------------- set-up


class Setup:
    """The model, its FLOPs shape, the held-out crops and the original model's outputs on them."""

    def __init__(self, crops_per_class: int, seed: int):
        from tokexport import metrics as M
        from tokexport.data import Preprocess, instance_recognition_set, natural_images
        from tokexport.load import load_model
        from tokexport.recipe import load_recipe
        from tokexport.reduce.budget import ModelShape
        from tokexport.tasks.vit_tokens import forward_fn

        self.base = load_recipe(REPO / "recipes" / f"{BASE_RECIPE}.yaml")
        self.lm = load_model(
            self.base.model, REPO / "recipes", self.base.family, self.base.task, self.base.export.image_size
        )
        ad = self.lm.adapter
        self.shape = ModelShape(ad.n_tokens(self.lm.image_size), ad.n_prefix(), ad.dims(), ad.head_macs(self.lm.model))
        acc = self.base.verify.accuracy
        pre = Preprocess(self.lm.image_size, self.lm.mean, self.lm.std)
        self.iset = instance_recognition_set(
            natural_images(include_optional=False, include_dependencies=True),
            pre,
            crops_per_class,
            acc.prototypes_per_class,
            tuple(acc.crop_scale),
            seed,
            eval_stream=HELDOUT_STREAM,
        )
        self.forward = forward_fn(self.lm)
        self.seed = seed
        self.M = M
        self.orig: dict | None = None
        self.protos = None
        self.feature = None
        self.records: dict[int, dict] = {}

    def split(self) -> dict:
        return {
            "eval": {
                "samples": int(len(self.iset.eval_y)),
                "crops": f"default_rng([{self.seed}, {HELDOUT_STREAM}]): used by no recipe, schedule or search",
            },
            "prototypes": {
                "samples": int(len(self.iset.proto_y)),
                "crops": f"default_rng([{self.seed}, 1]) (original model)",
            },
            "classes": self.iset.n_classes,
        }

    def original(self, baseline_onnx: Path) -> None:
        """The original model's outputs on the held-out and prototype crops (baseline.onnx, which passed parity)."""
        from tokexport.stages.runners import OrtRunner, run_rows

        if self.orig is not None:
            return
        runner = OrtRunner(baseline_onnx)
        self.orig = run_rows(runner, {"pixel_values": self.iset.eval_x})
        self.feature = self.lm.adapter.feature_output(list(self.orig))
        proto = run_rows(runner, {"pixel_values": self.iset.proto_x})[self.feature]
        self.protos = self.M.class_prototypes(proto, self.iset.proto_y, self.iset.n_classes)

    def figures(self, out: dict) -> dict:
        from tokexport.reduce.baselines_vit import per_sample

        return per_sample(
            ["feature_cosine", "instance_top1"], self.orig, out, self.feature, self.protos, self.iset.eval_y
        )

    def record(self, layer: int) -> dict:
        from tokexport.reduce.baselines_vit import record_prefix

        if layer not in self.records:
            self.records[layer] = record_prefix(self.lm.model, self.lm.adapter, self.forward, layer, self.iset.eval_x)
        return self.records[layer]


def reduction_at(method: str, budget: float, setup: Setup) -> tuple[dict, float]:
    """(the reduction's fields, its FLOPs ratio) of ``method`` at ``budget``, by FLOPs alone."""
    from tokexport.recipe import load_recipe
    from tokexport.reduce import get_method
    from tokexport.reduce.budget import config_at_flops

    template = load_recipe(REPO / "recipes" / f"{TEMPLATES[method]}.yaml").reduction if method in TEMPLATES else None
    cfg, ratio = config_at_flops(get_method(method), template, budget, setup.shape)
    return json.loads(cfg.model_dump_json(exclude_none=True)), ratio


# ---------------------------------------------------------------------------------------------- one point


def point_recipe(setup: Setup, reduction: dict):
    """The base recipe with ``reduction``; verification inside the convert is parity and the target checks
    only (accuracy is measured on the held-out split here), no bench, no bundle."""
    from tokexport.recipe import ViTRecipe

    data = setup.base.model_dump(mode="json", exclude_none=True)
    data["name"] = f"frontier-{reduction['method']}"
    data["reduction"] = reduction
    data["verify"]["accuracy"].update(
        samples_per_class=1, prototypes_per_class=1, metrics={"feature_cosine": {"min": -1.0}}
    )
    data["verify"]["baselines"] = {"enabled": False}
    data["verify"].pop("vs_baselines", None)
    data["bench"] = {**data["bench"], "enabled": False}
    data["deploy"] = {"bundle": False, "engines": False}
    return ViTRecipe.model_validate(data)


def shared_baselines(setup: Setup, stages, seeds: int, cache_dir: Path):
    """The honest baselines (random per image over ``seeds`` draws, the uniform lattice) at ``stages``' token
    counts, cached by those counts: methods placed at the same schedule (every pruning method at one budget)
    are judged against one computation of the same baselines, as their reports would compute them."""
    import hashlib

    from tokexport.reduce.baselines_vit import baseline_runs, pruning_stages
    from tokexport.stages.baselines import BaselineRun

    counts = [[s.layer, s.tokens_in, s.tokens_out, s.n_keep] for s in pruning_stages(stages)]
    key = json.dumps({"counts": counts, "seeds": seeds, "crops": len(setup.iset.eval_y), "seed": setup.seed})
    path = cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        got = json.loads(path.read_text())
        if got["key"] == key:
            return [
                BaselineRun(
                    r["name"],
                    r["description"],
                    {k: [np.asarray(v) for v in vs] for k, vs in r["per_sample"].items()},
                    r["seeds"],
                )
                for r in got["runs"]
            ], got["engine"]
    with tempfile.TemporaryDirectory(prefix="frontier-baselines-") as tmp:
        engine: dict = {}
        runs = baseline_runs(
            setup.lm.model,
            setup.lm.adapter,
            setup.forward,
            stages,
            setup.iset.eval_x,
            setup.figures,
            list(range(seeds)),
            recorded=setup.record(stages[0].layer),
            engine="onnxruntime",
            workdir=tmp,
            info=engine,
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".part")
    tmp_path.write_text(
        json.dumps(
            {
                "key": key,
                "engine": engine,
                "runs": [
                    {
                        "name": r.name,
                        "description": r.description,
                        "seeds": r.seeds,
                        "per_sample": {k: [np.asarray(v).tolist() for v in vs] for k, vs in r.per_sample.items()},
                    }
                    for r in runs
                ],
            }
        )
    )
    tmp_path.replace(path)
    return runs, engine


def run_point(setup: Setup, method: str, budget: float, work: Path, seeds: int) -> dict:
    from tokexport.onnx_tools import check_target, inspect_model
    from tokexport.reduce import get_method
    from tokexport.reduce.schedule import plan
    from tokexport.stages.baselines import baselines_section
    from tokexport.stages.runners import OrtRunner, run_rows
    from tokexport.tasks.run import run

    reduction, ratio = reduction_at(method, budget, setup)
    recipe = point_recipe(setup, reduction)
    t0 = time.perf_counter()
    conv = work / "convert"
    res = run(recipe, REPO / "recipes", conv, force=True, label=f"{method}@{budget}", loaded=setup.lm)
    rep = res.report
    if not rep["parity"]["passed"]:
        raise RuntimeError(f"{method}@{budget}: parity failed: {rep['failures']}")
    model, base = conv / "model.onnx", conv / "baseline.onnx"
    setup.original(base)
    jp7 = check_target(model, "jetpack-7.0", lint=False)
    info = inspect_model(model)
    forbidden = sorted({"Loop", "If", "Scan", "ScatterND", "ScatterElements", "NonZero"} & set(info["op_histogram"]))

    red = run_rows(OrtRunner(model), {"pixel_values": setup.iset.eval_x})
    mine = setup.figures(red)
    cfg = get_method(method).config_cls.model_validate(reduction)
    stages = plan(cfg, setup.shape.n_tokens, setup.shape.n_prefix, setup.shape.num_layers)
    runs, engine = shared_baselines(setup, stages, seeds, work.parent.parent / "baselines")
    from tokexport.reduce.baselines_vit import BETTER

    section = baselines_section(method, mine, runs, BETTER, {}, setup.split())
    per_sample = {"method": {k: v.tolist() for k, v in mine.items()}}
    for r in runs:
        per_sample[r.name] = {k: np.mean(np.stack(v), axis=0).tolist() for k, v in r.per_sample.items()}
    return {
        "method": method,
        "budget": budget,
        "reduction": reduction,
        "flops_ratio": ratio,
        "tokens_per_stage": [
            {"layer": s.layer, "tokens_out": s.tokens_out, "kind": s.kind, **({"method": s.method} if s.method else {})}
            for s in stages
        ],
        "parity": {"passed": rep["parity"]["passed"], "max_abs_diff": rep["parity"].get("max_abs_diff")},
        "trt_check": {"jetpack-6.0": rep["trt_check"]["errors"] == 0, "jetpack-7.0": jp7.passed},
        "forbidden_ops": forbidden,
        "topk_max_k": max((t["k"] or 0) for t in info["topk"]) if info["topk"] else 0,
        "nodes": {"model": rep["artifacts"].get("onnx_nodes"), "baseline": rep["artifacts"].get("baseline_onnx_nodes")},
        "bytes": {"model": rep["artifacts"]["onnx_bytes"], "baseline": rep["artifacts"]["baseline_onnx_bytes"]},
        "baselines": {
            "margins": section["margins"],
            "means": {k: v["metrics"] for k, v in section["baselines"].items()},
            "engine": engine,
        },
        "per_sample": per_sample,
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------------------------------------- speed


class Timing:
    """model.onnx interleaved with baseline.onnx and Optimum's export, ONNX Runtime CPU. Optimum's export is
    built (once, cached in OUT/optimum) at the first call, checked against that call's baseline.onnx."""

    def __init__(
        self,
        out: Path,
        venv: Path | None,
        model_dir: Path,
        opset: int,
        batches: list[int],
        warmup: int,
        repeats: int,
        threads: int,
    ):
        self.out, self.venv, self.model_dir, self.opset = out, venv, model_dir, opset
        self.batches, self.warmup, self.repeats, self.threads = batches, warmup, repeats, threads
        self.optimum_path: Path | None = None
        self.versions: str | None = None

    def __call__(self, model: Path, base: Path) -> dict:
        if self.venv is not None and self.optimum_path is None:
            self.optimum_path, self.versions = optimum_graph(self.out, self.venv, self.model_dir, self.opset, base)
        graphs = {"model": model, "baseline": base}
        if self.optimum_path is not None:
            graphs["optimum"] = self.optimum_path
        sessions = {k: optimum.session(p, self.threads) for k, p in graphs.items()}
        size = int(sessions["model"].get_inputs()[0].shape[-1])
        rng = np.random.default_rng(0)
        out = {"load_before": optimum.loadavg()}
        names = list(graphs)
        for b in self.batches:
            feed = {"pixel_values": rng.standard_normal((b, 3, size, size)).astype(np.float32)}
            for _ in range(self.warmup):
                for k in names:
                    sessions[k].run(None, feed)
            times = {k: [] for k in names}
            for r in range(self.repeats):
                for k in names[r % len(names) :] + names[: r % len(names)]:  # rotating order
                    t = time.perf_counter()
                    sessions[k].run(None, feed)
                    times[k].append((time.perf_counter() - t) * 1e3)
            med = {k: float(np.median(v)) for k, v in times.items()}
            out[str(b)] = {
                "median_ms": med,
                "vs_baseline": med["baseline"] / med["model"],
                **(
                    {
                        "vs_optimum": med["optimum"] / med["model"],
                        "baseline_vs_optimum": med["optimum"] / med["baseline"],
                    }
                    if "optimum" in med
                    else {}
                ),
            }
        out["load_after"] = optimum.loadavg()
        return out


def optimum_graph(out: Path, venv: Path, model_dir: Path, opset: int, base: Path) -> tuple[Path, str]:
    """Optimum's export of the checkpoint (cached in OUT/optimum), checked against baseline.onnx."""
    dest = out / "optimum"
    if not (dest / "model.onnx").is_file():
        py = optimum.ensure_venv(venv)
        path, versions = optimum.optimum_export(py, model_dir, dest, opset)
        (dest / "versions.txt").write_text(versions + "\n")
    path, versions = dest / "model.onnx", (dest / "versions.txt").read_text().strip()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    so, sb = optimum.session(path, 2), optimum.session(base, 2)
    oo = dict(zip([o.name for o in so.get_outputs()], so.run(None, {"pixel_values": x})))
    ob = dict(zip([o.name for o in sb.get_outputs()], sb.run(None, {"pixel_values": x})))
    diff = {k: float(np.abs(oo[k] - ob[k]).max()) for k in ob if k in oo and oo[k].shape == ob[k].shape}
    if not diff or max(diff.values()) > 1e-2:
        fail(f"Optimum's export and baseline.onnx disagree ({diff}); not the same checkpoint?", 3)
    return path, versions


# ---------------------------------------------------------------------------------------------- summary


def _ci(values, resamples=2000, seed=0) -> tuple[float, float]:
    from tokexport.stages.baselines import paired_bootstrap_ci

    v = np.asarray(values, dtype=np.float64)
    return paired_bootstrap_ci(v, np.zeros_like(v), resamples, 0.95, seed)


def _drop_ci(orig_hits, hits) -> tuple[float, float]:
    from tokexport.stages.baselines import paired_bootstrap_ci

    lo, hi = paired_bootstrap_ci(np.asarray(orig_hits, float), np.asarray(hits, float), 2000, 0.95, 0)
    return lo, hi


def rows(points: list[dict], orig_hits: np.ndarray) -> list[dict]:
    """One row per method × budget, plus the two baseline rows per budget (from the uniform point)."""
    out = []
    orig_top1 = float(np.mean(orig_hits))
    for p in points:
        sources = [(p["method"], p["per_sample"]["method"], p)]
        if p["method"] == "uniform":
            sources = [
                ("uniform (lattice)", p["per_sample"]["method"], p),
                ("random (per image)", p["per_sample"]["random"], p),
            ]
        for name, ps, src in sources:
            cos, hits = np.asarray(ps["feature_cosine"]), np.asarray(ps["instance_top1"])
            row = {
                "method": name,
                "budget": src["budget"],
                "flops_ratio": src["flops_ratio"],
                "tokens": [s["tokens_out"] for s in src["tokens_per_stage"]],
                "cosine": float(cos.mean()),
                "cosine_ci": list(_ci(cos)),
                "top1": float(hits.mean()),
                "top1_drop": orig_top1 - float(hits.mean()),
                "top1_drop_ci": list(_drop_ci(orig_hits, hits)),
                "nodes": src["nodes"],
                "speed": src["speed"],
                "static": not src["forbidden_ops"],
                "trt": src["trt_check"],
                "baseline_row": name in BASELINE_ROWS,
            }
            if name not in BASELINE_ROWS:
                m = src["baselines"]["margins"]["feature_cosine"]
                row["margin"] = {"best": m["best_baseline"], "margin": m["margin"], "ci": m["ci"]}
                row["beats_best_baseline"] = m["ci"][0] > 0
                mt = src["baselines"]["margins"].get("instance_top1")
                if mt:
                    row["margin_top1"] = {"best": mt["best_baseline"], "margin": mt["margin"], "ci": mt["ci"]}
            if name == "random (per image)":
                row["note"] = "not a graph: the lattice's schedule and token counts, so its speed"
            out.append(row)
    mark_pareto(out)
    return out


def mark_pareto(rows_: list[dict]) -> None:
    """Pareto front over (b8 speed-up over Optimum, held-out feature cosine), among timed rows."""

    def key(r):
        s = r.get("speed") or {}
        return (s.get("8") or {}).get("vs_optimum"), r["cosine"]

    for r in rows_:
        x, y = key(r)
        r["pareto"] = x is not None and not any(
            (o is not r)
            and key(o)[0] is not None
            and key(o)[0] >= x
            and key(o)[1] >= y
            and (key(o)[0] > x or key(o)[1] > y)
            for o in rows_
        )


def headline(rows_: list[dict]) -> dict:
    """The best measured b8 and b1 speed-up over Optimum's export (and over baseline.onnx) among rows with
    held-out feature cosine >= 0.99 and instance top-1 drop <= 1 pp."""
    ok = [
        r
        for r in rows_
        if r["cosine"] >= MIN_COSINE
        and r["top1_drop"] <= MAX_DROP + 1e-12
        and r.get("speed")
        and r["method"] != "random (per image)"
    ]  # the lattice is a deployable graph too
    out = {"bar": {"min_cosine": MIN_COSINE, "max_top1_drop": MAX_DROP}}
    for b in ("8", "1"):
        for ref in ("vs_optimum", "vs_baseline"):
            cands = [r for r in ok if (r["speed"].get(b) or {}).get(ref) is not None]
            if cands:
                best = max(cands, key=lambda r: r["speed"][b][ref])
                out[f"b{b}_{ref}"] = {
                    "speedup": best["speed"][b][ref],
                    "method": best["method"],
                    "budget": best["budget"],
                    "cosine": best["cosine"],
                    "top1_drop": best["top1_drop"],
                }
    return out


def _fmt_ci(v, ci, d=4):
    return f"{v:.{d}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [
        f"Held-out split: {summary['split']['eval']['samples']} crops ({summary['split']['eval']['crops']}); "
        f"{env['cpu']}; ONNX Runtime {env['onnxruntime']} CPU, {summary['threads']} threads, median of "
        f"{summary['repeats']} interleaved runs; Optimum: {summary.get('optimum_versions', 'not measured')}; "
        f"wall time {summary['wall_seconds'] / 3600:.2f} h (sum over the points).",
        "",
        "| FLOPs target | method | FLOPs ratio | tokens after each stage | nodes (model / baseline) | feature cosine [95% CI] | "
        "top-1 drop [95% CI] | margin over best baseline, cosine [95% CI] | beats best baseline | b1 / b8 vs baseline.onnx | "
        "b1 / b8 vs Optimum | Pareto |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(summary["rows"], key=lambda r: (-r["budget"], r["baseline_row"], r["method"])):
        s = r.get("speed") or {}
        sp = lambda ref, s=s: " / ".join(f"{s[b][ref]:.2f}×" if s.get(b) and ref in s[b] else "–" for b in ("1", "8"))  # noqa: E731
        toks = r["tokens"]
        tok = " → ".join(str(t) for t in toks) if len(toks) <= 4 else f"{toks[0]} → … → {toks[-1]} ({len(toks)} stages)"
        m = r.get("margin")
        margin = f"{m['margin']:+.4f} [{m['ci'][0]:+.4f}, {m['ci'][1]:+.4f}] vs {m['best']}" if m else "(baseline)"
        beats = ("**yes**" if r.get("beats_best_baseline") else "no") if m else "–"
        nodes = f"{r['nodes']['model']} / {r['nodes']['baseline']}" if r["nodes"]["model"] else "–"
        lines.append(
            f"| {r['budget']:.2f} | {r['method']} | {r['flops_ratio']:.3f} | {tok} | {nodes} | "
            f"{_fmt_ci(r['cosine'], r['cosine_ci'])} | {r['top1_drop'] * 100:+.1f} pp "
            f"[{r['top1_drop_ci'][0] * 100:+.1f}, {r['top1_drop_ci'][1] * 100:+.1f}] | {margin} | {beats} | "
            f"{sp('vs_baseline')} | {sp('vs_optimum')} | {'★' if r['pareto'] else ''} |"
        )
    h = summary["headline"]
    lines += ["", f"Headline (held-out feature cosine ≥ {MIN_COSINE}, instance top-1 drop ≤ {MAX_DROP * 100:.0f} pp):"]
    for b in ("8", "1"):
        for ref, what in (("vs_optimum", "Optimum's export"), ("vs_baseline", "baseline.onnx")):
            e = h.get(f"b{b}_{ref}")
            lines.append(
                f"- batch {b}, over {what}: "
                + (
                    f"**{e['speedup']:.2f}×** ({e['method']} at FLOPs target {e['budget']:.2f}, cosine {e['cosine']:.4f}, "
                    f"top-1 drop {e['top1_drop'] * 100:+.1f} pp)"
                    if e
                    else "no point meets the bar"
                )
            )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    timed = [r for r in summary["rows"] if (r.get("speed") or {}).get("8", {}).get("vs_optimum")]
    for name in sorted({r["method"] for r in timed}):
        pts = sorted((r["speed"]["8"]["vs_optimum"], r["cosine"]) for r in timed if r["method"] == name)
        ax.plot(*zip(*pts), marker="o", linestyle="-" if name not in BASELINE_ROWS else "--", label=name)
    front = sorted((r["speed"]["8"]["vs_optimum"], r["cosine"]) for r in timed if r["pareto"])
    if front:
        ax.plot(*zip(*front), color="black", linewidth=2, alpha=0.35, label="Pareto front")
    ax.axhline(MIN_COSINE, color="grey", linestyle=":", linewidth=1)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("b8 speed-up over Optimum's ONNX export (ONNX Runtime CPU)")
    ax.set_ylabel(f"held-out feature cosine ({summary['split']['eval']['samples']} crops)")
    ax.set_title("DINOv2-S token reduction: accuracy vs speed")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PLOT_IN_REPO = Path("docs") / "vit-frontier.png"  # beside the README: the plot its frontier section shows


def update_readme(readme: Path, md: str, command: str, png: Path) -> None:
    """Replace the README's frontier section with ``md`` and the plot (copied to docs/vit-frontier.png)."""
    text = readme.read_text()
    if MARK_START not in text or MARK_END not in text:
        fail(f"{readme}: no {MARK_START} ... {MARK_END} section to replace")
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    dest = readme.parent / PLOT_IN_REPO
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, dest)
    body = (
        f"{MARK_START}\n<!-- generated by `{command}`; do not edit by hand -->\n{md}\n"
        f"![held-out feature cosine against the b8 speed-up over Optimum's export]({PLOT_IN_REPO.as_posix()})\n"
        f"{MARK_END}"
    )
    readme.write_text(head + body + tail)


# ---------------------------------------------------------------------------------------------- main


def environment() -> dict:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), None)
        cpu = f"{name or cpu}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return {"cpu": cpu, "onnxruntime": ort.__version__, "python": platform.python_version()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "out" / "frontier")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--budgets", default="0.8,0.65,0.5,0.4", help="FLOPs ratios (reduced / original)")
    ap.add_argument("--crops-per-class", type=int, default=16, help="held-out crops per photograph (16 x 18 = 288)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-seeds", type=int, default=5)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bench", action="store_true", help="no latencies (accuracy only)")
    ap.add_argument("--no-optimum", action="store_true", help="time against baseline.onnx only")
    ap.add_argument("--optimum-venv", type=Path, default=optimum.default_venv())
    ap.add_argument("--update-readme", action="store_true", help="rewrite README.md's frontier section from the JSON")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    a = ap.parse_args(argv)

    try:
        budgets = [float(b) for b in a.budgets.split(",") if b.strip()]
    except ValueError:
        fail(f"--budgets {a.budgets!r}: give FLOPs ratios such as 0.8,0.65,0.5,0.4")
    if not budgets or any(not 0.05 <= b <= 1 for b in budgets):
        fail("--budgets: each FLOPs ratio in [0.05, 1]")
    if a.crops_per_class < 1 or a.random_seeds < 5 or a.repeats < 1 or a.threads < 1:
        fail("--crops-per-class, --repeats, --threads >= 1 and --random-seeds >= 5")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    setup = Setup(a.crops_per_class, a.seed)
    key = {"crops_per_class": a.crops_per_class, "seed": a.seed, "random_seeds": a.random_seeds}
    bench_key = {
        "batch": a.batch,
        "warmup": a.warmup,
        "repeats": a.repeats,
        "threads": a.threads,
        "optimum": not a.no_optimum,
    }
    points = []
    # pass 1, accuracy (deterministic: may run on a busy machine); every point keeps its model.onnx for pass 2
    for budget in budgets:
        for method in a.methods:
            pid = f"{method}@{budget:g}"
            work = out / "points" / pid
            cache = work / "result.json"
            if cache.is_file():
                got = json.loads(cache.read_text())
                if got.get("settings") == key and (work / "model.onnx").is_file():
                    points.append(got)
                    print(f"{pid}: cached", flush=True)
                    continue
            work.mkdir(parents=True, exist_ok=True)
            print(f"{pid}: converting and measuring accuracy ...", flush=True)
            res = run_point(setup, method, budget, work, a.random_seeds)
            res["settings"] = key
            shutil.copyfile(work / "convert" / "report.json", work / "report.json")
            os.replace(work / "convert" / "model.onnx", work / "model.onnx")
            if not (out / "baseline.onnx").is_file():  # the same unreduced graph at every point
                shutil.copyfile(work / "convert" / "baseline.onnx", out / "baseline.onnx")
            shutil.rmtree(work / "convert")
            (work / "speed.json").unlink(missing_ok=True)  # a new graph: its old timing no longer applies
            cache.write_text(json.dumps(res, indent=1) + "\n")
            print(
                f"{pid}: FLOPs {res['flops_ratio']:.3f}, cosine {np.mean(res['per_sample']['method']['feature_cosine']):.4f}, "
                f"{res['seconds']:.0f} s",
                flush=True,
            )
            points.append(res)

    # pass 2, speed: every point's graph timed in one stretch, so that all ratios share the machine's state
    timing = (
        None
        if a.no_bench
        else Timing(
            out,
            None if a.no_optimum else a.optimum_venv,
            setup.lm.path,
            setup.base.export.opset,
            a.batch,
            a.warmup,
            a.repeats,
            a.threads,
        )
    )
    for p in points:
        pid = f"{p['method']}@{p['budget']:g}"
        sfile = out / "points" / pid / "speed.json"
        p["speed"] = None
        if timing is None:
            continue
        got = json.loads(sfile.read_text()) if sfile.is_file() else {}
        if got.get("settings") != bench_key:
            print(f"{pid}: timing ...", flush=True)
            t0 = time.perf_counter()
            got = {
                "settings": bench_key,
                "speed": timing(out / "points" / pid / "model.onnx", out / "baseline.onnx"),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            sfile.write_text(json.dumps(got, indent=1) + "\n")
        p["speed"] = got["speed"]
        p["seconds"] = p["seconds"] + got["seconds"]

    if setup.orig is None:
        setup.original(out / "baseline.onnx")
    orig_hits = (
        setup.M.nearest_prototype_predict(setup.orig[setup.feature], setup.protos) == np.asarray(setup.iset.eval_y)
    ).astype(np.float64)
    opt_versions = None
    if (out / "optimum" / "versions.txt").is_file():
        opt_versions = (out / "optimum" / "versions.txt").read_text().strip()
    table = rows(points, orig_hits)
    summary = {
        "split": setup.split(),
        "original_top1": float(orig_hits.mean()),
        "budgets": budgets,
        "methods": a.methods,
        "rows": table,
        "headline": headline(table),
        "environment": environment(),
        "threads": a.threads,
        "repeats": a.repeats,
        "optimum_versions": opt_versions,
        "wall_seconds": sum(p["seconds"] for p in points),  # every point's own time, resumed runs included
        "this_run_seconds": round(time.perf_counter() - started, 1),
        "command": "python scripts/bench_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    md = markdown(summary)
    (out / "frontier.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "frontier.md").write_text(md)
    plot(summary, out / "frontier.png")
    print(md)
    if a.update_readme:
        update_readme(a.readme, md, summary["command"], out / "frontier.png")
        print(f"updated {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
