"""Threshold policies: how an operating point is chosen on validation scores (`pneumo.evaluate.metrics`)."""

from __future__ import annotations

import math

from pneumo.errors import ConfigError

# Threshold policies. ``triage`` is the WHO triage profile: the highest specificity whose val sensitivity is >= 0.90
# (= ``sensitivity:0.90``: the highest threshold that keeps 90 % of val pneumonia images positive).
POLICY_ALIASES = {"triage": "sensitivity:0.90"}
# Every evaluation reports these operating points side by side (each chosen on val); the model's own stays the headline.
STANDARD_POLICIES = ("youden", "sensitivity:0.95", "triage")


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
    """A threshold policy (``youden``, ``sensitivity:X``, ``triage``), checked before any work; returned as given."""
    try:
        parse_policy(policy)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return policy


def policy_warning(policy: str, n_positive: int, n_negative: int) -> str | None:
    """Why the labelled images are too few for the policy, or None. A sensitivity target s can only be told apart
    from 1 with at least 3 / (1 - s) positives (the rule of three); Youden needs both classes in some number."""
    kind, target = parse_policy(policy)
    if kind == "sensitivity" and target is not None and target < 1:
        need = math.ceil(3 / (1 - target) - 1e-9)  # 3 / (1 - 0.9) is 30.000000000000004 in floats
        if n_positive < need:
            return (f"only {n_positive} pneumonia images: a {policy} operating point needs at least {need} to be "
                    "measured (rule of three); the sensitivity reached has a wide interval, label more positives")
    elif min(n_positive, n_negative) < 30:
        return (f"{n_positive} pneumonia and {n_negative} normal images: the {policy} threshold is uncertain with "
                "fewer than 30 of each")
    return None
