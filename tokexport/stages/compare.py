"""The one output comparator: a graph's outputs (ONNX Runtime) against its reference (PyTorch) on the
same named inputs, every output, element by element.

Text graphs pass the padding ``mask`` ([N, seq]): outputs whose leading dimensions are [N, seq] are
compared at real positions only (padding is not part of the contract). Graphs that select tokens pass
per-sample decision ``margins`` (:mod:`tokexport.reduce.margins`): a sample that misses the tolerance
while one of its selections was decided by a relative score gap below ``tie_margin`` is a near-tie —
float32 rounding lets either runtime pick either side — reported and left out; parity still fails
when more than half the samples are near-ties."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Outputs = Mapping[str, np.ndarray]


def _per_sample(
    name: str, g: np.ndarray, r: np.ndarray, mask: np.ndarray | None, unmasked: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: max |g - r|, sum |g - r| and the number of compared elements."""
    n = g.shape[0]
    d = np.abs(g.astype(np.float64) - r.astype(np.float64))
    if mask is not None and name not in unmasked and d.ndim >= 2 and d.shape[:2] == mask.shape:
        m = mask.astype(bool).reshape(mask.shape + (1,) * (d.ndim - 2))
        m = np.broadcast_to(m, d.shape)
        d = np.where(m, d, 0.0)
        count = m.reshape(n, -1).sum(axis=1)
    else:
        count = np.full(n, d[0].size if n else 0)
    flat = d.reshape(n, -1)
    return (flat.max(axis=1) if flat.shape[1] else np.zeros(n)), flat.sum(axis=1), count


def parity(
    got: Outputs,
    ref: Outputs,
    atol: float,
    mean_atol: float,
    mask: np.ndarray | None = None,
    margins: Sequence[float] | None = None,
    tie_margin: float = 0.0,
    unmasked: Sequence[str] = (),
    agreement: Sequence[str] = ("logits",),
) -> dict:
    """Compare every output of ``ref`` with ``got``; the report section ``parity`` of every task."""
    n = len(next(iter(ref.values()))) if ref else 0
    outputs: dict[str, dict] = {}
    ok = True
    stats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            outputs[name] = {
                "error": f"shape {None if g is None else list(g.shape)} vs PyTorch {list(r.shape)}",
                "passed": False,
            }
            ok = False
            continue
        if np.issubdtype(g.dtype, np.floating) and not np.all(np.isfinite(g)):
            outputs[name] = {"error": "non-finite values in the ONNX output", "passed": False}
            ok = False
            continue
        stats[name] = _per_sample(name, g, r, mask, unmasked)
    ties: list[dict] = []
    if margins is not None and stats:
        for i in range(n):
            worst = max(float(s[0][i]) for s in stats.values())
            if worst > atol and margins[i] < tie_margin:
                ties.append({"sample": i, "margin": float(margins[i]), "max_abs_diff": worst})
    keep = np.ones(n, dtype=bool)
    keep[[t["sample"] for t in ties]] = False
    if ties and len(ties) * 2 > n:
        ok = False  # too few decisive samples for the comparison to mean anything
    for name, (mx, sm, cnt) in stats.items():
        total = int(cnt[keep].sum())
        entry = {
            "max_abs_diff": float(mx[keep].max()) if keep.any() else 0.0,
            "mean_abs_diff": float(sm[keep].sum() / total) if total else 0.0,
        }
        if name in agreement and ref[name].ndim >= 2 and keep.any():
            entry["top1_agreement"] = float(np.mean(np.argmax(got[name][keep], -1) == np.argmax(ref[name][keep], -1)))
        entry["passed"] = bool(entry["max_abs_diff"] <= atol and entry["mean_abs_diff"] <= mean_atol)
        ok &= entry["passed"]
        outputs[name] = entry
    worst_max = max((o.get("max_abs_diff", float("inf")) for o in outputs.values()), default=0.0)
    worst_mean = max((o.get("mean_abs_diff", float("inf")) for o in outputs.values()), default=0.0)
    out = {
        "max_abs_diff": worst_max,
        "mean_abs_diff": worst_mean,
        "atol": atol,
        "mean_atol": mean_atol,
        "samples": int(n),
        "outputs": outputs,
        "passed": bool(ok and outputs),
    }
    if margins is not None:
        out["tie_margin"] = tie_margin
        out["min_margin"] = float(min(margins)) if len(margins) else None
        out["near_ties"] = ties
        out["decisive_samples"] = int(n - len(ties))
    return out
