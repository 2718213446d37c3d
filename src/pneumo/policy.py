"""Threshold policies: how an operating point is chosen on validation scores (`pneumo.evaluate.metrics`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pneumo.errors import ConfigError

# Threshold policies. ``triage`` follows the WHO's TB triage target profile (none exists for pneumonia): the highest specificity whose val sensitivity is >= 0.90
# (= ``sensitivity:0.90``: the highest threshold that keeps 90 % of val pneumonia images positive).
POLICY_ALIASES = {"triage": "sensitivity:0.90"}
# Every evaluation reports these operating points side by side (each chosen on val); the model's own stays the headline.
STANDARD_POLICIES = ("youden", "sensitivity:0.95", "triage")
MIN_IMAGES, MIN_PER_CLASS = 30, 10  # below either, bootstrap intervals are not shown and reports warn


def parse_policy(policy: str) -> tuple[str, float | None]:
    """``"youden"`` -> ("youden", None); ``"sensitivity:0.95"`` -> ("sensitivity", 0.95); ``"triage"`` ->
    ("sensitivity", 0.90). ConfigError otherwise."""
    if policy == "youden":
        return "youden", None
    policy = POLICY_ALIASES.get(policy, policy) if isinstance(policy, str) else policy
    if isinstance(policy, str) and policy.startswith("sensitivity:"):
        try:
            target = float(policy.split(":", 1)[1])
        except ValueError:
            target = math.nan
        if 0.0 < target <= 1.0:
            return "sensitivity", target
    raise ConfigError(f"threshold policy must be 'youden', 'triage' or 'sensitivity:X' with 0 < X <= 1, got {policy!r}")


def check_policy(policy: str, name: str = "threshold policy") -> str:
    """A threshold policy (``youden``, ``sensitivity:X``, ``triage``), checked before any work; returned in one
    spelling, at least two decimals (``sensitivity:0.950``, ``sensitivity:.95`` and ``sensitivity:0.95 `` are
    ``sensitivity:0.95``, ``sensitivity:0.9`` is ``sensitivity:0.90``: stored as typed, one policy showed twice in a
    report's table)."""
    try:
        kind, target = parse_policy(policy)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if policy in ("youden", *POLICY_ALIASES):
        return policy
    return f"{kind}:{target:.2f}" if round(target, 2) == target else f"{kind}:{target:g}"  # 0.90, 0.95, 0.975


def policy_warning(policy: str, n_positive: int, n_negative: int, unit: str = "images") -> str | None:
    """Why the labelled images are too few for the policy, or None. A ``sensitivity:s`` point is set where about
    ceil(s * n) of n positives are called: it is measured only when the exact (Clopper-Pearson) 95 % interval of that
    proportion stays within 0.05 of s (about 114 positives for 0.95, 169 for 0.90; the rule of three's 3 / (1 - s)
    holds for a result without misses, which this policy does not aim at). Youden needs both classes in some
    number. ``unit``: what the counts count (``patients`` where a patient's images are not independent)."""
    kind, target = parse_policy(policy)
    if kind == "sensitivity" and target is not None:  # (sensitivity:1 too: all of few positives called says little)
        from scipy.stats import beta

        called = math.ceil(target * n_positive - 1e-9)
        low = float(beta.ppf(0.025, called, n_positive - called + 1)) if called else 0.0
        if low < target - 0.05:
            return (f"only {n_positive} pneumonia {unit}: even where the fewest the policy allows are called ({called} "
                    f"of {n_positive}, {called / n_positive:.2f}), the exact 95 % interval of the sensitivity reaches "
                    f"down to {low:.2f}; the sensitivity this threshold gives new images is that uncertain: label more "
                    "positives")
        if n_negative < 30:  # the threshold does not need them, its specificity does
            return (f"only {n_negative} normal {unit}: the specificity this threshold gives is uncertain with fewer "
                    "than 30")
    elif min(n_positive, n_negative) < 30:
        return (f"{n_positive} pneumonia and {n_negative} normal {unit}: the {policy} threshold is uncertain with "
                "fewer than 30 of each")
    return None


def missed_pneumonia_warning(sensitivity: float | None, ci: Sequence[float | None] | None = None, *,
                             measured: str = "sensitivity",
                             advice: str = "do not use the model to rule pneumonia out at this operating point"
                             ) -> str | None:
    """Said when the sensitivity is below 0.5: most pneumonias would be missed. On the estimate itself, not on its
    interval's upper end as `low_specificity_warning` is: a missed pneumonia is the costlier error, and a threshold
    that misses most of them on the very scores it was chosen on is no screening point (a hospital walk: youden of an
    adapted model's table, cross-fitted sensitivity 0.362, gave 0.000 on held-out patients without a word)."""
    if sensitivity is None or not math.isfinite(sensitivity) or sensitivity >= 0.5:
        return None
    tenths = round(10 * (1 - sensitivity))
    share = ("nearly every pneumonia" if tenths >= 10 else "about half of the pneumonias" if tenths <= 5
             else f"about {tenths} in 10 pneumonias")
    ci = [float(v) for v in ci] if ci is not None and len(ci) == 2 and None not in list(ci) else None
    ci = ci if ci and all(math.isfinite(v) for v in ci) else None
    sure = "may" if ci and ci[1] >= 0.5 else "would"  # (one missed pneumonia: 0.000 [0.000, 0.975] is no certainty)
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"at this operating point {share} {sure} be missed ({measured} {sensitivity:.3f}{interval}): {advice}"


def low_specificity_warning(specificity: float | None, ci: Sequence[float | None] | None, *,
                            measured: str = "specificity",
                            advice: str = "choose another operating point or do not use the model at this one"
                            ) -> str | None:
    """Said when even the upper end of the specificity's interval is below 0.5: most normal films would be called
    pneumonia (a clinical review: an adapted card gave specificity 0.105 [0.012, 0.336] without a word; a hospital
    walk: a default adaptation called 42 of 45 held-out normal films pneumonia, and only its card said so)."""
    if specificity is None or not ci or ci[1] is None or ci[1] >= 0.5:
        return None
    tenths = round(10 * (1 - specificity))
    share = "nearly every normal film" if tenths >= 10 else f"about {tenths} in 10 normal films"
    return (f"at this operating point {share} would be called pneumonia ({measured} {specificity:.3f} "
            f"[{ci[0]:.3f}, {ci[1]:.3f}]): {advice}")


def finite_interval(ci) -> list | None:
    """``ci`` where both of its ends are numbers, else None (undefined: a small sample's bootstrap interval)."""
    return ci if ci and None not in list(ci[:2]) and all(math.isfinite(float(v)) for v in ci[:2]) else None


def at_chance(metrics: dict, cis: dict | None) -> bool:
    """The ROC-AUC's 95 % interval reaches 0.5 (without an interval: the ROC-AUC is at most 0.5): the model does not
    separate the classes on these images, and no threshold can fix that (`evaluate.cautions.no_discrimination_warning`;
    a model card says it too)."""
    auc, ci = metrics.get("roc_auc"), finite_interval((cis or {}).get("roc_auc"))
    return auc is not None and math.isfinite(auc) and (ci[0] if ci else auc) <= 0.5


def is_small_sample(n_pneumonia: int, n_normal: int) -> bool:
    """True below `MIN_IMAGES` images or `MIN_PER_CLASS` of either class."""
    return n_pneumonia + n_normal < MIN_IMAGES or min(n_pneumonia, n_normal) < MIN_PER_CLASS


def small_sample_warning(metrics: dict) -> str | None:
    """One line for reports and cards when the confusion cells of ``metrics`` hold a small sample (`is_small_sample`),
    else None (also None without the cells)."""
    try:
        n_pos, n_neg = int(metrics["tp"] + metrics["fn"]), int(metrics["tn"] + metrics["fp"])
    except (KeyError, TypeError):
        return None
    if not is_small_sample(n_pos, n_neg):
        return None
    return (f"Small sample: {n_pos + n_neg} images ({n_pos} pneumonia, {n_neg} normal), below {MIN_IMAGES} images or "
            f"{MIN_PER_CLASS} per class. Proportions carry exact (Clopper-Pearson) 95 % intervals; bootstrap intervals "
            "(ROC-AUC, PR-AUC, F1) are not shown. Read every number as a rough estimate.")
