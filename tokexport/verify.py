"""Checks against the original: ONNX vs PyTorch parity, and reduced vs original accuracy on real data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .recipe import Threshold
from .runners import run_batched
from .stages.metric import metric as contract_metric


def parity(onnx_runner, torch_runner, x: np.ndarray, atol: float, mean_atol: float,
           margins: list[float] | None = None, tie_margin: float = 0.0) -> dict:
    """Compare every output of the ONNX graph with PyTorch on the same inputs.

    ``margins`` (one per sample, from :mod:`tokexport.reduce.margins`): the smallest relative gap of
    any discrete selection PyTorch made on that sample. A sample that misses the tolerances while its
    margin is below ``tie_margin`` is a near-tie: both runtimes are right to choose differently there
    (float32 rounding), so it is reported under ``near_ties`` and left out of the comparison. Parity
    still fails when more than half of the samples would have to be left out."""
    got = run_batched(onnx_runner, x)
    ref = run_batched(torch_runner, x)
    n = len(x)
    outputs, ok = {}, True
    diffs: dict[str, np.ndarray] = {}
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape:
            outputs[name] = {"error": f"shape {None if g is None else list(g.shape)} vs PyTorch {list(r.shape)}", "passed": False}
            ok = False
            continue
        if not np.all(np.isfinite(g)):
            outputs[name] = {"error": "non-finite values in ONNX output", "passed": False}
            ok = False
            continue
        diffs[name] = np.abs(g.astype(np.float64) - r.astype(np.float64)).reshape(n, -1)
    ties: list[dict] = []
    if margins is not None and diffs:
        for i in range(n):
            worst = {k: float(d[i].max()) for k, d in diffs.items()}
            misses = any(v > atol for v in worst.values())
            if misses and margins[i] < tie_margin:
                ties.append({"sample": i, "margin": float(margins[i]), "max_abs_diff": max(worst.values())})
    tie_rows = {t["sample"] for t in ties}
    keep = np.array([i not in tie_rows for i in range(n)])
    if ties and len(ties) * 2 > n:
        ok = False  # too few decisive samples for the comparison to mean anything
    for name, d in diffs.items():
        d = d[keep]
        entry = {"max_abs_diff": float(d.max()) if d.size else 0.0, "mean_abs_diff": float(d.mean()) if d.size else 0.0}
        if name == "logits":
            entry["top1_agreement"] = M.top1_agreement(got[name][keep], ref[name][keep])
        entry["passed"] = bool(entry["max_abs_diff"] <= atol and entry["mean_abs_diff"] <= mean_atol)
        ok &= entry["passed"]
        outputs[name] = entry
    worst_max = max((o.get("max_abs_diff", float("inf")) for o in outputs.values()), default=0.0)
    worst_mean = max((o.get("mean_abs_diff", float("inf")) for o in outputs.values()), default=0.0)
    out = {"max_abs_diff": worst_max, "mean_abs_diff": worst_mean, "atol": atol, "mean_atol": mean_atol,
           "samples": int(n), "outputs": outputs, "passed": bool(ok)}
    if margins is not None:
        out["tie_margin"] = tie_margin
        out["min_margin"] = float(min(margins)) if len(margins) else None
        out["near_ties"] = ties
        out["decisive_samples"] = int(n - len(ties))
    return out


@dataclass
class Metric:
    """A reduced-vs-original figure; ``as_dict`` gives the report contract (tokexport.stages.metric)."""

    original: float
    reduced: float
    threshold: Threshold | None
    better: str = "higher"

    def as_dict(self) -> dict:
        return contract_metric(self.original, self.reduced, self.threshold, self.better)


def feature_metrics(orig_eval: np.ndarray, red_eval: np.ndarray, orig_proto: np.ndarray, labels: np.ndarray,
                    proto_labels: np.ndarray, n_classes: int, thresholds: dict[str, Threshold]) -> dict[str, Metric]:
    """Pooled-feature cosine and nearest-prototype instance recognition (prototypes: ORIGINAL model)."""
    protos = M.class_prototypes(orig_proto, proto_labels, n_classes)
    return {
        "feature_cosine": Metric(1.0, M.mean_cosine(orig_eval, red_eval), thresholds.get("feature_cosine")),
        "instance_top1": Metric(M.nearest_prototype_top1(orig_eval, labels, protos),
                                M.nearest_prototype_top1(red_eval, labels, protos), thresholds.get("instance_top1")),
    }


def classifier_metrics(orig_logits: np.ndarray, red_logits: np.ndarray, thresholds: dict[str, Threshold]) -> dict[str, Metric]:
    return {"top1_agreement": Metric(1.0, M.top1_agreement(red_logits, orig_logits), thresholds.get("top1_agreement"))}


def labelled_metrics(orig_logits, red_logits, labels, thresholds) -> dict[str, Metric]:
    return {"imagefolder_top1": Metric(M.top1_accuracy(orig_logits, labels), M.top1_accuracy(red_logits, labels),
                                       thresholds.get("imagefolder_top1"))}
