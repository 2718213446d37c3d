"""Out-of-distribution score: how far an image's pooled backbone features lie from the training features.

Method ``mahalanobis-tied`` (Lee et al., NeurIPS 2018): one mean per class and one covariance shared by the classes,
estimated on the train fold's class-centred features with Ledoit-Wolf shrinkage (scikit-learn); an image's score is
its Mahalanobis distance to the nearest class mean. The flag threshold is a stated percentile of the **val** fold's
scores (the test fold is never used). The statistics are data, not pickle: ``<stem>.ood.safetensors`` (class means
and precision matrix, float32) next to the checkpoint, and an ``ood`` entry in its JSON sidecar (method, feature
layer, threshold, percentile, counts, the file's SHA-256, checked on load).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.errors import ModelError
from pneumo.models.tensorfile import write_safetensors

METHOD = "mahalanobis-tied"
LAYER = "forward_features"  # the pooled backbone features, i.e. the input of the model's linear head
DEFAULT_PERCENTILE = 99.5
SUFFIX = ".ood.safetensors"
_COUNTS = ("n_train", "n_val", "n_features", "n_classes")


def check_file_name(name: Any, *, field: str, suffix: str, source: str) -> str:
    """``name`` if it is a plain file name next to the sidecar (no folder, no ``..``, no control character, ending in
    ``suffix``); ``ModelError`` otherwise."""
    if not (isinstance(name, str) and name.endswith(suffix) and len(name) <= 255 and name not in (".", "..")
            and not re.search(r"[/\\\x00-\x1f\x7f]", name) and not name.startswith(".")):
        raise ModelError(f"{source}: {field} must be a plain file name ending in {suffix} (no folder), got "
                         f"{repr(name)[:80]}")
    return name


def check_ood_entry(entry: Any, *, source: str) -> Mapping[str, Any]:
    """A sidecar's ``ood`` entry if every value is usable (method and layer this code computes, a plain file name, a
    SHA-256, finite threshold >= 0, percentile in [50, 100), counts >= 0, shrinkage in [0, 1]); ``ModelError``."""
    def bad(name: str, rule: str) -> ModelError:
        value = entry.get(name) if isinstance(entry, Mapping) else entry
        return ModelError(f"{source}: ood.{name} must be {rule}, got {repr(value)[:80]}")

    if not isinstance(entry, Mapping):
        raise ModelError(f"{source}: ood must be an object (or null for none), got {repr(entry)[:80]}")
    if entry.get("method", METHOD) != METHOD or entry.get("layer", LAYER) != LAYER:
        raise bad("method" if entry.get("method", METHOD) != METHOD else "layer", f"{METHOD} on {LAYER}")
    check_file_name(entry.get("file"), field="ood.file", suffix=SUFFIX, source=source)
    if not (isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
        raise bad("sha256", "64 lowercase hex digits")
    if not _finite(entry.get("threshold")) or entry["threshold"] < 0:
        raise bad("threshold", "a finite number >= 0")
    if not _finite(entry.get("percentile", DEFAULT_PERCENTILE)) or not 50 <= entry.get("percentile", 99.5) < 100:
        raise bad("percentile", "a number in [50, 100)")
    for name in _COUNTS:
        if name in entry and not (isinstance(entry[name], int) and not isinstance(entry[name], bool)
                                  and entry[name] >= 0):
            raise bad(name, "a whole number >= 0")
    if not _finite(entry.get("shrinkage", 0.0)) or not 0 <= entry.get("shrinkage", 0.0) <= 1:
        raise bad("shrinkage", "a number in [0, 1]")
    return entry


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class OodStats:
    """Fitted statistics. ``means``: (C, F) class means; ``precision``: (F, F) shared inverse covariance."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    percentile: float
    n_train: int
    n_val: int
    shrinkage: float = 0.0
    method: str = METHOD
    layer: str = LAYER

    @property
    def num_features(self) -> int:
        return int(self.means.shape[1])

    @cached_property
    def _float64(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(precision, means, m P m per class) in float64, once: converting a 1,280² matrix per batch cost ~1 ms an
        image in `pneumo predict` (issue 24)."""
        precision, means = np.asarray(self.precision, np.float64), np.asarray(self.means, np.float64)
        return precision, means, np.einsum("ij,ij->i", means @ precision, means)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (N,) of features (N, F) to the nearest class mean; non-finite features score inf."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.num_features:
            raise ModelError(f"OOD statistics expect (N, {self.num_features}) features, got {tuple(f.shape)}")
        precision, means, mpm = self._float64
        # (f - m) P (f - m) = f P f - 2 f P m + m P m: one (N, F) x (F, F) product for all the class means
        with np.errstate(invalid="ignore", over="ignore"), _one_blas_thread():  # non-finite: inf/nan, scored inf
            fp = f @ precision
            d2 = np.einsum("ij,ij->i", fp, f)[:, None] - 2.0 * fp @ means.T + mpm[None, :]
        scores = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
        return np.where(np.isfinite(scores), scores, np.inf)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is above the val-chosen threshold."""
        return np.asarray(scores) > self.threshold


@cache
def _blas() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


_BLAS_LOCK = threading.Lock()
_BLAS_USERS: dict[str, Any] = {"count": 0, "limiter": None}  # callers inside `_one_blas_thread`, and its limiter


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on the calling thread only, for the duration: a few rows against a 1,280² matrix gain nothing from a
    second thread, whose spinning took the cores from the model and the decoders (the service: 63 -> 81 req/s at 16
    clients, issue 24). Process-wide while it lasts (threadpoolctl), so it is counted: the first caller sets the limit,
    the last one out restores the setting (a batch worker leaving must not lift it under another one still
    computing). Cheap (~10 us)."""
    with _BLAS_LOCK:
        if _BLAS_USERS["count"] == 0:
            _BLAS_USERS["limiter"] = _blas().limit(limits=1, user_api="blas")
        _BLAS_USERS["count"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS["count"] -= 1
            if _BLAS_USERS["count"] == 0:
                _BLAS_USERS["limiter"].restore_original_limits()


def fit_ood(f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray, *,
            percentile: float = DEFAULT_PERCENTILE) -> OodStats:
    """Class means + shared Ledoit-Wolf covariance on train features; threshold = ``percentile`` of val scores."""
    from sklearn.covariance import LedoitWolf

    f_train, f_val, y_train = np.asarray(f_train, np.float64), np.asarray(f_val, np.float64), np.asarray(y_train)
    if not 50.0 <= percentile < 100.0:
        raise ModelError(f"the OOD val percentile must be in [50, 100), got {percentile}")
    if len(f_train) < 2 or len(f_val) < 1 or f_train.shape[1:] != f_val.shape[1:]:
        raise ModelError(f"OOD fit needs >= 2 train and >= 1 val feature rows of one width, got "
                         f"{f_train.shape} and {f_val.shape}")
    classes = np.unique(y_train)
    means = np.stack([f_train[y_train == c].mean(axis=0) for c in classes])
    centred = f_train - means[np.searchsorted(classes, y_train)]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    stats = OodStats(means=means, precision=lw.precision_, threshold=0.0, percentile=float(percentile),
                     n_train=len(f_train), n_val=len(f_val), shrinkage=float(lw.shrinkage_))
    stats.threshold = float(np.percentile(stats.scores(f_val), percentile))
    return stats


def save_ood(sidecar: str | os.PathLike, stats: OodStats) -> dict:
    """Write ``<stem>.ood.safetensors`` next to the checkpoint's ``<stem>.json``; returns the sidecar's ``ood`` entry
    (file name, checksum, settings). The sidecar itself is not changed here."""
    from safetensors.numpy import save

    path = Path(sidecar).with_suffix(SUFFIX)
    data = save({"means": np.ascontiguousarray(stats.means, np.float32),
                 "precision": np.ascontiguousarray(stats.precision, np.float32)},
                metadata={"format": "pneumo-ood/1", "method": stats.method})
    return {"method": stats.method, "layer": stats.layer, "file": path.name,
            "sha256": write_safetensors(path, data), "threshold": stats.threshold,
            "percentile": stats.percentile, "threshold_fold": "val", "n_train": stats.n_train, "n_val": stats.n_val,
            "n_features": stats.num_features, "n_classes": int(stats.means.shape[0]), "shrinkage": stats.shrinkage}


def refuse_orphan(sidecar: str | os.PathLike, suffix: str, entry: str) -> None:
    """A check's file (``*<suffix>`` not another sidecar's) beside a sidecar without its ``entry``: the entry was
    deleted, and the model would silently run without that check (issue 24).

    Raises:
        ModelError: one line naming the file and what to do.
    """
    sidecar = Path(sidecar)
    for orphan in sorted(sidecar.parent.glob(f"*{suffix}")):  # own stem, or a source's copied along (operating-point,
        owner = orphan.with_name(orphan.name[: -len(suffix)] + ".json")  # export): unless another sidecar's here
        if orphan.is_file() and (owner == sidecar or not owner.is_file()):
            raise ModelError(f"{sidecar.name} has no `{entry}` entry but {orphan.name} lies beside it: the entry was "
                             "removed; restore the sidecar, refit with `pneumo ood fit`, or delete the file")


def load_ood(sidecar: str | os.PathLike, entry: Mapping[str, Any] | None) -> OodStats | None:
    """The OOD statistics named by a sidecar's ``ood`` entry (``None`` for none), verified against its SHA-256."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if entry is None:
        refuse_orphan(sidecar, SUFFIX, "ood")
        return None
    check_ood_entry(entry, source=f"checkpoint sidecar {Path(sidecar).name}")
    path = Path(sidecar).with_name(entry["file"])
    if not path.is_file():
        raise ModelError(f"{Path(sidecar).name} names OOD statistics {path.name} but the file is missing: copy it "
                         "next to the checkpoint, or refit with `pneumo ood fit`")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ModelError(f"checksum mismatch for {path}: the OOD statistics are corrupted or were replaced; "
                         "refit them with `pneumo ood fit`")
    try:
        tensors = load(data)
        means, precision = tensors["means"], tensors["precision"]
    except (SafetensorError, KeyError, ValueError) as exc:
        raise ModelError(f"cannot read OOD statistics {path}: {exc}") from None
    if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
        raise ModelError(f"{path}: means {means.shape} and precision {precision.shape} do not fit together")
    return OodStats(means=means, precision=precision, threshold=float(entry["threshold"]),
                    percentile=float(entry.get("percentile", DEFAULT_PERCENTILE)), n_train=int(entry.get("n_train", 0)),
                    n_val=int(entry.get("n_val", 0)), shrinkage=float(entry.get("shrinkage", 0.0)),
                    method=entry.get("method", METHOD), layer=entry.get("layer", LAYER))
