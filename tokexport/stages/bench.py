"""Side-by-side latency: baseline and reduced graphs in the same process, same runtime, alternating
run by run so drift (thermal, other load) hits both equally. Speed is reported as the ratio measured
here, never as milliseconds to compare across machines."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .runners import Feed, OrtRunner


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "min_ms": float(a.min())}


def compare_latency(
    baseline: Path,
    reduced: Path,
    feeds: Callable[[int], Mapping[str, Feed]],
    batch_sizes: list[int],
    warmup: int,
    repeats: int,
    threads: int | None,
    on_step: Callable[[], None] | None = None,
    provider: str = "cpu",
    provider_options: Mapping | None = None,
    runners: dict | None = None,
) -> dict:
    """``feeds(batch)`` → ``{"baseline": feed, "model": feed}`` (the same feed for graphs that read the
    same inputs). Returns, per batch size, median and p90 of each graph, the measured speed-up and
    throughput in samples per second. Both graphs run on ONNX Runtime's ``provider``
    (:func:`tokexport.stages.runners.provider_list`); ``runners`` replaces the two ONNX Runtime runners
    with any ``{"baseline": r, "model": r}`` of the runner contract (scripts/bench_gpu.py: TensorRT engines)."""
    if runners is None:
        runners = {
            "baseline": OrtRunner(baseline, threads, provider, provider_options),
            "model": OrtRunner(reduced, threads, provider, provider_options),
        }
    results = {}
    for b in batch_sizes:
        f = feeds(b)
        for k, r in runners.items():
            for _ in range(warmup):
                r.infer(f[k])
        times: dict[str, list[float]] = {k: [] for k in runners}
        for i in range(repeats):
            order = list(runners) if i % 2 == 0 else list(runners)[::-1]
            for k in order:
                t0 = time.perf_counter()
                runners[k].infer(f[k])
                times[k].append((time.perf_counter() - t0) * 1e3)
            if on_step:
                on_step()
        base, red = _stats(times["baseline"]), _stats(times["model"])
        results[str(b)] = {
            "baseline_ms": base["median_ms"],
            "reduced_ms": red["median_ms"],
            "baseline_p90_ms": base["p90_ms"],
            "reduced_p90_ms": red["p90_ms"],
            "speedup": base["median_ms"] / red["median_ms"],
            "baseline_samples_per_s": 1e3 * b / base["median_ms"],
            "reduced_samples_per_s": 1e3 * b / red["median_ms"],
            "repeats": repeats,
        }
    return results
