"""Two-sample tests and effect sizes for comparing a site's image set with a reference (`pneumo.adapt.check`), and
the patient-grouped folds of an adaptation's cross-fitting."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from pneumo.errors import DataError
from pneumo.evaluate.calibration import T_MAX


def share_test(k: int, n: int, p0: float, alternative: str) -> float:
    """p-value of a binomial test of k successes in n against p0."""
    return float(stats.binomtest(k, n, min(max(p0, 1e-9), 1 - 1e-9), alternative=alternative).pvalue)


def fisher_test(k1: int, n1: int, k2: int, n2: int, alternative: str = "two-sided") -> float:
    """p-value of Fisher's exact test of k1/n1 against k2/n2."""
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative=alternative).pvalue)


def rank_test(site: np.ndarray, reference: np.ndarray, alternative: str) -> dict:
    """Mann-Whitney U (site vs reference) with its effect A = U / (n_site n_ref) and the two-sample KS statistic."""
    u = stats.mannwhitneyu(site, reference, alternative=alternative)
    ks = stats.ks_2samp(site, reference)
    return {"test": f"Mann-Whitney U, {alternative}", "p_value": float(u.pvalue),
            "effect_a": float(u.statistic / (len(site) * len(reference))), "ks_d": float(ks.statistic),
            "ks_p_value": float(ks.pvalue)}


def cohen_h(p1: float, p2: float) -> float:
    return float(2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2)))


def patient_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, held-out) index pairs: patients never on both sides, classes stratified as far as patients allow;
    every training side holds both classes."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # sklearn's "least populated class": the check below says it in one line
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = list(splitter.split(np.zeros(len(y)), y, groups))
    for train, _ in folds:
        if np.unique(y[train]).size < 2:
            raise DataError(f"a cross-fitting fold lacks a class: label more images of each class or use fewer "
                            f"folds (--folds, now {k})")
    return folds


def calibration_warning(temperature: float, nll_calibrated: float, nll_share: float) -> str | None:
    """A sentence when the calibrated probabilities are no better (by NLL on the cross-fitted scores) than giving
    every image the site's share of pneumonia, or the temperature sits at the top of its range (`calibration.T_MAX`):
    the scores then say little about the labels and every calibrated probability is flattened towards that share
    (a review saw T = 20.0 at a cross-fitted ROC-AUC of 0.46, and T = 12.7 with probabilities of 0.44-0.55 whose NLL
    was worse than the share's, with no word said)."""
    if temperature < 0.99 * T_MAX and nll_calibrated < nll_share:
        return None
    return (f"the calibrated probabilities (temperature {temperature:.1f}) are no better than giving every image the "
            f"site's share of pneumonia (NLL {nll_calibrated:.4f} against {nll_share:.4f}): the cross-fitted scores "
            "say little about the labels; do not read them as risks")
