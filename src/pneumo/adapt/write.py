"""The adapted model's folder: ``model.safetensors`` + ``model.json`` (threshold and temperature from the cross-fitted
scores, the ``adaptation`` record), ``model.ood.safetensors`` (refitted), ``model.orient.safetensors`` (the refitted orientation check), ``model.md``
(its card), ``adapt.json``, ``crossfit_predictions.csv``, ``report.html`` and ``figures/`` (the report's ROC)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pneumo import atomic
from pneumo.adapt.sources import SiteImages, SourceImages
from pneumo.adapt.stats import patient_folds
from pneumo.data.rundir import CROSSFIT, CROSSFIT_KEY, EARLIER_KEY, RunDir
from pneumo.evaluate.calibration import p_pneumonia
from pneumo.evaluate.fitted import adapted_on_sha256
from pneumo.infer.card import record_card
from pneumo.models.checkpoint import save_checkpoint
from pneumo.models.ood import DEFAULT_PERCENTILE, fit_ood, save_ood
from pneumo.models.scores import threshold_on_calibrated_scale
from pneumo.models.sidecar import CARD_KEY, read_meta, write_meta
from pneumo.train.ood import record_orientation
from pneumo.train.probe import feature_extractor

log = logging.getLogger(__name__)
OOD_POOL = 600  # source training images the refitted OOD statistics use (a seeded draw of the rehearsal pool)
# sidecar fields that describe the source model's files or its own evaluation: not the adapted model's
NOT_INHERITED = ("sha256", "weights_file", "dtype", "created", "ood", "metrics", "training", "config",
                 "operating_point", "model_card", "commit", "adaptation", "orientation", CARD_KEY,
                 CROSSFIT_KEY, EARLIER_KEY)
ORIENT_POOL = 200  # source training images the refitted orientation check learns from, beside the site's


def earlier_adaptations(predictor) -> dict | None:
    """When the source model was itself adapted: each earlier adaptation (model id, date, images, patients) and the
    SHA-256 of every image any of them was adapted on, carried forward so that evaluate still tells those images
    apart (adapting an adapted model lost them: a review); None otherwise."""
    meta = predictor.meta
    if not meta.extra.get("adaptation"):
        return None
    before = meta.extra.get(EARLIER_KEY) or {}
    hashes = adapted_on_sha256(predictor) or set(before.get("files_sha256", []))  # (a list of paths: earlier ones)
    site = meta.extra["adaptation"].get("site", {})
    step = {"model_id": predictor.model_id, "created": meta.extra["adaptation"].get("created"),
            "n_images": site.get("n_images"), "n_patients": site.get("n_patients")}
    return {"chain": [*before.get("chain", []), step], "files_sha256": sorted(hashes)}


def write_adapted(out: Path, model: torch.nn.Module, predictor, site: SiteImages, source: SourceImages, record: dict,
                  *, z_oof: np.ndarray, z_before: np.ndarray, fold_of: np.ndarray, device: torch.device) -> Path:
    """Write the new model folder; returns its sidecar. Everything is written into a hidden sibling folder that is
    renamed to ``out`` once complete: an interrupted adaptation (Ctrl-C, out of memory) leaves no ``out`` that would
    load as a model without its OOD statistics, orientation check or card (``out``, if it exists, is empty)."""
    with atomic.folder(out, owned=frozenset(), replace=False) as work:
        _write_folder(work, out, model, predictor, site, source, record, z_oof=z_oof, z_before=z_before, fold_of=fold_of,
                      device=device)
    return RunDir(out).model


def _write_folder(work: Path, out: Path, model: torch.nn.Module, predictor, site: SiteImages, source: SourceImages,
                  record: dict, *, z_oof: np.ndarray, z_before: np.ndarray, fold_of: np.ndarray,
                  device: torch.device) -> None:
    """The folder's files, written into ``work`` (named ``out`` where a file shows the user its place)."""
    from pneumo.evaluate.report import to_jsonable

    inherited = {k: v for k, v in predictor.meta.to_json().items() if k not in NOT_INHERITED}
    earlier = earlier_adaptations(predictor)
    if earlier:  # the card and record say the source was itself adapted, and on how many images
        record["adapted_before"] = earlier["chain"]
    local = record["local"]["after"]["metrics"]
    meta = {**inherited, "mode": "adapted", "tta": False,  # the threshold was chosen on single-pass scores
            "commit": record["provenance"]["commit"],  # the code that adapted it (the source's commit is its own)
            "threshold": record["operating_point"]["threshold"],
            "threshold_policy": record["operating_point"]["policy"], "temperature": record["temperature"],
            "metrics": {"site_crossfit": {k: local[k] for k in ("accuracy", "sensitivity", "specificity", "f1",
                                                                 "roc_auc", "pr_auc")},
                        "site_crossfit_n": record["local"]["n"]},
            "adaptation": to_jsonable({k: v for k, v in record.items() if k != "local"}
                                      | {"ranking_warning": (record["local"].get("ranking") or {}).get("warning")}),
            **({EARLIER_KEY: earlier} if earlier else {})}
    seed = record["recipe"]["seed"]
    sidecar = save_checkpoint(work / "model", model, meta)
    record["ood"] = refit_ood(sidecar, model, site, source, device, seed=seed, folds=record["local"]["folds"])
    record["orientation"] = refit_orientation(sidecar, model, site, source, device, seed=seed)
    atomic.write_json(work / "adapt.json", to_jsonable(record))
    _write_predictions(work, site, z_oof, z_before, fold_of, record)
    written = read_meta(sidecar)  # the adapted-on list is recorded as the weights are: a lost or cut copy is refused
    write_meta(sidecar, dataclasses.replace(written, extra={**written.extra,
                                                            CROSSFIT_KEY: atomic.sha256_file(work / CROSSFIT)}))
    from pneumo.adapt.report import write_card, write_report

    write_card(work, record)
    record_card(sidecar)  # the card is covered by the sidecar's record as the weights and checks are
    write_report(work, record, site, z_oof=z_oof, z_before=z_before, shown=out)


def refit_ood(sidecar: Path, model: torch.nn.Module, site: SiteImages, source: SourceImages,
              device: torch.device, *, seed: int = 0, folds: int = 4) -> dict:
    """OOD statistics of the adapted model: class means and covariance over `OOD_POOL` images of the source rehearsal
    pool (when the source dataset is there) and the site's images; the flag threshold = the 99.5th percentile over
    the source val images' scores and the site images' out-of-fold scores (``folds`` patient-grouped folds, each
    scored by statistics fitted without it). Scored by statistics fitted on them, the site's images sit far closer
    than any new image of the site: without the source the adapted model refused every new image of its own site,
    and with it the limit was set partly on in-sample distances."""
    extract = feature_extractor(model, device=device, amp=False, batch_size=64)  # traced once for the three sets

    def features(x: np.ndarray) -> np.ndarray:
        return extract(x, "ood features")

    f_site, y_site = features(site.x), site.y
    f_pool, y_pool, f_source_val = np.zeros((0, f_site.shape[1])), np.zeros(0, y_site.dtype), None
    if source.available:
        keep = np.sort(np.random.default_rng(seed).choice(len(source.pool_x), min(OOD_POOL, len(source.pool_x)),
                                                        replace=False))
        f_pool, y_pool = features(source.pool_x[keep]), source.pool_y[keep]
        f_source_val = features(source.val_x) if source.val_x is not None else None
    stats = fit_ood(np.concatenate([f_pool, f_site]), np.concatenate([y_pool, y_site]),
                    f_site if f_source_val is None else np.concatenate([f_source_val, f_site]),
                    percentile=DEFAULT_PERCENTILE)
    held_out = np.empty(len(f_site))
    for train, held in patient_folds(y_site, site.groups, folds, seed):
        part = fit_ood(np.concatenate([f_pool, f_site[train]]), np.concatenate([y_pool, y_site[train]]), f_site[held])
        held_out[held] = part.scores(f_site[held])
    scores = held_out if f_source_val is None else np.concatenate([stats.scores(f_source_val), held_out])
    stats.threshold = float(np.percentile(scores, DEFAULT_PERCENTILE))
    basis = (("source train-fold sample + site images; threshold over source val + the site images' out-of-fold "
              "scores") if source.available else
             "site images only (source dataset absent); threshold over their out-of-fold scores")
    entry = {**save_ood(sidecar, stats), "fitted_on": basis}
    write_meta(sidecar, dataclasses.replace(read_meta(sidecar), ood=entry))
    return {"basis": basis, "n_train": stats.n_train, "n_val": stats.n_val, "threshold": stats.threshold}


def refit_orientation(sidecar: Path, model: torch.nn.Module, site: SiteImages, source: SourceImages,
                      device: torch.device, *, seed: int = 0) -> dict:
    """The orientation check of the adapted model (its features moved): learned from `ORIENT_POOL` source training
    images and the site's images under every transform; threshold over source val and site images, untransformed."""
    images, upright = site.x, site.x
    if source.available:
        keep = np.sort(np.random.default_rng(seed + 1).choice(len(source.pool_x), min(ORIENT_POOL, len(source.pool_x)),
                                                        replace=False))
        images = np.concatenate([source.pool_x[keep], site.x])
        upright = np.concatenate([source.val_x, site.x]) if source.val_x is not None else site.x
    entry = record_orientation(sidecar, model, images, upright, device=device, seed=seed)
    return {"n_train": entry["n_train"], "n_val": entry["n_val"], "threshold": entry["threshold"]}


def _write_predictions(out: Path, site: SiteImages, z_oof: np.ndarray, z_before: np.ndarray, fold_of: np.ndarray,
                       record: dict) -> None:
    # the model folder travels (to a vendor, another ward): patients by number of first appearance, not the site's
    # own IDs (a CSV's patient_id is a medical record number; a DICOM's is already a keyed hash), and images by the
    # SHA-256 of their file, not their path (a hospital's paths and file names hold record and accession numbers):
    # the site finds its own files with `sha256sum`, evaluate recognises them wherever they are copied to
    patient = pd.factorize(site.table["patient_id"].to_numpy())[0] + 1
    frame = pd.DataFrame({"file_sha256": site.table["file_sha256"].to_numpy(),
                          "label": site.table["label"],
                          "patient": [f"P{n:04d}" for n in patient],
                          "fold": fold_of,  # the cross-fitting fold that held it out (its score's model)
                          "p_source_model": p_pneumonia(z_before), "p_crossfit": p_pneumonia(z_oof),
                          "p_crossfit_calibrated": p_pneumonia(z_oof, record["temperature"])})
    threshold = record["operating_point"]["threshold"]
    frame["predicted_pneumonia"] = (frame["p_crossfit"] >= threshold).astype(int)
    frame["threshold"] = threshold  # the verdict's, on p_crossfit; and the same on p_crossfit_calibrated (an adapt audit)
    frame["threshold_calibrated"] = threshold_on_calibrated_scale(threshold, record["temperature"])
    atomic.write_csv(out / CROSSFIT, frame)
