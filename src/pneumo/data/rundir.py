"""A run folder's file names, written once: every layer that reads or writes a run (training, evaluation, validation,
operating points, the OOD fit) asks `RunDir` for a path instead of spelling the name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

MODEL = "model.json"  # the best checkpoint's sidecar
WEIGHTS = "model.safetensors"  # its weights
CONFIG = "config.yaml"
FOLDS = "folds.csv"
TRAINING_METRICS = "metrics.csv"  # the per-epoch curves
METRICS = "metrics.json"  # the evaluation
PREDICTIONS = "predictions.csv"
CROSSFIT = "crossfit_predictions.csv"  # an adapted model's out-of-fold scores of the images it was adapted on
CROSSFIT_KEY = "crossfit_sha256"  # its SHA-256 in the sidecar: evaluate tells the images it was adapted on by it


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"``{name}`` of the run folder.")


@dataclass(frozen=True)
class RunDir:
    """``RunDir(path).model``, ``.config``, ``.folds``, ... are the files of the run folder ``path``."""

    path: Path
    model = _file(MODEL)
    weights = _file(WEIGHTS)
    config = _file(CONFIG)
    folds = _file(FOLDS)
    metrics = _file(METRICS)
    predictions = _file(PREDICTIONS)

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    def is_run(self) -> bool:
        """A training run's folder: its config and its folds are there."""
        return self.config.is_file() and self.folds.is_file()

    @staticmethod
    def holds(sidecar: Path) -> bool:
        """Whether the checkpoint ``sidecar`` is a run folder's best model (its folder's folds and config are its)."""
        return sidecar.name == MODEL


def read_folds(path: str | os.PathLike) -> pd.DataFrame:
    """A ``folds.csv`` as written by training: every cell a string as written (no NaN for empty ``dup_group``; a
    file name that `atomic.write_csv` kept from running as a formula read back as it is)."""
    import pandas as pd  # the sidecar code that imports this module stays light (the service reads sidecars)

    from pneumo.atomic import from_csv_cell

    folds = pd.read_csv(path, keep_default_na=False, dtype={"dup_group": str})
    text = [c for c in folds.columns if folds[c].dtype == object]
    return folds.assign(**{c: folds[c].map(from_csv_cell) for c in text}) if text else folds
