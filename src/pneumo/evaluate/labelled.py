"""Labelled images from anywhere, for external validation: a folder in the Kaggle layout (images under ``NORMAL/`` and
``PNEUMONIA/`` folders, at any depth) or a CSV with ``path,label`` columns (paths relative to the CSV's folder; an
optional ``subtype`` column: normal / bacteria / virus). `pneumo evaluate`, `operating-point` and `adapt` read their
``--data`` here, so they accept and refuse the same tables: a file listed twice is an error in all three.

A folder is read by the rule `pneumo predict` uses (`pneumo.data.files.find_images`: DICOM without an extension
included); every file under it that is not read comes back by name with the reason."""

from __future__ import annotations

import csv as csv_module
import hashlib
import io
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pneumo.data.dicom_header import patient_groups
from pneumo.data.files import find_images
from pneumo.data.manifest import patient_key, subtype_of
from pneumo.errors import ConfigError, DataError

MAX_CSV_BYTES = 256 * 2**20  # a list of images, not the images
MAX_SUBGROUP_NAME = 100  # characters of a --by value (a 10 MB one was copied into every output: a review)
# label spellings accepted in a CSV -> (binary label, subtype or None to infer from the file name)
LABELS = {"normal": ("NORMAL", "normal"), "0": ("NORMAL", "normal"), "pneumonia": ("PNEUMONIA", None),
          "1": ("PNEUMONIA", None), "bacteria": ("PNEUMONIA", "bacteria"), "bacterial": ("PNEUMONIA", "bacteria"),
          "virus": ("PNEUMONIA", "virus"), "viral": ("PNEUMONIA", "virus")}


def labelled_images(source: str | os.PathLike) -> pd.DataFrame:
    """The labelled images of a folder or CSV as a table (see `find_labelled`, which also says what was left out)."""
    return find_labelled(source)[0]


def find_labelled(source: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, str]]:
    """The labelled images of a folder or CSV, and ``{path: reason}`` for every file of a folder that is not read.

    The table: ``path`` (absolute), ``label`` (NORMAL / PNEUMONIA), ``subtype`` (normal / bacteria / virus /
    unknown), sorted by path; a CSV's ``patient_id`` column, when it has one, comes along as ``patient_id`` (text), and
    so do its other columns, as text under their own names (for subgroup rows: ``pneumo evaluate --by view``).
    An image's label is the nearest folder above it (below ``source``) named NORMAL or PNEUMONIA.

    Raises:
        DataError: nothing labelled found, a CSV without ``path`` and ``label`` columns, an unknown label, a
            missing file, or a single class only (sensitivity and specificity both need both classes).
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"labelled data not found: {source}")
    table, left_out = (_from_csv(path), {}) if path.is_file() else _from_folder(path)
    if table.empty:
        raise DataError(f"no labelled images in {source}: expect NORMAL/ and PNEUMONIA/ folders or a path,label CSV")
    if path.is_file():
        refuse_missing(path, table["path"].tolist())
    refuse_listed_twice(source, table["path"].tolist())  # a CSV's row twice, or a folder's link to another of its files
    if table["label"].nunique() < 2:
        raise DataError(f"{source} holds only {table['label'].iloc[0]} images: sensitivity, specificity and "
                        "a threshold need both NORMAL and PNEUMONIA")
    return table.sort_values("path", kind="stable").reset_index(drop=True), left_out


def _from_folder(root: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    found = find_images(root)
    left_out = {str(p.absolute()): reason for p, reason in {**found.skipped, **found.ignored}.items()}
    rows = []
    for image in found.images:
        label = next((part.upper() for part in reversed(image.relative_to(root).parts[:-1])
                      if part.upper() in ("NORMAL", "PNEUMONIA")), None)
        if label is None:
            left_out[str(image.absolute())] = "not in a NORMAL/ or PNEUMONIA/ folder: no label"
            continue
        rows.append({"path": str(image.absolute()), "label": label, "subtype": subtype_of(image.name, label)})
    return pd.DataFrame(rows, columns=["path", "label", "subtype"]), dict(sorted(left_out.items()))


def read_table(csv: Path) -> pd.DataFrame:
    """A CSV's rows as text, indexed by their line in the file (the header is line 1; blank lines skipped but
    counted), so that errors name the line a user sees.

    Raises:
        DataError: not a readable CSV, or rows with more fields than the header.
    """
    if csv.stat().st_size > MAX_CSV_BYTES:
        raise DataError(f"{csv} is larger than {MAX_CSV_BYTES // 2**20} MB: not a list of images")
    data = csv.read_bytes()  # as written: never decompressed (a 379 KB .csv.gz of 13 M rows ran past 4.6 GB)
    if b"\0" in data:  # pandas ends a cell at a NUL byte and reads the rest of it as nothing (a review)
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise DataError(f"{csv}:{line}: a NUL byte: not a text CSV")
    header = next(csv_module.reader([data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")]), [])
    names = [name.strip() for name in header]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:  # pandas renames the second view.1, or a padded one overwrote the first for --by
        raise DataError(f"{csv} has the column {twice!r} twice: keep one")
    try:
        raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skip_blank_lines=False,
                          compression=None)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{csv} is not a readable CSV: {' '.join(str(exc).split())}") from None
    if not isinstance(raw.index, pd.RangeIndex):  # pandas makes the extra first fields an index, silently
        raise DataError(f"{csv}: its rows have more fields than its header ({', '.join(raw.columns)}): quote paths "
                        "that hold a comma, or name every column")
    raw.index = raw.index + 2
    filled = np.array([any(str(v).strip() for v in row) for row in raw.itertuples(index=False)], dtype=bool)
    return raw.loc[filled] if len(raw) else raw


def listed_file(csv: Path, text: str) -> Path:
    """A CSV's path cell as the file it names: relative to the CSV's folder, absolute, not normalised (``..`` after a
    link is the link target's parent, as the system reads it)."""
    file = Path(text.strip()).expanduser()
    return (file if file.is_absolute() else csv.parent / file).absolute()


def refuse_missing(csv: Path, files: list) -> None:
    """A CSV that lists files that are not there is refused whole (a path typo would silently shrink the set; the site
    check exited 0 on 12 images and 100,000 missing ones, a review); a listed directory or device is there, and is
    refused as unreadable by the reader, with that reason.

    Raises:
        DataError: how many, the first of them, and where relative paths are read from.
    """
    missing = [str(f) for f in files if not os.path.lexists(f)]
    if missing:
        raise DataError(f"{len(missing)} listed image(s) not found, e.g. {missing[0]} (a CSV's paths are read "
                        f"relative to its folder, {csv.parent.absolute()})")


def refuse_listed_twice(where: str | os.PathLike, paths: list[str]) -> None:
    """A file listed twice (under another spelling, ``x/../x``, or a link) would be scored, or trained on, as two
    images, with two labels if they disagree.

    Raises:
        DataError: naming the first such path.
    """
    seen: set[str] = set()
    twice = []
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            twice.append(path)
        seen.add(real)
    if twice:
        raise DataError(f"{where}: {len(twice)} file(s) listed more than once (e.g. {twice[0]}; a link to another "
                        "listed file counts): list each once")


KNOWN_COLUMNS = ("path", "label", "subtype", "patient_id")


def known_columns(raw: pd.DataFrame, csv: Path) -> dict[str, str]:
    """The CSV's own name of each column pneumo reads (`KNOWN_COLUMNS`), whatever its case and padding; a patient id
    also as a PACS export spells it (PatientID, Patient ID, patient-id).

    Raises:
        DataError: one of them under two spellings (``label`` and ``Label``): which one holds the truth is not ours to
            guess (a review found one read silently, and another command reading the other).
    """
    found: dict[str, list[str]] = {}
    for column in raw.columns:
        key = re.sub(r"[\s_-]", "", column.lower())
        name = "patient_id" if key == "patientid" else column.strip().lower()
        if name in KNOWN_COLUMNS:
            found.setdefault(name, []).append(column)
    twice = next(((name, spelled) for name, spelled in found.items() if len(spelled) > 1), None)
    if twice:
        raise DataError(f"{csv} has the {twice[0]} column twice ({', '.join(repr(c) for c in twice[1])}): keep one")
    return {name: spelled[0] for name, spelled in found.items()}


def separator_hint(raw: pd.DataFrame) -> str:
    """`` (its fields look separated by ...)`` when the header holds semicolons or tabs (a spreadsheet's export)."""
    separator = next((name for sep, name in ((";", "semicolons"), ("\t", "tabs")) if sep in "".join(raw.columns)), None)
    return f" (its fields look separated by {separator}: save it with commas)" if separator else ""


def _from_csv(csv: Path) -> pd.DataFrame:
    raw = read_table(csv)
    columns = known_columns(raw, csv)
    if "path" not in columns or "label" not in columns:
        raise DataError(f"{csv} needs 'path' and 'label' columns, has {', '.join(raw.columns)}" + separator_hint(raw))
    rows = []
    subtypes = raw[columns["subtype"]] if "subtype" in columns else [""] * len(raw)
    for line, rel, text, given in zip(raw.index, raw[columns["path"]], raw[columns["label"]], subtypes, strict=True):
        key = text.strip().lower()
        if key not in LABELS:
            raise DataError(f"{csv}:{line}: unknown label {text!r}; use NORMAL/PNEUMONIA, 0/1 or bacteria/virus")
        if not rel.strip():
            raise DataError(f"{csv}:{line}: no path")
        label, subtype = LABELS[key]
        if given.strip():
            subtype = _subtype(given, label, subtype, f"{csv}:{line}")
        file = listed_file(csv, rel)
        rows.append({"path": str(file), "label": label, "subtype": subtype or subtype_of(file.name, label)})
    table = pd.DataFrame(rows, columns=["path", "label", "subtype"])
    if "patient_id" in columns:
        table["patient_id"] = raw[columns["patient_id"]].str.strip().to_numpy()
    for name in raw.columns:
        if name not in columns.values():  # under its name without padding, as --by names it
            table[name.strip()] = raw[name].str.strip().to_numpy()
    return table


def _subtype(text: str, label: str, implied: str | None, where: str) -> str:
    """A CSV's own subtype cell (normal / bacteria / virus, or their spellings in `LABELS`), checked against the
    row's label (and the subtype the label names, ``implied``: a ``bacteria`` label with a ``virus`` subtype)."""
    key = text.strip().lower()
    subtype = "unknown" if key == "unknown" else (LABELS.get(key) or (None, None))[1]
    if subtype is None:
        raise DataError(f"{where}: unknown subtype {text!r}; use normal, bacteria, virus or unknown (or leave it "
                        "empty)")
    if (subtype == "normal") != (label == "NORMAL") or (subtype == "unknown" and label == "NORMAL") or \
            implied not in (None, subtype):
        raise DataError(f"{where}: subtype {text!r} contradicts the label {label}")
    return subtype


def check_columns(table: pd.DataFrame, by: tuple[str, ...], data: str | os.PathLike) -> pd.DataFrame:
    """``table``, with a ``view`` column from the DICOM files' ViewPosition when ``--by view`` asks for one the data
    lacks (a DICOM site states its views); ConfigError for a ``--by`` column it still does not have."""
    fixed = {"path", "label", "subtype", "patient_id"}
    if "subtype" in by:
        raise ConfigError("--by subtype: the subtype has its own rows already (the share called pneumonia per subtype, "
                          "by_subtype in metrics.json); --by takes the CSV's other columns")
    if "view" in by and "view" not in table.columns:
        from pneumo.data.dicom_header import view_position

        views = [view_position(path) for path in table["path"]]
        if any(views):
            table = table.assign(view=[view or "" for view in views])
    own = next((c for c in by if c in ("path", "label")), None)
    if own:
        raise ConfigError(f"--by {own}: that is each image's {own} itself, not a subgroup column; --by takes the CSV's "
                          "other columns (view, sex, scanner...)")
    missing = [c for c in by if c not in table.columns or c in fixed - {"patient_id"}]
    if missing:
        have = [c for c in table.columns if c not in fixed]
        raise ConfigError(f"--by {missing[0]}: {data} has no such column" + (
            f" (its other columns: {', '.join(have)})" if have else " (subgroups need a CSV with that column)"))
    for column in by:  # a value is a row's name in the console, the report and an adapted model's card
        long = next((v for v in table[column].astype(str) if len(v) > MAX_SUBGROUP_NAME), None)
        if long is not None:
            raise ConfigError(f"--by {column}: a value of {len(long)} characters (at most {MAX_SUBGROUP_NAME}): a "
                              "subgroup column holds short names (view, sex, scanner)")
    return table


def lost_classes(listed: pd.Series, kept: pd.Series) -> str | None:
    """A sentence when a label of the ``listed`` images has none left among the ``kept`` (measured) ones: every image
    of it unreadable, refused by the input gate or withheld (out of distribution, turned); else None. A set that lost a
    class has no sensitivity (or specificity), for that reason and not for its size (a review)."""
    gone = [label for label in sorted(set(listed)) if not (kept == label).any()]
    return "; ".join(f"all {int((listed == label).sum())} {label} image(s) were unreadable, refused by the input gate "
                     "or withheld (out of distribution or turned)" for label in gone) or None


def patients(table: pd.DataFrame, *, official: bool = False) -> np.ndarray | None:
    """The patient of each image where it is known: the CSV's ``patient_id`` column (a blank is its own patient), on
    the official test split the patient the Kermany file name gives (`data.manifest.patient_key`), else a DICOM's
    PatientID (``dicom:N``: its films grouped by `data.dicom_header.patient_groups`' keyed hash, numbered by `_numbered`;
    every other image its own patient), as `pneumo adapt` groups them; for intervals that count whole patients. None
    where nothing names a patient."""
    if "patient_id" not in table.columns:
        if official:
            return np.array([patient_key(str(path), label) for path, label in zip(table["path"], table["label"],
                                                                                       strict=True)])
        tags = patient_groups(table["path"])
        if not any(tags):
            return None
        tags = _numbered(tags, table["path"].astype(str).tolist())
        return np.array([f"dicom:{tag}" if tag else "\0" + str(path) for tag, path in zip(tags, table["path"],
                                                                                          strict=True)])
    ids = table["patient_id"].astype(str).to_numpy()
    return np.where(ids == "", "\0" + table["path"].astype(str).to_numpy(), ids)


def _numbered(tags: list[str | None], paths: list[str]) -> list[str | None]:
    """Each group key as a number (1, 2, ...) by the first of its images in path order; None stays None. The DICOM
    PatientID's keyed hash is new in every process, so the folds and the patients a bootstrap draws, ordered by it,
    changed from one run to the next with the same --seed (a review): the numbers are the same in every run and, like
    the hash, say nothing about the ID."""
    number: dict[str, int] = {}
    for i in sorted(range(len(tags)), key=paths.__getitem__):
        if tags[i] is not None:
            number.setdefault(tags[i], len(number) + 1)
    return [None if tag is None else str(number[tag]) for tag in tags]


def unnamed_not_read(ext: dict) -> int:
    """How many files left out (unreadable or refused, or not read) the evaluation counts without naming them: beyond
    `MAX_LISTED` of each (a folder linked to / listed ~83k names in full; a review)."""
    return (ext.get("n_not_read", 0) - len(ext.get("not_read") or {})
            + ext.get("n_unreadable", 0) - len(ext.get("unreadable") or {}))


def left_out_more(ext: dict) -> str:
    """The report's words for `unnamed_not_read`'s count, or nothing."""
    unnamed = unnamed_not_read(ext)
    return f" ({unnamed} more files left out are counted above, not named)" if unnamed > 0 else ""


def refuse_relabelled_copies(x: np.ndarray, table: pd.DataFrame) -> None:
    """Refuse the same film (pixel for pixel: ``x`` the preprocessed images) under two labels: `pneumo adapt` would
    train on it as both, and adapt, evaluate and operating-point count it once for each in the scores and the
    threshold (reviews).

    Raises:
        DataError: naming both files and their labels.
    """
    first: dict[bytes, int] = {}
    for row, image in enumerate(x):
        earlier = first.setdefault(pixels_key(image), row)
        if table["label"].iat[earlier] != table["label"].iat[row]:
            raise DataError(f"{table['path'].iat[earlier]} ({table['label'].iat[earlier]}) and {table['path'].iat[row]} "
                            f"({table['label'].iat[row]}) are the same film, pixel for pixel, with two labels: correct "
                            "the wrong one, or list the film once")


def pixels_key(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def join_copies(x: np.ndarray, patients: pd.Series) -> tuple[np.ndarray, int]:
    """Patient groups with every set of pixel-identical images (the same film exported twice, under two names or two
    patient ids) merged into one group, and the number of such copies. Exact copies only: a re-encoded or resized
    copy is another image to this check."""
    parent = {p: p for p in patients}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = p = parent[parent[p]]
        return p

    first: dict[bytes, str] = {}
    copies = 0
    for image, patient in zip(x, patients, strict=True):
        key = pixels_key(image)
        if key not in first:
            first[key] = patient
            continue
        copies += 1
        keep, drop = sorted((root(first[key]), root(patient)), key=lambda p: (p.startswith("\0"), p))
        parent[drop] = keep  # a named patient over an image's own (a path), so that a CSV's ID stays the group's name
    return np.array([root(p) for p in patients], dtype=object), copies


class Grouping(NamedTuple):
    """What a bootstrap resamples: ``groups`` (None: each image on its own), the pixel-identical copies joined to their
    originals, that in words, and whether the groups are patients (known from IDs or the Kermany names) or images."""

    groups: np.ndarray | None
    copies: int
    resampled: str
    patients: bool


def patients_with_copies(table: pd.DataFrame, images: np.ndarray, *, official: bool = False) -> Grouping:
    """`patients`, with each pixel-identical copy (one film listed under two names: under one label, as two labels are
    refused by `refuse_relabelled_copies`) in its original's patient; how many copies joined two patients (a copy of
    a film of the same patient changes nothing); and what a bootstrap of the groups resamples, in words. A copy adds
    no evidence: as two patients it narrowed the intervals (a review). Without patient IDs the groups are images, a
    copy counted once with its original, not patients (a reporting audit: "818 images of 817 patients" for a folder
    without IDs, whose 818 films were 606 patients'). ``images``: the preprocessed images of ``table``'s rows. The
    official test split is left as `evaluate --model RUN` groups it (its file names), so that its intervals stay
    comparable."""
    found = patients(table, official=official)
    named = ("the CSV's patient_id" if "patient_id" in table.columns else "the Kermany file names" if official
             else "the DICOM PatientID, as a keyed hash" if found is not None else "")
    ids = ("\0" + table["path"].astype(str)).to_numpy() if found is None else found
    groups, _ = join_copies(images, pd.Series(ids)) if not official else (ids, 0)
    joined = len(set(ids)) - len(set(groups))
    if found is None:
        return Grouping(groups if joined else None, joined, f"images ({joined} pixel-identical copies counted once with "
                        "their originals; patients unknown)" if joined else "images", False)
    both = [w for w in (named, f"{joined} pixel-identical copies with their originals" if joined else "") if w]
    return Grouping(groups if joined else found, joined, f"whole patients ({'; '.join(both)})", True)
