"""Fit a checkpoint's out-of-distribution statistics (`pneumo.models.ood`) on its own train fold, threshold on val.

`fit_trained_ood` is called at the end of `train` with the run's image cache (a probe reuses its cached features);
`pneumo.evaluate.ood.fit_ood_for` does the same for an existing run or the shipped model. It writes
``<stem>.ood.safetensors`` and the sidecar's ``ood`` entry (the sidecar is rewritten atomically; the weights and
their checksum are untouched).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pneumo.config import RunConfig
from pneumo.data.cache import ImageCache, default_cache_dir
from pneumo.data.splits import labels
from pneumo.models.checkpoint import load_checkpoint
from pneumo.models.ood import DEFAULT_PERCENTILE, fit_ood, save_ood
from pneumo.models.sidecar import read_meta, write_meta
from pneumo.train.probe import cached_features, extract_features

log = logging.getLogger(__name__)


def fit_trained_ood(cfg: RunConfig, sidecar: Path, cache: ImageCache, folds: pd.DataFrame, *,
                    device: torch.device, percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Fit the OOD statistics of the checkpoint at ``sidecar`` (its saved weights: the best epoch) and record them."""
    model, _ = load_checkpoint(sidecar)
    model.to(device)
    fold = folds["fold"].to_numpy()
    rows = {name: np.flatnonzero(fold == name) for name in ("train", "val")}
    if cfg.model.mode == "probe":  # the probe's features are already cached on disk: no extra pass
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
        every = cached_features(model, cache.images, cache_key=cache.key, cache_dir=cache_dir, device=device,
                                amp=cfg.train.amp, batch_size=cfg.train.batch_size)
        feats = {name: every[r] for name, r in rows.items()}
    else:
        feats = {name: extract_features(model, cache.images[r], batch_size=cfg.train.batch_size, device=device,
                                        amp=cfg.train.amp, desc=f"ood {name} features") for name, r in rows.items()}
    y_train = labels(folds.iloc[rows["train"]], cfg.data.task)
    stats = fit_ood(feats["train"], y_train, feats["val"], percentile=percentile)
    entry = save_ood(sidecar, stats)
    write_meta(sidecar, dataclasses.replace(read_meta(sidecar), ood=entry))
    log.info("OOD statistics: %s on %d train images; threshold %.2f = val percentile %s (%d val images)",
             stats.method, stats.n_train, stats.threshold, stats.percentile, stats.n_val)
    return entry
