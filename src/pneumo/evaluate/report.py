"""The evaluation protocol as one pure function, and the run's self-contained ``report.html``.

``evaluate_predictions`` takes val and test logits and applies docs/PROTOCOL.md: threshold and temperature from
val only, test metrics with 95 % CIs (exact for proportions, bootstrap otherwise), ECE before/after, per-subtype rates. The report is plain HTML + CSS
(no CDN, no scripts; `pneumo.templates`) with PNGs linked relative to the run folder; callers add ``(title, html)``
sections (e.g. `pneumo.explain.analysis`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pneumo import atomic
from pneumo.atomic import to_jsonable
from pneumo.data.rundir import RunDir
from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.calibration import apply_temperature, as_logit_matrix, ece, fit_temperature, nll, reliability_data
from pneumo.evaluate.cautions import evaluation_warnings, small_sample_warning
from pneumo.evaluate.intervals import CI_METHOD
from pneumo.evaluate.metrics import (
    BINARY_KEYS,
    CELL_KEYS,
    SCORE_MARGIN,
    binary_metrics,
    bootstrap_cis,
    choose_threshold,
    multiclass_metrics,
    sensitivity_by_subtype,
)
from pneumo.evaluate.plots import draw_evaluation_plots
from pneumo.models.scores import pneumonia_probability, predict_classes, threshold_on_calibrated_scale
from pneumo.templates import escape, figure, fmt_ci, fmt_number, fmt_threshold, page, render, table

Section = tuple[str, str]  # (title, trusted HTML body)
METRIC_LABELS = {
    "accuracy": "Accuracy", "sensitivity": "Sensitivity (recall of pneumonia)", "specificity": "Specificity",
    "precision": "Precision (PPV)", "f1": "F1", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC (average precision)",
    "tp": "True positives", "fp": "False positives", "tn": "True negatives", "fn": "False negatives",
    "macro_f1": "Macro-F1", "bacteria_vs_virus_accuracy": "Bacteria vs virus accuracy",
    "bacteria_vs_virus_roc_auc": "Bacteria vs virus ROC-AUC",
}
HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc")
PUBLISHED = (
    ("Kermany et al. 2018 (Cell)", "0.928", "0.932", "0.901", "0.968"),
    ("MedMNIST v2 PneumoniaMNIST, ResNet-50 @224", "0.884", "", "", "0.962"),
    ("MedMNIST v2 PneumoniaMNIST, Google AutoML Vision", "0.946", "", "", "0.991"),
)

log = logging.getLogger(__name__)


# every name an evaluation writes into its folder: one holding only these is an earlier evaluation
EVALUATION_FILES = frozenset({"metrics.json", "predictions.csv", "report.html", "figures", "ensemble.json"})


def check_output_folder(out: str | os.PathLike, replace: bool) -> None:
    """Before any work: an evaluation's output folder is new, empty, or (``replace``) an earlier evaluation.

    Raises:
        ConfigError: see `atomic.check_folder`.
    """
    atomic.check_folder(out, owned=EVALUATION_FILES, replace=replace, what="evaluation",
                        hint="give --force to replace it, or another --out")


def evaluate_predictions(
    y_val: Sequence[int] | np.ndarray,
    p_val_logits: Sequence | np.ndarray,
    y_test: Sequence[int] | np.ndarray,
    test_logits: Sequence | np.ndarray,
    subtypes_test: Sequence[str] | None,
    *,
    task: str,
    class_names: Sequence[str],
    policy: str = "youden",
    n_bootstrap: int = 1000,
    seed: int = 0,
    ece_bins: int = 15,
    stored: tuple[float, float] | None = None,
    groups_test: np.ndarray | None = None,
) -> dict:
    """The whole protocol on arrays. Threshold and temperature see val only; test is only measured.

    ``p_pneumonia = 1 - softmax(logits)[:, 0]`` (= ``softmax[:, 1]`` for binary, ``sigmoid(z)`` for one logit
    column); the threshold applies to this uncalibrated probability, as the predictor does.

    Args:
        y_val: val class indices (binary: 1 = pneumonia; 3class: 0 normal, 1 bacteria, 2 virus).
        p_val_logits: val logits (N, K) or one binary logit per image.
        y_test: test class indices.
        test_logits: test logits, same layout as val.
        subtypes_test: test subtypes (normal/bacteria/virus) for per-subtype rates, or None.
        task: ``binary`` or ``3class``.
        class_names: class names, index 0 = normal.
        policy: threshold policy (``youden`` or ``sensitivity:X``).
        n_bootstrap: bootstrap resamples of the test images (0: no CIs).
        seed: bootstrap seed.
        ece_bins: equal-width ECE bins.
        stored: the model's recorded (threshold, temperature): measure test at them (a later evaluation of a model
            whose operating point is recorded; they equal val's choice unless the val data changed, which a WARNING
            says).
        groups_test: the patient of each test image: the binary intervals count whole patients (the bootstrap draws
            them, the exact intervals use their effective sample size); None: images.

    Returns:
        A strict-JSON dict (nan -> None): ``threshold``, ``threshold_policy``, ``temperature``, ``val`` {...},
        ``test`` {``metrics``, ``ci``, ``confusion_matrix``, ``ece_before``, ``ece_after``, ``reliability``,
        ``by_subtype``, and ``multiclass`` for 3class}, ``bootstrap``.
    """
    if task not in ("binary", "3class"):
        raise ConfigError(f"unknown task {task!r}; choose binary or 3class")
    z_val, z_test = as_logit_matrix(p_val_logits), as_logit_matrix(test_logits)
    k = len(class_names)
    if z_val.shape[1] != k or z_test.shape[1] != k:
        raise DataError(f"logits have {z_val.shape[1]} / {z_test.shape[1]} columns but there are {k} classes")
    if (task == "binary") != (k == 2):
        raise DataError(f"task {task} does not match {k} classes {list(class_names)}")
    y_val, y_test = np.asarray(y_val).astype(np.int64), np.asarray(y_test).astype(np.int64)
    if y_val.shape != (len(z_val),) or y_test.shape != (len(z_test),):
        raise DataError("labels and logits differ in length (val or test)")

    probs_val, probs_test = apply_temperature(z_val, 1.0), apply_temperature(z_test, 1.0)
    p_val, p_test = pneumonia_probability(probs_val), pneumonia_probability(probs_test)
    yb_val, yb_test = (y_val != 0).astype(np.int64), (y_test != 0).astype(np.int64)
    threshold = choose_threshold(yb_val, p_val, policy)
    temperature = fit_temperature(z_val, y_val)
    if stored is not None:
        rule_moved = (policy.startswith("sensitivity") and 0 < stored[0] - threshold <= SCORE_MARGIN + 1e-9
                      and abs(stored[1] - temperature) <= 1e-9)
        if rule_moved:  # chosen before 2026-12-06, when a sensitivity:X threshold sat at the val score itself
            log.warning("the stored threshold %.7f was chosen by the rule before 2026-12-06 (at a val score; now "
                        "up to %g below it: %.7f): reporting at the stored one; `pneumo operating-point` adopts the "
                        "new one", stored[0], SCORE_MARGIN, threshold)
        elif abs(stored[0] - threshold) > 1e-9 or abs(stored[1] - temperature) > 1e-9:
            log.warning("the val fold now gives threshold %.4f and temperature %.3f, the model stores %.4f and %.3f "
                        "(val data changed?): reporting at the stored ones", threshold, temperature, *stored)
        threshold, temperature = float(stored[0]), float(stored[1])
    probs_cal = apply_temperature(z_test, temperature)

    metrics = binary_metrics(yb_test, p_test, threshold)
    before = reliability_data(probs_test, y_test, ece_bins)
    after = reliability_data(probs_cal, y_test, ece_bins)
    val_auc = binary_metrics(yb_val, p_val, threshold)["roc_auc"]
    test: dict = {
        "n": int(y_test.size),
        "metrics": metrics,
        "ci": bootstrap_cis(yb_test, p_test, threshold, n_resamples=n_bootstrap, seed=seed, groups=groups_test),
        "confusion_matrix": [[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]],
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "nll_before": nll(z_test, y_test),
        "nll_after": nll(z_test, y_test, temperature),
        "reliability": {"before": before, "after": after},
        "by_subtype": sensitivity_by_subtype(p_test >= threshold, subtypes_test, groups_test)
        if subtypes_test is not None else {},
    }
    if task == "3class":  # P(pneumonia) = 1 - P(normal), as predict and serve give it calibrated: its own ECE
        test["ece_pneumonia"] = {k: ece(np.stack([1 - p, p], 1), yb_test, ece_bins) for k, p in
                                 (("before", p_test), ("after", pneumonia_probability(probs_cal)))}
        test["multiclass"] = multiclass_metrics(y_test, probs_test, class_names, threshold=threshold,
                                                n_resamples=n_bootstrap, seed=seed, groups=groups_test)
    return to_jsonable({
        "task": task,
        "classes": list(class_names),
        "threshold": threshold,
        "threshold_policy": policy,
        "temperature": temperature,
        "val": {"n": int(y_val.size), "roc_auc": val_auc, "nll_before": nll(z_val, y_val),
                "nll_after": nll(z_val, y_val, temperature), "ece_before": reliability_data(probs_val, y_val,
                                                                                           ece_bins)["ece"]},
        "test": test,
        "bootstrap": {"n_resamples": int(n_bootstrap), "seed": int(seed), "level": 0.95, "method": CI_METHOD,
                      "resamples": "images" if groups_test is None else "whole patients"},
        "ece_bins": int(ece_bins),
    })


# ---------------------------------------------------------------- HTML

def write_predictions(out_dir: str | os.PathLike, rows: dict, logits: np.ndarray, *, temperature: float,
                      threshold: float, class_columns: Sequence[str] = (), assessed: np.ndarray | None = None) -> Path:
    """``predictions.csv``: the identifying ``rows`` columns, then ``p_pneumonia`` (raw), ``p_calibrated`` (at the
    temperature), ``predicted_pneumonia`` (raw p at the threshold, as the predictor calls it; empty for an image
    that is not ``assessed``), ``threshold`` (binary: and ``threshold_calibrated``, the same on ``p_calibrated``) and, for each name in ``class_columns``, ``p_<name>`` (calibrated); with three classes,
    ``predicted_class`` (the verdict `pneumo predict` gives, empty where not assessed)."""
    import pandas as pd

    probs, calibrated = apply_temperature(logits, 1.0), apply_temperature(logits, temperature)
    frame = pd.DataFrame({**rows, "p_pneumonia": pneumonia_probability(probs),
                          "p_calibrated": pneumonia_probability(calibrated)})
    frame["predicted_pneumonia"] = (frame["p_pneumonia"] >= threshold).astype(int)
    frame["threshold"] = threshold  # the verdict's: on p_pneumonia (not 0.5, and not on the calibrated columns)
    if logits.shape[1] == 2:  # the same on p_calibrated, as `pneumo predict` writes it (an adapt audit: a film called
        frame["threshold_calibrated"] = threshold_on_calibrated_scale(threshold, temperature)  # at p_PNEUMONIA 0.39)
    if assessed is not None:
        frame["predicted_pneumonia"] = frame["predicted_pneumonia"].astype("Int64").mask(~np.asarray(assessed, bool))
    for i, name in enumerate(class_columns):
        frame[f"p_{name}"] = calibrated[:, i]
    if len(class_columns) > 2:  # the 3-class verdict, as `pneumo predict` labels it (empty where not assessed)
        called = pd.Series(np.asarray(class_columns, dtype=object)[predict_classes(probs, threshold)])
        frame["predicted_class"] = called if assessed is None else called.mask(~np.asarray(assessed, bool))
    return atomic.write_csv(RunDir(out_dir).predictions, frame)


def metrics_table_html(metrics: dict, cis: dict | None = None, *, keys: Iterable[str] | None = None,
                       caption: str | None = None) -> str:
    """A two-column table, one metric a row, values with their CIs (``0.912 [0.889, 0.934]``)."""
    cis = cis or {}
    keys = [k for k in (keys if keys is not None else metrics) if k in metrics]
    rows = [[METRIC_LABELS.get(k, k), fmt_ci(metrics[k], cis.get(k))] for k in keys]
    return table(["metric", "value [95 % CI]" if cis else "value"], rows, caption=caption, row_headers=True)


def data_label(result: dict) -> str:
    """What the measured images are: the official test split (or a run's subset of it, ``data.limit_per_class``), or
    external data (pneumo evaluate --data)."""
    ext = result.get("external")
    if ext and not ext.get("official_test_split"):
        return "External data"
    limit = (((result.get("config") or {}).get("data") or {}).get("limit_per_class")) if not ext else None
    return f"A subset of the official test split (data.limit_per_class = {limit})" if limit else "Official test split"


def headline_html(result: dict) -> str:
    """Cards with the test accuracy, sensitivity, specificity and ROC-AUC (with CIs) and the operating point."""
    test = result.get("test", {})
    metrics, cis = test.get("metrics", {}), test.get("ci", {})
    cards = [{"label": METRIC_LABELS[k].split(" (")[0], "value": fmt_number(metrics.get(k)), "ci": _ci_text(cis.get(k))}
             for k in HEADLINE]
    if "multiclass" in test:
        mc = test["multiclass"]
        cards.append({"label": "3-class accuracy", "value": fmt_number(mc.get("accuracy")),
                      "ci": _ci_text(mc.get("ci", {}).get("accuracy"))})
    lost = (result.get("external") or {}).get("lost_class")
    warning = " ".join([*([f"{lost[0].upper()}{lost[1:]}: the measures that need that class are n/a."] if lost else []),
                        *evaluation_warnings(metrics, cis, result.get("adaptation"), result.get("external"))]) or None
    people = test.get("patients")
    n = (f"{test.get('n', '?')} images of {people['n']} patients ({_classes(people)})" if people
         else f"{test.get('n', '?')} images (patients unknown: images counted as independent, so the intervals may be "
              "too narrow; a CSV with a patient_id column groups them)" if result.get("external")
         else test.get("n", "?"))
    return (render("headline.html.j2", cards=cards, n=n, warning=warning,
                   where=data_label(result),
                         threshold=fmt_threshold(result.get("threshold")), policy=result.get("threshold_policy"),
                         chosen_on=result.get("threshold_chosen_on", "val"),
                         fitted_on=result.get("temperature_fitted_on", "val"),
                         temperature=fmt_number(result.get("temperature"), 3),
                         ece_before=fmt_number(test.get("ece_before")), ece_after=fmt_number(test.get("ece_after"))))


def _classes(people: dict) -> str:
    """``26 of them with pneumonia``; where a patient has films of both classes (a reports audit: 26 with pneumonia +
    24 normal read as 50 of 49 patients), ``26 with a pneumonia image, 24 with a normal one; 1 with both``."""
    both = people["pneumonia"] + people.get("normal", people["n"] - people["pneumonia"]) - people["n"]
    if both <= 0:
        return f"{people['pneumonia']} of them with pneumonia"
    return f"{people['pneumonia']} with a pneumonia image, {people['normal']} with a normal one; {both} with both"


def _ci_text(ci: Sequence | None) -> str:
    if not ci:
        return ""
    if any(v is None or not np.isfinite(v) for v in ci):
        return "95 % CI n/a (small sample)"
    return f"95 % CI [{ci[0]:.3f}, {ci[1]:.3f}]"


def write_run_report(run_dir: str | os.PathLike, *, title: str, sections: Iterable[Section],
                     result: dict | None = None, subtitle: str = "", filename: str = "report.html") -> Path:
    """Write ``<run_dir>/report.html``: a header (headline numbers when ``result`` is given), a contents list and
    the sections in order.

    Args:
        run_dir: the run folder; images in sections should link relative to it (see `pneumo.templates.figure`).
        title: page title.
        sections: ``(title, html)`` blocks; the html is trusted (build it with `pneumo.templates`, which escapes).
        result: the dict from :func:`evaluate_predictions`, for the headline cards.
        subtitle: one line under the title (model, commit, device...).
        filename: report file name.

    Returns:
        The report's path.
    """
    html = page(title, sections, subtitle=subtitle, headline=headline_html(result) if result else "")
    return atomic.write_text(Path(run_dir) / filename, html)


def evaluation_sections(result: dict, figures: dict[str, Path], run_dir: str | os.PathLike) -> list[Section]:
    """The standard report sections for an ``evaluate_predictions`` result and its figures."""
    test, val = result["test"], result["val"]
    auc_of = (result.get("training") or {}).get("val_auc_of")
    auc_of = f" ({auc_of}; the report's val AUC is pneumonia vs normal)" if auc_of not in (None, "P(pneumonia)") else ""
    fig = {name: figure(path, caption, relative_to=run_dir) for name, path, caption in (
        (n, figures[n], c) for n, c in (
            ("roc", "ROC curve; the dot is the operating point"), ("pr", "Precision-recall curve"),
            ("confusion", "Confusion matrix: counts and row shares"), ("confusion_3class", "3-class confusion"),
            ("reliability", "Reliability before / after temperature scaling"),
            ("subtypes", "Share called pneumonia per subtype, exact 95 % intervals"),
            ("training", f"Loss, val ROC-AUC{auc_of} and learning rate per epoch")) if n in figures)}
    boot = result.get("bootstrap", {})
    ext = result.get("external")
    external = bool(ext and not ext.get("official_test_split"))
    images, split = ("images of this external data", "external data") if external else ("test images", "test")
    chosen = result.get("threshold_chosen_on", "val")
    note = (f"<p>Threshold {escape(fmt_threshold(result['threshold']))} chosen on "
            f"{escape('the validation split' if chosen == 'val' else chosen)} by policy "
            f"<code>{escape(result['threshold_policy'])}</code>; 95 % CIs: {escape(boot.get('method', CI_METHOD))} "
            f"({escape(boot.get('n_resamples'))} resamples of the {escape(test['n'])} {images}"
            + (f", drawn as {escape(boot['resamples'])}" if boot.get("resamples", "images") != "images" else "")
            + f", seed {escape(boot.get('seed'))}).</p>")
    warning = small_sample_warning(test["metrics"])
    if warning:
        note += f"<p class='warning'><strong>{escape(warning)}</strong></p>"
    cm = test["confusion_matrix"]
    cm_table = table(["true \\ called", "normal", "pneumonia"],
                          [["normal", cm[0][0], cm[0][1]], ["pneumonia", cm[1][0], cm[1][1]]], caption="confusion")
    heading = "Metrics on the external data" if external else "Test metrics"
    sections: list[Section] = [(f"{heading} (pneumonia vs normal)", note + metrics_table_html(
        test["metrics"], test.get("ci"), keys=(*BINARY_KEYS, *CELL_KEYS)) + cm_table)]
    if "multiclass" in test:
        sections.append(("3-class metrics", _multiclass_html(test["multiclass"]) + fig.get("confusion_3class", "")))
    sections.append(("ROC, precision-recall and confusion",
                     fig.get("roc", "") + fig.get("pr", "") + fig.get("confusion", "")))
    has_val = bool(val.get("n"))  # an adapted model has no val fold: its temperature came from its cross-fitted scores
    three = len(result.get("classes") or []) > 2
    two = three and "multiclass" not in test  # a 3-class model on plain labels
    calib = table(["split", "ECE before", "ECE after", "NLL before", "NLL after"], [
        *([["val (3 classes)" if two else "val", val.get("ece_before"), val.get("ece_after"), val.get("nll_before"),
            val.get("nll_after")]] if has_val else []),
        [f"{split} (pneumonia vs normal: no subtypes)" if two else split, test["ece_before"], test["ece_after"],
         test["nll_before"], test["nll_after"]],
        *([[f"{split}: P(pneumonia) vs normal", test["ece_pneumonia"]["before"], test["ece_pneumonia"]["after"], "",
            ""]] if "ece_pneumonia" in test else [])])
    fitted_on = result.get("temperature_fitted_on", "val")
    sections.append(("Calibration", f"<p>Temperature T = {escape(fmt_number(result['temperature'], 3))}, fitted "
                     f"on {escape('val' if fitted_on == 'val' else fitted_on)} by NLL: the model's logits are divided by it so that, on images like those it was fitted on "
                     "(their hospital and their share of pneumonia), a probability of 0.8 would mean about 80 % of such "
                     "images have pneumonia" + (" (for a 3-class model: that the class shown with 0.8 is right about "
                     "80 % of the time; the measures below are of that top-class confidence, on plain labels of "
                     "P(pneumonia) vs P(normal))" if three else "") + ". It is not a patient's risk: at another hospital or prevalence the share "
                     "of pneumonia at a given score differs (the ECE below and the reliability plot show how far). ECE (expected calibration "
                     "error: the mean gap between confidence and accuracy, lower is better) with "
                     f"{escape(result.get('ece_bins', 15))} equal-width bins of top-label confidence, before and "
                     "after that scaling.</p>" + calib + fig.get("reliability", "")))
    subtypes = {k: v for k, v in (test.get("by_subtype") or {}).items() if k != "unknown"}
    if set(subtypes) & {"bacteria", "virus"}:  # labels without subtypes: the normal row alone under this text misled
        rows = [[name, s["n"], s["predicted_positive"], fmt_ci(s["rate"], s.get("ci"))]
                for name, s in subtypes.items()]
        sections.append(("Per subtype", "<p>Sensitivity for bacteria and virus; for normal, the false-positive "
                         "rate.</p>" + table(["subtype", "n", "called pneumonia", "rate [95 % CI]"], rows)
                         + fig.get("subtypes", "")))
    if "training" in fig:
        sections.append(("Training curves", fig["training"]))
    if has_val:
        sections.append(("Validation", table(["n", "ROC-AUC", "NLL before", "NLL after"], [
            [val["n"], val.get("roc_auc"), val.get("nll_before"), val.get("nll_after")]])))
    if not external:  # published figures are on the official split: beside other data they would mislead
        sections.append(("Published results on the official test split", "<p>For context only (other preprocessing "
                         "and training); numbers from random re-splits are not comparable.</p>" + table(
                             ["study", "accuracy", "sensitivity", "specificity", "ROC-AUC"], PUBLISHED)))
    return sections


def _multiclass_html(mc: dict) -> str:
    bv = mc["bacteria_vs_virus"]
    three = {"accuracy": mc["accuracy"], "macro_f1": mc["macro_f1"]}  # over every image
    pair = {"bacteria_vs_virus_accuracy": bv["accuracy"], "bacteria_vs_virus_roc_auc": bv["roc_auc"]}
    classes = mc["classes"]
    cm_rows = [[name, *row] for name, row in zip(classes, mc["confusion_matrix"], strict=True)]
    f1_rows = [[name, mc["per_class_f1"].get(name)] for name in classes]
    n = mc.get("n", sum(map(sum, mc["confusion_matrix"])))
    return (metrics_table_html(three, mc.get("ci"), caption=f"3 classes on {n} images (3-class accuracy, macro-F1)")
            + metrics_table_html(pair, mc.get("ci"), caption=f"bacteria vs virus on the {bv['n']} pneumonia images, by the "
                                 "larger of P(bacteria) and P(virus) whatever the normal call (the confusion below "
                                 "counts the calls)")
            + table(["true \\ called", *classes], cm_rows, caption="3-class confusion")
            + table(["class", "F1"], f1_rows))


def write_evaluation_report(
    run_dir: str | os.PathLike,
    result: dict,
    *,
    y_test: Sequence[int] | np.ndarray,
    test_logits: np.ndarray,
    title: str,
    subtitle: str = "",
    extra_sections: Iterable[Section] = (),
    metrics_csv: str | os.PathLike | None = None,
) -> Path:
    """Draw the figures into ``<run_dir>/figures`` and write ``report.html`` (standard sections, then the extras)."""
    figures = draw_evaluation_plots(Path(run_dir) / "figures", result, y_test=y_test, test_logits=test_logits,
                                    metrics_csv=metrics_csv)
    sections = evaluation_sections(result, figures, run_dir) + list(extra_sections)
    return write_run_report(run_dir, title=title, sections=sections, result=result, subtitle=subtitle)
