"""Side-by-side latency: baseline and reduced graphs in the same process, same runtime, same inputs,
alternating run by run so drift (thermal, other load) hits both equally."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .runners import OrtRunner


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "min_ms": float(a.min()), "runs": len(ms)}


def compare_latency(baseline: Path, reduced: Path, make_input: Callable[[int], np.ndarray], batch_sizes: list[int],
                    warmup: int, repeats: int, threads: int | None, on_step: Callable[[], None] | None = None) -> dict:
    runners = {"baseline": OrtRunner(baseline, threads), "reduced": OrtRunner(reduced, threads)}
    results = {}
    for b in batch_sizes:
        feed = {"pixel_values": make_input(b)}
        for r in runners.values():
            for _ in range(warmup):
                r.infer(feed)
        times = {k: [] for k in runners}
        for i in range(repeats):
            order = list(runners) if i % 2 == 0 else list(runners)[::-1]
            for k in order:
                t0 = time.perf_counter()
                runners[k].infer(feed)
                times[k].append((time.perf_counter() - t0) * 1e3)
            if on_step:
                on_step()
        base, red = _stats(times["baseline"]), _stats(times["reduced"])
        results[str(b)] = {
            "baseline_ms": base["median_ms"], "reduced_ms": red["median_ms"],
            "baseline_p90_ms": base["p90_ms"], "reduced_p90_ms": red["p90_ms"],
            "speedup": base["median_ms"] / red["median_ms"],
            "baseline_images_per_s": 1e3 * b / base["median_ms"], "reduced_images_per_s": 1e3 * b / red["median_ms"],
            "repeats": repeats,
        }
    return results
