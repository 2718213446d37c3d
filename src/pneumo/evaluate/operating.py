"""Operating points: the standard threshold policies side by side (each chosen on val). Choosing a new operating
point for a model writes a NEW model folder (`pneumo.evaluate.derive.derive_model`; evaluation never changes a
model).

Policies (see docs/PROTOCOL.md): ``youden`` (max sensitivity + specificity - 1 on val), ``sensitivity:X`` (the
highest threshold whose val sensitivity is >= X, i.e. the highest specificity at that sensitivity) and ``triage``
(= ``sensitivity:0.90``, after the sensitivity the WHO's target product profile for TB triage tests asks; no
WHO standard for pneumonia).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pneumo.errors import ModelError
from pneumo.evaluate.metrics import binary_metrics, bootstrap_cis, choose_threshold
from pneumo.policy import STANDARD_POLICIES, parse_policy

SHOWN = ("accuracy", "sensitivity", "specificity", "precision", "f1")


def policies_to_report(headline: str | None, extra: Iterable[str] = ()) -> list[str]:
    """The standard policies, then the model's own and any extra ones, each once (all checked)."""
    out: list[str] = []
    for policy in (*STANDARD_POLICIES, *([headline] if headline else []), *extra):
        parse_policy(policy)
        if policy not in out:
            out.append(policy)
    return out


def operating_points(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
                     policies: Sequence[str], *, n_bootstrap: int, seed: int,
                     fixed: dict[str, float] | None = None, groups: np.ndarray | None = None) -> dict[str, dict]:
    """``{policy: {threshold, val_sensitivity, val_specificity, <test metrics>, ci}}``; thresholds chosen on val
    (binary labels, P(pneumonia)); ``fixed`` maps a policy to a stored threshold used as is (no refit); ``groups``
    (the patient of each test image) makes the bootstrap draw whole patients."""
    out = {}
    for policy in policies:
        threshold = (fixed or {}).get(policy)
        if threshold is None:
            threshold = choose_threshold(y_val, p_val, policy)
        val = binary_metrics(y_val, p_val, threshold) if len(y_val) else {}
        test = binary_metrics(y_test, p_test, threshold)
        ci = bootstrap_cis(y_test, p_test, threshold, n_resamples=n_bootstrap, seed=seed,
                           groups=groups) if n_bootstrap else {}
        out[policy] = {"threshold": float(threshold), "val_sensitivity": val.get("sensitivity"),
                       "val_specificity": val.get("specificity"),
                       **{k: test[k] for k in (*SHOWN, "tp", "fp", "tn", "fn")},
                       "ci": {k: ci[k] for k in SHOWN if k in ci}}
    return out


def _test(result: dict) -> tuple[dict, dict]:
    test = result.get("test") or {}
    return test.get("metrics") or {}, test.get("ci") or {}


def operating_points_section(result: dict) -> tuple[str, str]:
    """The report section: one row per policy, the model's own operating point marked."""
    from pneumo.policy import at_chance
    from pneumo.templates import escape, fmt_ci, fmt_number, fmt_threshold

    points, chance = result.get("operating_points") or {}, at_chance(*_test(result))
    measured = "data" if result.get("external") else "test"
    where = "val" if "operating_points_chosen_on" not in result else "where chosen:"  # an adapted model: cross-fitted
    head = ("policy", "threshold", f"{where} sensitivity", f"{where} specificity", *(f"{measured} {k}" for k in SHOWN))
    rows = []
    for policy, p in points.items():
        mark = " (model)" if policy == result.get("threshold_policy") else ""
        cells = [f"{policy}{mark}", fmt_threshold(p["threshold"]), fmt_number(p.get("val_sensitivity")),
                 fmt_number(p.get("val_specificity")), *(fmt_ci(p.get(k), p.get("ci", {}).get(k)) for k in SHOWN)]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    if not points:  # no val fold to choose on: what was not done is said, not how it would have been (a review)
        return "Operating points", (f"<p>{escape(result.get('operating_points_note', 'not available'))}</p>" + (
            "<p>No threshold makes the model useful on these images (the warning above).</p>" if chance else
            "<p>Only the model's own operating point is measured; choose another with <code>pneumo operating-point "
            "--model MODEL --threshold-policy P --data LABELLED --out NEWDIR</code> on labelled images.</p>"))
    chosen_on = escape(result.get("operating_points_chosen_on", "the validation split"))
    own = result.get("threshold_chosen_on", "val")
    if own not in ("val", result.get("operating_points_chosen_on")):  # pneumo operating-point --data
        chosen_on += f" (the model's own, marked: on {escape(own)}" + (
            "; its val columns are the val fold's at it)" if where == "val" else ")")
    here = (result.get("external") or {}).get("threshold_chosen_on_these")
    note = (f"<p>Each threshold is chosen on {chosen_on} by its policy, "
            + ("<strong>the model's own on the data measured here</strong>, the others never on it; " if here else
               "never on the data measured here; ")
            + "<code>triage</code> is <code>sensitivity:0.90</code>, the highest threshold whose sensitivity where it "
            "was chosen is &ge; 0.90 (the minimum the WHO's target product profile asks of a TB triage test; no WHO "
            "standard for pneumonia): where no normal film scores between two policies' thresholds, both have the "
            "same specificity and the lower threshold is the better one. "
            "The model's own operating point (marked) is the headline; "
            + ("no threshold makes the model useful on these images (the warning above): none of these is a way out."
               "</p>" if chance else  # (a hospital walk: a switch was offered)
               "choose another with <code>pneumo operating-point --model MODEL --threshold-policy P --out "
               "NEWDIR</code>.</p>"))
    table = ("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    extra = (f"<p>{escape(result['operating_points_note'])}</p>" if result.get("operating_points_note")
             and not chance else "")  # (it offers a threshold chosen elsewhere: no way out either)
    return "Operating points (policies side by side)", note + table + extra


def adaptation_points(extra: dict, location: object) -> dict[str, dict]:
    """An adapted model's policies, each chosen on its adaptation's cross-fitted scores (`pneumo adapt` records them in
    the sidecar's ``adaptation``: {policy: threshold, sensitivity, specificity, exact CIs}), checked; {} for any other
    model (``extra``: the sidecar's extra entries; ``location``: the model, for the message).

    Raises:
        ModelError: a recorded threshold that is not a number in [0, 1], or an unknown policy.
    """
    points = (extra.get("adaptation") or {}).get("operating_points") or {}
    for policy, point in points.items():
        parse_policy(policy)
        threshold = point.get("threshold") if isinstance(point, dict) else None
        if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:  # NaN fails too
            raise ModelError(f"{location}: the adaptation's {policy} threshold is {threshold!r}, not in [0, 1]")
    return points
