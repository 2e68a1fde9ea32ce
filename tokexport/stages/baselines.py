"""Honest baselines inside every token-reduction report: the method against seeded random keep (drawn
per image, several seeds) and a 2-D uniform lattice at the same budget, on the same evaluation data, in
the same run — and the method's margin over the best baseline with a paired bootstrap confidence
interval.

A task computes, for each metric it compares, one value per evaluation sample (a cosine, a 0/1 hit)
for the method and for every baseline draw; :func:`baselines_section` turns them into the report's
``baselines`` section:

```
baselines:
  budget: {...}                      # what was held equal (kept tokens per stage, K, FLOPs)
  data: {split, samples}             # the samples every figure below rests on
  method: {name, metrics: {m: value}}
  baselines: {random: {description, seeds: [..], metrics: {m: {mean, sd, values, per_sample}}},
              uniform: {description, metrics: {m: {mean, sd: 0.0, values: [v], per_sample}}}}
  margins: {m: {better, best_baseline, margin, ci: [lo, hi], level, resamples}}
  gate: null | {min_margin, bound, metrics, passed, failures}
```

The margin is signed so that positive means the method is better (``better: lower`` metrics flip it).
The interval resamples evaluation samples with replacement (paired: the same resample for method and
baseline; the random baseline's per-sample value is its mean over seeds), so it reflects how much the
verdict depends on which images were drawn. A recipe gates on it with ``verify.vs_baselines``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
MIN_RANDOM_SEEDS = 5


@dataclass
class BaselineRun:
    """One baseline's per-sample values: ``per_sample[metric]`` is one array per draw (seed); a
    deterministic baseline (uniform) has one draw. A run read back from an earlier report
    (:func:`runs_from_section`) has no draws but that report's ``summaries`` (mean, sd, per-draw values and
    per-sample values), which give the same section figure for figure."""

    name: str
    description: str
    per_sample: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seeds: list[int] | None = None
    summaries: dict[str, dict] | None = None

    def metrics(self) -> list[str]:
        return list(self.summaries) if self.summaries is not None else [m for m, d in self.per_sample.items() if d]

    def summary(self, metric: str) -> dict:
        return self.summaries[metric] if self.summaries is not None else _summary(self.per_sample[metric])

    def sample_means(self, metric: str) -> np.ndarray:
        """One value per sample: the mean over the draws (what the paired bootstrap resamples)."""
        if self.summaries is not None:
            return np.asarray(self.summaries[metric]["per_sample"], dtype=np.float64)
        return np.mean(np.stack([np.asarray(d, dtype=np.float64) for d in self.per_sample[metric]]), axis=0)


def runs_from_section(section: Mapping, metrics: Sequence[str], where: str = "baselines") -> list[BaselineRun]:
    """The baseline runs of an earlier report's ``baselines`` section (``metrics`` of each), to judge another
    method against the very same draws without computing them again. Raises ``ValueError`` naming the field
    when the section lacks what that needs (a report written before per-sample values were recorded)."""
    runs = []
    for name, entry in section["baselines"].items():
        summaries = {}
        for m in metrics:
            s = (entry.get("metrics") or {}).get(m)
            if not s or "per_sample" not in s:
                raise ValueError(
                    f"{where}.baselines.{name}.metrics.{m}.per_sample: not in the report (written by a "
                    "tokexport that did not record per-sample baseline values); convert it again"
                )
            summaries[m] = {
                "mean": float(s["mean"]),
                "sd": float(s["sd"]),
                "values": [float(v) for v in s["values"]],
                "per_sample": [float(v) for v in s["per_sample"]],
            }
        runs.append(BaselineRun(name, entry["description"], seeds=entry.get("seeds"), summaries=summaries))
    return runs


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of ``mean(a) - mean(b)`` over paired resamples of the samples."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_bootstrap_ci: need two equal-length 1-D arrays, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(int(resamples), d.size))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _summary(draws: Sequence[np.ndarray]) -> dict:
    values = [float(np.mean(d)) for d in draws]
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    per_sample = np.mean(np.stack([np.asarray(d, dtype=np.float64) for d in draws]), axis=0)
    return {"mean": float(np.mean(values)), "sd": sd, "values": values, "per_sample": [float(v) for v in per_sample]}


def _check_lengths(method: Mapping[str, np.ndarray], runs: Sequence[BaselineRun]) -> None:
    for name, v in method.items():
        n = np.asarray(v).shape[0]
        for run in runs:
            if name not in run.metrics():
                continue
            draws = [run.sample_means(name)] if run.summaries is not None else run.per_sample[name]
            for d in draws:
                if np.asarray(d).shape[0] != n:
                    raise ValueError(
                        f"baseline {run.name}: metric {name} has {np.asarray(d).shape[0]} samples, the method {n}"
                    )


def baselines_section(
    method_name: str,
    method: Mapping[str, np.ndarray],
    runs: Sequence[BaselineRun],
    better: Mapping[str, str],
    budget: dict,
    data: dict,
    gate=None,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict:
    """The report's ``baselines`` section (see the module docstring). ``method[m]`` holds the method's
    per-sample values of metric ``m``; ``gate`` is the recipe's ``verify.vs_baselines`` (or None)."""
    _check_lengths(method, runs)
    for run in runs:
        if run.seeds is not None and len(run.seeds) < MIN_RANDOM_SEEDS:
            raise ValueError(f"baseline {run.name}: {len(run.seeds)} seeds; at least {MIN_RANDOM_SEEDS} are needed")
    out_runs = {}
    for run in runs:
        entry = {"description": run.description, "metrics": {m: run.summary(m) for m in run.metrics() if m in method}}
        if run.seeds is not None:
            entry["seeds"] = list(run.seeds)
        out_runs[run.name] = entry
    margins = {}
    for m, values in method.items():
        sign = 1.0 if better.get(m, "higher") == "higher" else -1.0
        candidates = [r for r in runs if m in r.metrics()]
        if not candidates:
            continue
        best = max(candidates, key=lambda r: sign * out_runs[r.name]["metrics"][m]["mean"])
        best_per_sample = best.sample_means(m)
        mv = np.asarray(values, dtype=np.float64)
        lo, hi = paired_bootstrap_ci(sign * mv, sign * best_per_sample, resamples, level, seed)
        margins[m] = {
            "better": better.get(m, "higher"),
            "best_baseline": best.name,
            "method": float(mv.mean()),
            "baseline": float(best_per_sample.mean()),
            "margin": float(sign * (mv.mean() - best_per_sample.mean())),
            "ci": [lo, hi],
            "level": level,
            "resamples": int(resamples),
        }
    return {
        "budget": budget,
        "data": data,
        "method": {"name": method_name, "metrics": {m: float(np.mean(v)) for m, v in method.items()}},
        "baselines": out_runs,
        "margins": margins,
        "gate": judge_gate(margins, gate),
    }


def judge_gate(margins: Mapping[str, dict], gate) -> dict | None:
    """``verify.vs_baselines`` applied to the margins: every gated metric's margin (its CI's lower
    bound by default) must be at least ``min_margin``."""
    if gate is None:
        return None
    g = gate.model_dump() if hasattr(gate, "model_dump") else dict(gate)
    names = list(g.get("metrics") or margins)
    bound = g.get("bound", "ci_low")
    failures = []
    for name in names:
        m = margins.get(name)
        if m is None:
            failures.append(
                f"vs_baselines: metric {name} has no baseline margin (measured: {', '.join(margins) or 'none'})"
            )
            continue
        value = m["ci"][0] if bound == "ci_low" else m["margin"]
        if not math.isfinite(value) or value < g["min_margin"] - 1e-12:
            what = f"{int(m['level'] * 100)}% CI lower bound" if bound == "ci_low" else "margin"
            failures.append(
                f"vs_baselines: {name} {what} {value:+.4g} over {m['best_baseline']} is below "
                f"min_margin {g['min_margin']:+g}"
            )
    return {
        "min_margin": float(g["min_margin"]),
        "bound": bound,
        "metrics": names,
        "passed": not failures,
        "failures": failures,
    }


def gate_failures(section: Mapping | None) -> list[str]:
    gate = (section or {}).get("gate")
    return list(gate["failures"]) if gate else []
