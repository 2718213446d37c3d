"""From logits to the numbers a user sees, once for every caller (torch-free, numpy only): class probabilities,
P(pneumonia), the mean probability of an ensemble and the 3-class decision. Evaluation, prediction, adaptation and
the service all import these, so a model's probability is the same number wherever it is shown.

Logits may be (N, K) with K >= 2 (softmax) or a single column / 1-D array of binary logits z, which is read as the
two logits ``[0, z]`` so that ``softmax([0, z] / T)[1] == sigmoid(z / T)``. Class 0 is normal in both tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pneumo.errors import DataError


def as_logit_matrix(logits: Sequence | np.ndarray) -> np.ndarray:
    """(N, K>=2) float64 logits; a 1-D array or a single column becomes ``[0, z]``."""
    z = np.asarray(logits, dtype=float)
    if z.ndim == 1 or (z.ndim == 2 and z.shape[1] == 1):
        z = z.reshape(-1, 1)
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    if z.ndim != 2:
        raise DataError(f"logits must be 1-D or (N, K), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise DataError("logits must be finite")
    return z


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits in their own dtype (the predictor's float32 stays float32)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(logits: Sequence | np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated class probabilities ``softmax(logits / T)`` in float64, shape (N, K) (K = 2 for one logit)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise DataError(f"temperature must be a positive number, got {temperature}")
    return softmax(as_logit_matrix(logits) / temperature)


def pneumonia_probability(probs: np.ndarray) -> np.ndarray:
    """``1 - P(normal)`` per row of (N, K) class probabilities, in their dtype."""
    return np.clip(1.0 - probs[:, 0], 0.0, 1.0)


def p_pneumonia(logits: Sequence | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``1 - P(normal)`` per image from logits; for one binary logit z, ``sigmoid(z / T)``."""
    return pneumonia_probability(apply_temperature(logits, temperature))


def log_mean_probability(per_member: list[np.ndarray]) -> np.ndarray:
    """An ensemble's logits: the log of its members' mean probability (whose softmax is that mean); one member: its
    own logits."""
    if len(per_member) == 1:
        return per_member[0]
    probs = [apply_temperature(z, 1.0) for z in per_member]
    return np.log(np.clip(np.mean(probs, axis=0), 1e-12, 1.0))


def predict_classes(probs: np.ndarray, threshold: float) -> np.ndarray:
    """The decision of every task: normal (0) when ``1 - P(normal) < threshold``, else the likeliest pneumonia class
    (1 for a binary model). Compared in float64: float32 scores against a float32 threshold (NumPy 2 rounds a Python
    float to the array's type) disagreed with ``p_pneumonia >= threshold`` within one float32 step (a library review)."""
    return np.where(pneumonia_probability(probs).astype(np.float64) < float(threshold), 0,
                    1 + np.argmax(probs[:, 1:], axis=1))


def threshold_on_calibrated_scale(threshold: float, temperature: float) -> float:
    """A binary model's threshold on raw P(pneumonia) expressed on the calibrated scale: ``sigmoid(logit(t) / T)``.
    Temperature scaling is monotone, so raw P >= t exactly when calibrated P >= this value: a calibrated probability
    and the verdict can never disagree when they are shown with it."""
    t = min(max(float(threshold), 1e-12), 1 - 1e-12)
    z = math.log(t / (1 - t)) / temperature
    return 1.0 / (1.0 + math.exp(-z))

