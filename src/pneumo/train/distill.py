"""Distillation targets: the teachers' (an ensemble's) logits on the training images, computed once before training.

Offline knowledge distillation (Hinton et al. 2015): each teacher is a finished run trained on *exactly* this run's
train fold (its val and test folds never seen), fed the same preprocessed images; the student is trained against
their mean probability (`pneumo.train.loop.target_loss`). The teachers score the cached, un-augmented images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pneumo.config import RunConfig
from pneumo.data.splits import first_different_fold
from pneumo.errors import ConfigError
from pneumo.models.checkpoint import load_checkpoint
from pneumo.models.runtime import predict_logits

log = logging.getLogger(__name__)
# data options that change the pixels a model sees: teacher and student must agree on them
PIXEL_OPTIONS = ("image_size", "resize_policy", "intensity", "markers", "crop")


def check_teacher(teacher: Path, cfg: RunConfig, folds: pd.DataFrame, teacher_cfg: dict) -> None:
    """ConfigError unless ``teacher`` trained on this run's train fold (and no other image) with the same task and
    the same pixel preprocessing: a teacher that saw this run's val images would leak them into training."""
    fold = first_different_fold(folds, pd.read_csv(teacher / "folds.csv"), ("train", "val"))
    if fold is not None:
        raise ConfigError(f"teacher {teacher} was trained on another {fold} fold (other data, split seed or "
                          "val_fraction): distil only from runs on the same split")
    data = teacher_cfg.get("data", {})
    if data.get("task", "binary") != cfg.data.task:
        raise ConfigError(f"teacher {teacher} is a {data.get('task')} model, this run is {cfg.data.task}")
    for key in PIXEL_OPTIONS:
        if key in data and data[key] != getattr(cfg.data, key, data[key]):
            raise ConfigError(f"teacher {teacher} was trained with data.{key}={data[key]}, this run has "
                              f"{getattr(cfg.data, key)}: teacher and student must see the same pixels")


def teacher_logits(cfg: RunConfig, folds: pd.DataFrame, x_train: torch.Tensor, *, device: torch.device) -> torch.Tensor:
    """log of the teachers' mean probability on ``x_train`` (uint8 (N, 1, S, S), the train fold in folds order)."""
    probs = []
    for teacher in map(Path, cfg.train.teachers):
        model, meta = load_checkpoint(teacher / "model.json")
        check_teacher(teacher, cfg, folds, meta.config or {})  # (the config lives in the sidecar: one read)
        log.info("distillation: scoring %d train images with teacher %s", len(x_train), teacher)
        logits = predict_logits(model.to(device), x_train, batch_size=2 * cfg.train.batch_size, device=device,
                                amp=cfg.train.amp)
        probs.append(torch.softmax(torch.from_numpy(logits).float(), 1).numpy())
    return torch.from_numpy(np.log(np.clip(np.mean(probs, axis=0), 1e-12, 1.0))).float()
