"""Out-of-distribution statistics of an existing model, and the share of the test fold they flag.

* `fit_ood_for(model_path)`: (re)fit the statistics of a run folder or a checkpoint -- the shipped default model
  included (`pneumo ood fit src/pneumo/assets/default-model.json`). The train/val split is rebuilt with the library
  from the config stored in the sidecar (same data, split seed and fraction), checked against the run's
  ``folds.csv`` when there is one, and the features come from the checkpoint's own weights.
* `summarize_test_ood(...)`: what `pneumo evaluate` reports: how many test images score above the val-chosen threshold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pneumo.config import from_dict
from pneumo.data.cache import image_cache
from pneumo.data.manifest import resolve_root
from pneumo.data.rundir import RunDir, read_folds
from pneumo.data.splits import folds_for
from pneumo.errors import ConfigError
from pneumo.models.ood import DEFAULT_PERCENTILE, load_ood
from pneumo.models.runtime import select_device
from pneumo.models.sidecar import read_meta, resolve_model
from pneumo.train.ood import fit_trained_ood, fit_trained_orientation
from pneumo.train.probe import extract_features


def summarize_test_ood(sidecar: Path, entry: Mapping[str, Any] | None, model: torch.nn.Module, images: np.ndarray,
                       *, device: torch.device, batch_size: int = 64) -> dict | None:
    """Share of ``images`` (the test fold, uint8 (N, S, S)) flagged out of distribution by the statistics the
    sidecar's ``ood`` entry names; None without statistics."""
    stats = load_ood(sidecar, entry)
    if stats is None or len(images) == 0:
        return None
    scores = stats.scores(extract_features(model, images, batch_size=batch_size, device=device, amp=False,
                                           desc="ood test features"))
    flagged = int(stats.flags(scores).sum())
    return {"n": len(scores), "n_flagged": flagged, "share_flagged": flagged / len(scores),
            "threshold": stats.threshold, "percentile": stats.percentile, "method": stats.method,
            "median_score": float(np.median(scores))}


def ood_note(result: dict) -> str:
    """A short phrase for report subtitles ("" when the run has no OOD statistics)."""
    ood = result.get("ood")
    if not ood:
        return ""
    return (f" · out-of-distribution flags on test {ood['n_flagged']}/{ood['n']} ({100 * ood['share_flagged']:.1f} %, "
            f"threshold = val p{ood['percentile']:g})")


def fit_ood_for(model_path: str | os.PathLike, *, data: str | None = None,
                percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Fit (or refit) the OOD statistics of an existing run folder or checkpoint sidecar; returns the ``ood`` entry.

    Args:
        model_path: a run folder, ``<stem>.json`` or ``<stem>.safetensors`` (the shipped model's sidecar works).
        data: the dataset; default: the root stored in the checkpoint's config if it exists, else ``$PNEUMO_DATA``.
        percentile: the val percentile that becomes the flag threshold.
    """
    sidecar = resolve_model(model_path)
    stored_config = read_meta(sidecar).config
    if not isinstance(stored_config, dict):
        raise ConfigError(f"{sidecar} stores no training config: cannot rebuild its train/val split")
    cfg = from_dict(stored_config)
    cfg.data.root = str(resolve_root(data or _existing(cfg.data.root)))
    folds = folds_for(cfg)
    stored = RunDir(sidecar.parent).folds
    if stored.is_file():
        _check_same_split(folds, read_folds(stored), stored)
    cache = image_cache(cfg, folds)
    entry = fit_trained_ood(cfg, sidecar, cache, folds, device=select_device(cfg.train.device), percentile=percentile)
    fit_trained_orientation(sidecar, cache, folds, device=select_device(cfg.train.device), seed=cfg.train.seed)
    return entry


def _existing(root: str | None) -> str | None:
    return root if root and Path(root).expanduser().exists() else None


def _check_same_split(folds: pd.DataFrame, stored: pd.DataFrame, where: Path) -> None:
    for name in ("train", "val"):
        if sorted(folds.loc[folds["fold"] == name, "path"]) != sorted(stored.loc[stored["fold"] == name, "path"]):
            raise ConfigError(f"the rebuilt {name} fold differs from {where} (another dataset copy?): "
                              "pass the --dataset the run was trained on")
