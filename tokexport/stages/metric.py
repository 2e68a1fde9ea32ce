"""The one metric contract every task's report uses.

A gated figure is ``{original, reduced, delta, better, threshold, passed}``: the unreduced model's
value, the reduced model's value, ``reduced - original``, which direction is better (``higher`` or
``lower``), the recipe's threshold (``null`` when the recipe sets none) and the verdict — ``passed``
is ``null`` whenever there is no threshold: a figure nobody set a bar for is never counted as passed.
A figure that only informs is ``{value, info: true}``. Extra keys (sample counts, notes, per-output
details) may ride along in either shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

Better = Literal["higher", "lower"]
THRESHOLD_KEYS = ("min", "max", "max_drop", "max_increase")


def _threshold_dict(threshold: Any) -> dict | None:
    if threshold is None:
        return None
    if hasattr(threshold, "model_dump"):
        threshold = threshold.model_dump(exclude_none=True)
    t = {k: float(v) for k, v in dict(threshold).items() if v is not None}
    unknown = set(t) - set(THRESHOLD_KEYS)
    if unknown:
        raise ValueError(f"unknown threshold keys {sorted(unknown)} (known: {', '.join(THRESHOLD_KEYS)})")
    return t or None


def judge(original: float, reduced: float, threshold: Mapping[str, float] | None) -> bool | None:
    """The verdict of one figure; None without a threshold; False for any non-finite value."""
    if not threshold:
        return None
    if not (math.isfinite(original) and math.isfinite(reduced)):
        return False
    eps = 1e-12
    ok = True
    if "min" in threshold:
        ok &= reduced >= threshold["min"] - eps
    if "max" in threshold:
        ok &= reduced <= threshold["max"] + eps
    if "max_drop" in threshold:
        ok &= (original - reduced) <= threshold["max_drop"] + eps
    if "max_increase" in threshold:
        ok &= (reduced - original) <= threshold["max_increase"] + eps
    return bool(ok)


def metric(original: float, reduced: float, threshold: Any = None, better: Better = "higher", **detail) -> dict:
    """A gated (or ungated, ``passed: null``) figure in the report contract."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    original, reduced = float(original), float(reduced)
    t = _threshold_dict(threshold)
    return {
        "original": original,
        "reduced": reduced,
        "delta": reduced - original,
        "better": better,
        "threshold": t,
        "passed": judge(original, reduced, t),
        **detail,
    }


def info(value: Any, **detail) -> dict:
    """A figure that gates nothing."""
    return {"value": value, "info": True, **detail}


def is_info(m: Mapping) -> bool:
    return bool(m.get("info"))


def accuracy_passed(metrics: Mapping[str, Mapping]) -> bool:
    """True when no gated metric failed and at least one gated metric passed: a report whose metrics
    all lack thresholds has verified nothing and does not pass."""
    verdicts = [m.get("passed") for m in metrics.values() if not is_info(m)]
    return bool(verdicts) and all(v is not False for v in verdicts) and any(v is True for v in verdicts)


def describe_threshold(t: Mapping[str, float] | None) -> str:
    if not t:
        return "—"
    words = {"min": ">= {:g}", "max": "<= {:g}", "max_drop": "drop <= {:g}", "max_increase": "increase <= {:g}"}
    return ", ".join(words[k].format(v) for k, v in t.items())


def failure_lines(metrics: Mapping[str, Mapping]) -> list[str]:
    """One line per failed metric."""
    out = []
    for name, m in metrics.items():
        if m.get("passed") is False:
            out.append(
                f"accuracy: {name} {m['reduced']:.6g} misses {describe_threshold(m.get('threshold'))} "
                f"(original {m['original']:.6g})"
            )
    return out
