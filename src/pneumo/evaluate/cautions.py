"""The plain-words warnings beside an evaluation's numbers: a small sample, a model that does not separate the classes
here, an operating point at which most normal films are called pneumonia. Each is one line, or None."""

from __future__ import annotations

from pneumo.policy import (
    at_chance,
    finite_interval,
    low_specificity_warning,
    missed_pneumonia_warning,
    small_sample_warning,
)

# an external set's reference standard (a reporting audit: NIH labels mined from reports read as a diagnosis)
LABELS_AS_GIVEN = ("Its labels are taken as given: how they were established (a radiologist's reading, a report mined "
                   "by software, a culture) is not known to pneumo, and every figure here is against them.")


def no_discrimination_warning(metrics: dict, cis: dict | None, adapted: str | None = None) -> str | None:
    """One line when the ROC-AUC's 95 % interval reaches 0.5 (or, without an interval, the ROC-AUC is at most 0.5):
    the model does not separate pneumonia from normal on these images, and no threshold can fix that (a clinical
    review: a chance-level external validation came without a word, beside other operating points to choose).
    ``adapted``: the data an adapted model was adapted on (`pneumo adapt`; an adapt audit: the advice was to adapt
    it)."""
    if not at_chance(metrics, cis):
        return None
    auc, ci = metrics["roc_auc"], finite_interval((cis or {}).get("roc_auc"))
    interval, high = (f" [{ci[0]:.3f}, {ci[1]:.3f}]", ci[1]) if ci else ("", auc)
    where = "below chance, 0.5: check that the labels are not swapped" if high < 0.5 else "reaching chance, 0.5"
    advice = (f"do not use it on such images; this model was adapted to {adapted}: if these are of that site, label "
              "more of its images and adapt the source model again; if of another, adapt the source model to that "
              "one (pneumo adapt); then validate on other patients" if adapted else
              "do not use it on such images unless adapted to them (pneumo adapt) and validated again")
    return (f"The model does not separate pneumonia from normal on these images (ROC-AUC {auc:.3f}{interval}, "
            f"{where}): no threshold makes it useful here; {advice}.")


def evaluation_warnings(metrics: dict, cis: dict | None, adaptation: dict | None = None,
                        external: dict | None = None) -> list[str]:
    """The warnings an evaluation's headline carries (report and console): images the model's records say it was
    fitted on (``external``: the result's ``external`` entry), chance-level ranking, most normal films called
    pneumonia or most pneumonias missed at the operating point, a small sample, and what an adapted model's own
    adaptation said of it (`adaptation_summary`); each a sentence."""
    where = adaptation and f"the images of {adaptation.get('data') or 'a site'}"
    chance = no_discrimination_warning(metrics, cis, adapted=where)
    advice = ("do not use the model on such images" if chance  # no threshold helps: another one is no way out (a
              else "do not use the model at this one; the other operating points its adaptation measured are in its "
                   "card (pneumo model-card)" if adaptation  # hospital walk: both were advised side by side)
              else "choose another operating point (pneumo operating-point) or do not use the model at this one")
    low = low_specificity_warning(metrics.get("specificity"), (cis or {}).get("specificity"), advice=advice)
    missed = missed_pneumonia_warning(metrics.get("sensitivity"), (cis or {}).get("sensitivity"),
                                      **({"advice": advice} if chance else {}))
    said = (adaptation or {}).get("warning")
    ext = external or {}  # up front: a review found it in the report's fourth section and a log line only
    chosen = ext.get("threshold_chosen_on_these") and (
        f"Not an independent validation: the model's threshold was chosen on {ext.get('n_threshold_chosen_on')} of "
        "these images (pneumo operating-point), so its sensitivity and specificity here are optimistic; measure it "
        "on other patients.")
    fitted = ext.get("n_fitted_on") and (f"{ext['n_fitted_on']} of these images are ones the model was adapted on: "
                                         "not an external validation of those.")
    copies = ext.get("n_copies") and (
        f"{ext['n_copies']} of these images are pixel-identical copies of another one listed (one film under two "
        "names): each is counted as listed, with its original as one patient in the intervals; list each film once.")
    return [w for w in (chosen, fitted, copies, chance, low and f"{low[0].upper()}{low[1:]}.",
                        missed and f"{missed[0].upper()}{missed[1:]}.",
                        small_sample_warning(metrics), said and f"Its records say: {said}.") if w]


def adaptation_summary(meta) -> dict | None:
    """What an evaluated model was adapted from and on, and what its adaptation said of the operating point it is
    measured at (`operating_point_warning`), for the report and console; None for a model that is not adapted (an
    adapt audit: the validation of an adapted model named neither its source nor its do-not-deploy verdict)."""
    adaptation = meta.extra.get("adaptation")
    if not adaptation:
        return None
    site = adaptation.get("site") or {}
    return {"source_model_id": (adaptation.get("source_model") or {}).get("model_id"), "data": site.get("data"),
            "n_images": site.get("n_images"), "n_patients": site.get("n_patients"),
            "crossfit_roc_auc": (meta.metrics.get("site_crossfit") or {}).get("roc_auc"),
            "warning": operating_point_warning(meta)}


def adaptation_sentence(summary: dict) -> str:
    """``adapted from X on 82 images of 65 patients (site_a.csv); cross-fitted site ROC-AUC 0.573``."""
    auc = summary.get("crossfit_roc_auc")
    return (f"adapted from {summary.get('source_model_id') or 'an unrecorded model'} on {summary.get('n_images') or '?'} "
            f"images of {summary.get('n_patients') or '?'} patients ({summary.get('data') or 'data not recorded'}) by "
            "pneumo adapt; cross-fitted site ROC-AUC " + (f"{auc:.3f}" if isinstance(auc, (int, float)) else "n/a"))


def operating_point_warning(meta) -> str | None:
    """What a model's records say against using it at its operating point, one line for `pneumo serve` and `pneumo
    predict` to log (None: nothing): an adapted model's ranking no better than its source's (whatever its threshold);
    where its threshold is one its adaptation chose, that point's cross-fitted specificity and sensitivity when most
    normal films would be called pneumonia or most pneumonias missed; where `pneumo operating-point` set it, what that
    command warned (hospital walks: a model its card said not to deploy was served without a word; one set at youden
    from its table missed most pneumonias without one; a review: a point set on a labelled CSV was warned about once)."""
    from pneumo.evaluate.operating import adaptation_points

    adaptation, op = meta.extra.get("adaptation") or {}, meta.extra.get("operating_point") or {}
    said = [adaptation["ranking_warning"]] if adaptation.get("ranking_warning") else []
    recorded = op.get("warning") if op.get("threshold") == meta.threshold else None  # what operating-point said
    said.append(recorded)
    point = adaptation_points(meta.extra, "the model").get(meta.threshold_policy or "")
    if point and point.get("threshold") == meta.threshold:  # ... and what the adaptation measured, unless said there
        if "called pneumonia" not in (recorded or ""):  # (an older pneumo's record holds neither)
            said.append(low_specificity_warning(point.get("specificity"), point.get("specificity_exact_ci"),
                                                measured="cross-fitted specificity", advice="its adaptation's card "
                                                "says not to deploy it at this operating point (pneumo model-card)"))
        if "be missed" not in (recorded or ""):
            said.append(missed_pneumonia_warning(point.get("sensitivity"), point.get("sensitivity_exact_ci"),
                                                 measured="cross-fitted sensitivity",
                                                 advice="do not use it to rule pneumonia out at this operating point"))
    return "; ".join(w for w in said if w) or None
