"""Reduced vs original accuracy of the image tasks on real data, in the metric contract (parity lives in
:mod:`tokexport.stages.compare`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .recipe import Threshold
from .stages.metric import metric as contract_metric


@dataclass
class Metric:
    """A reduced-vs-original figure; ``as_dict`` gives the report contract (tokexport.stages.metric)."""

    original: float
    reduced: float
    threshold: Threshold | None
    better: str = "higher"

    def as_dict(self) -> dict:
        return contract_metric(self.original, self.reduced, self.threshold, self.better)


def feature_metrics(
    orig_eval: np.ndarray,
    red_eval: np.ndarray,
    orig_proto: np.ndarray,
    labels: np.ndarray,
    proto_labels: np.ndarray,
    n_classes: int,
    thresholds: dict[str, Threshold],
) -> dict[str, Metric]:
    """Pooled-feature cosine and nearest-prototype instance recognition (prototypes: ORIGINAL model)."""
    protos = M.class_prototypes(orig_proto, proto_labels, n_classes)
    return {
        "feature_cosine": Metric(1.0, M.mean_cosine(orig_eval, red_eval), thresholds.get("feature_cosine")),
        "instance_top1": Metric(
            M.nearest_prototype_top1(orig_eval, labels, protos),
            M.nearest_prototype_top1(red_eval, labels, protos),
            thresholds.get("instance_top1"),
        ),
    }


def classifier_metrics(
    orig_logits: np.ndarray, red_logits: np.ndarray, thresholds: dict[str, Threshold]
) -> dict[str, Metric]:
    return {"top1_agreement": Metric(1.0, M.top1_agreement(red_logits, orig_logits), thresholds.get("top1_agreement"))}


def labelled_metrics(orig_logits, red_logits, labels, thresholds) -> dict[str, Metric]:
    return {
        "imagefolder_top1": Metric(
            M.top1_accuracy(orig_logits, labels),
            M.top1_accuracy(red_logits, labels),
            thresholds.get("imagefolder_top1"),
        )
    }
