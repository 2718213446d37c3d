"""Temperature scaling (fitted on val by NLL) and expected calibration error with reliability-diagram data.

Logits may be (N, K) with K >= 2 (softmax) or a single column / 1-D array of binary logits z (see
`pneumo.models.scores`, where logits become probabilities for every caller; its ``apply_temperature`` and
``p_pneumonia`` are the names evaluation code uses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from pneumo.errors import DataError
from pneumo.models.scores import apply_temperature, as_logit_matrix, p_pneumonia

__all__ = ["apply_temperature", "as_logit_matrix", "ece", "fit_temperature", "nll", "p_pneumonia", "reliability_data"]

T_MIN, T_MAX = 0.05, 20.0


def _labels(y: Sequence[int] | np.ndarray, n: int, k: int) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.size != n:
        raise DataError(f"logits and labels differ in length: {n} vs {y.size}")
    if n and (not np.isin(y, np.arange(k)).all()):
        raise DataError(f"labels must be class indices in 0..{k - 1}")
    return y.astype(np.int64)


def nll(logits: Sequence | np.ndarray, y: Sequence[int] | np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(logits / temperature)``."""
    z = as_logit_matrix(logits)
    y = _labels(y, z.shape[0], z.shape[1])
    if y.size == 0:
        return math.nan
    return float(-log_softmax(z / temperature, axis=1)[np.arange(y.size), y].mean())


def fit_temperature(logits: Sequence | np.ndarray, y: Sequence[int] | np.ndarray) -> float:
    """The temperature T in [0.05, 20] that minimises the NLL of ``softmax(logits / T)`` (fit on val only).

    A bounded 1-D search over log T (the NLL is smooth and unimodal in practice).

    Args:
        logits: validation logits, (N, K) or binary 1-D.
        y: validation class indices.

    Returns:
        The fitted temperature (1.0 when there are no labels).
    """
    z = as_logit_matrix(logits)
    y = _labels(y, z.shape[0], z.shape[1])
    if y.size == 0:
        return 1.0
    rows = np.arange(y.size)

    def objective(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(objective, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                          options={"xatol": 1e-6})
    best = float(res.x)
    if objective(0.0) <= objective(best):  # keep T = 1 unless scaling actually helps
        best = 0.0
    return float(math.exp(best))


def _confidence(probs: Sequence | np.ndarray, y: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness. 1-D probs are P(class 1): the call is ``p >= 0.5``, confidence
    ``max(p, 1 - p)`` -- the same as the top label of the two-column ``[1 - p, p]``."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    if probs.ndim != 2:
        raise DataError(f"probabilities must be 1-D or (N, K), got shape {probs.shape}")
    y = _labels(y, probs.shape[0], probs.shape[1])
    called = np.argmax(probs, axis=1)
    if probs.shape[1] == 2:
        called = (probs[:, 1] >= 0.5).astype(np.int64)  # ties at 0.5 go to class 1, as the threshold rule does
    conf = probs[np.arange(y.size), called]
    return conf, (called == y).astype(float)


def reliability_data(probs: Sequence | np.ndarray, y: Sequence[int] | np.ndarray, n_bins: int = 15) -> dict:
    """Equal-width bins of top-label confidence over [0, 1], each bin ``(lo, hi]`` (the first includes 0).

    Returns:
        ``{"edges": [n_bins + 1], "count": [..], "confidence": [..], "accuracy": [..], "ece": float}``;
        empty bins have ``nan`` confidence / accuracy.
    """
    if n_bins < 1:
        raise DataError(f"n_bins must be at least 1, got {n_bins}")
    conf, correct = _confidence(probs, y)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, np.bincount(idx, weights=conf, minlength=n_bins) / count, np.nan)
        mean_acc = np.where(count > 0, np.bincount(idx, weights=correct, minlength=n_bins) / count, np.nan)
    gaps = np.where(count > 0, np.abs(mean_acc - mean_conf), 0.0)
    ece_value = float(np.sum(gaps * count) / count.sum()) if count.sum() else math.nan
    return {"edges": edges.tolist(), "count": count.astype(int).tolist(), "confidence": mean_conf.tolist(),
            "accuracy": mean_acc.tolist(), "ece": ece_value}


def ece(probs: Sequence | np.ndarray, y: Sequence[int] | np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: sum over equal-width confidence bins of ``|accuracy - confidence| * share``.

    Multiclass: top-label confidence. Binary (1-D P(pneumonia) or two columns): the confidence of the class called
    at p >= 0.5, i.e. ``max(p, 1 - p)`` -- not the operating threshold, which is a decision choice, not a belief.
    """
    return reliability_data(probs, y, n_bins)["ece"]
