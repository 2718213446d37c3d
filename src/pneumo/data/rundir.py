"""A run folder's file names, written once: every layer that reads or writes a run (training, evaluation, validation,
operating points, the OOD fit) asks `RunDir` for a path instead of spelling the name; and the run's lock
(`run_lock`), which every process that writes into a run folder holds."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pneumo.errors import ConfigError

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
EARLIER_KEY = "adapted_before"  # an adapted model's earlier adaptations and the SHA-256 of each image they used
_HELD: set[str] = set()  # the run locks this process holds


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


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, *, hint: str = "wait for it to finish") -> Iterator[None]:
    """Hold the lock of the run folder ``run_dir`` (``.<name>.lock`` beside it, its parent folder must exist) while
    this process writes into the run: `pneumo train` (also ``--force`` and ``--resume``), `pneumo evaluate --model
    RUN` and `pneumo ood fit` of one run exclude each other, so none replaces or rewrites files another has read.
    A lock this process holds already is entered again (`pneumo train` evaluates the run it trained). The lock goes
    with the process (``flock``), so a killed one leaves none behind.

    Raises:
        ConfigError: another process holds it (the message ends with ``hint``).
    """
    from pneumo.atomic import short_name

    folder = Path(run_dir).resolve()  # a symlinked run folder or out folder: the same lock file
    path = folder.parent / f".{short_name(folder.name)}.lock"
    if str(path) in _HELD:
        yield
        return
    try:
        opened = open(path, "a+", encoding="ascii")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:  # (was the bare "[Errno 1] ... .run.lock": an audit of machine failures)
        raise ConfigError(f"cannot create the run lock {path} ({exc.strerror or exc}): pneumo locks a run in the "
                          f"folder holding it; make {folder.parent} writable, or copy the run folder to one you can "
                          "write") from None
    with opened as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip()
            who = f" (pid {pid})" if pid.isdigit() else ""
            raise ConfigError(f"run {run_dir} is being trained or evaluated by another process{who}: {hint}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _HELD.add(str(path))
        try:
            yield
        finally:
            _HELD.discard(str(path))
