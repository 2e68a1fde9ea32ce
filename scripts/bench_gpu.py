#!/usr/bin/env python3
"""GPU benchmark of the shipped recipes: baseline.onnx vs model.onnx on ONNX Runtime's CUDA and
TensorRT execution providers, and as TensorRT engines through polygraphy when `tensorrt` imports;
fp32 and fp16 graphs; batch 1, 8 and 32; the two graphs interleaved run by run (the driver's
tokexport.stages.bench.compare_latency). Writes OUT/bench_gpu.md (a table) and OUT/bench_gpu.json.

    .venv/bin/python scripts/bench_gpu.py --out out/bench-gpu             # a CUDA machine, gpu extra
    .venv/bin/python scripts/bench_gpu.py --dry-run --out /tmp/bench-dry  # same code, CPU, tiny settings

Each recipe is converted once per precision into OUT/graphs/<recipe>-<precision>/ (bench and deploy
off; fp16 through `export.precision: fp16` when this tokexport has it, otherwise the fp16 rows are
skipped and say why). `--from DIR` benchmarks existing convert outputs instead. Inputs are seeded
arrays shaped like each graph's inputs (timing does not depend on the values of these graphs).
A provider ONNX Runtime does not offer here, or an engine path without TensorRT, gives rows marked
"skipped" with the reason; if nothing at all can run on a GPU, the script exits 5 with one line
(--dry-run runs CPUExecutionProvider instead). Exit 2 on bad arguments or an existing OUT without
--force.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokexport.errors import EnvironmentProblem, InputError, TokexportError

PRECISIONS = ("fp32", "fp16")
RUNTIMES = ("cuda", "tensorrt", "engine")  # ORT CUDA EP, ORT TensorRT EP, TensorRT engine (polygraphy)
MARKER = "bench_gpu.json"


def shipped_recipes() -> list[Path]:
    """Shipped recipes whose checkpoint is bundled (the LLaVA recipes need 7B checkpoints that are not)."""
    from tokexport.shipped import shipped_recipes as shipped
    from tokexport.zoo import BUNDLED

    out = []
    for _, p in shipped():
        import yaml

        d = yaml.safe_load(p.read_text())
        if isinstance(d, dict) and d.get("model") in BUNDLED:
            out.append(p)
    return out


def has_precision_field(recipe) -> bool:
    return "precision" in type(recipe.export).model_fields


def convert(path: Path, precision: str, dest: Path) -> tuple[Path | None, str]:
    """Convert ``path`` at ``precision`` into ``dest``; (dest, note) or (None, why it was skipped)."""
    from tokexport.recipe import load_recipe
    from tokexport.tasks.run import run

    recipe = load_recipe(path)
    if precision == "fp16" and not has_precision_field(recipe):
        return None, "skipped: this tokexport has no export.precision (fp16 graphs), so no fp16 graph to time"
    upd = {
        "bench": recipe.bench.model_copy(update={"enabled": False}),
        "deploy": recipe.deploy.model_copy(update={"bundle": False, "engines": False}),
    }
    if precision == "fp16":
        upd["export"] = recipe.export.model_copy(update={"precision": "fp16"})
    recipe = recipe.model_copy(update=upd)
    from tokexport.deploy import graph_precision

    res = run(recipe, path.resolve().parent, dest, force=True, label=str(path), protect=(path,))
    notes = [] if res.exit_code == 0 else [f"convert exit {res.exit_code} ({'; '.join(res.report['failures'])[:160]})"]
    if precision == "fp16" and graph_precision(dest / "model.onnx") != "fp16":
        notes.append("export.precision: fp16 wrote a graph without float16 weights or casts: these rows time fp32")
    return dest, "; ".join(notes)


class EngineRunner:
    """A TensorRT engine built from an ONNX graph through polygraphy, with the runner contract
    (``infer(feed) -> {name: array}``, ``fixed_batch``). Strongly typed on TensorRT >= 11 and for fp16
    graphs (tokexport.deploy); fp16 kernels allowed on older TensorRT for fp32 graphs only if asked."""

    def __init__(self, path: Path, batch: int, feed: dict, fp16: bool):
        import tensorrt as trt
        from polygraphy.backend.trt import (
            CreateConfig,
            EngineFromNetwork,
            NetworkFromOnnxPath,
            Profile,
            TrtRunner,
        )

        from tokexport.deploy import graph_precision

        strong = int(trt.__version__.split(".")[0]) >= 11 or graph_precision(path) == "fp16"
        profile = Profile()
        for name, arr in feed.items():
            profile.add(name, arr.shape, arr.shape, arr.shape)
        config = CreateConfig(fp16=fp16 and not strong, profiles=[profile])
        network = NetworkFromOnnxPath(str(path), strongly_typed=True if strong else None)
        self.runner = TrtRunner(EngineFromNetwork(network, config=config))
        self.runner.activate()
        self.fixed_batch = batch

    def infer(self, feed):
        return {k: np.asarray(v) for k, v in self.runner.infer(dict(feed)).items()}

    def close(self):
        self.runner.deactivate()


def feeds_for(graph: Path, batch: int) -> dict | None:
    """Seeded inputs for ``graph`` at ``batch``; None when its batch axis is fixed to another size."""
    from tokexport.deploy import sample_inputs
    from tokexport.onnx_tools import inspect_model

    info = inspect_model(graph)
    for i in info["inputs"]:
        b = (i["shape"] or [None])[0]
        if isinstance(b, int) and b != batch:
            return None
    return sample_inputs(info, batch=batch, seed=batch)


def time_pair(
    graphs: dict[str, Path], runtime: str, batch: int, warmup: int, repeats: int, threads: int | None
) -> dict:
    """One interleaved measurement of baseline vs model; the row fields (or a skip reason)."""
    from tokexport.stages.bench import compare_latency

    f_base, f_model = feeds_for(graphs["baseline"], batch), feeds_for(graphs["model"], batch)
    if f_base is None or f_model is None:
        return {"status": "skipped", "note": f"the graphs have a fixed batch other than {batch}"}
    feeds = {"baseline": f_base, "model": f_model}
    runners = None
    if runtime == "engine":
        from tokexport.deploy import tensorrt_problem

        problem = tensorrt_problem()
        if problem:
            return {"status": "skipped", "note": f"TensorRT engines: {problem}"}
        runners = {k: EngineRunner(graphs[k], batch, feeds[k], fp16=False) for k in ("baseline", "model")}
    provider = {"engine": "cpu"}.get(runtime, runtime)  # unused for engines (runners given)
    try:
        res = compare_latency(
            graphs["baseline"],
            graphs["model"],
            lambda b: feeds,
            [batch],
            warmup,
            repeats,
            threads,
            provider=provider,
            runners=runners,
        )[str(batch)]
    finally:
        for r in (runners or {}).values():
            r.close()
    return {"status": "ran", "note": "", **res}


def available_runtimes(wanted: list[str], dry_run: bool) -> tuple[list[str], dict[str, str]]:
    """(runtimes that can run here, {runtime: why not})."""
    from tokexport.deploy import tensorrt_problem
    from tokexport.stages.runners import preflight

    if dry_run:
        return ["cpu"], {}
    ok, why = [], {}
    for rt in wanted:
        try:
            if rt == "engine":
                problem = tensorrt_problem()
                if problem:
                    raise EnvironmentProblem(problem)
            else:
                preflight(rt)
            ok.append(rt)
        except TokexportError as e:
            why[rt] = str(e)
    return ok, why


def markdown(rows: list[dict], meta: dict) -> str:
    label = {"cpu": "ORT CPU EP", "cuda": "ORT CUDA EP", "tensorrt": "ORT TensorRT EP", "engine": "TensorRT engine"}
    lines = [
        (
            f"GPU benchmark ({meta['when']}, {meta['device']}; {meta['settings']}). Median of interleaved runs; "
            "speed-up = baseline ms / reduced ms measured in the same run."
        ),
        "",
        "| recipe | precision | runtime | batch | baseline ms | reduced ms | speed-up | reduced samples/s | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ran = r["status"] == "ran"
        cells = [
            r["recipe"],
            r["precision"],
            label.get(r["runtime"], r["runtime"]),
            str(r["batch"]),
            f"{r['baseline_ms']:.3f}" if ran else "—",
            f"{r['reduced_ms']:.3f}" if ran else "—",
            f"{r['speedup']:.2f}×" if ran else "—",
            f"{r['reduced_samples_per_s']:.1f}" if ran else "—",
            r["note"] or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def device_name(dry_run: bool) -> str:
    if dry_run:
        return f"dry run on {platform.processor() or platform.machine()} (CPUExecutionProvider)"
    exe = shutil.which("nvidia-smi")
    if exe:
        import subprocess

        r = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
    return "NVIDIA GPU (name unknown)"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Output folder (bench_gpu.md, bench_gpu.json, graphs/).")
    ap.add_argument(
        "--recipes",
        default=None,
        help="Comma-separated recipe files or shipped names (default: every "
        "shipped recipe whose checkpoint is bundled).",
    )
    ap.add_argument(
        "--from",
        dest="sources",
        default=None,
        help="Comma-separated `tokexport convert` output folders to time instead of converting (fp32).",
    )
    ap.add_argument("--batches", default=None, help="Comma-separated batch sizes (default 1,8,32; dry run 1,2).")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help="cuda,tensorrt,engine (ignored by --dry-run).")
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="fp32,fp16.")
    ap.add_argument("--repeats", type=int, default=None, help="Timed runs per graph (default 50; dry run 3).")
    ap.add_argument("--warmup", type=int, default=None, help="Untimed runs per graph first (default 10; dry run 1).")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (CPU part).")
    ap.add_argument("--dry-run", action="store_true", help="Same code on CPUExecutionProvider, tiny settings.")
    ap.add_argument("--force", action="store_true", help="Replace an OUT this script wrote before.")
    a = ap.parse_args(argv)

    def ints(text, flag):
        try:
            v = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"{flag}: {text!r} is not a comma-separated list of integers") from None
        if not v or any(x < 1 for x in v):
            raise InputError(f"{flag}: give positive integers")
        return v

    a.batches = ints(a.batches or ("1,2" if a.dry_run else "1,8,32"), "--batches")
    a.repeats = a.repeats if a.repeats is not None else (3 if a.dry_run else 50)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.dry_run else 10)
    if a.repeats < 1 or a.warmup < 0:
        raise InputError("--repeats must be >= 1 and --warmup >= 0")
    a.runtimes = [r.strip() for r in a.runtimes.split(",") if r.strip()]
    a.precisions = [p.strip() for p in a.precisions.split(",") if p.strip()]
    bad = [r for r in a.runtimes if r not in RUNTIMES] + [p for p in a.precisions if p not in PRECISIONS]
    if bad:
        raise InputError(
            f"unknown runtime or precision {bad[0]!r}; runtimes: {', '.join(RUNTIMES)}; "
            f"precisions: {', '.join(PRECISIONS)}"
        )
    if a.out.exists():
        if not a.force:
            raise InputError(f"{a.out}: already exists; pass --force to replace it")
        if not (a.out / MARKER).is_file():
            raise InputError(f"{a.out}: exists and was not written by this script (no {MARKER}); choose another --out")
    return a


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        from tokexport.cli.ui import resolve_recipe

        runtimes, why_not = available_runtimes(args.runtimes, args.dry_run)
        if not runtimes:
            raise EnvironmentProblem(
                "no GPU runtime can run here ("
                + "; ".join(f"{k}: {v}" for k, v in why_not.items())
                + "); run it on a CUDA machine with the gpu extra, or pass --dry-run"
            )
        if args.sources:
            jobs = [(Path(s).name, "fp32", Path(s)) for s in args.sources.split(",") if s.strip()]
            for _, _, d in jobs:
                if not ((d / "model.onnx").is_file() and (d / "baseline.onnx").is_file()):
                    raise InputError(f"{d}: no model.onnx and baseline.onnx inside; pass `tokexport convert` outputs")
            recipes = []
        else:
            recipes = (
                [resolve_recipe(Path(r.strip())) for r in args.recipes.split(",") if r.strip()]
                if args.recipes
                else shipped_recipes()
            )
            jobs = []
    except TokexportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "graphs").mkdir(parents=True)
    (args.out / MARKER).write_text("{}\n")  # marks the folder as this script's while it runs
    rows: list[dict] = []
    for path in recipes:
        for prec in args.precisions:
            dest = args.out / "graphs" / f"{path.stem}-{prec}"
            print(f"converting {path.stem} ({prec}) ...", flush=True)
            try:
                got, note = convert(path, prec, dest)
            except Exception as exc:  # noqa: BLE001 - one failed combination must not lose the rest of the table
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                got, note = (
                    None,
                    (
                        f"skipped: conversion ({'export.precision: fp16' if prec == 'fp16' else 'fp32'}) "
                        f"failed: {type(exc).__name__}: {why}"
                    ),
                )
            if got is None:
                rows += [
                    {
                        "recipe": path.stem,
                        "precision": prec,
                        "runtime": rt,
                        "batch": b,
                        "status": "skipped",
                        "note": note,
                    }
                    for rt in runtimes
                    for b in args.batches
                ]
                continue
            jobs.append((path.stem, prec, got, note))
    jobs = [j if len(j) == 4 else (*j, "") for j in jobs]
    for name, prec, folder, conv_note in jobs:
        graphs = {"baseline": folder / "baseline.onnx", "model": folder / "model.onnx"}
        for rt in runtimes:
            for b in args.batches:
                print(f"timing {name} {prec} {rt} batch {b} ...", flush=True)
                try:
                    r = time_pair(graphs, rt, b, args.warmup, args.repeats, args.threads)
                except TokexportError as e:
                    r = {"status": "skipped", "note": str(e)[:200]}
                note = "; ".join(x for x in (conv_note, r.pop("note", "")) if x)
                rows.append({"recipe": name, "precision": prec, "runtime": rt, "batch": b, **r, "note": note})
    rows += [
        {"recipe": "(all)", "precision": "-", "runtime": rt, "batch": "-", "status": "skipped", "note": why}
        for rt, why in why_not.items()
    ]
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device_name(args.dry_run),
        "settings": f"warmup {args.warmup}, repeats {args.repeats}, batches {args.batches}",
        "dry_run": args.dry_run,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "runtimes": runtimes,
        "unavailable": why_not,
    }
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    (args.out / "bench_gpu.md").write_text(markdown(rows, meta))
    tmp = args.out / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    os.replace(tmp, args.out / MARKER)
    print((args.out / "bench_gpu.md").read_text())
    print(f"wrote {args.out}/bench_gpu.md and {MARKER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
