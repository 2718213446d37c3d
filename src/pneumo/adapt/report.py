"""The adapted model's card (``model.md``, printed by `pneumo model-card --model OUT`) and ``report.html``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pneumo import atomic
from pneumo.adapt.sources import SiteImages
from pneumo.evaluate.calibration import p_pneumonia
from pneumo.infer.card import build_card, md_table, md_text, metric_rows
from pneumo.models.scores import threshold_on_calibrated_scale
from pneumo.policy import low_specificity_warning, missed_pneumonia_warning
from pneumo.templates import fmt_threshold

ROWS = ("roc_auc", "sensitivity", "specificity", "accuracy", "f1")
USE = ("For images of the site it was adapted to, acquired as the labelled sample was. Research use only, not a "
       "medical device: not for diagnosing or triaging patients.")
LIMITS = (("Check a new site first (`pneumo site check`). Validate on held-out patients of the site (`pneumo evaluate "
          "--model THIS --data HELD_OUT`) before any use."),
          "The local numbers come from the labelled sample: their intervals are as wide as its size makes them.",
          ("They are out-of-fold scores of models each adapted on part of the sample; this model, adapted on all of it, "
           "can rank held-out patients differently, and its specificity at the chosen threshold can differ more (six "
           "200-image adaptations on nih_sample: cross-fitted ROC-AUC 0.69-0.88, held-out 0.83-0.86, lower cross-fitted "
           "in five; specificity off by up to 0.29): the validation on held-out patients is what counts."),
          ("On the source hospital's images this model keeps its ranking but uses the site's threshold: there, its "
           "sensitivity and specificity are not those of the source model (its section above, where it was measured)."))


def _counted(src: dict) -> str:
    """"624 images of 428 patients; intervals count whole patients" ("624 images" in an older pneumo's record)."""
    if not src.get("n_patients"):
        return f"{src['n']} images"
    return f"{src['n']} images of {src['n_patients']} patients; intervals count whole patients"


def _column(block: dict) -> tuple[dict, dict]:
    """A block's (metrics, cis): exact intervals for sensitivity/specificity where it has them, bootstrap otherwise."""
    exact = {key: block[f"{key}_exact_ci"] for key in ROWS if block.get(f"{key}_exact_ci")}
    return block["metrics"], {**block.get("ci", {}), **exact}


def patients_line(site: dict) -> str:
    copies = site.get("n_copies", 0)
    joined = (f"; {copies} image(s) pixel for pixel the same as another were kept in its group (never on the other "
              "side of a split)") if copies else ""
    by_class = site.get("patients_by_class") or {}  # (a reporting audit: "27 patients" beside "17 pneumonia and 14
    both = sum(by_class.values()) - site["n_patients"] if by_class else 0  # normal patients", unexplained)
    joined += f"; {both} of them with films of both classes" if both > 0 else ""
    if site["patients_given"]:
        return f"{site['n_patients']} patients (from the CSV's patient_id column{joined})"
    tags = site.get("n_patient_tags", 0)
    if tags == site["n_images"]:
        return f"{site['n_patients']} patients (from the DICOM PatientID of every image, kept only as a keyed hash{joined})"
    if tags:
        return (f"{site['n_patients']} patients: {tags} DICOM image(s) grouped by their PatientID (kept only as a keyed hash), "
                f"every other image its own patient (images of one patient may sit on both sides of a split; give a "
                f"patient_id column{joined})")
    return (f"{site['n_patients']} 'patients': no patient_id was given, so every image counts as its own patient "
            f"(images of one patient may sit on both sides of a cross-fitting split: the local numbers may be "
            f"optimistic{joined})")


def summary_lines(record: dict) -> list[str]:
    """Where the model came from, then its recipe and operating point (and a warning) as bullets."""
    site, op, local, rehearsal = record["site"], record["operating_point"], record["local"], record["rehearsal"]
    labels = ", ".join(f"{k} {v}" for k, v in site["by_label"].items())
    lines = [
        (f"Adapted from `{record['source_model']['model_id']}` on {record['created']} to the labelled images in "
         f"{md_text(site['data'])}: {site['n_images']} images ({labels}), {patients_line(site)}; "
         f"{site['n_unreadable']} files could not be read and were left out."
         + "".join(f" `{md_text(step['model_id'])}` was itself adapted on {step['created']} to {step['n_images']} "
                   f"images of {step['n_patients']} patients." for step in reversed(record.get("adapted_before", [])))),
        "",
        f"- Recipe: fine-tune all layers, BatchNorm statistics kept, {record['recipe']['epochs']} epoch(s), AdamW lr "
        f"{record['recipe']['lr']:g}, rehearsal "
        + (f"{record['recipe']['rehearsal']:g} source image(s) per site image per epoch (at least "
           f"{record['recipe']['rehearsal_min']}"
           + (f"; {rehearsal['per_epoch_final']} an epoch in the final fine-tune" if rehearsal.get("per_epoch_final")
              else "")
           + f") from {rehearsal['pool']} training images of {md_text(rehearsal['dataset'])}"
           if rehearsal["used"]
           else f"off ({rehearsal['note'] or 'not asked for'})"),
        *([(f"- {rehearsal['site_in_source_val']} of the site's images are images of the source dataset's val fold: "
            "left out of the source images the OOD and orientation checks were refitted on.")]
          if rehearsal.get("site_in_source_val") else []),
        *([f"- Source split: {md_text(rehearsal['split_note'])}."] if rehearsal.get("split_note") else []),
        (f"- Operating point: threshold {fmt_threshold(op['threshold'])} on the uncalibrated P(pneumonia) "
         f"({fmt_threshold(threshold_on_calibrated_scale(op['threshold'], record['temperature']))} on the calibrated "
         f"scale, which predictions show beside it), policy `{op['policy']}`, chosen on the {local['folds']}-fold patient-grouped cross-fitted scores (no image scored by a model adapted on it); "
         f"temperature {record['temperature']:.3f} fitted on the same scores."),
    ]
    if (ranking := local.get("ranking") or {}).get("roc_auc_before") is not None:  # the same images, both models
        ci = ranking.get("ci")
        lines.append(f"- Ranking on the same {site['n_images']} images (none left out): "
                     f"ROC-AUC {ranking['roc_auc_before']:.3f} (source model) -> {ranking['roc_auc_after']:.3f} "
                     f"(adapted, cross-fitted), gain {ranking['gain']:+.3f}"
                     + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}] (paired BCa bootstrap)" if ci else "") + ".")
    return lines + [f"- **Warning**: {w}." for w in adaptation_warnings(record)]


def unusable_operating_point(record: dict) -> str | None:
    """When even the upper end of the cross-fitted specificity's interval is below 0.5 at the chosen operating point:
    most normal films would be called pneumonia (`policy.low_specificity_warning`), with the way out: another policy
    only where it calls most of both classes right on those scores (an adapt audit: the youden point offered, at
    cross-fitted sensitivity 0.26, gave 0.00 on held-out patients)."""
    after = record["local"].get("after") or {}
    others = [p for p, point in (record.get("operating_points") or {}).items()
              if p != record["operating_point"]["policy"] and min(point["sensitivity"], point["specificity"]) >= 0.5]
    return low_specificity_warning(
        (after.get("metrics") or {}).get("specificity"), after.get("specificity_exact_ci"),
        measured="cross-fitted specificity",
        advice="do not deploy it at this operating point; " + (
            f"switch to {' or '.join(others)} (pneumo operating-point --model THIS --threshold-policy "
            f"{others[0]} --out NEW: the threshold the table of policies shows), or label more images and adapt "
            "again" if others else
            "no other policy calls most pneumonias and most normal films right on the cross-fitted scores either: "
            "label more images and adapt again"))


def source_site_warning(record: dict) -> str | None:
    """When the adapted model at its new threshold would call most of the source hospital's normal films pneumonia
    (an adapt audit: 0.863 -> 0.000 on its test split without a word): it is for the site it was adapted to."""
    after = (record.get("source_site") or {}).get("after") or {}
    return low_specificity_warning((after.get("metrics") or {}).get("specificity"), after.get("specificity_exact_ci"),
                                   measured="specificity on the source hospital's test split",
                                   advice="use the adapted model only at the site it was adapted to")


def missed_at_operating_point(record: dict) -> str | None:
    """When the chosen point misses most pneumonias on the cross-fitted scores (youden or another low-sensitivity
    policy; a review: predict and serve said so and the adaptation's own outputs did not)."""
    after = record["local"].get("after") or {}
    return missed_pneumonia_warning((after.get("metrics") or {}).get("sensitivity"), after.get("sensitivity_exact_ci"),
                                    measured="cross-fitted sensitivity",
                                    advice="do not use it to rule pneumonia out at this operating point")


def adaptation_warnings(record: dict) -> list[str]:
    """Every warning an adaptation carries (card, report and console say the same)."""
    ranking = record["local"].get("ranking") or {}
    return [w for w in (record["operating_point"].get("warning"), ranking.get("warning"),
                        record.get("calibration_warning"), unusable_operating_point(record),
                        missed_at_operating_point(record), source_site_warning(record)) if w]


TRADE_OFF_HEAD = ("policy", "threshold", "sensitivity [exact 95 % CI]", "specificity [exact 95 % CI]")
TRADE_OFF_NOTE = ("Each threshold is chosen on the cross-fitted scores and measured on them (in-sample for the "
                  "threshold); triage is sensitivity:0.90, the highest threshold reaching it: where no normal film "
                  "scores between two policies' thresholds, both have the same specificity and the lower threshold "
                  "is the better one. For a policy of this table: pneumo operating-point --model THIS --threshold-policy P "
                  "--out NEW (its threshold here); for another, choose it on labelled images of other patients than "
                  "those you validate on: pneumo operating-point --model THIS --data MORE_LABELLED --threshold-policy "
                  "P --out NEW.")


def trade_off_rows(record: dict) -> list[list[str]]:
    """Each policy's threshold on the cross-fitted scores and what it gives there, the chosen one marked."""
    from pneumo.templates import fmt_ci

    chosen = record["operating_point"]["policy"]
    return [[policy + (" (this model's)" if policy == chosen else ""), fmt_threshold(p['threshold']),
             fmt_ci(p["sensitivity"], p["sensitivity_exact_ci"]), fmt_ci(p["specificity"], p["specificity_exact_ci"])]
            for policy, p in record.get("operating_points", {}).items()]


SUBGROUP_HEAD = ("column", "value", "n", "pneumonia", "source model ROC-AUC", "adapted (cross-fitted) ROC-AUC",
                 "sensitivity, new threshold", "specificity, new threshold")
SUBGROUP_NOTE = ("Sensitivity and specificity per subgroup are the adapted model's at the new threshold; the policy "
                 "holds over all the site's images, not within each subgroup.")


def subgroup_rows(record: dict) -> list[list[str]]:
    """Per value of each ``--by`` column: the source model's ROC-AUC and the cross-fitted one with their CIs, and
    sensitivity / specificity at the new threshold."""
    from pneumo.templates import fmt_ci

    groups = record["local"].get("subgroups")
    if not groups:
        return []
    return [[column, value, g["n"], g["n_pos"], fmt_ci(b["metrics"]["roc_auc"], b["ci"].get("roc_auc")),
             *(fmt_ci(g["metrics"][k], g["ci"].get(k)) for k in ("roc_auc", "sensitivity", "specificity"))]
            for column, values in groups["after"].items() for value, g in values.items()
            for b in [groups["before"][column][value]]]


def before_head(record: dict) -> str:
    """The source model's column: at its stored threshold, on the images it gives a verdict (as evaluate counts)."""
    before = record["local"]["before"]
    n = before.get("n_not_assessed") or 0
    return "source model, stored threshold" + (f" ({n} images without a verdict left out; the ranking gain and "
                                               "subgroups compare all images)" if n and
                                               before.get("scope", "").startswith("the images") else "")


LOCAL_NOTE = ("Cross-fitted; 95 % CIs: exact for accuracy, sensitivity, specificity and precision, at the "
              "patients' effective sample size (Korn & Graubard: the images' count where a share is 0 or 1); BCa "
              "bootstrap over whole patients otherwise. The adapted column's threshold was chosen on these same "
              "scores, so its sensitivity and specificity are in-sample for the threshold (a sensitivity policy's "
              "target is met by construction): on new images of the site expect them lower, about as far as their "
              "intervals reach. Held-out patients measure both (pneumo evaluate --data).")


def source_thresholds(record: dict) -> str:
    """Which threshold each source-hospital column is at."""
    return (f"the source model at its own threshold {fmt_threshold(record['source_model']['threshold'])}, the adapted "
            f"model at this site's {fmt_threshold(record['operating_point']['threshold'])}")


def card_text(record: dict) -> str:
    local, src = record["local"], record.get("source_site")
    sections = [(f"Local performance ({LOCAL_NOTE[0].lower()}{LOCAL_NOTE[1:-1]})", md_table(["", before_head(record), "adapted (cross-fitted), new threshold"],
                                        metric_rows(ROWS, _column(local["before"]["stored_threshold"]),
                                                    _column(local["after"]))))]
    if groups := subgroup_rows(record):
        sections.append((("Local performance by subgroup (cross-fitted; a view or scanner the model only half "
                          "learned shows here)"), [*md_table(SUBGROUP_HEAD, groups), "", SUBGROUP_NOTE]))
    if record.get("operating_points"):
        sections.append(("Other operating points (the same cross-fitted scores)",
                         [*md_table(TRADE_OFF_HEAD, trade_off_rows(record)), "", TRADE_OFF_NOTE]))
    if src:
        sections.append((f"Source hospital ({src['split']}, {_counted(src)}; {source_thresholds(record)})",
                         md_table(["", "source model", "adapted model"],
                                  metric_rows(ROWS, _column(src["before"]), _column(src["after"])))))
    else:
        sections.append(("Source hospital", ["Not measured (its dataset was not available)."]))
    return build_card("Adapted model", summary=summary_lines(record), sections=sections, intended_use=USE,
                      limits=LIMITS)


def write_card(out: Path, record: dict) -> None:
    atomic.write_text(out / "model.md", card_text(record))


def write_report(out: Path, record: dict, site: SiteImages, *, z_oof: np.ndarray, z_before: np.ndarray,
                 shown: Path | None = None) -> None:
    """``out/report.html`` (and its figure); ``shown``: the folder's name in the text (default ``out``)."""
    from sklearn.metrics import roc_curve

    from pneumo.templates import escape, figure, page, table
    from pneumo.templates.figures import new_figure, save_png

    fig = new_figure(5, 4)
    ax = fig.add_subplot(1, 1, 1)
    for name, z in (("source model", z_before), ("adapted (cross-fitted)", z_oof)):
        fpr, tpr, _ = roc_curve(site.y, p_pneumonia(z))
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    roc = save_png(fig, out / "figures" / "roc_site.png")
    summary = summary_lines(record)
    local = record["local"]
    rows = metric_rows(ROWS, _column(local["before"]["stored_threshold"]), _column(local["after"]))
    def inline(text: str) -> str:  # the card's markdown line as HTML: `code` spans and **bold** (escaped first)
        return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text)))

    sections = [("Site", "<p>" + inline(summary[0]) + "</p>"),
                ("Local performance", f"<p>{escape(LOCAL_NOTE)}</p>"
                 + table(["", before_head(record), "adapted (cross-fitted), new threshold"], rows)
                 + figure(roc, "ROC on the site's images: the source model vs the cross-fitted adapted models",
                          relative_to=out)
                 + (table(list(SUBGROUP_HEAD), groups) + f"<p>{escape(SUBGROUP_NOTE)}</p>"
                    if (groups := subgroup_rows(record)) else "")),
                ("Operating point", "<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in summary[2:]) + "</ul>"
                 + (table(list(TRADE_OFF_HEAD), trade_off_rows(record)) + f"<p>{escape(TRADE_OFF_NOTE)}</p>"
                    if record.get("operating_points") else ""))]
    src = record.get("source_site")
    if src:
        sections.append((f"Source hospital ({_counted(src)}, reported only; {source_thresholds(record)})",
                         table(["", "source model", "adapted model"],
                               metric_rows(ROWS, _column(src["before"]), _column(src["after"])))))
    name = escape(shown or out)
    stop = unusable_operating_point(record) or missed_at_operating_point(record)  # (a review: it said "then predict
    # and serve" at a point that misses most pneumonias)
    sections.append(("Next", (f"<p><strong>Do not deploy this model as it is</strong>: {escape(stop)}.</p>" if stop else "")
                     + ("<p>Validate on held-out patients of the site: <code>pneumo evaluate --model "
                        f"{name} --data HELD_OUT --out validation/</code>"
                        + ("" if stop else f"; then predict and serve with <code>--model {name}</code>") + ".</p>")))
    atomic.write_text(out / "report.html", page(f"pneumo adapt: {record['source_model']['model_id']} to a new site",
                                                sections, subtitle=record["site"]["data"]))  # (escaped by the page)
