"""Temperature scaling and ECE on synthetic logits whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.errors import DataError
from pneumo.evaluate.calibration import (
    apply_temperature,
    ece,
    fit_temperature,
    nll,
    p_pneumonia,
    reliability_data,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sample_labels(probs: np.ndarray, seed: int) -> np.ndarray:
    """One label per row drawn from that row's probabilities."""
    u = np.random.default_rng(seed).random((len(probs), 1))
    return (u > np.cumsum(probs, axis=1)).sum(axis=1)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_multiclass_temperature(true_t: float) -> None:
    z = np.random.default_rng(0).normal(0, 3, (6000, 3))
    y = sample_labels(softmax(z / true_t), seed=1)
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.08)


def test_fit_temperature_recovers_a_known_binary_temperature_from_one_logit_column() -> None:
    z = np.random.default_rng(2).normal(0, 4, 6000)
    y = (np.random.default_rng(3).random(6000) < 1 / (1 + np.exp(-z / 2.0))).astype(int)
    assert fit_temperature(z[:, None], y) == pytest.approx(2.0, rel=0.08)


def test_one_logit_and_two_logit_forms_fit_the_same_temperature() -> None:
    z = np.random.default_rng(4).normal(0, 3, 2000)
    y = (np.random.default_rng(5).random(2000) < 1 / (1 + np.exp(-z / 1.7))).astype(int)
    two = np.stack([np.zeros_like(z), z], axis=1)
    assert fit_temperature(z, y) == pytest.approx(fit_temperature(two, y), rel=1e-6)


def test_fitted_temperature_does_not_raise_validation_nll() -> None:
    z = np.random.default_rng(6).normal(0, 2, (500, 3))
    y = sample_labels(softmax(z / 0.6), seed=7)
    t = fit_temperature(z, y)
    assert nll(z, y, t) <= nll(z, y, 1.0)


def test_apply_temperature_gives_rows_that_sum_to_one_and_sigmoid_for_one_logit() -> None:
    z = np.array([-2.0, 0.0, 3.0])
    probs = apply_temperature(z, 2.0)
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[:, 1], 1 / (1 + np.exp(-z / 2.0)))
    np.testing.assert_allclose(p_pneumonia(z, 2.0), probs[:, 1])


def test_non_positive_temperature_raises_data_error() -> None:
    with pytest.raises(DataError):
        apply_temperature(np.zeros((2, 2)), 0.0)


def test_ece_of_perfectly_calibrated_synthetic_data_is_small() -> None:
    rng = np.random.default_rng(8)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert ece(p, y) < 0.02


def test_ece_of_overconfident_predictions_equals_the_confidence_gap() -> None:
    y = np.array([1] * 70 + [0] * 30)
    assert ece(np.full(100, 0.99), y) == pytest.approx(0.99 - 0.70)


def test_ece_of_one_column_binary_probabilities_equals_the_two_column_form() -> None:
    rng = np.random.default_rng(9)
    p = rng.random(300)
    y = rng.integers(0, 2, 300)
    assert ece(p, y) == pytest.approx(ece(np.stack([1 - p, p], axis=1), y))


def test_multiclass_ece_uses_top_label_confidence() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    y = np.array([0, 2])  # confidences 0.6 (right) and 0.7 (wrong), in different bins of 15
    assert ece(probs, y, n_bins=15) == pytest.approx((abs(1 - 0.6) + abs(0 - 0.7)) / 2)


def test_reliability_bins_count_every_image_and_agree_with_ece() -> None:
    rng = np.random.default_rng(10)
    probs = softmax(rng.normal(0, 2, (400, 3)))
    y = rng.integers(0, 3, 400)
    data = reliability_data(probs, y, n_bins=10)
    assert sum(data["count"]) == 400 and len(data["edges"]) == 11
    count, conf, acc = (np.array(data[k], dtype=float) for k in ("count", "confidence", "accuracy"))
    used = count > 0
    assert data["ece"] == pytest.approx(np.sum(count[used] * np.abs(acc[used] - conf[used])) / 400)
    assert data["ece"] == pytest.approx(ece(probs, y, n_bins=10))


def test_labels_out_of_range_raise_data_error() -> None:
    with pytest.raises(DataError):
        fit_temperature(np.zeros((3, 2)), [0, 1, 2])
