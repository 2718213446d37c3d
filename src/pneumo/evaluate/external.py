"""External validation: a model (run, shipped model or ensemble) measured on any labelled folder or CSV, at its
STORED operating point (threshold and temperature as chosen on its own val fold; nothing is refitted on the data
measured). Writes metrics.json, predictions.csv, figures and report.html into an output folder; the model is only read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo import atomic
from pneumo.data.files import MAX_LISTED
from pneumo.data.rundir import RunDir
from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.calibration import apply_temperature, nll, reliability_data
from pneumo.evaluate.cautions import LABELS_AS_GIVEN, adaptation_sentence, adaptation_summary
from pneumo.evaluate.fitted import fitted_on_these, fitted_sentence, threshold_chosen_on
from pneumo.evaluate.intervals import CI_METHOD, check_bootstrap
from pneumo.evaluate.labelled import check_columns, find_labelled, left_out_more, lost_classes, patients_with_copies
from pneumo.evaluate.metrics import binary_metrics, bootstrap_cis, multiclass_metrics, sensitivity_by_subtype
from pneumo.evaluate.operating import adaptation_points, operating_points, operating_points_section, policies_to_report
from pneumo.evaluate.scoring import ModelSpec, load_spec, score_labelled, val_scores, withheld
from pneumo.models.scores import p_pneumonia, pneumonia_probability
from pneumo.policy import at_chance
from pneumo.provenance import record as provenance_record
from pneumo.templates import fmt_threshold

log = logging.getLogger(__name__)
Gallery = Callable[..., tuple[str, str]]  # (out, torch model, images, y, p, threshold, *, subtypes, members) -> section
def measure(y: np.ndarray, logits: np.ndarray, *, threshold: float, temperature: float, classes: list[str],
            subtypes: list[str] | None, n_bootstrap: int, seed: int, ece_bins: int,
            groups: np.ndarray | None = None, binary_labels: bool = False, patients: bool = True) -> dict:
    """The protocol's measurements on one labelled set at a FIXED threshold and temperature (no fitting); ``groups``
    (each image's patient; ``patients=False``: images, copies joined) make every interval count them. ``binary_labels``:
    ``y`` is normal (0) / pneumonia (1) for a 3-class model (labels without subtypes): calibration is measured on
    P(normal) vs P(pneumonia), and there are no 3-class measures."""
    probs = apply_temperature(logits, 1.0)
    calibrated = apply_temperature(logits, temperature)
    p = pneumonia_probability(probs)
    yb = (y != 0).astype(np.int64)
    metrics = binary_metrics(yb, p, threshold)
    if binary_labels and len(classes) > 2:  # two columns, P(normal) and P(pneumonia); NLL from them
        probs, calibrated = (np.stack([1 - pneumonia_probability(q), pneumonia_probability(q)], axis=1)
                             for q in (probs, calibrated))
        logits, temperature, classes = np.log(np.clip(probs, 1e-300, None)), 1.0, ["NORMAL", "PNEUMONIA"]
        after_logits = np.log(np.clip(calibrated, 1e-300, None))
    else:
        after_logits = logits / temperature
    before, after = reliability_data(probs, y, ece_bins), reliability_data(calibrated, y, ece_bins)
    out = {"n": int(y.size), "metrics": metrics,
           "ci": bootstrap_cis(yb, p, threshold, n_resamples=n_bootstrap, seed=seed, groups=groups)
           if n_bootstrap else {},
           "confusion_matrix": [[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]],
           "ece_before": before["ece"], "ece_after": after["ece"], "nll_before": nll(logits, y),
           "nll_after": nll(after_logits, y), "reliability": {"before": before, "after": after},
           "by_subtype": sensitivity_by_subtype(p >= threshold, subtypes, groups) if subtypes is not None else {}}
    if groups is not None and patients:  # what the intervals rest on: whole patients, not films (a clinical review)
        out["patients"] = {k: int(np.unique(g).size) for k, g in (("n", groups), ("pneumonia", groups[yb == 1]),
                                                                   ("normal", groups[yb == 0]))}
    if len(classes) > 2:
        out["multiclass"] = multiclass_metrics(y, probs, classes, threshold=threshold, n_resamples=n_bootstrap,
                                               seed=seed, groups=groups)
    return out


def adapted_points(spec: ModelSpec) -> dict[str, dict]:
    """An adapted model's policies, chosen on its adaptation's cross-fitted scores, checked (`adaptation_points`);
    {} for an ensemble or any other model."""
    if len(spec.predictors) != 1:
        return {}
    return adaptation_points(spec.predictors[0].meta.extra, spec.location)


def stored_origin(spec: ModelSpec) -> tuple[str, str]:
    """Where the model's stored threshold was chosen and its temperature fitted, as reports word it: a model's val
    fold, a labelled set (`pneumo operating-point --data`; the temperature stays its source's) or an adaptation's
    cross-fitted scores."""
    extra = spec.predictors[0].meta.extra if len(spec.predictors) == 1 else {}
    fitted_on = "the adaptation's cross-fitted scores" if extra.get("adaptation") else "val"
    chosen = (extra.get("operating_point") or {}).get("chosen_on") or {}
    if chosen.get("kind") in ("labelled CSV", "labelled folder"):
        return f"{chosen.get('n')} images of a {chosen['kind']} (pneumo operating-point)", fitted_on
    return fitted_on, fitted_on


def evaluate_external(model: str | os.PathLike | None, data: str | os.PathLike, out_dir: str | os.PathLike, *,
                      n_bootstrap: int = 1000, seed: int = 0, ece_bins: int = 15, policies: tuple[str, ...] = (),
                      val_data: str | None = None, analysis: Gallery | None = None, progress: bool = False,
                      official: bool = False, by: tuple[str, ...] = (), replace: bool = False) -> dict:
    """The protocol on a labelled folder / CSV with the model's stored operating point; see the module doc.

    Args:
        model: run folder, checkpoint, ``None``/``"default"`` (shipped model) or an ensemble folder.
        data: a Kaggle-layout folder (NORMAL/ and PNEUMONIA/ at any depth) or a ``path,label`` CSV.
        out_dir: where metrics.json, predictions.csv, figures/ and report.html go (never the model's folder).
        n_bootstrap, seed: bootstrap resamples for the CIs (0: none) and their seed.
        ece_bins: calibration bins.
        policies: extra threshold policies for the side-by-side table (chosen on the model's val fold).
        val_data: the dataset holding the model's val fold (default: the one it was trained on, or $PNEUMO_DATA).
        analysis: draws the Grad-CAM gallery of the most confident errors (``explain.analysis.error_gallery``,
            which the caller passes in: explanations sit above evaluation); None: no gallery.
        progress: a progress bar on stderr.
        official: ``data`` is the official test split (labels the report and summary so; e.g. the shipped model).
        by: CSV columns (e.g. ``view``, ``sex``) whose values get subgroup rows at the stored threshold.
        replace: an ``out_dir`` holding an earlier evaluation (its metrics.json) is replaced; without it, an error.
            The folder is written whole or not at all (`atomic.folder`).

    Returns:
        The metrics dict also written to ``out_dir/metrics.json``.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    check_bootstrap(n_bootstrap, seed)
    spec = load_spec(model)
    if Path(spec.location).resolve() == out.resolve() or (Path(spec.location).parent.resolve() == out.resolve()
                                                          and Path(spec.location).is_file()):
        raise ConfigError(f"--out {out} is the model's own folder: external results go to a folder of their own")
    from pneumo.evaluate.report import check_output_folder

    check_output_folder(out, replace)  # before the long part
    report_policies = policies_to_report(spec.policy, policies)
    labelled, not_read = find_labelled(data)
    labelled = check_columns(labelled, by, data)
    binary_labels = len(spec.classes) > 2 and not labelled["subtype"].isin(spec.classes).all()
    if binary_labels:  # a 3-class model on NORMAL/PNEUMONIA labels: what needs no subtype is measured
        log.warning("%s: labels without bacteria/virus subtypes (a CSV 'subtype' column, or *bacteria*/*virus* file "
                    "names): pneumonia vs normal measured, no 3-class measures", data)
    y_all, logits_all, table_all, errors, images_all, predictions = score_labelled(
        spec.predictors, data, progress=progress, table=labelled, binary=binary_labels)
    ood_scores, ood = withheld(spec.predictors[0], predictions)
    assessed = ~ood["flags"] if ood else np.ones(len(y_all), dtype=bool)
    # External data: the headline is measured on the assessed images (flagged ones get no verdict), all beside it. The
    # official test split keeps its headline on every image (comparable with evaluate_run and published results).
    headline = np.ones(len(y_all), dtype=bool) if official else assessed
    if not headline.any():
        raise DataError(f"all {len(y_all)} readable images are out of distribution for this model: none could be "
                        "assessed (see pneumo site check)")
    y, logits = y_all[headline], logits_all[headline]
    images = images_all if headline.all() else images_all[headline]  # (no copy of every image: a volume audit)
    table = table_all[headline].reset_index(drop=True)
    lost = lost_classes(labelled["label"], table["label"])
    if lost:
        log.warning("%s: %s: the measures that need that class are n/a", data, lost)
    # whole patients in every interval where they are known, a film listed twice as one
    groups_all, copies, resampled, known = patients_with_copies(table_all, images_all, official=official)
    groups = None if groups_all is None else groups_all[headline]
    classes = spec.classes
    measured = {"threshold": spec.threshold, "temperature": spec.temperature, "classes": classes,
                "n_bootstrap": n_bootstrap, "seed": seed, "ece_bins": ece_bins, "binary_labels": binary_labels,
                "patients": known}
    test = measure(y, logits, subtypes=table["subtype"].tolist(), groups=groups, **measured)
    p = p_pneumonia(logits)
    yb = (y != 0).astype(np.int64)
    chosen_on, fitted_on = stored_origin(spec)
    three = len(classes) > 2 and not binary_labels
    result: dict = {"task": spec.task, "classes": classes, "labels": "/".join(classes) if three else "normal/pneumonia",
                    "threshold": spec.threshold,
                    "threshold_policy": spec.policy, "threshold_chosen_on": chosen_on, "temperature": spec.temperature,
                    "temperature_fitted_on": fitted_on, "test": test,
                    "bootstrap": {"n_resamples": int(n_bootstrap), "seed": int(seed), "level": 0.95,
                                  "method": CI_METHOD,
                                  "resamples": resampled},
                    "ece_bins": int(ece_bins)}
    val = val_scores(spec.predictors, data=val_data)
    if val is not None:
        y_val, z_val, _, where = val
        pv = p_pneumonia(z_val)
        yb_val = (y_val != 0).astype(np.int64)
        result["val"] = {"n": int(y_val.size), "roc_auc": binary_metrics(yb_val, pv, spec.threshold)["roc_auc"],
                         "ece_before": reliability_data(apply_temperature(z_val, 1.0), y_val, ece_bins)["ece"],
                         "ece_after": reliability_data(apply_temperature(z_val, spec.temperature), y_val,
                                                       ece_bins)["ece"],
                         "nll_before": nll(z_val, y_val), "nll_after": nll(z_val, y_val, spec.temperature),
                         "source": where}
        result["operating_points"] = operating_points(yb_val, pv, yb, p, report_policies, n_bootstrap=n_bootstrap,
                                                      seed=seed, fixed={spec.policy: spec.threshold},
                                                      groups=groups)
    elif adapted := adapted_points(spec):  # an adapted model: its policies were chosen on the cross-fitted scores
        result["val"] = {"n": 0}
        fixed = {policy: point["threshold"] for policy, point in adapted.items()} | {spec.policy: spec.threshold}
        result["operating_points"] = operating_points(np.zeros(0, np.int64), np.zeros(0), yb, p, list(fixed),
                                                      n_bootstrap=n_bootstrap, seed=seed, fixed=fixed,
                                                      groups=groups)
        for policy, point in result["operating_points"].items():
            if policy in adapted and adapted[policy]["threshold"] == point["threshold"]:  # where it was chosen
                point["val_sensitivity"] = adapted[policy].get("sensitivity")
                point["val_specificity"] = adapted[policy].get("specificity")
        result["operating_points_chosen_on"] = "the adaptation's cross-fitted scores (adapt.json)" + (
            "" if adapted.get(spec.policy, {}).get("threshold") == spec.threshold
            else "; the model's own (marked) where its operating_point record says")
        missing = [policy for policy in report_policies if policy not in fixed]
        if missing and not at_chance(test["metrics"], test.get("ci")):  # asked for, no val fold to choose on (at chance
            result["operating_points_note"] = (
                f"{', '.join(missing)}: not reported: an adapted model has no val fold to choose a threshold on; "
                "choose it on labelled images of the site with pneumo operating-point --data")
            log.warning("%s", result["operating_points_note"])  # no threshold helps: not offered; a review)
    else:
        result["val"] = {"n": 0}
        result["operating_points"] = operating_points(np.zeros(0, np.int64), np.zeros(0), yb, p, [spec.policy],
                                                      n_bootstrap=n_bootstrap, seed=seed,
                                                      fixed={spec.policy: spec.threshold}, groups=groups)
        result["operating_points_note"] = (
            "the adaptation was made by an older pneumo, which recorded no threshold per policy: adapt again for "
            "them" if spec.predictors[0].meta.extra.get("adaptation") else
            "the other policies need the model's val fold, which could not be rebuilt here (pass --dataset DIR)")
        log.warning("only the stored operating point is reported: %s", result["operating_points_note"])
    if by:
        result["subgroups"] = subgroups(table, yb, p, spec.threshold, by, n_bootstrap=n_bootstrap, seed=seed,
                                        groups=groups)
    result["model_identity"] = {  # (``model`` is its location, below)
        "backend": spec.predictors[0].backend, "model_ids": [p.model_id for p in spec.predictors],
        "weights_sha256": [p.meta.sha256 for p in spec.predictors],
        "commits": [p.meta.commit or "unknown" for p in spec.predictors]}  # what each was trained or adapted at
    if len(spec.predictors) == 1 and (adapted := adaptation_summary(spec.predictors[0].meta)):
        result["adaptation"] = adapted
    result["provenance"] = provenance_record()  # the code that evaluated it
    result["external"] = {"data": os.path.abspath(data), "n": len(table_all), "n_unreadable": len(errors),
                          "unreadable": dict(list(errors.items())[:MAX_LISTED]), "n_not_read": len(not_read),
                          "not_read": dict(list(not_read.items())[:MAX_LISTED]),  # all counted, the first listed
                          "by_label": table_all["label"].value_counts().to_dict(), "official_test_split": official,
                          "n_fitted_on": fitted_on_these(spec.predictors, table_all["path"]),
                          "n_threshold_chosen_on": threshold_chosen_on(spec, table_all["path"][assessed]),
                          "lost_class": lost, "n_copies": copies}
    if result["external"]["n_fitted_on"]:
        log.warning("%d of these %d images are ones the model was adapted on: not an external validation (hold "
                    "out other patients)", result["external"]["n_fitted_on"], len(table_all))
    result["external"]["threshold_chosen_on_these"] = bool(result["external"]["n_threshold_chosen_on"])
    if result["external"]["threshold_chosen_on_these"]:
        log.warning("the model's threshold was chosen on %d of the %d assessed images here (pneumo operating-point "
                    "--data): its sensitivity and specificity here are not an independent measure (evaluate on other "
                    "patients)", result["external"]["n_threshold_chosen_on"], int(assessed.sum()))
    result["ood"] = {k: v for k, v in ood.items() if k != "flags"} if ood else None
    result["not_assessed"] = {"n": int((~assessed).sum()), "reason": "out of distribution or refused by the "
                              "orientation check", **({k: ood[k] for k in ("n_out_of_distribution", "n_orientation")}
                                                     if ood else {}),
                              "paths": table_all["path"][~assessed].tolist()[:50],  # and by label: not at random
                              "by_label": table_all["label"][~assessed].value_counts().to_dict()}  # (a reporting audit)
    if (~assessed).any():  # the same measures on the other set: every readable image, or only the assessed ones
        other = assessed if official else np.ones(len(y_all), dtype=bool)
        result["test_assessed" if official else "test_all"] = measure(
            y_all[other], logits_all[other], subtypes=table_all["subtype"][other].tolist(),
            groups=None if groups_all is None else groups_all[other], **measured)
    result.update(name=spec.name, model=spec.location, members=spec.members or None,
                  eval_seconds=round(time.perf_counter() - start, 1))
    from pneumo.evaluate.report import EVALUATION_FILES, to_jsonable, write_evaluation_report, write_predictions

    result = to_jsonable(result)
    columns = {"path": table_all["path"], "label": table_all["label"], "subtype": table_all["subtype"],
               # the patient each interval resampled (blank: its own) and the --by columns, to check them by hand
               **({"patient": [g if not g.startswith("\0") else "" for g in groups_all]} if known
                  else {}), **{c: table_all[c] for c in by if c in table_all.columns and c not in ("path", "label")},
               **({"ood_score": ood_scores} if ood_scores is not None else {}), "assessed": assessed.astype(int)}
    calibrated_on = "the model's val fold" if fitted_on == "val" else fitted_on
    subtitle = (f"{result['external']['data']} · model {spec.location} · threshold {fmt_threshold(spec.threshold)} "
                f"({spec.policy}, stored) · temperature {spec.temperature:.3f} (calibration, fitted on {calibrated_on})")
    with atomic.folder(out, owned=EVALUATION_FILES, replace=replace) as work:  # whole or not at all
        write_predictions(work, columns, logits_all, temperature=result["temperature"], threshold=result["threshold"],
                          class_columns=classes, assessed=assessed)
        extra = [_data_section(result), operating_points_section(result), *_subgroups_section(result),
                 _errors_section(work, table, y, p, result, data)]
        if analysis and spec.predictors[0].torch_model is None:
            log.info("no error gallery: the model has only an ONNX export (Grad-CAM needs the PyTorch weights)")
        elif analysis:
            extra.append(analysis(work, spec.predictors[0].torch_model, images, y, p, spec.threshold,
                                  subtypes=table["subtype"].tolist(), members=len(spec.predictors)))
        title = "evaluation on the official test split (the training hospital's)" if official else "external validation"
        write_evaluation_report(work, result, y_test=y, test_logits=logits, title=f"pneumo {title}: {spec.name}",
                                subtitle=subtitle, extra_sections=extra)  # (a clinical review: not "external")
        atomic.write_json(RunDir(work).metrics, result)
    return result


def subgroups(table: pd.DataFrame, y: np.ndarray, p: np.ndarray, threshold: float, by: tuple[str, ...], *,
              n_bootstrap: int, seed: int, groups: np.ndarray | None = None) -> dict[str, dict[str, dict]]:
    """{column: {value: {n, n_pos, metrics, ci}}} for the images of each value (blank: ``(blank)``), at the stored
    threshold, with the same intervals as the headline: a model that ranks well overall can rank poorly within a
    view, and the reverse when a column is confounded with the label."""
    out: dict[str, dict[str, dict]] = {}
    for column in by:
        values = table[column].fillna("").astype(str).replace("", "(blank)").to_numpy()
        out[column] = {}
        for value in sorted(set(values)):
            rows = values == value
            out[column][value] = {"n": int(rows.sum()), "n_pos": int(y[rows].sum()),
                                  "metrics": binary_metrics(y[rows], p[rows], threshold),
                                  "ci": bootstrap_cis(y[rows], p[rows], threshold, n_resamples=n_bootstrap, seed=seed,
                                                      groups=None if groups is None else groups[rows])
                                  if n_bootstrap else {}}
    return out


def _subgroups_section(result: dict) -> list[tuple[str, str]]:
    from pneumo.templates import fmt_ci, table

    if not result.get("subgroups"):
        return []
    rows = [[column, value, g["n"], g["n_pos"], *(fmt_ci(g["metrics"][k], g["ci"].get(k))
                                                  for k in ("roc_auc", "sensitivity", "specificity"))]
            for column, groups in result["subgroups"].items() for value, g in groups.items()]
    return [("Subgroups", "<p>The assessed images by the values of the CSV's columns, at the stored threshold "
             "(95 % CIs as in the headline: the bootstrap ones, ROC-AUC's among them, are n/a in a subgroup too small "
             "for them, by the headline's small-sample rule). Compare a subgroup's ROC-AUC with the headline's: when a "
             "column is confounded with the label (e.g. a view used mostly for one class), the overall figure can "
             "hide a model that ranks well within each subgroup, or the reverse.</p>"
             + table(["column", "value", "n", "pneumonia", "ROC-AUC", "sensitivity", "specificity"], rows))]


def _data_section(result: dict) -> tuple[str, str]:
    from pneumo.templates import escape
    from pneumo.templates import table as table_html

    ext = result["external"]
    na = result.get("not_assessed") or {"n": 0}
    where = "in the metrics" if ext.get("official_test_split") else "not in the metrics"
    rows = [["images read", ext["n"]], [f"not assessed (out of distribution or turned): no verdict, {where}", na["n"]],
            ["assessed", ext["n"] - na["n"]],
            ["unreadable or refused by the input gate (left out)", ext["n_unreadable"]],
            ["other files not read (not an image name, hidden, no label folder, not a file)", ext.get("n_not_read", 0)],
            *[[f"label {k} (of the images read; not assessed)", f"{v} ({(na.get('by_label') or {}).get(k, 0)})"]
              for k, v in sorted(ext["by_label"].items())]]
    if len(result["classes"]) > 2:  # a 3-class model: which measures its labels allow
        rows.append(["labels measured", result["labels"] + ("" if result["labels"].count("/") > 1 else
                                                            " (no subtypes: no 3-class measures)")])
    ood = result.get("ood")
    ood_line = (f"<p>Not assessed: {ood['n_flagged']} of {ood['n']} images ({100 * ood['share_flagged']:.1f} %): "
                f"{ood['n_out_of_distribution']} out of distribution"
                + (f" (limit = the {ood['percentile']:g}th percentile of the validation images' distances)"
                   if ood.get("percentile") is not None else "")
                + f", {ood['n_orientation']} (only) by the orientation check (inverted, rotated or upside down). "
                + _not_assessed_sentence(bool(ext.get("official_test_split"))) + "</p>" if ood
                else "<p>Out-of-distribution check: not available for this model.</p>")
    bad = "".join(f"<li><code>{escape(k)}</code>: {escape(v)}</li>"
                  for k, v in {**ext["unreadable"], **ext.get("not_read", {})}.items())
    title = "The official test split's images" if ext.get("official_test_split") else "External data"
    return (title, f"<p>Images from <code>{escape(ext['data'])}</code>, measured at the model's stored "
            f"operating point (threshold {fmt_threshold(result['threshold'])}, policy <code>{escape(result['threshold_policy'])}"
            f"</code>; temperature {result['temperature']:.3f}); "
            + fitted_sentence(ext) + ("" if ext.get("official_test_split") else f" {LABELS_AS_GIVEN}") + "</p>"
            + (f"<p>The model was {escape(adaptation_sentence(result['adaptation']))}.</p>"
               if result.get("adaptation") else "")
            + table_html(["", "count"], rows) + ood_line + (f"<p>Files left out, by name{left_out_more(ext)}:</p><ul>{bad}</ul>"
                                                             if bad else "<p>No file was left out.</p>"))


def _not_assessed_sentence(official: bool) -> str:
    """Where images without a verdict are counted: in the official split's headline, not in an external one's."""
    if official:
        return ("`pneumo predict` gives them no pneumonia/normal verdict (predictions.csv leaves their call blank); the "
                "official split's metrics above still count them, called at the threshold, so that they compare with "
                "published results; the metrics on the assessed images only are in metrics.json under "
                "<code>test_assessed</code>.")
    return ("They get no pneumonia/normal verdict and are left out of the metrics above; the metrics on every readable "
            "image, assessed or not, are in metrics.json under <code>test_all</code>.")


def _errors_section(out: Path, table: pd.DataFrame, y: np.ndarray, p: np.ndarray, result: dict,
                    data: str | os.PathLike) -> tuple[str, str]:
    """Error rates per class and the most confident errors, each named by its path below ``data`` (a PACS export
    names every file IM00001: the base name alone was ambiguous)."""
    from pneumo.templates import escape
    from pneumo.templates import table as table_html

    called = p >= result["threshold"]
    truth = y != 0
    rows = []
    subtypes = table["subtype"].to_numpy()
    by_subtype = [(f"PNEUMONIA ({kind})", truth & (subtypes == kind), ~called) for kind in ("bacteria", "virus")
                  if (truth & (subtypes == kind)).any()]  # where the labels say which: the misses of each
    for name, mask, wrong in (("NORMAL", ~truth, called), ("PNEUMONIA", truth, ~called), *by_subtype):
        n, k = int(mask.sum()), int((mask & wrong).sum())
        rows.append([name, n, k, k / n if n else float("nan")])
    errors = np.flatnonzero(called != truth)
    from scipy.special import logit

    # how far past the threshold on the logit scale: on probabilities a false positive above a 0.86 threshold could
    # never outrank a miss (a reports audit: the table and the Grad-CAM figure beside it ranked errors apart)
    worst = errors[np.argsort(-np.abs(logit(np.clip(p[errors], 1e-7, 1 - 1e-7))
                                      - logit(np.clip(result["threshold"], 1e-7, 1 - 1e-7))), kind="stable")][:20]
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    listing = "".join(f"<tr><td><code>{escape(_below(table['path'][i], root))}</code></td><td>{escape(table['label'][i])}"
                      f"</td><td>{escape(table['subtype'][i])}</td><td class='num'>{p[i]:.3f}</td></tr>" for i in worst)
    return ("Errors per class", table_html(["true class", "n", "errors, pneumonia vs normal", "error rate"], rows)
            + ("<table><caption>Most confident errors (all in predictions.csv)</caption><thead><tr><th>file</th>"
               f"<th>label</th><th>subtype</th><th>P(pneumonia), uncalibrated</th></tr></thead><tbody>{listing}</tbody></table>"
               if listing else "<p>No errors at this threshold.</p>"))


def _below(path: str, root: Path) -> str:
    """``path`` relative to ``root`` where it lies below it, else as given (also on another drive: Windows)."""
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(path, root)
        return path if relative.startswith("..") else relative
    return path
