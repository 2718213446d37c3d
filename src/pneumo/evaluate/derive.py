"""A new operating point for a model: a NEW model folder whose threshold is chosen on validation data by a policy,
with a versioned record of where it came from. The source model is never changed (evaluation never changes a model).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from pneumo import atomic
from pneumo.config import read_yaml
from pneumo.data.rundir import CONFIG, FOLDS, TRAINING_METRICS, RunDir
from pneumo.data.splits import VAL_FOLD_KINDS, paths_digest, recorded_val_fold
from pneumo.errors import ConfigError, DataError, ModelError
from pneumo.evaluate.intervals import exact_interval
from pneumo.evaluate.metrics import binary_metrics, bootstrap_cis, choose_threshold
from pneumo.evaluate.operating import adaptation_points
from pneumo.infer.card import card_markdown, md_text, record_card
from pneumo.models.records import check_crossfit
from pneumo.models.scores import p_pneumonia, threshold_on_calibrated_scale
from pneumo.models.sidecar import (
    CARD_KEY,
    check_new_folder,
    companion_files,
    read_meta,
    resolve_model,
    weights_path,
    write_meta,
)
from pneumo.policy import (
    at_chance,
    finite_interval,
    low_specificity_warning,
    missed_pneumonia_warning,
    parse_policy,
    policy_warning,
)
from pneumo.provenance import utc_now
from pneumo.templates import fmt_threshold

log = logging.getLogger(__name__)
AUC_RESAMPLES = 1000  # the bootstrap of the ROC-AUC on the images a threshold is chosen on


def derive_model(model: str | os.PathLike | None, policy: str, out_dir: str | os.PathLike, *,
                 data: str | None = None, val: str | os.PathLike | None = None) -> dict:
    """Write a NEW model folder whose operating point is ``policy``, chosen on validation data; the source is untouched.

    The new folder holds a copy of the weights, the sidecar with the new threshold and an ``operating_point`` record
    (policy, threshold, the val images it came from: their count, classes and a digest of their paths, the source
    model and its previous operating point, a version number), and the run's config.yaml/folds.csv when the source is
    a run, so that ``pneumo evaluate --model OUT`` and ``pneumo predict --model OUT`` work on it.

    Args:
        model: a run folder, a checkpoint or None for the shipped model.
        policy: ``youden``, ``sensitivity:X`` or ``triage``.
        out_dir: the new model folder (must not exist or be empty).
        data: the dataset, when the model's val fold must be rebuilt from it (default: the run's, or $PNEUMO_DATA).
        val: choose on this labelled folder / CSV instead of the model's own val fold.

    Returns:
        The ``operating_point`` record, with ``left_out`` (the files of ``val`` left out, by path, with the reason) for
        the console: the folder travels, so its record names the labelled set by its name and counts the files left
        out (a hospital's paths and file names hold record and accession numbers).
    """
    from pneumo.evaluate.fitted import fitted_on_these
    from pneumo.evaluate.labelled import find_labelled, lost_classes, patients_with_copies
    from pneumo.evaluate.scoring import load_models, score_labelled, val_scores, withheld

    parse_policy(policy)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty: give a new folder for the new model")
    sidecar = resolve_model(model)
    check_new_folder(out, sidecar)
    (predictor,) = load_models(model)
    if predictor.backend != "torch":  # `load_models` runs ONNX Runtime only where the weights are missing
        raise ModelError(f"{sidecar.name} has only an ONNX export: a new operating point is written beside the "
                         "PyTorch weights; give the model the export was made from")
    left_out: dict[str, str] = {}
    if val is not None:
        rows, not_read = find_labelled(val)
        y, logits, table, unreadable, images, predictions = score_labelled([predictor], val, table=rows, binary=True)
        _, checks = withheld(predictor, predictions)  # chosen on the images the model gives a verdict, as predict does
        keep = ~checks["flags"] if checks else np.ones(len(y), dtype=bool)
        if not keep.any():
            raise DataError(f"the model withholds a verdict from all {len(y)} images of {val} (out of distribution "
                            "or turned): no threshold can be chosen on them")
        lost = lost_classes(rows["label"], table["label"][keep])
        if lost:
            raise DataError(f"{val}: {lost}: a threshold needs both classes (the files are named above and by "
                            "pneumo evaluate --data)")
        y, logits = np.asarray(y)[keep], logits[keep]
        # the CSV's patient_id (or a DICOM's PatientID): whole patients in every count, a film listed twice as one
        found, copies, _, known = patients_with_copies(table, images)
        if copies:
            log.warning("%d of these images are pixel-identical copies of another one listed: counted as listed, with "
                        "its original as one patient (list each film once)", copies)
        groups = None if found is None else found[keep]
        kind = "labelled CSV" if Path(val).is_file() else "labelled folder"
        paths = table["path"][keep].tolist()
        left_out = {**unreadable, **not_read}  # unreadable or refused, and files not read (by name)
        adapted_on = fitted_on_these([predictor], paths)
        if adapted_on:  # as evaluate warns: a threshold set on them reads the model's own training images
            log.warning("%d of these %d images are ones the model was adapted on: a threshold chosen on them is set "
                        "on images the model was trained on (choose it on other patients)", adapted_on, len(paths))
        where = {"kind": kind, "location": Path(val).name, "n_not_assessed": int((~keep).sum()),
                 "n_adapted_on": adapted_on, "n_copies": copies,
                 "n_left_out": len(left_out),  # each file by its bytes' SHA-256 (no path travels with the model):
                 "files_sha256": sorted(atomic.sha256_file(path) for path in paths)}  # evaluate finds any of them
    elif predictor.meta.extra.get("adaptation"):  # no val fold: the policies its adaptation laid out, if this is one
        return _from_adaptation(sidecar, predictor.meta, policy, out)
    else:
        got = val_scores([predictor], data=data, strict=True)  # the fold itself, or why not
        if got is None:
            raise DataError("the model's val fold cannot be rebuilt (no folds.csv and no dataset): pass --data FOLDER "
                            "or --dataset DIR")
        y, logits, paths, where = got
        groups, known = None, False
    return _derive(sidecar, out, policy, *_chosen(policy, np.asarray(y), logits, groups, where, paths, known),
                   left_out)


def _chosen(policy: str, y: np.ndarray, logits: np.ndarray, groups: np.ndarray | None, where: dict,
            paths: list[str], patients: bool = True) -> tuple[float, dict, str | None]:
    """The threshold ``policy`` gives these scores, the record of what it was chosen on (counts, exact intervals of
    the sensitivity and specificity it reaches and the ROC-AUC with its interval, over whole patients where
    ``groups`` names them) and what to warn: too few images or patients for the policy, and a model that ranks
    them at chance (a review: a Youden point was written on images the model ranked at 0.40, and served)."""
    p = p_pneumonia(logits)
    yb = (y != 0).astype(np.int64)
    threshold = choose_threshold(yb, p, policy)
    at = binary_metrics(yb, p, threshold)
    cis = bootstrap_cis(yb, p, threshold, n_resamples=AUC_RESAMPLES, seed=0, groups=groups)
    chosen = {**where, "n": len(yb), "n_pneumonia": int(yb.sum()), "paths_sha256": paths_digest(paths),
              "sensitivity": at["sensitivity"], "specificity": at["specificity"],
              "sensitivity_exact_ci": list(cis.get("sensitivity", exact_interval(at["tp"], at["tp"] + at["fn"]))),
              "specificity_exact_ci": list(cis.get("specificity", exact_interval(at["tn"], at["tn"] + at["fp"]))),
              "roc_auc": at["roc_auc"], "roc_auc_ci": finite_interval(list(cis.get("roc_auc", []))) or None}
    unit, counts = "images", (int(yb.sum()), int((yb == 0).sum()))
    if groups is not None:  # the policy's uncertainty is the patients' (43 films of 22 patients are 22)
        counts = (np.unique(groups[yb == 1]).size, np.unique(groups[yb == 0]).size)  # (images: a copy counted once)
        if patients:
            unit = "patients"
            chosen["patients_by_class"] = {"pneumonia": counts[0], "normal": counts[1]}
    chance = None
    if at_chance(at, cis):
        ci = chosen["roc_auc_ci"]
        chance = (f"the model ranks these images at or below chance (ROC-AUC {at['roc_auc']:.3f}"
                  + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + "): no threshold makes it usable on them; do "
                  "not use it here (check the labels, or adapt it to this site: pneumo adapt)")
    warning = "; ".join(w for w in (chance, policy_warning(policy, *counts, unit)) if w) or None
    return threshold, chosen, warning


def _from_adaptation(sidecar: Path, meta, policy: str, out: Path) -> dict:
    """An adapted model has no val fold: the new operating point is one its adaptation chose on its cross-fitted
    scores (the card's and the report's table of policies), taken as recorded; another policy needs labelled images."""
    points = adaptation_points(meta.extra, sidecar.parent)
    if policy not in points:
        raise DataError(f"{sidecar.parent} is an adapted model: it has no val fold of its own, and its adaptation laid "
                        f"out {', '.join(points) or 'no policy'} on its cross-fitted scores, not {policy}; choose "
                        "that one on labelled images of its site with --data FOLDER|CSV (other patients than the "
                        "ones it was adapted on)")
    point, site = points[policy], meta.extra["adaptation"].get("site") or {}
    n, n_pneumonia = site.get("n_images"), (site.get("by_label") or {}).get("PNEUMONIA")
    chosen = {"kind": "the adaptation's cross-fitted scores", "location": "adapt.json", "n": n,
              "n_pneumonia": n_pneumonia, "paths_sha256": site.get("paths_sha256"),
              "sensitivity": point.get("sensitivity"), "specificity": point.get("specificity"),
              **{k: point[k] for k in ("sensitivity_exact_ci", "specificity_exact_ci") if point.get(k)}}
    patients = site.get("patients_by_class") or {}  # counted as adapt counts them (older records: images)
    if patients:
        warning = policy_warning(policy, patients.get("pneumonia", 0), patients.get("normal", 0), "patients")
    else:
        warning = policy_warning(policy, n_pneumonia, n - n_pneumonia) if n and n_pneumonia is not None else None
    return _derive(sidecar, out, policy, float(point["threshold"]), chosen, warning, {})


def _derive(sidecar: Path, out: Path, policy: str, threshold: float, chosen_on: dict, warning: str | None,
            left_out: dict[str, str]) -> dict:
    """Write the new model folder at ``threshold``; its ``operating_point`` record (with ``left_out`` for the console)."""
    meta = read_meta(sidecar)
    previous = meta.extra.get("operating_point") or {}
    on = f"on the {chosen_on.get('n') or '?'} images it was chosen on ({chosen_on.get('kind', 'labelled')})"
    missed = missed_pneumonia_warning(chosen_on.get("sensitivity"), chosen_on.get("sensitivity_exact_ci"),
                                      measured=f"sensitivity {on}")
    low = low_specificity_warning(chosen_on.get("specificity"), chosen_on.get("specificity_exact_ci"),
                                  measured=f"specificity {on}", advice="do not use the model at this operating point")
    warning = "; ".join(w for w in (warning, low, missed) if w) or None  # (a hospital walk: youden of an adapted model's
    record = {  # table missed most pneumonias, and operating-point said only that the classes were few)
        "version": int(previous.get("version", 1)) + 1,
        "policy": policy, "threshold": threshold, "warning": warning, "chosen_on": chosen_on,
        # the model's val fold, where the threshold was chosen elsewhere: evaluate still checks a rebuilt one against it
        **({"val_fold": fold} if chosen_on.get("kind") not in VAL_FOLD_KINDS
           and (fold := recorded_val_fold(meta.extra)) else {}),
        # the source by its folder and file name, not this machine's path: the new folder travels (a review)
        "derived_from": {"model": f"{sidecar.parent.name}/{sidecar.name}", "weights_sha256": meta.sha256,
                         "threshold": meta.threshold, "threshold_policy": meta.threshold_policy},
        "created": utc_now(),
    }
    with atomic.folder(out, owned=frozenset(), replace=False) as work:  # whole or not at all
        _write_model(work, out.name, sidecar, meta, policy, threshold, record)
    return {**record, "left_out": dict(sorted(left_out.items()))}


def _write_model(work: Path, name: str, sidecar: Path, meta, policy: str, threshold: float, record: dict) -> None:
    """The new model folder's files, in ``work``: the source's weights, checks and run files, a sidecar with the new
    operating point (``name``: the folder's final name)."""
    source, new = sidecar.parent, RunDir(work)
    check_crossfit(sidecar, meta)  # the adapted-on list goes along only as recorded
    shutil.copy2(weights_path(sidecar, meta), new.weights)
    for file in companion_files(meta):  # the checks and the adapted-on list travel with the weights
        if (source / file).is_file():
            shutil.copy2(source / file, work / file)
    for file in (CONFIG, FOLDS, TRAINING_METRICS):
        if RunDir.holds(sidecar) and (source / file).is_file():
            shutil.copy2(source / file, work / file)
    if new.config.is_file():
        import yaml

        cfg = read_yaml(new.config)
        cfg.setdefault("eval", {})["threshold_policy"] = policy
        cfg["name"] = name
        atomic.write_text(new.config, yaml.safe_dump(cfg, sort_keys=False))
    # the old metrics were measured at the old operating point: evaluate the new model for its own
    # ... and the source's card (its name, its test figures at its own threshold) is not this model's; an adapted
    # model's card says what it was adapted on (a generic one would call it a pediatric Guangzhou model): it goes
    # along under a heading that says which operating point its figures are at
    card = card_markdown(sidecar, meta) if meta.extra.get("adaptation") else None
    extra = {key: value for key, value in meta.extra.items() if key not in ("model_card", CARD_KEY)}
    kept = {k: v for k, v in meta.metrics.items() if k == "site_crossfit_n"} | (  # threshold-free: still this model's
        {"site_crossfit": {k: v for k, v in meta.metrics["site_crossfit"].items() if k in ("roc_auc", "pr_auc")}}
        if meta.metrics.get("site_crossfit") else {})  # (a review: a derived adapted model's site AUC read n/a)
    meta = dataclasses.replace(meta, threshold=threshold, threshold_policy=policy, weights_file=new.weights.name,
                               metrics=kept, config={**meta.config, "name": name} if meta.config else meta.config,
                               extra={**extra, "operating_point": record})
    write_meta(new.model, meta)
    if card:
        chosen = record["chosen_on"]
        atomic.write_text(new.model.with_suffix(".md"), (
            f"# {md_text(name)}: a new operating point of an adapted model\n\nThreshold {fmt_threshold(threshold)} on the "
            f"uncalibrated P(pneumonia) ({fmt_threshold(threshold_on_calibrated_scale(threshold, meta.temperature))} "
            "on the calibrated scale), "
            f"policy `{policy}`, chosen on {chosen['n']} images ({chosen.get('kind', 'its val fold')}, `pneumo "
            f"operating-point`) on {record['created']}; the same weights as {md_text(source.name)}, whose card follows. Its figures, and its "
            f"warnings about its operating point, are at that model's own threshold "
            f"({fmt_threshold(record['derived_from']['threshold'])}), not at this one: evaluate this model on other patients for "
            "its own." + (f"\n\n**Warning** at this operating point: {md_text(record['warning'])}." if record["warning"]
                          else "") + "\n\n" + card))
        record_card(new.model)
