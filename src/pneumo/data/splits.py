"""Patient-grouped, subtype-stratified, seeded train/val split; leakage check; label views per task."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pneumo.config import MAX_SEED
from pneumo.data.manifest import scan_dataset
from pneumo.errors import ConfigError, DataError, LeakageError, one_line

if TYPE_CHECKING:
    from pneumo.config import RunConfig

TASK_CLASSES = {"binary": ["NORMAL", "PNEUMONIA"], "3class": ["normal", "bacteria", "virus"]}


def class_names(task: str) -> list[str]:
    if task not in TASK_CLASSES:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASK_CLASSES)}")
    return list(TASK_CLASSES[task])


def labels(df: pd.DataFrame, task: str) -> np.ndarray:
    """Integer labels for a task: binary 0 = NORMAL, 1 = PNEUMONIA; 3class 0 = normal, 1 = bacteria, 2 = virus."""
    names = class_names(task)
    column = df["label"] if task == "binary" else df["subtype"]
    unknown = sorted(set(column) - set(names))
    if unknown:
        raise DataError(f"task {task}: images with label {unknown[0]!r} cannot be used (known: {', '.join(names)})")
    return column.map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)


def _linked_groups(df: pd.DataFrame) -> pd.Series:
    """Group id per row: patients linked by exact duplicates (same bytes under two patient keys) are merged."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, members in df.groupby("sha256")["patient_key"]:
        keys = list(members)
        for other in keys[1:]:
            parent[find(other)] = find(keys[0])
    return df["patient_key"].map(find)


def check_split(val_fraction: float, seed: int) -> None:
    """ConfigError unless the split's options are usable (a command checks them before it scans the dataset)."""
    if not 0.0 < val_fraction < 0.5:  # as data.val_fraction: val is the smaller part of the pool
        raise ConfigError(f"the val fraction must be in (0, 0.5), got {val_fraction}")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"the split seed must be within 0..{MAX_SEED}, got {seed}")


def assign_folds(df: pd.DataFrame, *, val_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Add a ``fold`` column: ``test`` = the official test split; the official train + val images are split by patient
    (``val_fraction`` of the patients of each subtype go to ``val``, seeded), duplicates kept together."""
    check_split(val_fraction, seed)
    out = df.copy()
    out["fold"] = np.where(out["split"] == "test", "test", "train")
    pool = out[out["split"] != "test"]
    groups = _linked_groups(pool)
    stratum = pool.groupby(groups)["subtype"].agg(lambda s: s.mode().iat[0])
    rng = np.random.default_rng(seed)
    val_groups: list[str] = []
    for subtype in sorted(stratum.unique()):
        members = np.array(sorted(stratum.index[stratum == subtype]))
        n_val = round(val_fraction * len(members))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_groups.extend(rng.permutation(members)[:n_val])
    out.loc[pool.index[groups.isin(val_groups).to_numpy()], "fold"] = "val"
    if (out["fold"] == "val").sum() == 0:
        raise DataError("the validation split is empty: the dataset has too few patients to split")
    check_leakage(out)
    return out


def check_leakage(df: pd.DataFrame, column: str = "fold") -> None:
    """Raise ``LeakageError`` when a patient or an exact duplicate (same bytes) sits in two splits."""
    problems = []
    for key, what in (("patient_key", "patient"), ("sha256", "exact duplicate")):
        spread = df.groupby(key)[column].nunique()
        bad = spread[spread > 1]
        if len(bad):
            group = df[df[key] == bad.index[0]].drop_duplicates(column)  # one file of each split it sits in
            example = group[["path", column]].to_numpy().tolist()
            problems.append(f"{len(bad)} {what} group(s) straddle splits, e.g. {example}")
    if problems:
        raise LeakageError("leakage: " + "; ".join(problems))


def leakage_report(df: pd.DataFrame, column: str = "fold") -> dict:
    """Counts of patients and duplicate groups in more than one split (for reports; ``check_leakage`` raises)."""
    return {
        "patients_in_two_splits": int((df.groupby("patient_key")[column].nunique() > 1).sum()),
        "duplicates_in_two_splits": int((df.groupby("sha256")[column].nunique() > 1).sum()),
        "duplicate_groups": int((df.groupby("sha256").size() > 1).sum()),
    }


def check_recorded_images(folds: pd.DataFrame, root: str | None, *, cache_dir: str | None = None,
                          used: tuple[str, ...] = ("val", "test")) -> None:
    """Refuse a run's recorded folds whose ``used`` images are missing from ``root`` or changed since they were
    recorded (their SHA-256 in the dataset's scan, which rescans what changed): a kept image cache would score the old
    pixels while reports name the files (a review).

    Raises:
        DataError: naming how many and the first one.
    """
    rows = folds[folds["fold"].isin(used)]
    now = rows["path"].map(scan_dataset(root, cache_dir=cache_dir).set_index("path")["sha256"])
    changed = rows["path"][now.ne(rows["sha256"])].tolist()  # (a missing file maps to NaN: changed)
    if changed:
        raise DataError(f"{len(changed)} image(s) of the run's {' and '.join(used)} folds are missing or changed since "
                        f"the run recorded them, e.g. {changed[0]}: evaluate it on the dataset it was trained on "
                        "(--dataset DIR), or train a new run on this one")


def split_changes(rebuilt: pd.DataFrame, recorded: pd.DataFrame, folds: tuple[str, ...]) -> str | None:
    """What differs between a rebuilt fold table and a run's recorded one (its ``folds.csv``) over ``folds``: how many
    images were added, removed, moved to another fold or changed content (``sha256``), with one of them for example;
    None when every image sits in the same fold with the same content."""
    columns = ["path", "fold"] + (["sha256"] if "sha256" in rebuilt and "sha256" in recorded else [])
    now, then = (t.loc[t["fold"].isin(folds), columns] for t in (rebuilt, recorded))
    both = now.merge(then, on="path", how="outer", suffixes=("", "_recorded"), indicator=True)
    kept = both["_merge"] == "both"
    kinds = {"added": both["_merge"] == "left_only", "removed": both["_merge"] == "right_only",
             "moved folds": kept & (both["fold"] != both["fold_recorded"])}
    if "sha256" in columns:
        kinds["changed content"] = kept & (both["sha256"] != both["sha256_recorded"])
    found = {kind: sorted(both.loc[rows, "path"].astype(str)) for kind, rows in kinds.items() if rows.any()}
    if not found:
        return None
    example = next(iter(found.values()))[0]
    return ", ".join(f"{len(paths)} image(s) {kind}" for kind, paths in found.items()) + f" (e.g. {one_line(example)})"


def take_slice(df: pd.DataFrame, per_group: int, *, seed: int = 0) -> pd.DataFrame:
    """At most ``per_group`` images per split x subtype (whole patients first), for smoke runs and tests."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, part in df.groupby(["split", "subtype"], sort=True):
        keys = rng.permutation(np.array(sorted(part["patient_key"].unique())))
        order = {k: i for i, k in enumerate(keys)}
        ranked = part.assign(_o=part["patient_key"].map(order)).sort_values(["_o", "path"])
        parts.append(ranked.head(per_group).drop(columns="_o"))
    return pd.concat(parts).sort_index()


def folds_for(cfg: RunConfig) -> pd.DataFrame:
    """The manifest with its train/val/test fold column, as this config defines it."""
    df = scan_dataset(cfg.data.root, cache_dir=cfg.data.cache_dir)
    if cfg.data.limit_per_class:
        df = take_slice(df, cfg.data.limit_per_class, seed=cfg.data.split_seed).reset_index(drop=True)
    folds = assign_folds(df, val_fraction=cfg.data.val_fraction, seed=cfg.data.split_seed)
    folds = folds[folds["label"].isin(["NORMAL", "PNEUMONIA"])]
    for fold in ("train", "val"):
        if len(np.unique(labels(folds[folds["fold"] == fold], cfg.data.task))) < len(class_names(cfg.data.task)):
            raise DataError(f"the {fold} fold lacks a class for task {cfg.data.task}: use more data or another seed")
    return folds.reset_index(drop=True)


# Where a threshold was chosen, as the sidecar's operating_point record names it: a val fold (identified below) or
# other images (pneumo operating-point --data, an adaptation's cross-fitted scores)
RUN_VAL_FOLD = "the run's val fold"  # where a run's first evaluation chose its threshold
MODEL_VAL_FOLD = "the model's val fold"  # rebuilt from the config (operating-point without --data)
VAL_FOLD_KINDS = (RUN_VAL_FOLD, MODEL_VAL_FOLD)


def paths_digest(paths: Iterable[str]) -> str:
    """SHA-256 of the sorted list of image paths: identifies the val images a threshold was chosen on. A file name
    that is not UTF-8 (Linux hands it over with surrogates) is hashed as its bytes."""
    return hashlib.sha256("\n".join(sorted(map(str, paths))).encode("utf-8", "surrogateescape")).hexdigest()


def images_digest(rows) -> str:
    """SHA-256 of the sorted ``path<TAB>sha256`` lines of a fold's rows (a manifest's or folds.csv's ``path`` and
    ``sha256``): identifies the val images a threshold was chosen on by their bytes too (a cache review: a copy of
    the dataset with other pixels under the same names passed the paths' digest)."""
    lines = sorted(f"{path}\t{sha}" for path, sha in zip(rows["path"].astype(str), rows["sha256"], strict=True))
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def names_digest(paths: Iterable[str]) -> str:
    """`paths_digest` of the file names alone: the same val fold under another layout of the dataset (a data audit:
    Kaggle's val/ files sit in train/ of the Mendeley archive `pneumo data download` fetches, and the shipped model's
    operating point could not be set on that download)."""
    return paths_digest(str(path).replace("\\", "/").rsplit("/", 1)[-1] for path in paths)


def fold_digests(rows) -> dict[str, str]:
    """A val fold's record: the digests of its paths, file names and images' bytes (`paths_digest`, `names_digest`,
    `images_digest`)."""
    paths = rows["path"].tolist()
    return {"paths_sha256": paths_digest(paths), "names_sha256": names_digest(paths), "images_sha256": images_digest(rows)}


def recorded_val_fold(extra: dict) -> dict:
    """The model's val fold as its sidecar records it (``extra``: the sidecar's extra entries): the one its stored
    threshold was chosen on, or, for a threshold chosen on other images (`pneumo operating-point --data`), its
    source's (``operating_point.val_fold``: its figures on the val fold still need that fold; a review found the
    guard lost); {} where nothing is recorded."""
    point = extra.get("operating_point") or {}
    for chosen in (point.get("chosen_on") or {}, point.get("val_fold") or {}):
        if chosen.get("kind") in VAL_FOLD_KINDS:
            return chosen
    return {}


def other_val_fold(chosen: dict, paths: list[str]) -> bool:
    """Whether a rebuilt val fold (its ``paths``) is not the recorded one (``chosen``, `recorded_val_fold`): other
    paths, unless the recorded file names match (the same images in the other layout of the dataset)."""
    return bool(chosen.get("paths_sha256")) and paths_digest(paths) != chosen["paths_sha256"] and not (
        chosen.get("names_sha256") and names_digest(paths) == chosen["names_sha256"])
