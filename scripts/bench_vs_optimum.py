#!/usr/bin/env python3
"""tokexport's shipped graphs against Optimum's ONNX export of the same checkpoint, on ONNX Runtime (CPU).

What a user gains is the ratio to what they would ship otherwise — Optimum's own export
(`optimum-cli export onnx`, opset 17) — not the ratio to tokexport's own baseline. This script:

1. takes a convert output (``--graphs DIR`` with model.onnx and baseline.onnx) or converts ``--recipe``
   (default: the default recipe) into ``OUT/convert``;
2. exports ``--model`` (default: the bundled DINOv2-S) with Optimum into ``OUT/optimum``. Optimum's ONNX
   exporter needs transformers < 4.58 (tokexport needs transformers 5), so it runs in a separate venv,
   ``--optimum-venv`` (default ``$XDG_CACHE_HOME/tokexport/optimum-venv``, i.e. ~/.cache/...), created on
   first use with pip: torch pinned as in constraints.txt, "transformers>=4.36,<4.58", "optimum-onnx<0.2", pillow,
   onnx, onnxruntime. It is a cache outside OUT; delete it to rebuild;
3. checks Optimum's graph computes what baseline.onnx computes (same checkpoint, same inputs);
4. times the three graphs interleaved (each repeat runs every graph once, in rotating order) on the same
   inputs, ONNX Runtime CPUExecutionProvider, ``--threads`` intra-op threads, at each ``--batch``;
5. writes OUT/bench_vs_optimum.md (table) and OUT/bench_vs_optimum.json.

    .venv/bin/python scripts/bench_vs_optimum.py --out /tmp/vs-optimum [--graphs /tmp/zt] [--repeats 30]

OUT must not exist or be empty (``--force`` replaces a previous run's files). Latencies on a shared
machine are noisy; the ratios are measured side by side, interleaved, which keeps them comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "dinov2-small-zero-tprune.yaml"
OPTIMUM_REQS = ["transformers>=4.36,<4.58", "optimum-onnx>=0.1,<0.2", "onnx>=1.16", "onnxruntime>=1.18", "pillow>=10"]


def fail(msg: str, code: int = 2) -> None:
    print(f"bench_vs_optimum: {msg}", file=sys.stderr)
    sys.exit(code)


def default_venv() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tokexport" / "optimum-venv"


def ensure_venv(venv: Path) -> Path:
    """The venv's python, with Optimum's exporter importable; created (pip) when missing."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import optimum.exporters.onnx, transformers, PIL; print(transformers.__version__)"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"creating the Optimum venv in {venv} (pip; a few minutes once) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    torch_pin = next(
        (ln.strip() for ln in (REPO / "constraints.txt").read_text().splitlines() if ln.startswith("torch==")), "torch"
    )
    for args in ([torch_pin], OPTIMUM_REQS):
        r = subprocess.run([*pip, *args])
        if r.returncode:
            fail(f"pip could not install {args} into {venv}; fix the network/index and re-run (or delete {venv})", 5)
    if subprocess.run(probe, capture_output=True).returncode:
        fail(f"{venv}: optimum.exporters.onnx still does not import; delete the folder and re-run", 5)
    return py


def optimum_export(py: Path, model: Path, dest: Path, opset: int) -> tuple[Path, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = py.parent / "optimum-cli"
    cmd = [
        str(cli),
        "export",
        "onnx",
        "--model",
        str(model),
        "--task",
        "feature-extraction",
        "--opset",
        str(opset),
        str(dest),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode or not (dest / "model.onnx").is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        fail(f"optimum-cli export failed ({' '.join(cmd)}): {' | '.join(tail)}", 1)
    vers = subprocess.run(
        [
            str(py),
            "-c",
            "import transformers, optimum.version as o, torch; "
            "print(f'transformers {transformers.__version__}, optimum {o.__version__}, torch {torch.__version__}')",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return dest / "model.onnx", vers


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="where the table, the JSON and Optimum's export go")
    ap.add_argument(
        "--graphs",
        type=Path,
        help="a `tokexport convert` output (model.onnx, baseline.onnx); default: convert --recipe into OUT/convert",
    )
    ap.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    ap.add_argument(
        "--model", type=Path, default=REPO / "models" / "dinov2-small", help="the checkpoint folder Optimum exports"
    )
    ap.add_argument("--optimum-venv", type=Path, default=default_venv())
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="more graphs timed in the same interleaved run (e.g. unfolded=/tmp/raw/model.onnx, an export.fold: false output)",
    )
    ap.add_argument("--force", action="store_true", help="replace the files of a previous run in OUT")
    a = ap.parse_args(argv)

    out = a.out.resolve()
    if out.exists() and any(out.iterdir()) and not a.force:
        fail(f"--out {out} exists and is not empty; name a new folder or pass --force")
    if not (a.model / "config.json").is_file():
        fail(f"--model {a.model}: no config.json (fetch it: tokexport models fetch dinov2-small)")
    if a.repeats < 1 or a.warmup < 0 or a.threads < 1 or any(b < 1 for b in a.batch):
        fail("--repeats, --threads and --batch must be >= 1, --warmup >= 0")
    venv = a.optimum_venv.resolve()
    if venv == out or out in venv.parents:
        fail(f"--optimum-venv {venv} must lie outside --out (it is a cache kept between runs)")
    if a.force and out.exists():
        for name in ("optimum", "convert", "bench_vs_optimum.md", "bench_vs_optimum.json"):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    if a.graphs is None:
        a.graphs = out / "convert"
        print(f"converting {a.recipe} into {a.graphs} ...", flush=True)
        r = subprocess.run([sys.executable, "-m", "tokexport", "convert", str(a.recipe), "--out", str(a.graphs)])
        if r.returncode:
            fail(f"tokexport convert {a.recipe} failed (exit {r.returncode})", r.returncode)
    graphs = {"model.onnx": a.graphs / "model.onnx", "baseline.onnx": a.graphs / "baseline.onnx"}
    for name, p in graphs.items():
        if not p.is_file():
            fail(f"--graphs {a.graphs}: no {name}")

    extra = {}
    for item in a.extra:
        name, _, path = item.partition("=")
        if not name or not path or not Path(path).is_file() or name in ("optimum", *graphs):
            fail(
                f"--extra {item!r}: give NAME=PATH of an existing .onnx file, NAME not optimum/model.onnx/baseline.onnx"
            )
        extra[name] = Path(path)
    py = ensure_venv(venv)
    print(f"exporting {a.model} with Optimum (opset {a.opset}) ...", flush=True)
    opt_path, opt_versions = optimum_export(py, a.model, out / "optimum", a.opset)
    graphs = {"optimum": opt_path, **graphs, **extra}

    import onnxruntime as ort

    sessions = {k: session(p, a.threads) for k, p in graphs.items()}
    shapes = {k: s.get_inputs()[0].shape for k, s in sessions.items()}
    size = next(int(d) for d in shapes["model.onnx"][2:] if isinstance(d, int))
    rng = np.random.default_rng(0)
    feeds = {b: rng.standard_normal((b, 3, size, size)).astype(np.float32) for b in a.batch}

    # same checkpoint: Optimum's graph and baseline.onnx compute the same features
    x = feeds[a.batch[0]]
    o_opt = dict(
        zip([o.name for o in sessions["optimum"].get_outputs()], sessions["optimum"].run(None, {"pixel_values": x}))
    )
    o_base = dict(
        zip(
            [o.name for o in sessions["baseline.onnx"].get_outputs()],
            sessions["baseline.onnx"].run(None, {"pixel_values": x}),
        )
    )
    agree = {
        k: float(np.abs(o_opt[k] - o_base[k]).max()) for k in o_base if k in o_opt and o_opt[k].shape == o_base[k].shape
    }
    if not agree or max(agree.values()) > 1e-2:
        fail(f"Optimum's export and baseline.onnx disagree ({agree}); not the same checkpoint?", 3)

    load_before = loadavg()
    results: dict[str, dict] = {}
    names = list(graphs)
    for b in a.batch:
        feed = {"pixel_values": feeds[b]}
        for _ in range(a.warmup):
            for k in names:
                sessions[k].run(None, feed)
        times = {k: [] for k in names}
        for r in range(a.repeats):
            order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no graph always runs first
            for k in order:
                t = time.perf_counter()
                sessions[k].run(None, feed)
                times[k].append((time.perf_counter() - t) * 1e3)
        results[str(b)] = {
            k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "min_ms": float(np.min(v))}
            for k, v in times.items()
        }
        med = results[str(b)]
        results[str(b)]["speedup_vs_optimum"] = {
            k: med["optimum"]["median_ms"] / med[k]["median_ms"] for k in names if k != "optimum"
        }
        print(f"batch {b}: " + ", ".join(f"{k} {med[k]['median_ms']:.1f} ms" for k in names), flush=True)
    load_after = loadavg()

    info = {k: {"path": str(p), "nodes": node_count(p), "bytes": p.stat().st_size} for k, p in graphs.items()}
    report = {
        "graphs": info,
        "optimum_export": {
            "command": f"optimum-cli export onnx --model {a.model} --task feature-extraction --opset {a.opset}",
            "versions": opt_versions,
            "venv": str(venv),
        },
        "optimum_vs_baseline_max_abs_diff": agree,
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "threads": a.threads,
        "warmup": a.warmup,
        "repeats": a.repeats,
        "interleaved": True,
        "input": f"N(0,1) pixel_values [b, 3, {size}, {size}], seed 0",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "batches": results,
    }
    (out / "bench_vs_optimum.json").write_text(json.dumps(report, indent=2) + "\n")
    extra_cols = [k for k in names if k not in ("optimum", "model.onnx", "baseline.onnx")]
    lines = [
        f"ONNX Runtime {ort.__version__} CPU, {a.threads} threads, median of {a.repeats} interleaved runs "
        f"(load average {load_before} → {load_after} on {os.cpu_count()} CPUs)",
        "",
        "| batch | Optimum ms | model.onnx ms | baseline.onnx ms | model.onnx vs Optimum | baseline.onnx vs Optimum |"
        + "".join(f" {k} ms | {k} vs Optimum |" for k in extra_cols),
        "|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(extra_cols),
    ]
    for b, r in results.items():
        s = r["speedup_vs_optimum"]
        lines.append(
            f"| {b} | {r['optimum']['median_ms']:.1f} | {r['model.onnx']['median_ms']:.1f} | "
            f"{r['baseline.onnx']['median_ms']:.1f} | {s['model.onnx']:.2f}× | {s['baseline.onnx']:.2f}× |"
            + "".join(f" {r[k]['median_ms']:.1f} | {s[k]:.2f}× |" for k in extra_cols)
        )
    lines += ["", "| graph | nodes | MB |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['nodes']} | {v['bytes'] / 1e6:.1f} |" for k, v in info.items()]
    (out / "bench_vs_optimum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
