from __future__ import annotations

import numpy as np
import pytest

from tokexport.metrics import (
    class_prototypes,
    cosine_rows,
    mean_cosine,
    nearest_prototype_predict,
    nearest_prototype_top1,
    top1_accuracy,
    top1_agreement,
)

# ---------------------------------------------------------------- cosine


def test_cosine_rows_known_values():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [4.0, 3.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [1.0, 0.0, -1.0, 24 / 25])
    assert mean_cosine(a, b) == pytest.approx((1 + 0 - 1 + 0.96) / 4)


def test_cosine_rows_scale_invariant_and_float32_ok():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 7)).astype(np.float32)
    np.testing.assert_allclose(cosine_rows(a, 3.5 * a), 1.0, atol=1e-6)
    assert mean_cosine(a, a) == pytest.approx(1.0)


def test_cosine_zero_rows_are_zero_not_nan():
    a = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    c = cosine_rows(a, b)
    assert not np.any(np.isnan(c))
    np.testing.assert_array_equal(c, [0.0, 0.0, 0.0])


def test_cosine_rejects_nonfinite_and_shape_mismatch():
    with pytest.raises(ValueError, match="non-finite"):
        cosine_rows(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        mean_cosine(np.array([[1.0, 1.0]]), np.array([[np.inf, 1.0]]))
    with pytest.raises(ValueError, match="shapes differ"):
        cosine_rows(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="no rows"):
        mean_cosine(np.ones((0, 3)), np.ones((0, 3)))


# ---------------------------------------------------------------- prototypes


def test_class_prototypes_mean_of_normalised():
    f = np.array([[10.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, -3.0], [0.0, 5.0]])
    y = np.array([0, 0, 1, 2, 2])
    p = class_prototypes(f, y, 3)
    s = np.sqrt(0.5)
    np.testing.assert_allclose(p[0], [s, s])  # scale of each row does not matter
    np.testing.assert_allclose(p[1], [0.0, 1.0])
    np.testing.assert_allclose(p[2], [0.0, 0.0])  # opposite directions cancel -> zero prototype
    assert not np.any(np.isnan(p))


def test_class_prototypes_zero_feature_contributes_nothing():
    f = np.array([[0.0, 0.0], [0.0, 4.0]])
    p = class_prototypes(f, [0, 0], 1)
    np.testing.assert_allclose(p, [[0.0, 1.0]])


def test_class_prototypes_errors():
    f = np.eye(3)
    with pytest.raises(ValueError, match=r"classes \[1\] have no features"):
        class_prototypes(f, [0, 2, 2], 3)
    with pytest.raises(ValueError, match="labels"):
        class_prototypes(f, [0, 1, 3], 3)
    with pytest.raises(ValueError, match="labels"):
        class_prototypes(f, [0, 1], 3)
    with pytest.raises(ValueError, match="non-finite"):
        class_prototypes(np.array([[np.nan, 0.0]]), [0], 1)


# ---------------------------------------------------------------- nearest prototype


def test_nearest_prototype_features_equal_prototypes():
    rng = np.random.default_rng(1)
    protos = rng.normal(size=(5, 16))
    labels = np.arange(5)
    assert nearest_prototype_top1(protos, labels, protos) == 1.0
    assert nearest_prototype_top1(protos * 7.0, labels, class_prototypes(protos, labels, 5)) == 1.0


def test_nearest_prototype_permutation_known_fraction():
    protos = np.eye(4)
    feats = protos[[1, 0, 2, 3]]  # first two rows swapped
    assert nearest_prototype_top1(feats, np.arange(4), protos) == 0.5
    np.testing.assert_array_equal(nearest_prototype_predict(feats, protos), [1, 0, 2, 3])


def test_nearest_prototype_zero_feature_is_a_miss():
    protos = np.eye(2)
    feats = np.array([[0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(nearest_prototype_predict(feats, protos), [-1, 1])
    # label 0 on the zero row would be "correct" under a naive argmax; here it counts as a miss
    assert nearest_prototype_top1(feats, [0, 1], protos) == 0.5


def test_nearest_prototype_errors():
    with pytest.raises(ValueError, match="dim"):
        nearest_prototype_top1(np.ones((2, 3)), [0, 1], np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        nearest_prototype_top1(np.array([[np.nan, 1.0]]), [0], np.eye(2))


# ---------------------------------------------------------------- logits


def test_top1_agreement_and_accuracy():
    a = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    b = np.array([[0.0, 2.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 9.0], [5.0, 1.0, 1.0]])
    assert top1_agreement(a, b) == 0.75
    assert top1_agreement(a, a) == 1.0
    assert top1_accuracy(a, [1, 0, 2, 0]) == 1.0
    assert top1_accuracy(a, [1, 1, 1, 1]) == 0.25


def test_logit_metrics_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        top1_agreement(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        top1_agreement(np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="labels"):
        top1_accuracy(np.ones((2, 3)), [0, 1, 2])
    with pytest.raises(ValueError, match="no rows"):
        top1_accuracy(np.ones((0, 3)), [])
