"""Pure-numpy agreement and accuracy metrics between a reduced/exported model and the original.

Conventions (all functions):

* Inputs are converted to float64 (labels to int64); results are Python floats or numpy arrays.
* Non-finite inputs (NaN, +/-inf) raise ``ValueError`` instead of producing NaN silently: a model
  emitting NaN must be reported as such by the caller, not averaged away.
* Zero vectors have no direction: a cosine involving a zero-norm row is defined as 0.0 (so it
  counts as "no agreement", never as NaN), and a zero-norm feature row in
  :func:`nearest_prototype_top1` is always counted as a miss (never as class 0).
* Ties in an argmax go to the lowest index (numpy's ``argmax``).
* Empty inputs raise ``ValueError`` (a mean over nothing has no value).
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _as_float(name: str, x, ndim: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name}: contains {bad} non-finite value(s) (NaN/inf)")
    return a


def _as_labels(name: str, y, n: int) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError(f"{name}: expected integer class labels")
    return a.astype(np.int64)


def _l2_normalize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows divided by their L2 norm; zero rows stay zero. Returns (normalized, nonzero mask)."""
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    nonzero = norms > _EPS
    return np.where(nonzero, a / np.where(nonzero, norms, 1.0), 0.0), nonzero[..., 0]


def cosine_rows(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two ``[M, D]`` arrays (any leading shape; last axis is D).

    Returns float64 ``[M]``. A row where either vector has zero norm gets 0.0.
    """
    a = _as_float("a", a)
    b = _as_float("b", b)
    if a.shape != b.shape:
        raise ValueError(f"cosine_rows: shapes differ, a {a.shape} vs b {b.shape}")
    if a.ndim < 1:
        raise ValueError("cosine_rows: expected arrays with a feature axis, got scalars")
    an, _ = _l2_normalize(a)
    bn, _ = _l2_normalize(b)
    return np.clip(np.sum(an * bn, axis=-1), -1.0, 1.0)


def mean_cosine(a, b) -> float:
    """Mean of :func:`cosine_rows` (zero rows count as 0.0)."""
    c = cosine_rows(a, b)
    if c.size == 0:
        raise ValueError("mean_cosine: no rows to compare")
    return float(np.mean(c))


def class_prototypes(features, labels, n_classes: int) -> np.ndarray:
    """Per-class prototype: mean of the L2-normalised features of that class, re-normalised.

    ``features`` ``[N, D]``, ``labels`` ``[N]`` in ``[0, n_classes)``. Returns float64 ``[C, D]``.
    A class with no features raises ``ValueError``. Zero-norm feature rows contribute nothing to
    the direction; a class whose mean is the zero vector gets a zero prototype (cosine 0.0 to
    everything).
    """
    f = _as_float("features", features, ndim=2)
    y = _as_labels("labels", labels, f.shape[0])
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 1:
        raise ValueError(f"n_classes={n_classes!r}: expected a positive integer")
    n_classes = int(n_classes)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels: values must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=n_classes)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"class_prototypes: classes {missing} have no features")
    fn, _ = _l2_normalize(f)
    sums = np.zeros((n_classes, f.shape[1]), dtype=np.float64)
    np.add.at(sums, y, fn)
    protos, _ = _l2_normalize(sums / counts[:, None])
    return protos


def nearest_prototype_predict(features, prototypes) -> np.ndarray:
    """Index of the cosine-nearest prototype per row; -1 for zero-norm feature rows."""
    f = _as_float("features", features, ndim=2)
    p = _as_float("prototypes", prototypes, ndim=2)
    if f.shape[1] != p.shape[1]:
        raise ValueError(f"feature dim {f.shape[1]} != prototype dim {p.shape[1]}")
    if p.shape[0] == 0:
        raise ValueError("prototypes: empty")
    fn, nonzero = _l2_normalize(f)
    pn, _ = _l2_normalize(p)
    pred = np.argmax(fn @ pn.T, axis=1).astype(np.int64)
    pred[~nonzero] = -1
    return pred


def nearest_prototype_top1(features, labels, prototypes) -> float:
    """Fraction of rows whose cosine-nearest prototype is their label (zero rows are misses)."""
    pred = nearest_prototype_predict(features, prototypes)
    y = _as_labels("labels", labels, pred.shape[0])
    if y.size == 0:
        raise ValueError("nearest_prototype_top1: no rows")
    return float(np.mean(pred == y))


def top1_agreement(logits_a, logits_b) -> float:
    """Fraction of rows where two ``[M, C]`` logit arrays have the same argmax."""
    a = _as_float("logits_a", logits_a, ndim=2)
    b = _as_float("logits_b", logits_b, ndim=2)
    if a.shape != b.shape:
        raise ValueError(f"top1_agreement: shapes differ, {a.shape} vs {b.shape}")
    if a.shape[0] == 0:
        raise ValueError("top1_agreement: no rows")
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def top1_accuracy(logits, labels) -> float:
    """Fraction of rows of ``[M, C]`` logits whose argmax equals the label."""
    a = _as_float("logits", logits, ndim=2)
    y = _as_labels("labels", labels, a.shape[0])
    if a.shape[0] == 0:
        raise ValueError("top1_accuracy: no rows")
    return float(np.mean(np.argmax(a, axis=1) == y))
