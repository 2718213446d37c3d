"""`pneumo adapt`: adapt a model to a new site's labelled images and write a NEW model folder.

The procedure, in order:

1. Decode the site's labelled images once (folder or ``path,label[,patient_id]`` CSV); without a ``patient_id``
   column a DICOM's PatientID (a keyed hash) groups its films and every other image is its own patient (the report
   says which). Refused, by the SHA-256 of each file: images the source model was adapted on, images of its
   dataset's official test split or train fold (`pneumo.adapt.overlap`), and one film under two labels; images of
   its val fold are left out of the source images the checks are refitted on.
2. Score them with the source model as it is (the "before" row).
3. Patient-grouped, class-stratified k-fold cross-fitting: for each fold, fine-tune the source model on the other
   folds (+ rehearsal of source training images, `pneumo.adapt.finetune`) and score the held-out patients. These
   out-of-fold scores are the only ones the local performance and the operating point come from: no image is scored
   by a model adapted on it.
4. The operating point: the threshold policy (default ``sensitivity:0.95``) applied to the out-of-fold scores, with
   exact (Clopper-Pearson) intervals on the sensitivity and specificity it reaches, and a warning when the site has
   too few positives for the policy; the temperature is fitted on the same out-of-fold logits.
5. The final model: the source model fine-tuned on ALL the site's images (+ rehearsal), same recipe.
6. Its out-of-distribution statistics refitted on source training images and the site's images (threshold: the
   99.5th percentile over the source val images and the site's images), so the site no longer reads as "unknown".
7. The source hospital before/after (its official test split, reported only, never used to choose anything).

The source model is only read; `pneumo predict/serve/evaluate --model OUT` use the new folder as any model.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from pneumo.adapt.finetune import finetune, rehearsal_count
from pneumo.adapt.overlap import refuse_adapted_on
from pneumo.adapt.sources import SiteImages, SourceImages, load_site, load_source, source_config
from pneumo.adapt.stats import calibration_warning, patient_folds
from pneumo.adapt.write import OOD_POOL, write_adapted
from pneumo.config import AdaptConfig
from pneumo.data.splits import paths_digest
from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.calibration import fit_temperature, nll, p_pneumonia
from pneumo.evaluate.external import subgroups
from pneumo.evaluate.intervals import bca_ci, jackknife_weights, resample_weights, weighted_auc
from pneumo.evaluate.metrics import (
    binary_metrics,
    bootstrap_cis,
    choose_threshold,
    grouped_proportion_cis,
    proportion_cis,
)
from pneumo.evaluate.operating import policies_to_report
from pneumo.models.runtime import select_device
from pneumo.models.sidecar import check_new_folder
from pneumo.policy import policy_warning
from pneumo.provenance import record as provenance_record
from pneumo.provenance import utc_now
from pneumo.train.loop import step_seed

log = logging.getLogger(__name__)
MIN_PER_CLASS = 10  # fewer labelled images of a class than this: no adaptation (nothing to cross-fit honestly)


def score(model: torch.nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Logits (N, C) of uint8 images (N, S, S) in fp32, through the same fast path as `Predictor`'s torch backend."""
    from pneumo.data.preprocess import to_unit
    from pneumo.models.fast import fast_inference

    model = model.to(device).eval()
    batches = [to_unit(torch.from_numpy(np.array(x[i:i + batch_size]))[:, None].to(device))
               for i in range(0, len(x), batch_size)]
    run = fast_inference(model, batches[0][:2])
    with torch.no_grad():
        return np.concatenate([run(b).float().cpu().numpy() for b in batches])


def ranking_gain(y: np.ndarray, p_before: np.ndarray, p_after: np.ndarray, *, n_bootstrap: int, seed: int,
                 groups: np.ndarray | None = None) -> dict:
    """How much better the cross-fitted scores rank the site's images than the source model does: the ROC-AUC
    difference on the same images, with a paired BCa bootstrap interval (both scores resampled together, whole
    patients when ``groups`` names them), and a warning when that interval does not lie above 0 (the adaptation has not shown
    that it helps: label more images)."""
    before, after = binary_metrics(y, p_before, 0.5)["roc_auc"], binary_metrics(y, p_after, 0.5)["roc_auc"]
    gain = {"roc_auc_before": before, "roc_auc_after": after, "gain": after - before, "ci": None, "warning": None}
    if n_bootstrap > 0:
        def difference(weights: np.ndarray) -> np.ndarray:
            return weighted_auc(weights, y, p_after)[0] - weighted_auc(weights, y, p_before)[0]

        jack = np.concatenate([difference(w) for w in jackknife_weights(len(y), groups)])
        point = float(difference(np.ones((1, len(y))))[0])
        gain["ci"] = bca_ci(difference(resample_weights(len(y), n_bootstrap, seed, groups)), point, jack, 0.95)
    lo = gain["ci"][0] if gain["ci"] else gain["gain"]
    if not lo > 0:  # NaN (one class) warns too
        gain["warning"] = (f"the cross-fitted ROC-AUC ({after:.3f}) is not clearly above the source model's on the same "
                           f"{len(y)} images, all of them ({before:.3f}; paired 95 % interval of the gain "
                           + (f"[{gain['ci'][0]:+.3f}, {gain['ci'][1]:+.3f}]" if gain["ci"] else "not computed")
                           + "): the adaptation has not shown that it helps here; label more images before using it")
    return gain


def trade_off(y: np.ndarray, p: np.ndarray, chosen: str, groups: np.ndarray | None = None) -> dict[str, dict]:
    """The standard policies and the chosen one, each applied to the cross-fitted scores: {policy: threshold,
    sensitivity and specificity there, with exact intervals} (what another policy would have given, in-sample)."""
    out = {}
    for policy in policies_to_report(chosen):
        threshold = choose_threshold(y, p, policy)
        m = binary_metrics(y, p, threshold)
        out[policy] = {"threshold": threshold, "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                       **exact_cis(y, p, threshold, groups)}
    return out


def exact_cis(y: np.ndarray, p: np.ndarray, threshold: float, groups: np.ndarray | None = None) -> dict[str, list]:
    """Exact (Clopper-Pearson) intervals on the sensitivity and specificity at ``threshold``; at the patients'
    effective sample size when ``groups`` names them (`grouped_proportion_cis`), as every other interval of the
    record."""
    if groups is not None:
        ci = grouped_proportion_cis(y, (p >= threshold).astype(np.int64), groups)
    else:
        m = binary_metrics(y, p, threshold)
        ci = proportion_cis(m["tp"], m["fp"], m["tn"], m["fn"])
    return {"sensitivity_exact_ci": list(ci["sensitivity"]), "specificity_exact_ci": list(ci["specificity"])}


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float, *, n_bootstrap: int, seed: int,
                 groups: np.ndarray | None = None) -> dict:
    """Metrics at one threshold with bootstrap CIs (whole patients resampled when ``groups`` names them), and exact
    intervals on sensitivity and specificity."""
    metrics = binary_metrics(y, p, threshold)
    return {"metrics": metrics, "ci": bootstrap_cis(y, p, threshold, n_resamples=n_bootstrap, seed=seed, groups=groups),
            **exact_cis(y, p, threshold, groups)}


def _check_out(out: Path, sidecar: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file: give a new folder for the adapted model")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: give a new folder for the adapted model")
    check_new_folder(out, sidecar)


def rehearsal_pool(source: SourceImages, cfg: AdaptConfig) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The source images rehearsed: ``cfg.rehearsal_pool`` of the loaded pool (a seeded draw when the pool was
    loaded larger for the OOD refit), or none when rehearsal is off or the dataset is absent."""
    if cfg.rehearsal <= 0 or not source.available:
        return None, None
    n = len(source.pool_y)
    if cfg.rehearsal_pool >= n:
        return source.pool_x, source.pool_y
    keep = np.sort(np.random.default_rng(cfg.seed).choice(n, max(1, cfg.rehearsal_pool), replace=False))
    return source.pool_x[keep], source.pool_y[keep]


def _check_site(site: SiteImages, folds: int) -> None:
    n_pos, n_neg = int(site.y.sum()), int((site.y == 0).sum())
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise DataError(f"{n_pos} pneumonia and {n_neg} normal images could be read: adaptation needs at least "
                        f"{MIN_PER_CLASS} of each")
    patients = {c: site.table.loc[site.y == c, "patient_id"].nunique() for c in (0, 1)}
    if min(patients.values()) < folds:
        raise DataError(f"{min(patients.values())} patients in the smaller class: fewer than the {folds} "
                        "cross-fitting folds (--folds)")


def adapt(model: str | os.PathLike | None, data: str | os.PathLike, out_dir: str | os.PathLike, *,
          dataset: str | None = None, cfg: AdaptConfig | None = None, n_bootstrap: int = 1000,
          device: str = "auto", by: tuple[str, ...] = ()) -> dict:
    """Adapt ``model`` (None: the shipped model) to the labelled images ``data``; write the new model to ``out_dir``.

    Args:
        model: run folder, checkpoint or None for the shipped model.
        data: labelled folder (NORMAL/, PNEUMONIA/) or CSV (``path,label`` and optionally ``patient_id``).
        out_dir: the new model folder (must be new or empty).
        dataset: the source training dataset for rehearsal and the source report (default: the model's, or
            $PNEUMO_DATA); absent: adapt without rehearsal and say so.
        cfg: the recipe (`AdaptConfig`; defaults are the measured ones).
        n_bootstrap: bootstrap resamples for the CIs.
        device: ``auto``, ``cpu`` or ``cuda``.
        by: CSV columns (e.g. ``view``) whose values get cross-fitted subgroup rows, source model beside.

    Returns:
        The adaptation record, also written to ``out_dir/adapt.json``.
    """
    from pneumo.infer.predictor import Predictor

    cfg = cfg or AdaptConfig()
    start = time.perf_counter()
    out = Path(out_dir)
    predictor = Predictor(model, backend="torch")
    _check_out(out, predictor.sidecar)
    site = load_site(data, predictor, by)
    _check_site(site, cfg.folds)
    site_sha256 = dict(zip(site.table["path"], site.table["file_sha256"], strict=True))
    refuse_adapted_on(predictor, site_sha256)
    # the OOD and orientation refits draw on the pool too, so it holds at least OOD_POOL images with rehearsal off
    source = load_source(predictor.meta, dataset, pool=max(cfg.rehearsal_pool, OOD_POOL), seed=cfg.seed,
                         site_sha256=site_sha256)
    for note in (source.note, source.split_note):
        if note:
            log.warning("%s", note)
    if source.site_in_val:
        log.warning("%d site image(s) are images of the source dataset's val fold: left out of the source images the "
                    "OOD and orientation checks are refitted on", source.site_in_val)
    run_on = select_device(device)
    base = predictor.torch_model
    config = source_config(predictor.meta)
    pool = rehearsal_pool(source, cfg)

    def fine_tune(rows: np.ndarray, k: int) -> torch.nn.Module:
        return finetune(base, site.x[rows], site.y[rows], cfg=cfg, source_x=pool[0], source_y=pool[1],
                        device=run_on, seed=step_seed(cfg.seed, k))

    z_before = site.logits
    z_oof = np.zeros_like(z_before)
    folds = patient_folds(site.y, site.groups, cfg.folds, cfg.seed)
    fold_of = np.zeros(len(site.y), dtype=np.int64)
    folds_start = time.perf_counter()
    for k, (train_rows, held_out) in enumerate(folds, start=1):
        fold_of[held_out] = k
        log.info("adapt: cross-fitting fold %d/%d (%d images, %d held out)", k, len(folds), len(train_rows),
                 len(held_out))
        z_oof[held_out] = score(fine_tune(train_rows, k), site.x[held_out], run_on)
        per_fold = (time.perf_counter() - folds_start) / k  # the rest: the other folds, then one on all images
        log.info("adapt: fold %d/%d done; about %.0f min left", k, len(folds),
                 per_fold * (len(folds) - k + len(site.y) / max(len(train_rows), 1)) / 60)
    crossfit_s = time.perf_counter() - start
    p_before, p_oof = p_pneumonia(z_before), p_pneumonia(z_oof)
    threshold = choose_threshold(site.y, p_oof, cfg.threshold_policy)
    log.info("adapt: final model on all %d images", len(site.y))
    final = fine_tune(np.arange(len(site.y)), 0)
    record = {
        # names only, as the site's: the folder travels, and a path says where it was made (a review)
        "source_model": {"location": f"{predictor.sidecar.parent.name}/{predictor.sidecar.name}",
                         "model_id": predictor.model_id,
                         "threshold": predictor.threshold, "threshold_policy": predictor.meta.threshold_policy},
        # the folder travels: the labels by their file's name, the unreadable files counted (the console named them):
        # a hospital's paths and file names hold record and accession numbers
        "site": {**site.counts(), "data": Path(site.location).name, "paths_sha256":
                 paths_digest(site.table["path"].tolist())},
        "recipe": cfg.model_dump(),
        "rehearsal": {"used": pool[0] is not None, "pool": 0 if pool[0] is None else len(pool[0]), "dataset": source.root and Path(source.root).name,
                      "note": source.note or None, "site_in_source_val": source.site_in_val,
                      "split_note": source.split_note or None},
        "operating_point": {"policy": cfg.threshold_policy, "threshold": threshold, "chosen_on": "cross-fitted scores",
                            "warning": policy_warning(cfg.threshold_policy, *site.patients_per_class(), "patients")},
        "operating_points": trade_off(site.y, p_oof, cfg.threshold_policy, site.groups),
        "temperature": (temperature := fit_temperature(z_oof, site.y)),
        "calibration_warning": calibration_warning(temperature, *_calibration_nll(z_oof, site.y, temperature)),
        "local": {"n": len(site.y), "folds": len(folds),
                  "before": _before(site, p_before, predictor.threshold, n_bootstrap, cfg.seed),
                  "after": at_threshold(site.y, p_oof, threshold, n_bootstrap=n_bootstrap, seed=cfg.seed,
                                        groups=site.groups),
                  "ranking": ranking_gain(site.y, p_before, p_oof, n_bootstrap=n_bootstrap, seed=cfg.seed,
                                          groups=site.groups),
                  "bootstrap": ("ROC-AUC, PR-AUC and F1: BCa bootstrap, whole patients resampled; accuracy, "
                                "sensitivity, specificity, precision: exact intervals at the patients' effective "
                                "sample size (counting images where each image is its own patient)"),
                  **({"subgroups": {
                      "before": subgroups(site.table, site.y, p_before, predictor.threshold, by,
                                          n_bootstrap=n_bootstrap, seed=cfg.seed, groups=site.groups),
                      "after": subgroups(site.table, site.y, p_oof, threshold, by, n_bootstrap=n_bootstrap,
                                         seed=cfg.seed, groups=site.groups)}} if by else {})},
        "source_site": _source_rows(predictor, final, source, threshold, run_on, n_bootstrap, cfg.seed),
        "bootstrap": {"n_resamples": int(n_bootstrap), "seed": int(cfg.seed)},
        "seconds": {"crossfit": round(crossfit_s, 1)},
        "created": utc_now(),
        "provenance": provenance_record(),  # the code that adapted it and its libraries
    }
    record["source_config"] = config
    if record["rehearsal"]["used"]:  # what the final fine-tune drew an epoch (the floor often decides it)
        record["rehearsal"]["per_epoch_final"] = rehearsal_count(cfg, len(site.y), record["rehearsal"]["pool"])
    record["seconds"]["before_writing"] = round(time.perf_counter() - start, 1)
    write_adapted(out, final, predictor, site, source, record, z_oof=z_oof, z_before=z_before, fold_of=fold_of,
                  device=run_on)
    record["seconds"]["total"] = round(time.perf_counter() - start, 1)
    return record


def _before(site: SiteImages, p: np.ndarray, threshold: float, n_bootstrap: int, seed: int) -> dict:
    """The source model at its stored threshold on the site, as `pneumo evaluate` and `predict` see it: on the images
    it gives a verdict (those out of distribution or turned get none), all of them when that leaves one class."""
    assessed = site.assessed if site.assessed is not None else np.ones(len(site.y), dtype=bool)
    kept, scope = assessed, "the images the source model gives a verdict"
    if np.unique(site.y[kept]).size < 2:
        kept, scope = np.ones(len(site.y), dtype=bool), "all images (those with a verdict hold one class)"
    return {"stored_threshold": at_threshold(site.y[kept], p[kept], threshold, n_bootstrap=n_bootstrap, seed=seed,
                                             groups=site.groups[kept]),
            "n_not_assessed": int((~assessed).sum()), "scope": scope}


def _calibration_nll(z: np.ndarray, y: np.ndarray, temperature: float) -> tuple[float, float]:
    """NLL per image of the calibrated probabilities, and of giving every image the share of pneumonia."""
    share = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
    constant = -float(np.mean(y * np.log(share) + (1 - y) * np.log(1 - share)))
    return nll(z, y, temperature), constant


def _source_rows(predictor, final: torch.nn.Module, source: SourceImages, threshold: float, device: torch.device,
                 n_bootstrap: int, seed: int) -> dict | None:
    """The source hospital's official test split before (the source model at its own threshold) and after (the
    adapted model at the new threshold): reported only."""
    if source.test_x is None:
        return None
    y = (source.test_y != 0).astype(np.int64)
    z_before = np.concatenate([predictor.logits(source.test_x[i:i + 64]) for i in range(0, len(y), 64)])
    p_after = p_pneumonia(score(final, source.test_x, device))
    groups = source.test_groups  # whole patients, as `pneumo evaluate` counts the split's intervals
    return {"split": "official test (reported only)", "n": len(y), "n_patients": len(set(groups)),
            "before": at_threshold(y, p_pneumonia(z_before), predictor.threshold, n_bootstrap=n_bootstrap, seed=seed,
                                   groups=groups),
            "after": at_threshold(y, p_after, threshold, n_bootstrap=n_bootstrap, seed=seed, groups=groups)}
