"""Binary / 3-class metrics, the val threshold policies and the vectorized bootstrap, on data with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.intervals import exact_interval, resample_weights, weighted_auc
from pneumo.evaluate.metrics import (
    SCORE_MARGIN,
    _multiclass_values,
    binary_metrics,
    bootstrap_cis,
    choose_threshold,
    is_small_sample,
    multiclass_metrics,
    sensitivity_by_subtype,
)


def noisy_scores(n: int, seed: int = 0, *, prevalence: float = 0.62, rounding: int = 2) -> tuple[np.ndarray, ...]:
    """Labels and overlapping scores (rounded so that ties occur, as with real probabilities)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(rounding)
    return y, p


def youden_at(y: np.ndarray, p: np.ndarray, t: float) -> float:
    pred = p >= t
    return pred[y == 1].mean() + (~pred[y == 0]).mean() - 1


def sensitivity_at(y: np.ndarray, p: np.ndarray, t: float) -> float:
    return (p[y == 1] >= t).mean()


# ---------------------------------------------------------------- thresholds

def test_separable_scores_give_auc_one_and_perfect_calls_at_the_youden_threshold() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.2, 0.3, 0.7, 0.8, 0.95])
    t = choose_threshold(y, p, "youden")
    m = binary_metrics(y, p, t)
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0
    assert m["accuracy"] == 1.0 and m["sensitivity"] == 1.0 and m["specificity"] == 1.0


def test_youden_threshold_reaches_the_maximum_index_over_all_roc_thresholds() -> None:
    y, p = noisy_scores(800, seed=3)
    fpr, tpr, _ = roc_curve(y, p)
    t = choose_threshold(y, p, "youden")
    assert youden_at(y, p, t) == pytest.approx(np.max(tpr - fpr), abs=1e-12)


def test_youden_threshold_sits_in_the_middle_of_the_tied_plateau() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.9])  # every threshold in (0.2, 0.6] separates perfectly
    assert choose_threshold(y, p, "youden") == pytest.approx(0.4)


@pytest.mark.parametrize("p", [[0.5, 0.5, 0.5, 0.5], [0.9, 0.8, 0.2, 0.1], [0.0, 0.0, 1.0, 1.0]])
def test_youden_threshold_is_finite_and_within_the_unit_interval(p: list[float]) -> None:
    t = choose_threshold([0, 0, 1, 1], p, "youden")
    assert math.isfinite(t) and 0.0 <= t <= 1.0


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 0.99])
def test_sensitivity_policy_picks_the_highest_threshold_meeting_the_target_less_a_margin(target: float) -> None:
    """The calls of the highest threshold meeting the target (the k-th positive's score s_k), from just below it:
    no val image sits at the threshold, where a backend's last-digit difference would flip its call."""
    y, p = noisy_scores(500, seed=1)
    t = choose_threshold(y, p, f"sensitivity:{target}")
    assert sensitivity_at(y, p, t) >= target
    s_k = p[p >= t].min()  # the lowest score still called positive
    assert all(sensitivity_at(y, p, h) < target for h in np.unique(p[p > s_k]))  # nothing higher meets it
    assert t == pytest.approx(max(s_k - SCORE_MARGIN, (s_k + p[p < t].max()) / 2), abs=1e-12) and t < s_k
    assert ((p >= t) == (p >= s_k)).all()


def test_sensitivity_one_keeps_every_positive_and_nothing_higher() -> None:
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.4, 0.8, 0.9])
    assert choose_threshold(y, p, "sensitivity:1.0") == pytest.approx(0.3 - SCORE_MARGIN, abs=1e-12)
    close = np.array([0.3 - 1e-6, 0.3, 0.4, 0.8, 0.9])  # a lower score closer than the margin: half the gap
    assert choose_threshold(y, close, "sensitivity:1.0") == pytest.approx(0.3 - 5e-7, abs=1e-12)


@pytest.mark.parametrize("policy", ["youdn", "sensitivity:", "sensitivity:abc", "sensitivity:0", "sensitivity:1.5",
                                    "specificity:0.9", ""])
def test_bad_policy_strings_raise_config_error(policy: str) -> None:
    with pytest.raises(ConfigError):
        choose_threshold([0, 1], [0.2, 0.8], policy)


@pytest.mark.parametrize("policy", ["youden", "sensitivity:0.95"])
def test_single_class_validation_labels_raise_data_error(policy: str) -> None:
    with pytest.raises(DataError):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9], policy)


def test_probabilities_outside_the_unit_interval_raise_data_error() -> None:
    with pytest.raises(DataError):
        binary_metrics([0, 1], [-0.5, 2.0], 0.5)


# ---------------------------------------------------------------- binary metrics

def test_binary_metrics_match_scikit_learn() -> None:
    y, p = noisy_scores(400, seed=2)
    t = 0.47
    pred = (p >= t).astype(int)
    m = binary_metrics(y, p, t)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert [[m["tn"], m["fp"]], [m["fn"], m["tp"]]] == confusion_matrix(y, pred).tolist()
    assert m["n"] == 400


def test_binary_metrics_are_nan_without_warnings_when_a_class_is_absent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert math.isnan(m["specificity"]) and math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])


def test_precision_is_nan_when_nothing_is_called_positive() -> None:
    m = binary_metrics([0, 1], [0.1, 0.2], 0.9)
    assert math.isnan(m["precision"]) and m["sensitivity"] == 0.0


# ---------------------------------------------------------------- bootstrap

@pytest.mark.parametrize("decimals", [None, 1, 0])  # scores to 2 decimals (some ties), to 1 (many), 0 or 1 (two)
def test_vectorized_auc_and_average_precision_match_scikit_learn_on_resamples(decimals: int | None) -> None:
    y, p = noisy_scores(300, seed=4)
    p = p if decimals is None else np.round(p, decimals)
    w = resample_weights(y.size, 6, seed=9)
    auc, ap = weighted_auc(w, y, p)
    for b in range(6):
        idx = np.repeat(np.arange(y.size), w[b])
        assert auc[b] == pytest.approx(roc_auc_score(y[idx], p[idx]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y[idx], p[idx]), abs=1e-12)


def test_resampling_whole_patients_is_resampling_images_when_each_patient_has_one() -> None:
    assert np.array_equal(resample_weights(40, 7, 3, groups=np.arange(40)), resample_weights(40, 7, 3))
    w = resample_weights(6, 50, 0, groups=np.array(["a", "a", "b", "c", "c", "c"]))
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()


def test_a_patients_copies_do_not_narrow_the_cluster_bootstrap_interval() -> None:
    """Each image three times, as one patient's three films: resampling images treats them as 3N independent
    cases (a narrower interval); resampling patients gives exactly the interval of the N originals."""
    y, p = noisy_scores(120, seed=2)
    y3, p3, patients = np.repeat(y, 3), np.repeat(p, 3), np.repeat(np.arange(y.size), 3)
    single = bootstrap_cis(y, p, 0.5, n_resamples=300, seed=1)
    clustered = bootstrap_cis(y3, p3, 0.5, n_resamples=300, seed=1, groups=patients)
    naive = bootstrap_cis(y3, p3, 0.5, n_resamples=300, seed=1)
    for key in ("roc_auc", "pr_auc", "f1"):  # the bootstrap ones (the proportions get exact intervals)
        assert clustered[key] == pytest.approx(single[key], abs=1e-12), key
    assert naive["roc_auc"][1] - naive["roc_auc"][0] < single["roc_auc"][1] - single["roc_auc"][0]


def test_resample_weights_draw_each_resample_with_n_items() -> None:
    w = resample_weights(50, 20, seed=0)
    assert w.shape == (20, 50) and (w.sum(axis=1) == 50).all()


def test_bootstrap_ci_contains_the_point_estimate() -> None:
    y, p = noisy_scores(624, seed=5)
    point = binary_metrics(y, p, 0.5)
    cis = bootstrap_cis(y, p, 0.5, n_resamples=500, seed=0)
    for key, (lo, hi) in cis.items():
        assert lo <= point[key] <= hi, key


def test_bootstrap_ci_shrinks_with_more_images() -> None:
    small = bootstrap_cis(*noisy_scores(100, seed=6), 0.5, n_resamples=500, seed=0)
    large = bootstrap_cis(*noisy_scores(2500, seed=6), 0.5, n_resamples=500, seed=0)
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        assert large[key][1] - large[key][0] < 0.5 * (small[key][1] - small[key][0]), key


def test_bootstrap_is_reproducible_with_its_seed() -> None:
    y, p = noisy_scores(200, seed=7)
    assert bootstrap_cis(y, p, 0.5, n_resamples=200, seed=1) == bootstrap_cis(y, p, 0.5, n_resamples=200, seed=1)
    assert bootstrap_cis(y, p, 0.5, n_resamples=200, seed=1) != bootstrap_cis(y, p, 0.5, n_resamples=200, seed=2)


def test_bootstrap_skips_resamples_where_a_metric_is_undefined() -> None:
    y = np.array([1] + [0] * 29)  # many resamples hold no positive
    p = np.linspace(0, 1, 30)
    lo, hi = bootstrap_cis(y, p, 0.5, n_resamples=300, seed=0)["sensitivity"]
    assert math.isfinite(lo) and math.isfinite(hi)


def test_zero_resamples_give_no_intervals() -> None:
    assert bootstrap_cis([0, 1], [0.2, 0.8], 0.5, n_resamples=0) == {}


def test_eight_correct_images_give_an_honest_exact_accuracy_interval_and_no_bootstrap_auc() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])  # all correct at 0.5: the bootstrap collapses to [1, 1]
    cis = bootstrap_cis(y, p, 0.5, n_resamples=500, seed=0)
    lo, hi = cis["accuracy"]
    assert lo == pytest.approx(0.631, abs=1e-3) and hi == 1.0  # Clopper-Pearson for 8 of 8
    for key in ("sensitivity", "specificity", "precision"):  # 4 of 4: (0.398, 1.0)
        assert cis[key][0] == pytest.approx(0.398, abs=1e-3) and cis[key][1] == 1.0, key
    for key in ("roc_auc", "pr_auc", "f1"):  # below the stated n: not shown, never [1.000, 1.000]
        assert all(math.isnan(v) for v in cis[key]), key
    assert is_small_sample(4, 4) and not is_small_sample(20, 20) and is_small_sample(40, 9)
    from pneumo.evaluate.cautions import small_sample_warning

    warning = small_sample_warning(binary_metrics(y, p, 0.5))
    assert warning and "8 images (4 pneumonia, 4 normal)" in warning


def test_a_zero_width_bootstrap_interval_is_never_reported_even_at_a_large_n() -> None:
    y = np.array([0] * 100 + [1] * 100)
    p = np.concatenate([np.linspace(0.0, 0.4, 100), np.linspace(0.6, 1.0, 100)])  # perfectly separated
    cis = bootstrap_cis(y, p, 0.5, n_resamples=200, seed=0)
    assert all(math.isnan(v) for v in cis["roc_auc"])  # every resample gives AUC 1: no interval, not certainty
    assert cis["accuracy"][0] == pytest.approx(0.9817, abs=1e-3) and cis["accuracy"][1] == 1.0
    from pneumo.evaluate.cautions import small_sample_warning

    assert small_sample_warning(binary_metrics(y, p, 0.5)) is None


def test_ci_cells_say_n_a_instead_of_showing_a_bare_number() -> None:
    from pneumo.templates import fmt_ci

    assert fmt_ci(1.0, (math.nan, math.nan)) == "1.000 [CI n/a]"
    assert fmt_ci(1.0, (None, None)) == "1.000 [CI n/a]"
    assert fmt_ci(None, (None, None)) == "n/a"


# ---------------------------------------------------------------- subtypes

def test_sensitivity_by_subtype_counts_the_calls_of_each_subtype() -> None:
    calls = [True, True, False, True, False, False, True]
    subtypes = ["bacteria", "bacteria", "bacteria", "virus", "virus", "normal", "normal"]
    out = sensitivity_by_subtype(calls, subtypes)
    assert list(out) == ["normal", "bacteria", "virus"]
    assert out["bacteria"]["rate"] == pytest.approx(2 / 3) and out["bacteria"]["n"] == 3
    assert out["virus"]["predicted_positive"] == 1 and out["normal"]["rate"] == 0.5
    lo, hi = out["bacteria"]["ci"]
    assert lo < 2 / 3 < hi
    # the method of every other proportion in a report: exact (it was Wilson here: 3 of 3 got [0.44, 1.0], exact
    # [0.29, 1.0], the lower end 0.025 ** (1/3))
    assert out["bacteria"]["ci"] == pytest.approx(list(exact_interval(2, 3)))
    assert sensitivity_by_subtype([True] * 3, ["virus"] * 3)["virus"]["ci"] == pytest.approx([0.025 ** (1 / 3), 1.0])


# ---------------------------------------------------------------- 3-class

def three_class_data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    z = rng.normal(0, 1, (n, 3))
    z[np.arange(n), y] += 1.5
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return y, probs


NAMES = ["normal", "bacteria", "virus"]


def test_multiclass_metrics_match_scikit_learn_for_the_predictor_rule() -> None:
    y, probs = three_class_data()
    t = 0.6
    pred = np.where(1 - probs[:, 0] < t, 0, 1 + np.argmax(probs[:, 1:], axis=1))
    m = multiclass_metrics(y, probs, NAMES, threshold=t, n_resamples=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()


def test_derived_binary_metrics_use_one_minus_p_normal() -> None:
    y, probs = three_class_data(seed=1)
    m = multiclass_metrics(y, probs, NAMES, threshold=0.5, n_resamples=0)
    assert m["binary"] == binary_metrics((y != 0).astype(int), 1 - probs[:, 0], 0.5)


def test_bacteria_vs_virus_is_scored_on_pneumonia_images_only() -> None:
    y = np.array([0, 1, 1, 2, 2])
    probs = np.array([[0.1, 0.1, 0.8],  # a normal image called virus: not part of bacteria vs virus
                      [0.2, 0.7, 0.1], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.1, 0.5, 0.4]])
    bv = multiclass_metrics(y, probs, NAMES, n_resamples=0)["bacteria_vs_virus"]
    assert bv["n"] == 4 and bv["accuracy"] == pytest.approx(0.5)
    scores = probs[1:, 2] / (probs[1:, 1] + probs[1:, 2])
    assert bv["roc_auc"] == pytest.approx(roc_auc_score(y[1:] == 2, scores))


def test_vectorized_macro_f1_matches_scikit_learn_on_a_resample() -> None:
    y, probs = three_class_data(200, seed=2)
    pred = np.argmax(probs, axis=1)
    idx = np.random.default_rng(0).integers(0, 200, 200)
    conf = confusion_matrix(y[idx], pred[idx], labels=[0, 1, 2])
    assert float(_multiclass_values(conf)["macro_f1"]) == pytest.approx(f1_score(y[idx], pred[idx], average="macro"))


def test_multiclass_cis_contain_the_point_estimates() -> None:
    y, probs = three_class_data(seed=3)
    m = multiclass_metrics(y, probs, NAMES, n_resamples=300, seed=0)
    points = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
              "bacteria_vs_virus_accuracy": m["bacteria_vs_virus"]["accuracy"],
              "bacteria_vs_virus_roc_auc": m["bacteria_vs_virus"]["roc_auc"]}
    for key, value in points.items():
        lo, hi = m["ci"][key]
        assert lo <= value <= hi, key
    assert set(m["binary_ci"]) >= {"accuracy", "sensitivity", "specificity", "roc_auc"}


def test_multiclass_probabilities_of_the_wrong_shape_raise_data_error() -> None:
    with pytest.raises(DataError):
        multiclass_metrics([0, 1], np.full((2, 2), 0.5), NAMES)


def test_the_bacteria_vs_virus_interval_is_gated_on_its_own_classes() -> None:
    """Three virus images among many: their bacteria-vs-virus AUC interval was shown, gated on pneumonia/normal."""
    y, probs = three_class_data(seed=4)
    virus = np.flatnonzero(y == 2)
    keep = np.ones(len(y), dtype=bool)
    keep[virus[3:]] = False  # three virus images left
    m = multiclass_metrics(y[keep], probs[keep], NAMES, n_resamples=200, seed=0)
    assert all(math.isnan(v) for v in m["ci"]["bacteria_vs_virus_roc_auc"])  # n/a, not a number
    assert not any(math.isnan(v) for v in m["ci"]["macro_f1"])  # the 3-class measures still have theirs


def test_the_bca_interval_is_scipys_on_the_same_resamples() -> None:
    """`bca_ci` (bias from the resamples, acceleration from the leave-one-out AUCs) gives SciPy's BCa interval to the
    last digit when SciPy is handed pneumo's own bootstrap distribution."""
    from scipy import stats

    from pneumo.evaluate.intervals import bca_ci, jackknife_weights, resample_weights, weighted_auc

    def auc(labels: np.ndarray, scores: np.ndarray) -> float:  # the arithmetic of the resamples' AUCs (ties: equal)
        return float(weighted_auc(np.ones((1, labels.size)), labels, scores)[0][0])

    rng = np.random.default_rng(1)
    y = (np.arange(60) < 25).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.001, 0.999)
    boot, _ = weighted_auc(resample_weights(60, 2000, 0), y, p)
    jack = np.concatenate([weighted_auc(w, y, p)[0] for w in jackknife_weights(60)])
    ours = bca_ci(boot, auc(y, p), jack, 0.95)
    given = stats._resampling.BootstrapResult(confidence_interval=None, bootstrap_distribution=boot,
                                              standard_error=None)
    theirs = stats.bootstrap((y, p), auc, paired=True, vectorized=False, method="BCa",
                             n_resamples=0, bootstrap_result=given, confidence_level=0.95).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=1e-12)
    percentile = np.quantile(boot, [0.025, 0.975])
    assert not np.allclose(ours, percentile)  # the correction moves it (the AUC's resamples are skewed)
    assert bootstrap_cis(y, p, 0.5, n_resamples=2000, seed=0)["roc_auc"] == pytest.approx(ours, abs=1e-12)


def test_the_jackknife_leaves_out_whole_patients_and_blocks_of_them_above_the_cap() -> None:
    from pneumo.evaluate.intervals import JACKKNIFE_BLOCKS, jackknife_weights

    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
    rows = np.concatenate(list(jackknife_weights(6, groups)))
    assert rows.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    n = 2 * JACKKNIFE_BLOCKS + 500
    rows = np.concatenate(list(jackknife_weights(n)))
    assert rows.shape == (JACKKNIFE_BLOCKS, n) and set((n - rows.sum(axis=1)).tolist()) == {2, 3}
    assert (rows == 0).sum(axis=0).tolist() == [1] * n  # each image left out exactly once
    y = (np.arange(40) % 3 == 0).astype(int)
    p = np.linspace(0.01, 0.99, 40)
    alone, grouped = bootstrap_cis(y, p, 0.5, seed=3), bootstrap_cis(y, p, 0.5, seed=3, groups=np.arange(40))
    assert alone.keys() == grouped.keys()  # one patient an image: the same intervals, exact ones included
    for key, interval in alone.items():
        assert grouped[key] == pytest.approx(interval, abs=1e-9, nan_ok=True), key


def test_exact_intervals_count_a_patients_images_once_where_they_agree() -> None:
    """Kermany's test split has 390 pneumonia images of 203 patients: counted as independent images the exact
    intervals were too narrow. Korn-Graubard: Clopper-Pearson at the effective sample size."""
    from pneumo.evaluate.intervals import clustered_interval

    rng = np.random.default_rng(0)
    alone = (rng.random(100) < 0.8).astype(int)
    assert clustered_interval(alone, np.arange(100)) == pytest.approx(exact_interval(alone.sum(), 100), abs=1e-12)
    called = np.repeat((rng.random(25) < 0.8).astype(int), 4)  # 25 patients, 4 images each, all called alike
    patients = np.repeat(np.arange(25), 4)
    lo, hi = clustered_interval(called, patients)
    by_images, by_patients = exact_interval(called.sum(), 100), exact_interval(called.sum() // 4, 25)
    assert hi - lo > 1.5 * (by_images[1] - by_images[0])  # about the 25 patients' width, not the 100 images'
    assert (lo, hi) == pytest.approx(by_patients, abs=0.02)
    perfect = clustered_interval(np.ones(12), np.repeat(np.arange(3), 4))  # no spread: design effect 1
    assert perfect == pytest.approx(exact_interval(12, 12))
    one_error = clustered_interval(np.r_[np.zeros(1), np.ones(11)], np.repeat(np.arange(3), 4))
    assert perfect[0] >= one_error[0]  # a perfect record's lower bound is not below one error's (review)
    assert all(math.isnan(x) for x in clustered_interval(np.zeros(0), np.zeros(0)))


def test_three_class_and_subtype_intervals_count_patients_too() -> None:
    """With patient groups the binary intervals widened but the 3-class accuracy, macro-F1, the binary ones inside
    the 3-class record and the per-subtype shares still counted images (review of the change)."""
    from pneumo.evaluate.report import evaluate_predictions

    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 3, 40), 5)  # 40 patients, five identical films each
    logits = rng.normal(size=(40, 3))
    logits[np.arange(40), y[::5]] += 1.0
    logits = np.repeat(logits, 5, axis=0)
    subtypes = np.array(["normal", "bacteria", "virus"])[y]
    kw = {"task": "3class", "class_names": ["normal", "bacteria", "virus"], "n_bootstrap": 200}
    by_image = evaluate_predictions(y, logits, y, logits, subtypes, **kw)["test"]
    by_patient = evaluate_predictions(y, logits, y, logits, subtypes, **kw, groups_test=np.repeat(np.arange(40), 5))["test"]

    def width(ci) -> float:
        return ci[1] - ci[0]

    for key in ("accuracy", "macro_f1"):
        assert width(by_patient["multiclass"]["ci"][key]) > 1.5 * width(by_image["multiclass"]["ci"][key]), key
    assert width(by_patient["multiclass"]["binary_ci"]["accuracy"]) > width(by_image["multiclass"]["binary_ci"]["accuracy"])
    wider = [width(by_patient["by_subtype"][s]["ci"]) > width(by_image["by_subtype"][s]["ci"]) for s in by_image["by_subtype"]]
    assert any(wider)


def test_a_model_at_chance_is_said_to_be_useless_here_not_left_to_another_threshold() -> None:
    """A chance-level external validation (ROC-AUC 0.517 [0.480, 0.560] on adult films) came without a word, beside
    other operating points to choose (a clinical review)."""
    from pneumo.evaluate.cautions import no_discrimination_warning

    at_chance = no_discrimination_warning({"roc_auc": 0.517}, {"roc_auc": [0.480, 0.560]})
    assert at_chance and "does not separate pneumonia from normal" in at_chance and "[0.480, 0.560]" in at_chance
    assert "swapped" not in at_chance
    assert "labels are not swapped" in no_discrimination_warning({"roc_auc": 0.1}, {"roc_auc": [0.05, 0.2]})
    assert no_discrimination_warning({"roc_auc": 0.975}, {"roc_auc": [0.959, 0.984]}) is None
    assert no_discrimination_warning({"roc_auc": 0.62}, {"roc_auc": [0.51, 0.72]}) is None  # weak, not chance
    assert no_discrimination_warning({"roc_auc": 0.5}, {}) is not None  # no interval: the point itself
    assert no_discrimination_warning({"roc_auc": None}, {}) is None  # one class: nothing to say


def test_an_adapted_model_at_chance_is_not_told_to_be_adapted_and_its_adaptations_verdict_is_repeated() -> None:
    """The validation of an adapted model at chance advised adapting it, and dropped the do-not-deploy verdict its
    adaptation had recorded (an adapt audit)."""
    from pneumo.evaluate.cautions import evaluation_warnings

    metrics, cis = {"roc_auc": 0.659, "specificity": 0.9}, {"roc_auc": [0.483, 0.824], "specificity": [0.8, 0.95]}
    plain = " ".join(evaluation_warnings(metrics, cis))
    assert "unless adapted to them (pneumo adapt)" in plain and "already adapted" not in plain
    said = "at this operating point about 9 in 10 normal films would be called pneumonia"
    adapted = evaluation_warnings(metrics, cis, {"source_model_id": "m", "data": "site_a.csv", "warning": said})
    assert "unless adapted" not in " ".join(adapted)
    assert ("this model was adapted to the images of site_a.csv: if these are of that site, label more of its images "
            "and adapt the source model again; if of another, adapt the source model to that one") in adapted[0]
    assert adapted[-1] == f"Its records say: {said}."
    assert len(evaluation_warnings(metrics, cis, {"source_model_id": "m", "warning": None})) == 1
    low = {"specificity": 0.05}, {"specificity": [0.01, 0.2]}  # the low-specificity advice: no switch to offer blind
    assert "choose another operating point (pneumo operating-point)" in evaluation_warnings(*low)[0]
    assert "measured are in its card (pneumo model-card)" in evaluation_warnings(*low, {"warning": None})[0]
    from pneumo.evaluate.cautions import adaptation_sentence

    assert adaptation_sentence({"source_model_id": None, "data": None, "n_images": None, "n_patients": None,
                                "crossfit_roc_auc": None}) == ("adapted from an unrecorded model on ? images of ? "
                                                              "patients (data not recorded) by pneumo adapt; "
                                                              "cross-fitted site ROC-AUC n/a")


def test_an_operating_point_that_calls_most_normal_films_pneumonia_is_said_in_plain_words() -> None:
    """Held out, an adapted model called 42 of 45 normal films pneumonia (specificity 0.067 [0.013, 0.188]) and
    neither the console nor the report said a word (a hospital walk)."""
    from pneumo.evaluate.cautions import evaluation_warnings
    from pneumo.policy import low_specificity_warning

    said = evaluation_warnings({"roc_auc": 0.72, "specificity": 0.067}, {"roc_auc": [0.53, 0.83],
                                                                       "specificity": [0.013, 0.188]})
    assert said == [("At this operating point about 9 in 10 normal films would be called pneumonia (specificity 0.067 "
                     "[0.013, 0.188]): choose another operating point (pneumo operating-point) or do not use the model "
                     "at this one.")]
    assert "nearly every normal film" in low_specificity_warning(0.0, [0.0, 0.103])
    assert low_specificity_warning(0.45, [0.30, 0.60]) is None  # the interval reaches 0.5: not said
    assert low_specificity_warning(0.2, None) is None and low_specificity_warning(None, [0.1, 0.2]) is None
    assert evaluation_warnings({"roc_auc": 0.97, "specificity": 0.86}, {"specificity": [0.81, 0.90]}) == []


def test_serve_and_predict_are_told_when_the_adaptations_own_operating_point_is_unusable() -> None:
    """`pneumo serve` started, and `pneumo predict` called 281 of 292 site images pneumonia, with a model whose card
    said not to deploy it, without a word (a hospital walk): `operating_point_warning` gives them the card's warning for
    the point the adaptation chose, and nothing once the threshold is another one."""
    from types import SimpleNamespace

    from pneumo.evaluate.cautions import operating_point_warning

    points = {"youden": {"threshold": 0.35, "specificity": 0.79, "specificity_exact_ci": [0.62, 0.91]},
              "sensitivity:0.95": {"threshold": 0.037, "specificity": 0.0, "specificity_exact_ci": [0.0, 0.103]}}
    extra = {"adaptation": {"operating_points": points}}
    said = operating_point_warning(SimpleNamespace(extra=extra, threshold=0.037, threshold_policy="sensitivity:0.95"))
    assert said and "nearly every normal film" in said and "not to deploy it at this operating point" in said
    assert operating_point_warning(SimpleNamespace(extra=extra, threshold=0.35, threshold_policy="youden")) is None
    assert operating_point_warning(SimpleNamespace(extra=extra, threshold=0.2, threshold_policy="sensitivity:0.95")) \
        is None  # chosen elsewhere (operating-point --data): the record is not its point
    assert operating_point_warning(SimpleNamespace(extra={}, threshold=0.86, threshold_policy="sensitivity:0.95")) is None
    # an operating point of its table that misses most pneumonias, and a ranking no better than the source's, are
    # said too (a hospital walk: youden at cross-fitted sensitivity 0.362 gave 0.000 held out, predict said nothing)
    points["youden"].update(sensitivity=0.362, sensitivity_exact_ci=[0.2, 0.55])
    said = operating_point_warning(SimpleNamespace(extra=extra, threshold=0.35, threshold_policy="youden"))
    assert said == ("at this operating point about 6 in 10 pneumonias may be missed (cross-fitted sensitivity 0.362 "
                    "[0.200, 0.550]): do not use it to rule pneumonia out at this operating point")
    extra["adaptation"]["ranking_warning"] = "the cross-fitted ROC-AUC is not clearly above the source model's"
    said = operating_point_warning(SimpleNamespace(extra=extra, threshold=0.2, threshold_policy="sensitivity:0.95"))
    assert said == "the cross-fitted ROC-AUC is not clearly above the source model's"  # whatever its threshold


def test_most_pneumonias_missed_is_said_and_at_chance_no_other_operating_point_is_offered() -> None:
    from pneumo.evaluate.cautions import evaluation_warnings
    from pneumo.policy import missed_pneumonia_warning

    assert missed_pneumonia_warning(0.5, [0.3, 0.7]) is None and missed_pneumonia_warning(None) is None
    assert missed_pneumonia_warning(float("nan")) is None
    assert missed_pneumonia_warning(0.0, [0.0, 0.128]).startswith("at this operating point nearly every pneumonia "
                                                                  "would be missed (sensitivity 0.000 [0.000, 0.128])")
    metrics, cis = {"roc_auc": 0.414, "sensitivity": 0.3, "specificity": 0.2}, {"roc_auc": [0.25, 0.58],
                                                                               "sensitivity": [0.1, 0.5],
                                                                               "specificity": [0.1, 0.4]}
    said = evaluation_warnings(metrics, cis)
    assert "does not separate pneumonia from normal" in said[0]
    assert said[1].endswith("would be called pneumonia (specificity 0.200 [0.100, 0.400]): do not use the model on "
                            "such images.") and "choose another operating point" not in " ".join(said)
    assert said[2] == ("At this operating point about 7 in 10 pneumonias may be missed (sensitivity 0.300 [0.100, "
                       "0.500]): do not use the model on such images.")  # (at chance: no point is a way out)
    assert "about half of the pneumonias would be missed" in missed_pneumonia_warning(0.48, [0.40, 0.49])
    assert missed_pneumonia_warning(0.0, [0.0, 0.975]).startswith("at this operating point nearly every pneumonia "
                                                                  "may be missed")  # one pneumonia, missed
    from pneumo.evaluate.operating import operating_points_section

    note = operating_points_section({"test": {"metrics": metrics, "ci": cis}, "operating_points": {}})[1]
    assert "No threshold makes the model useful on these images" in note and "choose another with" not in note
    metrics["roc_auc"], cis["roc_auc"] = 0.9, [0.85, 0.95]
    assert "choose another with" in operating_points_section({"test": {"metrics": metrics, "ci": cis}})[1]


def test_a_run_cards_figures_carry_the_headlines_warnings_and_say_a_subset() -> None:
    """The report said "does not separate pneumonia from normal, do not use" and most normal films called pneumonia;
    the card listed the same figures without a word, and did not say they came from a limit_per_class subset (a
    training audit)."""
    from pneumo.infer.card import _performance

    meta = {"config": {"data": {"root": "data", "limit_per_class": 20}},
            "metrics": {"test_n": 60, "test": {"accuracy": 0.38, "sensitivity": 0.9, "specificity": 0.1,
                                               "roc_auc": 0.46},
                        "test_ci": {"sensitivity": [0.75, 0.97], "specificity": [0.03, 0.3],
                                    "roc_auc": [0.31, 0.61]}}}
    text = " ".join(" ".join(_performance(meta)).split())
    assert "(60 images, a subset: data.limit_per_class = 20, data" in text
    assert "**Warning:** the model does not separate pneumonia from normal on these images" in text
    assert "would be called pneumonia (specificity 0.100 [0.030, 0.300])" in text
    good = {**meta, "config": {"data": {"root": "data"}},
            "metrics": {**meta["metrics"], "test": {"accuracy": 0.9, "sensitivity": 0.95, "specificity": 0.85,
                                                    "roc_auc": 0.97},
                        "test_ci": {"sensitivity": [0.9, 0.98], "specificity": [0.8, 0.9], "roc_auc": [0.95, 0.98]}}}
    assert "Warning" not in " ".join(_performance(good)) and "subset" not in " ".join(_performance(good))
