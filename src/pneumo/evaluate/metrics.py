"""Binary and 3-class metrics, the validation-chosen operating threshold, and their CIs (`pneumo.evaluate.intervals`):
exact (Clopper-Pearson) intervals for proportions (accuracy, sensitivity, specificity, precision), a vectorized BCa
bootstrap for the rest (ROC-AUC, PR-AUC, F1, counts; the percentile interval under-covered,
`bench/sim_auc_coverage.py`), whole patients where they are known, left out (nan, shown as "CI n/a") below
`MIN_IMAGES` images or `MIN_PER_CLASS` per class and wherever the bootstrap collapses to zero width: a zero-width
interval is never shown as certainty.

Conventions: label 1 / ``p`` is pneumonia; an image is called positive when ``p >= threshold``. Undefined metrics
(a class absent, nothing predicted positive) are ``nan``, never an exception or a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.intervals import (
    bca_ci,
    clustered_interval,
    exact_interval,
    jackknife_weights,
    ratio,
    resample_weights,
    weighted_auc,
)
from pneumo.models.scores import pneumonia_probability, predict_classes
from pneumo.policy import (  # noqa: F401 - re-exported
    MIN_IMAGES,
    MIN_PER_CLASS,
    POLICY_ALIASES,
    STANDARD_POLICIES,
    is_small_sample,
    parse_policy,
)

BINARY_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")
CELL_KEYS = ("tp", "fp", "tn", "fn")
SCORE_MARGIN = 1e-5  # below a val score a threshold is set at: ONNX Runtime and PyTorch score an image ~1e-7 apart


def check_binary(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels in {0, 1} and finite probabilities in [0, 1] of the same length.

    Returns:
        ``(y as int64, p as float64)``.
    """
    y_arr, p_arr = np.asarray(y).reshape(-1), np.asarray(p, dtype=float).reshape(-1)
    if y_arr.shape != p_arr.shape:
        raise DataError(f"labels and probabilities differ in length: {y_arr.size} vs {p_arr.size}")
    if y_arr.size and not np.isin(y_arr, (0, 1)).all():
        raise DataError("binary labels must be 0 (normal) or 1 (pneumonia)")
    if not np.isfinite(p_arr).all() or (p_arr.size and (p_arr.min() < 0 or p_arr.max() > 1)):
        raise DataError("probabilities must be finite and within [0, 1]")
    return y_arr.astype(np.int64), p_arr


def choose_threshold(y_val: Sequence[int] | np.ndarray, p_val: Sequence[float] | np.ndarray, policy: str) -> float:
    """The operating threshold chosen on validation data (never on test).

    Every threshold in ``(s_{j-1}, s_j]`` (adjacent distinct scores) makes the same calls. ``youden`` maximises
    sensitivity + specificity - 1, reached on intervals: the midpoint of the widest (ties go to the higher one).
    ``sensitivity:X``: the highest threshold whose val sensitivity is >= X, the score s_k of the ceil(X * P)-th
    highest-scored positive, less `SCORE_MARGIN` (less half the gap to the next lower score where that is smaller):
    at s_k itself that image would be called by a margin of 0, and backends score it ~1e-7 apart.

    Args:
        y_val, p_val: validation labels (1 = pneumonia) and probabilities of pneumonia.
        policy: ``"youden"``, ``"sensitivity:X"`` or ``"triage"``.

    Returns:
        A finite threshold in [0, 1]; an image is positive when ``p >= threshold``.
    """
    kind, target = parse_policy(policy)
    y, p = check_binary(y_val, p_val)
    if np.unique(y).size < 2:
        raise DataError("validation labels hold a single class: cannot choose a threshold")
    if kind == "sensitivity":
        positives = np.sort(p[y == 1])[::-1]
        k = max(1, math.ceil(target * positives.size - 1e-9))
        hi = positives[k - 1]
        below = p[p < hi]
        return max(_midpoint(below.max() if below.size else 0.0, hi), float(hi) - SCORE_MARGIN)
    return _youden_threshold(y, p)


def _midpoint(lo: float, hi: float) -> float:
    """The middle of the thresholds ``(lo, hi]`` that make the same calls; ``hi`` where float rounding leaves none."""
    threshold = (lo + hi) / 2.0
    return float(np.clip(threshold if lo < threshold <= hi else hi, 0.0, 1.0))


def _youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    scores, inverse = np.unique(p, return_inverse=True)  # ascending distinct scores s_1 < ... < s_k
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    pos_at = np.bincount(inverse, weights=y, minlength=scores.size)
    neg_at = np.bincount(inverse, weights=1 - y, minlength=scores.size)
    tp = np.cumsum(pos_at[::-1])[::-1]  # positives with p >= s_j
    fp = np.cumsum(neg_at[::-1])[::-1]
    youden_scaled = (tp * n_neg - fp * n_pos).round().astype(np.int64)  # J * P * N, exact in integers
    best = np.flatnonzero(youden_scaled == youden_scaled.max())
    lower_edges = np.concatenate(([min(0.0, scores[0])], scores[:-1]))
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    widths = [scores[r[-1]] - lower_edges[r[0]] for r in runs]
    run = runs[max(range(len(runs)), key=lambda i: (widths[i], i))]
    return _midpoint(lower_edges[run[0]], scores[run[-1]])


def _counts_metrics(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    n = tp + fp + tn + fn
    return {
        "accuracy": ratio(tp + tn, n),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def binary_metrics(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, threshold: float) -> dict:
    """Accuracy, sensitivity, specificity, precision, F1, ROC-AUC, PR-AUC (average precision) and the confusion cells.

    Args:
        y: labels, 1 = pneumonia.
        p: probabilities of pneumonia.
        threshold: positive when ``p >= threshold``.

    Returns:
        Plain floats (``nan`` where undefined) and ints ``tp, fp, tn, fn, n``.
    """
    y, p = check_binary(y, p)
    pred = p >= threshold
    cells = {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
    }
    out = {k: float(v) for k, v in _counts_metrics(*(np.asarray(cells[c]) for c in CELL_KEYS)).items()}
    both = np.unique(y).size == 2
    out["roc_auc"] = float(roc_auc_score(y, p)) if both else math.nan
    out["pr_auc"] = float(average_precision_score(y, p)) if both else math.nan
    return {**out, **cells, "n": int(y.size)}


def bootstrap_cis(
    y: Sequence[int] | np.ndarray,
    p: Sequence[float] | np.ndarray,
    threshold: float,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """CIs for the metrics of :func:`binary_metrics` (not its counts): exact (Clopper-Pearson) for the proportions, BCa
    bootstrap (`bca_ci`) over resamples of the images for the rest, left out (nan) for a small sample or a zero width (see the
    module doc).

    Vectorized: each resample is a row of draw counts, so confusion cells, AUC and AP are matrix products.

    Args:
        y: labels, 1 = pneumonia.
        p: probabilities of pneumonia.
        threshold: the (val-chosen) operating threshold.
        n_resamples: number of resamples; 0 gives an empty dict.
        seed: seed of the resampling.
        level: coverage of the interval.
        groups: one label per image (the patient): resample whole groups (`resample_weights`), and the exact
            intervals at the patients' effective sample size (`clustered_interval`).

    Returns:
        ``{metric: (lo, hi)}``; ``(nan, nan)`` where a metric is undefined, or its bootstrap interval not shown.
    """
    y, p = check_binary(y, p)
    if n_resamples <= 0 or y.size == 0:
        return {}
    if not 0.0 < level < 1.0:
        raise ConfigError(f"CI level must be in (0, 1), got {level}")
    pred = (p >= threshold).astype(np.int64)

    def measured(w: np.ndarray) -> dict[str, np.ndarray]:
        cells = {"tp": w @ (pred * y), "fp": w @ (pred * (1 - y)), "tn": w @ ((1 - pred) * (1 - y)),
                 "fn": w @ ((1 - pred) * y)}
        values = _counts_metrics(*(cells[c] for c in CELL_KEYS))
        values["roc_auc"], values["pr_auc"] = weighted_auc(w, y, p)
        return {**values, **{k: v.astype(float) for k, v in cells.items()}}

    # no interval on the confusion cells: they are counts of these images, and a resample redraws the class mix (its
    # "true positives" can exceed the pneumonia images there are; a review)
    keys = BINARY_KEYS
    values = measured(resample_weights(y.size, n_resamples, seed, groups))
    point = measured(np.ones((1, y.size)))
    jack = [measured(w) for w in jackknife_weights(y.size, groups)]
    small = is_small_sample(int(y.sum()), int((1 - y).sum()))
    out = {k: _shown(bca_ci(values[k], float(point[k][0]), np.concatenate([j[k] for j in jack]), level), small)
           for k in keys}
    if groups is not None:
        return {**out, **grouped_proportion_cis(y, pred, groups, level=level)}
    tp, fp, tn, fn = (int(point[c][0]) for c in CELL_KEYS)
    return {**out, **proportion_cis(tp, fp, tn, fn, level=level)}


def _shown(ci: tuple[float, float], small: bool) -> tuple[float, float]:
    """A bootstrap interval as reported: (nan, nan) for a small sample or a zero-width interval."""
    return (math.nan, math.nan) if small or not ci[0] < ci[1] else ci


def proportion_cis(tp: int, fp: int, tn: int, fn: int, *, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Exact (Clopper-Pearson) intervals of accuracy, sensitivity, specificity and precision from the confusion cells:
    honest at any n (8 of 8 correct gives (0.63, 1.0)); ``(nan, nan)`` where a denominator is 0."""
    return {"accuracy": exact_interval(tp + tn, tp + fp + tn + fn, level),
            "sensitivity": exact_interval(tp, tp + fn, level),
            "specificity": exact_interval(tn, tn + fp, level),
            "precision": exact_interval(tp, tp + fp, level)}


def grouped_proportion_cis(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, *,
                           level: float = 0.95) -> dict[str, tuple[float, float]]:
    """`proportion_cis` for images clustered in patients (`clustered_interval` on each proportion's images)."""
    y, pred, groups = np.asarray(y), np.asarray(pred), np.asarray(groups)
    rows = {"accuracy": np.ones(y.size, dtype=bool), "sensitivity": y == 1, "specificity": y == 0,
            "precision": pred == 1}
    success = {"accuracy": pred == y, "sensitivity": pred == 1, "specificity": pred == 0, "precision": y == 1}
    return {k: clustered_interval(success[k][r], groups[r], level) for k, r in rows.items()}


def proportion_interval(success: np.ndarray, groups: np.ndarray | None, level: float = 0.95) -> tuple[float, float]:
    """Exact interval of a share of images: Clopper-Pearson, or at the patients' effective sample size."""
    success = np.asarray(success, dtype=bool)
    if groups is None:
        return exact_interval(int(success.sum()), int(success.size), level)
    return clustered_interval(success, np.asarray(groups), level)


def sensitivity_by_subtype(y_pred_positive: Sequence[bool] | np.ndarray, subtypes: Sequence[str],
                           groups: np.ndarray | None = None) -> dict:
    """Share of images called pneumonia, per subtype, with an exact (Clopper-Pearson) 95 % interval, the method of
    every other proportion in a report (a subtype's share is a sensitivity or a false-positive rate); at the
    patients' effective sample size where ``groups`` names them (`clustered_interval`).

    For ``bacteria`` / ``virus`` the rate is that subtype's sensitivity; for ``normal`` it is the false-positive rate
    (1 - specificity).

    Returns:
        ``{subtype: {"n", "predicted_positive", "rate", "ci": [lo, hi]}}``, ``normal`` first, then by name.
    """
    pred = np.asarray(y_pred_positive, dtype=bool).reshape(-1)
    sub = np.asarray(subtypes, dtype=str).reshape(-1)
    if pred.shape != sub.shape:
        raise DataError(f"predictions and subtypes differ in length: {pred.size} vs {sub.size}")
    out = {}
    for name in sorted(np.unique(sub), key=lambda s: (s.lower() != "normal", s)):
        mask = sub == name
        n, k = int(mask.sum()), int(pred[mask].sum())
        ci = exact_interval(k, n) if groups is None else clustered_interval(pred[mask], np.asarray(groups)[mask])
        out[str(name)] = {"n": n, "predicted_positive": k, "rate": k / n, "ci": list(ci)}
    return out


def _multiclass_values(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 from confusion matrices (..., K, K); classes absent from truth and calls are skipped."""
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    rows, cols = conf.sum(axis=-1), conf.sum(axis=-2)
    f1 = ratio(2 * diag, rows + cols)
    present = np.isfinite(f1)
    macro = ratio(np.where(present, f1, 0.0).sum(axis=-1), present.sum(axis=-1))
    return {"accuracy": ratio(diag.sum(axis=-1), conf.sum(axis=(-2, -1))), "macro_f1": macro, "per_class_f1": f1}


def _subtype_indices(class_names: Sequence[str]) -> tuple[int, int]:
    lowered = [c.lower() for c in class_names]
    if "bacteria" in lowered and "virus" in lowered:
        return lowered.index("bacteria"), lowered.index("virus")
    return 1, 2


def multiclass_metrics(
    y: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict:
    """3-class metrics: accuracy, macro-F1, confusion matrix, derived binary metrics and bacteria-vs-virus.

    Class 0 is normal; ``p_pneumonia = 1 - P(normal)``. Predictions follow `pneumo.models.scores.predict_classes`
    (the predictor's rule), so the derived binary calls agree with the 3-class calls. Bacteria-vs-virus uses the images whose true
    class is bacteria or virus, calls the likelier of the two and scores ``P(virus) / (P(bacteria) + P(virus))``.

    Args:
        y: true class indices.
        probs: (N, K) class probabilities.
        class_names: K names, index 0 = normal.
        threshold: operating threshold on ``p_pneumonia`` (chosen on val).
        n_resamples: bootstrap resamples for the CIs (0: none).
        seed: bootstrap seed.
        level: CI coverage.
        groups: the patient of each image: every interval counts whole patients (as `bootstrap_cis`).

    Returns:
        JSON-ready dict: ``accuracy``, ``macro_f1``, ``per_class_f1``, ``confusion_matrix`` (rows true, columns
        called), ``binary`` / ``binary_ci``, ``bacteria_vs_virus`` ({accuracy, roc_auc, n}) and ``ci``.
    """
    y = np.asarray(y).reshape(-1).astype(np.int64)
    probs = np.asarray(probs, dtype=float)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape != (y.size, k):
        raise DataError(f"probabilities must have shape ({y.size}, {k}), got {probs.shape}")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise DataError(f"class labels must lie in 0..{k - 1}")
    if not np.isfinite(probs).all():
        raise DataError("probabilities must be finite")
    pred = predict_classes(probs, threshold)
    cell = np.zeros((y.size, k * k))
    cell[np.arange(y.size), y * k + pred] = 1.0
    conf = cell.sum(axis=0).reshape(k, k)
    values = _multiclass_values(conf)
    p_pneumonia = pneumonia_probability(probs)
    y_pneumonia = (y != 0).astype(np.int64)
    bac, vir = _subtype_indices(class_names)
    mask = np.isin(y, (bac, vir))
    vir_score = ratio(probs[mask, vir], probs[mask, bac] + probs[mask, vir])
    vir_score = np.nan_to_num(vir_score, nan=0.5)
    y_vir = (y[mask] == vir).astype(np.int64)
    correct_bv = (vir_score > 0.5).astype(np.int64) == y_vir
    both = np.unique(y_vir).size == 2
    out = {
        "accuracy": float(values["accuracy"]),
        "macro_f1": float(values["macro_f1"]),
        "per_class_f1": {c: float(v) for c, v in zip(class_names, values["per_class_f1"], strict=True)},
        "confusion_matrix": conf.astype(int).tolist(),
        "classes": list(class_names),
        "n": int(y.size),
        "binary": binary_metrics(y_pneumonia, p_pneumonia, threshold),
        "bacteria_vs_virus": {
            "accuracy": float(correct_bv.mean()) if mask.any() else math.nan,
            "roc_auc": float(roc_auc_score(y_vir, vir_score)) if both else math.nan,
            "n": int(mask.sum()),
        },
        "ci": {},
        "binary_ci": {},
    }
    if n_resamples > 0 and y.size:
        def measured(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # macro-F1 and bacteria-vs-virus AUC
            return _multiclass_values((w @ cell).reshape(-1, k, k))["macro_f1"], weighted_auc(w[:, mask], y_vir,
                                                                                                vir_score)[0]

        boot = measured(resample_weights(y.size, n_resamples, seed, groups).astype(float))
        point, jack = measured(np.ones((1, y.size))), [measured(w) for w in jackknife_weights(y.size, groups)]
        small = is_small_sample(int(y_pneumonia.sum()), int((1 - y_pneumonia).sum()))
        interval = [bca_ci(boot[i], float(point[i][0]), np.concatenate([j[i] for j in jack]), level) for i in (0, 1)]
        out["ci"] = {
            "accuracy": proportion_interval(pred == y, groups, level),
            "macro_f1": _shown(interval[0], small),
            "bacteria_vs_virus_accuracy": proportion_interval(correct_bv, None if groups is None else groups[mask],
                                                              level),
            "bacteria_vs_virus_roc_auc": _shown(interval[1],  # gated on its own two classes
                                                is_small_sample(int(y_vir.sum()), int((1 - y_vir).sum()))),
        }
        out["binary_ci"] = bootstrap_cis(y_pneumonia, p_pneumonia, threshold, n_resamples=n_resamples, seed=seed,
                                         level=level, groups=groups)
    return out
