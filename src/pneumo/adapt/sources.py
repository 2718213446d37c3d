"""The two kinds of images an adaptation reads: the new site's labelled images (decoded once, preprocessed as the
model expects, grouped by patient) and the source hospital's (a rehearsal pool from the model's train fold, its val
fold for the OOD threshold and its official test split to report on); and the site's unlabelled images a site check
reads (`site_items`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo import atomic
from pneumo.adapt.overlap import leave_out_site
from pneumo.config import RunConfig, model_config
from pneumo.data.decode import MAX_BYTES, read_file
from pneumo.data.files import MAX_LISTED, FoundFiles, find_images
from pneumo.errors import ConfigError, DataError, InputError, PneumoError
from pneumo.evaluate.labelled import (
    join_copies,
    known_columns,
    listed_file,
    read_table,
    refuse_listed_twice,
    refuse_missing,
    separator_hint,
)
from pneumo.infer.batch import expand_inputs
from pneumo.models.sidecar import CheckpointMeta

log = logging.getLogger(__name__)


@dataclass
class SiteImages:
    """A site's readable labelled images: ``table`` (path, label, subtype, patient_id, file_sha256: the SHA-256 of
    each file, by which the adaptation's overlaps and records name it), ``x`` uint8 (N, S, S),
    ``y`` class indices; ``errors`` {path: why} for the files left out; ``patients_given``: the CSV named patients
    (otherwise a DICOM's PatientID, as a keyed hash, groups its films, and every other image is its own patient);
    ``logits``: the source model's scores of ``x``; ``n_copies``: images
    pixel for pixel the same as an earlier one (put in its patient group: a copy never sits on the other side of a
    split); ``assessed``: where the source model gives a verdict, as `pneumo predict` decides it."""

    table: pd.DataFrame
    x: np.ndarray
    y: np.ndarray
    errors: dict[str, str]
    patients_given: bool
    location: str
    logits: np.ndarray
    n_copies: int = 0
    assessed: np.ndarray | None = None  # the source model gives a verdict (not out of distribution, not turned)
    n_patient_tags: int = 0  # without a patient_id column: images grouped by their DICOM PatientID (hashed)

    @property
    def groups(self) -> np.ndarray:
        return self.table["patient_id"].to_numpy()

    def patients_per_class(self) -> tuple[int, int]:
        """Patients with a pneumonia image, patients with a normal image: the intervals a policy warning judges count
        whole patients (an audit: the warning counted images, so 150 films of 50 patients passed as enough)."""
        return len(set(self.groups[self.y != 0])), len(set(self.groups[self.y == 0]))

    def counts(self) -> dict:
        pneumonia, normal = self.patients_per_class()
        return {"n_images": len(self.y), "n_patients": int(self.table["patient_id"].nunique()),
                "by_label": {str(k): int(v) for k, v in self.table["label"].value_counts().sort_index().items()},
                "patients_by_class": {"pneumonia": pneumonia, "normal": normal},
                "n_unreadable": len(self.errors), "patients_given": self.patients_given, "n_copies": self.n_copies,
                "n_patient_tags": self.n_patient_tags}


@dataclass
class SourceImages:
    """The source hospital's images as the model preprocesses them; ``None`` fields where the dataset is absent."""

    root: str | None = None
    pool_x: np.ndarray | None = None
    pool_y: np.ndarray | None = None
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    test_groups: np.ndarray | None = None  # the patient of each test image (intervals count whole patients)
    note: str = ""
    sizes: dict = field(default_factory=dict)
    site_in_val: int = 0  # site images in the source's val fold: left out of ``val_x`` (`overlap.leave_out_site`)
    split_note: str = ""  # why the rebuilt split may not be the model's own (`evaluate.scoring.val_fold_mismatch`)

    @property
    def available(self) -> bool:
        return self.pool_x is not None


MAX_SUBGROUPS = 20  # values of a --by column adapt reports (a column of IDs would carry each into the folder)


def load_site(data: str | os.PathLike, predictor, by: tuple[str, ...] = ()) -> SiteImages:
    """Decode, preprocess and score every labelled image of a folder or ``path,label[,patient_id]`` CSV, as external
    validation does (`pneumo.evaluate.scoring.score_labelled`: the input gate predict and serve apply; refused or
    unreadable images are left out and listed; one film under two labels is refused). ``logits`` are the model's own
    scores of them. ``by``: CSV columns
    the adaptation reports subgroups of (checked here, before any decoding)."""
    from pneumo.evaluate.labelled import check_columns, labelled_images, patients
    from pneumo.evaluate.scoring import score_labelled

    if len(predictor.classes) != 2:
        raise DataError("pneumo adapt supports binary models (NORMAL / PNEUMONIA)")
    rows = labelled_images(data)
    _check_rows(rows, data)
    rows = check_columns(rows, by, data)
    for column in by:  # each value gets a row in the card and the record, which travel with the model folder
        n = rows[column].nunique()
        if column == "patient_id" or n > MAX_SUBGROUPS:
            raise ConfigError(f"--by {column}: {n} distinct values (an identifier?): the adapted model's card and "
                              f"records travel with its folder and would list each; give a column of at most "
                              f"{MAX_SUBGROUPS} values (view, sex, scanner), or measure it with pneumo evaluate --by")
    y, logits, table, errors, images, results = score_labelled([predictor], data, table=rows)  # the list read once
    if errors:  # named here, on the site's own console; the model folder that travels only counts them
        log.warning("%d file(s) could not be read and are left out: %s", len(errors),
                    "; ".join(f"{path}: {why}" for path, why in list(errors.items())[:5]) + ("; ..." if len(errors) > 5
                                                                                           else ""))
    patients_given = "patient_id" in table.columns
    ids = patients(table)  # the rule evaluate's intervals count patients by; None: every image its own patient
    ids = ("\0" + table["path"].astype(str)).to_numpy() if ids is None else ids
    tags = 0 if patients_given else sum(str(i).startswith("dicom:") for i in ids)
    groups, copies = join_copies(images, pd.Series(ids))
    table["patient_id"] = groups
    table["file_sha256"] = [atomic.sha256_file(path) for path in table["path"]]  # once: checks and records use it
    return SiteImages(table, images, y, errors, patients_given, str(Path(data).absolute()), logits, copies,
                      np.array([r.assessed for r in results], dtype=bool), tags)


def _check_rows(table: pd.DataFrame, data: str | os.PathLike) -> None:
    """A ``patient_id`` column all or nothing: with gaps the folds could split a patient, so a blank is an error naming
    the first case (a file listed twice is refused by `labelled_images`, for every command)."""
    if "patient_id" not in table.columns:
        return
    blank = table.loc[table["patient_id"] == "", "path"]
    if len(blank):
        raise DataError(f"{data}: {len(blank)} of {len(table)} rows have no patient_id (e.g. {blank.iloc[0]}): fill "
                        "them in, or drop the column to count every image as its own patient")


def source_config(meta: CheckpointMeta) -> dict | None:
    """The run configuration the model was trained with (an adapted model keeps its source's)."""
    return meta.config or (meta.extra.get("adaptation") or {}).get("source_config")


def model_folds(meta: CheckpointMeta, dataset: str | os.PathLike | None) -> tuple[RunConfig, pd.DataFrame] | None:
    """The model's own split of its training dataset (``dataset``, else the path its config records if it exists,
    else ``$PNEUMO_DATA``), or None for a model that records no configuration. Raises `PneumoError` when the
    dataset is not there."""
    from pneumo.data.manifest import resolve_root
    from pneumo.data.splits import folds_for

    config = source_config(meta)
    if not config or not config.get("data"):
        return None
    cfg: RunConfig = model_config(config)
    saved = cfg.data.root if cfg.data.root and Path(cfg.data.root).exists() else None
    cfg.data.root = str(resolve_root(dataset or saved).absolute())
    return cfg, folds_for(cfg)


def load_source(meta: CheckpointMeta, dataset: str | None, *, pool: int, seed: int, n_val: int = 400,
                site_sha256: Mapping[str, str] | None = None) -> SourceImages:
    """The rehearsal pool (a seeded class-stratified draw of ``pool`` train-fold images), up to ``n_val`` val-fold
    images and the official test split, from the dataset the model was trained on (``dataset``, else the path in its
    config, else ``$PNEUMO_DATA``), none of them a site image (``site_sha256``: path -> SHA-256 of the file; a site
    image in the test split or the train fold is refused, `overlap.leave_out_site`). Never raises for a missing
    dataset: returns an empty `SourceImages` with a note."""
    from pneumo.data.cache import image_cache
    from pneumo.data.splits import labels
    from pneumo.evaluate.scoring import val_fold_bytes_note, val_fold_mismatch

    try:
        found = model_folds(meta, dataset)
    except PneumoError as exc:
        return SourceImages(note=f"the source dataset is not available ({exc}): no rehearsal, no source report "
                                 "(pass --dataset DIR)")
    if found is None:
        return SourceImages(note="the model records no training configuration: no rehearsal, no source report")
    cfg, folds = found
    if cfg.data.task != meta.task:
        raise DataError(f"the model's task {meta.task} differs from its config's {cfg.data.task}")
    val = folds[folds["fold"] == "val"]
    split_note = val_fold_mismatch(meta, val, Path(cfg.data.root).name) or val_fold_bytes_note(
        meta, val, Path(cfg.data.root).name)
    folds, in_val = leave_out_site(folds, site_sha256 or {})
    rng = np.random.default_rng(seed)

    def draw(fold: str, n: int) -> pd.DataFrame:
        part = folds[folds["fold"] == fold]
        if n >= len(part):
            return part
        picked = [g.iloc[rng.choice(len(g), max(1, round(n * len(g) / len(part))), replace=False)]
                  for _, g in part.groupby("label", sort=True)]  # class-stratified
        return pd.concat(picked).sort_index()

    out = SourceImages(root=cfg.data.root, site_in_val=in_val, split_note=(
        f"{split_note}: the source images the OOD and orientation checks are refitted on, and the site images' "
        "train/val/test checks, follow this split, not the model's") if split_note else "")
    for name, fold, n in (("pool", "train", pool), ("val", "val", n_val), ("test", "test", len(folds))):
        rows = draw(fold, n)
        if rows.empty:
            continue
        images = np.asarray(image_cache(cfg, rows.reset_index(drop=True)).images)
        setattr(out, f"{name}_x", images)
        setattr(out, f"{name}_y", labels(rows, cfg.data.task))
        out.sizes[name] = len(rows)
        if name == "test":
            out.test_groups = rows["patient_key"].astype(str).to_numpy()
    return out


def site_items(data: str | os.PathLike, *, outputs: tuple[str, ...] = ()
               ) -> tuple[list[tuple[str, Callable[[], bytes]]], dict]:
    """(path, reader) for the site's images: a folder (as `pneumo predict` discovers it) or a CSV with ``path``; and
    the folder's files not read (`not_read`), from the same walk of the folder. In a folder, a subfolder holding one
    of ``outputs`` (a site check's ``site.json``: this check's --out, or an earlier one's) is not read: its figures
    were scored as site images by the next check, which then called the site shifted (a site-check audit)."""
    source = Path(data).expanduser()
    if not source.exists():
        raise DataError(f"site data not found: {data}")
    left_out = {"n_not_read": 0, "not_read": {}}  # a CSV lists what it reads
    if source.is_file() and source.suffix.lower() == ".csv":
        table = read_table(source)
        column = known_columns(table, source).get("path")
        if column is None:
            raise DataError(f"{source} needs a 'path' column, has {', '.join(table.columns) or 'none'}"
                            + separator_hint(table))
        blank = table.index[table[column].str.strip() == ""]
        if len(blank):  # a row without its image: named, as evaluate and adapt name it
            raise DataError(f"{source}:{blank[0]}: no path")
        files = [listed_file(source, text) for text in table[column]]
        refuse_listed_twice(data, [str(f) for f in files])
        refuse_missing(source, files)
    elif source.is_dir():
        found = find_images(source)
        holds: dict[Path, bool] = {}  # folder -> holds one of ``outputs``

        def in_output(image: Path) -> bool:
            for folder in image.parents:
                if folder == source or source not in folder.parents:
                    return False
                if holds.setdefault(folder, any((folder / name).is_file() for name in outputs)):
                    return True
            return False

        for image in [f for f in found.images if in_output(f)]:
            found.images.remove(image)
            found.ignored[image] = "in the output folder of a site check"
        files, left_out = found.images, not_read(found)
    else:
        try:
            files = expand_inputs([str(source)])
        except InputError:
            raise DataError(f"no images found in {data}") from None
    if not files:
        raise DataError(f"no images {'listed' if source.is_file() else 'found'} in {data}")
    return [(str(f), _file_reader(f)) for f in files], left_out


def _file_reader(path: Path) -> Callable[[], bytes]:
    """The file's bytes when called, read as predict reads them (`data.decode.read_file`: bounded, no device)."""
    def read() -> bytes:
        if not path.exists():
            raise InputError("missing")
        return read_file(path, MAX_BYTES)

    return read


def not_read(found: FoundFiles) -> dict:
    """A folder's files the site check does not read (hidden, another suffix, no regular file), with the reason, as
    `pneumo predict` and `pneumo evaluate` leave them out (the first `MAX_LISTED` listed)."""
    left = {str(p): reason for p, reason in sorted({**found.skipped, **found.ignored}.items())}
    return {"n_not_read": len(left), "not_read": dict(list(left.items())[:MAX_LISTED])}
