"""Fit a checkpoint's out-of-distribution statistics (`pneumo.models.ood`) on its own train fold, threshold on val.

`fit_trained_ood` is called at the end of `train` with the run's image cache (a probe reuses its cached features);
`fit_ood_for` does the same for an existing run or the shipped model (`pneumo ood fit`): the train/val split is rebuilt
from the config stored in the sidecar (same data, split seed and fraction), checked against the run's ``folds.csv``
when there is one, and the features come from the checkpoint's own weights. It writes
``<stem>.ood.safetensors`` and the sidecar's ``ood`` entry (the sidecar is rewritten atomically; the weights and
their checksum are untouched).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pneumo.config import RunConfig, model_config
from pneumo.data.cache import ImageCache, default_cache_dir, image_cache
from pneumo.data.manifest import resolve_root
from pneumo.data.rundir import RunDir, read_folds, run_lock
from pneumo.data.splits import folds_for, labels, other_val_fold, recorded_val_fold, split_changes
from pneumo.errors import ConfigError
from pneumo.models.checkpoint import load_checkpoint
from pneumo.models.ood import DEFAULT_PERCENTILE, fit_ood, save_ood
from pneumo.models.runtime import select_device
from pneumo.models.sidecar import read_meta, resolve_model, write_meta
from pneumo.train.probe import cached_features, feature_extractor, features_in_bf16

log = logging.getLogger(__name__)
CATCH_SAMPLE = 300  # upright images whose transforms set the orientation threshold (all of them when fewer)


def fit_trained_ood(cfg: RunConfig, sidecar: Path, cache: ImageCache, folds: pd.DataFrame, *,
                    device: torch.device, percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Fit the OOD statistics of the checkpoint at ``sidecar`` (its saved weights: the best epoch) and record them."""
    model, _ = load_checkpoint(sidecar)
    model.to(device)
    fold = folds["fold"].to_numpy()
    rows = {name: np.flatnonzero(fold == name) for name in ("train", "val")}
    # fp32 features, as evaluation, predict and serve score them (on CUDA, training's bf16 would fit other statistics)
    if cfg.model.mode == "probe" and not features_in_bf16(device, cfg.train.amp):  # the probe's, cached: no pass
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
        every = cached_features(model, cache.images, cache_key=cache.key, cache_dir=cache_dir, device=device,
                                amp=cfg.train.amp, batch_size=cfg.train.batch_size)
        feats = {name: every[r] for name, r in rows.items()}
    else:
        extract = feature_extractor(model, device=device, amp=False, batch_size=cfg.train.batch_size)
        feats = {name: extract(cache.images[r], f"ood {name} features") for name, r in rows.items()}
    y_train = labels(folds.iloc[rows["train"]], cfg.data.task)
    stats = fit_ood(feats["train"], y_train, feats["val"], percentile=percentile)
    entry = save_ood(sidecar, stats)
    write_meta(sidecar, dataclasses.replace(read_meta(sidecar), ood=entry))
    log.info("OOD statistics: %s on %d train images; threshold %.2f = val percentile %s (%d val images)",
             stats.method, stats.n_train, stats.threshold, stats.percentile, stats.n_val)
    return entry


def fit_trained_orientation(sidecar: Path, cache: ImageCache, folds: pd.DataFrame, *, device: torch.device,
                            n_train: int = 300, n_val: int = 300, seed: int = 0) -> dict:
    """Fit the orientation check (`pneumo.models.orientation`) of the checkpoint at ``sidecar`` on a seeded draw of
    ``n_train`` train-fold images under every transform, threshold on ``n_val`` untransformed val images; record it."""
    model, _ = load_checkpoint(sidecar)
    rng = np.random.default_rng(seed)
    fold = folds["fold"].to_numpy()
    pick = {name: np.sort(rng.permutation(np.flatnonzero(fold == name))[:n]) for name, n in
            (("train", n_train), ("val", n_val))}
    return record_orientation(sidecar, model.to(device), np.asarray(cache.images[pick["train"]]),
                              np.asarray(cache.images[pick["val"]]), device=device, seed=seed)


def record_orientation(sidecar: Path, model: torch.nn.Module, images: np.ndarray, upright: np.ndarray, *,
                       device: torch.device, seed: int = 0) -> dict:
    """Learn the orientation check of ``model`` from ``images`` under every transform (threshold from the ``upright``
    images, as they are and under every transform: `fit_orientation`), write ``<stem>.orient.safetensors`` and the
    sidecar's ``orientation`` entry; returns it."""
    from pneumo.models.orientation import TRANSFORMS, fit_orientation, save_orientation, transform

    features = feature_extractor(model, device=device, amp=False, batch_size=64)  # folded once for the 12 sets

    train = {name: features(transform(images, name), f"orientation: {name}") for name in TRANSFORMS}
    some = upright if len(upright) <= CATCH_SAMPLE else upright[np.sort(
        np.random.default_rng(seed).choice(len(upright), CATCH_SAMPLE, replace=False))]
    val = {"upright": features(upright, "orientation: upright")} | {
        name: features(transform(some, name), f"orientation (val): {name}") for name in TRANSFORMS[1:]}
    head, refused = fit_orientation(train, val, seed=seed)
    entry = save_orientation(sidecar, head, n_train=len(images), n_val=len(upright), seed=seed,
                             val_refused={name: round(share, 4) for name, share in refused.items()})
    meta = read_meta(sidecar)
    write_meta(sidecar, dataclasses.replace(meta, extra={**meta.extra, "orientation": entry}))
    log.info("orientation check: %d transforms x %d images; P(upright) threshold %.3f; on %d val images it refuses "
             "%.1f %% upright, >= %.1f %% of each transform", len(TRANSFORMS), len(images), head.threshold,
             len(upright), 100 * refused["upright"], 100 * min(v for k, v in refused.items() if k != "upright"))
    return entry


def fit_ood_for(model_path: str | os.PathLike, *, data: str | None = None,
                percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Fit (or refit) the OOD statistics of an existing run folder or checkpoint sidecar; returns the ``ood`` entry.

    Args:
        model_path: a run folder, ``<stem>.json`` or ``<stem>.safetensors`` (the shipped model's sidecar works).
        data: the dataset; default: the root stored in the checkpoint's config if it exists, else ``$PNEUMO_DATA``.
        percentile: the val percentile that becomes the flag threshold.

    Raises:
        ConfigError: among others, another process trains or evaluates the run (its lock, `run_lock`, is held while
            the sidecar is read and rewritten).
    """
    if not 50.0 <= percentile < 100.0:  # before the scan, the cache and the features (it was checked after them)
        raise ConfigError(f"--percentile must be in [50, 100), got {percentile}")
    sidecar = resolve_model(model_path)
    with run_lock(sidecar.parent) if RunDir.holds(sidecar) else contextlib.nullcontext():  # a run's: as evaluate
        return _fit_ood_locked(sidecar, data=data, percentile=percentile)


def _fit_ood_locked(sidecar: Path, *, data: str | None, percentile: float) -> dict:
    stored_config = read_meta(sidecar).config
    if not isinstance(stored_config, dict):
        raise ConfigError(f"{sidecar} stores no training config: cannot rebuild its train/val split")
    cfg = model_config(stored_config)
    cfg.data.root = str(resolve_root(data or _existing(cfg.data.root)))
    folds = folds_for(cfg)
    stored = RunDir(sidecar.parent).folds
    if stored.is_file():
        _check_same_split(folds, read_folds(stored), stored)
    elif other_val_fold(chosen := recorded_val_fold(read_meta(sidecar).extra),
                        folds.loc[folds["fold"] == "val", "path"].tolist()):  # no folds.csv (the shipped model)
        # the recorded val fold is the check (a data audit: a pruned copy set the thresholds on training images)
        raise ConfigError(f"the val fold rebuilt from {cfg.data.root} is not the one {sidecar.name}'s threshold was "
                          f"chosen on ({chosen.get('n')} images): pass the --dataset it was trained on")
    cache = image_cache(cfg, folds)
    device = select_device(cfg.train.device, here=True)  # a run trained on a GPU, refitted on a machine without one
    entry = fit_trained_ood(cfg, sidecar, cache, folds, device=device, percentile=percentile)
    fit_trained_orientation(sidecar, cache, folds, device=device, seed=cfg.train.seed)
    return entry


def _existing(root: str | None) -> str | None:
    return root if root and Path(root).expanduser().exists() else None


def _check_same_split(folds: pd.DataFrame, stored: pd.DataFrame, where: Path) -> None:
    """The statistics are fitted on the run's own train fold and thresholded on its val fold: the rebuilt ones must
    hold the images (path and content) ``folds.csv`` recorded."""
    changes = split_changes(folds, stored, ("train", "val"))
    if changes:
        raise ConfigError(f"the rebuilt train/val split differs from {where}: {changes} (another dataset copy?): "
                          "pass the --dataset the run was trained on")
