"""Checks against the original: ONNX vs PyTorch parity, and reduced vs original accuracy on real data."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .recipe import Threshold
from .runners import run_batched


def parity(onnx_runner, torch_runner, x: np.ndarray, atol: float, mean_atol: float) -> dict:
    """Compare every output of the ONNX graph with PyTorch on the same inputs."""
    got = run_batched(onnx_runner, x)
    ref = run_batched(torch_runner, x)
    outputs, ok = {}, True
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
        diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
        entry = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
        if name == "logits":
            entry["top1_agreement"] = M.top1_agreement(g, r)
        entry["passed"] = bool(entry["max_abs_diff"] <= atol and entry["mean_abs_diff"] <= mean_atol)
        ok &= entry["passed"]
        outputs[name] = entry
    worst_max = max((o.get("max_abs_diff", float("inf")) for o in outputs.values()), default=0.0)
    worst_mean = max((o.get("mean_abs_diff", float("inf")) for o in outputs.values()), default=0.0)
    return {"max_abs_diff": worst_max, "mean_abs_diff": worst_mean, "atol": atol, "mean_atol": mean_atol,
            "samples": int(len(x)), "outputs": outputs, "passed": bool(ok)}


@dataclass
class Metric:
    original: float
    reduced: float
    threshold: Threshold | None

    def as_dict(self) -> dict:
        passed = None
        if self.threshold is not None:
            passed = True
            if self.threshold.min is not None:
                passed &= self.reduced >= self.threshold.min
            if self.threshold.max_drop is not None:
                passed &= (self.original - self.reduced) <= self.threshold.max_drop + 1e-12
        return {"original": self.original, "reduced": self.reduced, "delta": self.reduced - self.original,
                "threshold": self.threshold.model_dump(exclude_none=True) if self.threshold else None,
                "passed": None if passed is None else bool(passed)}


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
