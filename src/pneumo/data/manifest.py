"""Scan a dataset folder or zip (Kaggle `train/val/test` or Mendeley `ChestXRay2017` layout) into a manifest."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image

from pneumo import __version__, atomic
from pneumo.data.decode import is_dicom, load_image
from pneumo.data.files import entry_reason, name_reason
from pneumo.errors import DataError, InputError

log = logging.getLogger(__name__)

CLASSES = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
PROBE_SIZE = 32  # the scan decodes each image as for a model of this size (JPEGs at 1/8 scale: cheap)
SCAN_VERSION = 3  # of what a stored scan holds; a new one (or a new pneumo version) scans again
COLUMNS = ["path", "split", "label", "subtype", "patient_key", "sha256", "width", "height", "source_kind", "dup_group"]
_NORMAL_RE = re.compile(r"^((?:NORMAL2-)?IM-\d+)", re.IGNORECASE)
_PNEUMONIA_RE = re.compile(r"^person(\d+)_(bacteria|virus)_", re.IGNORECASE)


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The dataset location from ``--dataset`` or ``$PNEUMO_DATA``."""
    value = root if root not in (None, "") else os.environ.get("PNEUMO_DATA")
    if not value:
        raise DataError("no dataset given: pass --dataset DIR (or a .zip) or set PNEUMO_DATA; `pneumo data download` fetches it")
    path = Path(value).expanduser()
    if not path.exists():  # (a run records its dataset as given: a relative path from where it was trained)
        relative = "" if path.is_absolute() else f", relative to {Path.cwd()}"
        raise DataError(f"dataset not found: {path}{relative}: pass --dataset DIR (or set PNEUMO_DATA)")
    return path


def default_cache_dir() -> Path:
    return Path(os.environ.get("PNEUMO_CACHE") or Path.home() / ".cache" / "pneumo")


def _walk_once(base: Path, links: list[str] | None = None):
    """``os.walk`` that follows linked folders (a split folder may be a link to another disk), each real folder once
    (no loops), and not into hidden folders (``.git/``, ``.Trash-1000/``, ``.thumbnails/``: `pneumo predict` reads
    none of them, and a data audit found a git-annex copy's 95 objects listed as skipped by every data command).

    A link to a folder inside the dataset itself is not followed (its images are read where they are), and goes to
    ``links`` with the reason: followed first, a link in ``test/NORMAL/`` to ``../../val`` hid the real ``val/``
    (its images were then skipped as sitting in a subfolder of a class)."""
    seen: set[str] = set()
    inside = os.path.realpath(base)
    for folder, dirs, files in os.walk(base, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        kept = []
        for d in dirs:
            if d.startswith("."):
                continue
            path = os.path.join(folder, d)
            target = os.path.realpath(path)
            if os.path.islink(path) and (target == inside or target.startswith(inside + os.sep)):
                if links is not None:
                    links.append(f"{PurePosixPath(Path(path).relative_to(base))}/ (a link to a folder of the "
                                 "dataset itself: not followed)")
                continue
            kept.append(d)
        dirs[:] = kept
        yield folder, dirs, files


class DatasetSource:
    """Uniform read access to a dataset folder or a zip archive of it (paths are posix, relative to the layout root)."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = Path(location)
        self.is_zip = self.location.is_file()
        if self.is_zip and not zipfile.is_zipfile(self.location):
            raise DataError(f"{self.location} is neither a folder nor a zip archive (a truncated or damaged download? "
                            "fetch it again)")
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}  # a zip's member names with "/" -> as stored
        self.links: list[str] = []  # folder links not followed (`_walk_once`), with the reason
        self.prefix = self._find_prefix()

    def _all_files(self) -> list[str]:
        if self.is_zip:  # a zip written on Windows may separate folders with "\\" (PowerShell 5.1 does): read as "/"
            self._members = {i.filename.replace("\\", "/"): i.filename for i in self._archive().infolist()
                             if not i.filename.endswith(("/", "\\"))}
            return list(self._members)
        base = self.location
        return [str(PurePosixPath(Path(d, f).relative_to(base))) for d, _, fs in _walk_once(base, self.links)
                for f in fs]

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.location)
        return self._zip

    def _find_prefix(self) -> str:
        """The shallowest folder holding ``train/`` with class folders (ignores macOS ``__MACOSX`` debris)."""
        self._files = [f for f in self._all_files() if "__MACOSX" not in f and not PurePosixPath(f).name.startswith(".")]
        seen: dict[str, set[str]] = {}  # folder holding train/ -> the class folders in that train/
        for f in self._files:
            parts = PurePosixPath(f).parts
            for i, part in enumerate(parts[:-2]):
                if part.lower() == "train" and parts[i + 1].upper() in CLASSES:
                    seen.setdefault("/".join(parts[:i]), set()).add(parts[i + 1].upper())
        # a layout has both classes (another data set beside it, e.g. Mendeley's OCT/train/NORMAL, is not a copy)
        candidates = {c for c, classes in seen.items() if classes == set(CLASSES)} or set(seen)
        if not candidates:
            raise DataError(
                f"{self.location} has no image under a train/NORMAL or train/PNEUMONIA folder: expected the Kaggle "
                "layout (train/ val/ test/ x NORMAL/ PNEUMONIA/) or the Mendeley ChestXRay2017 layout (train/ test/)"
            )
        depth = min(c.count("/") if c else -1 for c in candidates)
        shallowest = sorted(c for c in candidates if (c.count("/") if c else -1) == depth)
        if len(shallowest) > 1:  # which copy to read would be a coin toss: say so
            raise DataError(f"{self.location} holds {len(shallowest)} copies of the dataset layout ("
                            f"{', '.join(shallowest[:3])}): give --dataset one of them"
                            + (" (unzip it first)" if self.is_zip else ""))
        return shallowest[0]

    def files(self) -> list[str]:
        """Every file below the layout root, relative to it."""
        p = self.prefix + "/" if self.prefix else ""
        return sorted(f[len(p) :] for f in self._files if f.startswith(p))

    def read(self, rel: str) -> bytes:
        full = f"{self.prefix}/{rel}" if self.prefix else rel
        if self.is_zip:
            return self._archive().read(self._members.get(full, full))
        return self.path_of(rel).read_bytes()

    def path_of(self, rel: str) -> Path:
        """The file ``rel`` of a dataset folder."""
        return self.location / (f"{self.prefix}/{rel}" if self.prefix else rel)

    def stamp(self, rel: str) -> str:
        """What identifies a file's version without reading it: size and CRC of a zip member, size, modification and
        change times and inode of a file ("missing" for a dangling link)."""
        full = f"{self.prefix}/{rel}" if self.prefix else rel
        if self.is_zip:
            info = self._archive().getinfo(self._members.get(full, full))
            return f"{info.file_size}:{info.CRC}"
        try:
            st = (self.location / full).stat()
        except OSError:
            return "missing"
        # the change time and inode too: a copy that keeps size and mtime (cp -p, rsync -t, tar) still changes them
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"

    def __getstate__(self) -> dict:  # picklable for worker processes (reopens the zip there)
        state = self.__dict__.copy()
        state["_zip"] = None
        return state


def patient_key(path: str, label: str) -> str:
    """``bacteria-N`` / ``virus-N`` for pneumonia files (person numbers are per-subtype sequences), ``IM-XXXX`` or
    ``NORMAL2-IM-XXXX`` for normal ones, from the file name of ``path``; ``path`` itself when the name follows neither
    pattern (its own patient: two images that share a generic name such as ``0001.jpeg`` in two folders are not one)."""
    stem = PurePosixPath(path).stem
    if label == "NORMAL":
        m = _NORMAL_RE.match(stem)
        return m.group(1).upper() if m else path  # im-0001-0001.jpeg is patient IM-0001 too
    m = _PNEUMONIA_RE.match(stem)
    return f"{m.group(2).lower()}-{m.group(1)}" if m else path


def subtype_of(file_name: str, label: str) -> str:
    if label == "NORMAL":
        return "normal"
    name = PurePosixPath(file_name).name.lower()
    if "virus" in name:
        return "virus"
    if "bacteria" in name:
        return "bacteria"
    return "unknown"


def _probe(data: bytes) -> tuple[int, int]:
    """Width and height of an image the product's decoder reads (`load_image`, as the cache and `pneumo predict` do),
    so the scan keeps exactly the files a training run can decode: a truncated file, a multi-frame one or one over the
    size limits is skipped here, not found when the cache is built.

    Raises:
        InputError: the decoder refuses the file (the reason, one line).
    """
    gray = load_image(data, target=PROBE_SIZE)
    if is_dicom(data):  # decoded at full size
        return gray.shape[1], gray.shape[0]
    with Image.open(io.BytesIO(data)) as img:  # the header's size: a JPEG was decoded at a reduced scale
        return img.size


def _candidates(source: DatasetSource, skipped: list[str]) -> Iterator[tuple[str, str, str]]:
    """``split/CLASS/file`` entries with an image name; another name there, and an image-named file elsewhere (another
    class such as ``COVID/``, a subfolder of a class, a folder that is no split such as ``validation/``) go to
    ``skipped`` with the reason; a nested copy of the layout (the Kaggle archive's ``chest_xray/chest_xray``) does not."""
    for rel in source.files():
        parts = PurePosixPath(rel).parts
        if len(parts) < 3 or parts[0].lower() not in SPLITS:
            if name_reason(parts[-1]) is None and not any(p.lower() in SPLITS for p in parts[1:-1]):
                where = "not in a NORMAL/ or PNEUMONIA/ folder" if parts[0].lower() in SPLITS else \
                    f"not under a {'/, '.join(SPLITS)}/ folder"
                skipped.append(f"{rel} ({where})")
            continue
        split, label = parts[0].lower(), parts[1].upper()
        if label not in CLASSES:
            if name_reason(parts[-1]) is None:
                skipped.append(f"{rel} (not in a NORMAL/ or PNEUMONIA/ folder)")
        elif len(parts) > 3:
            if name_reason(parts[-1]) is None:
                skipped.append(f"{rel} (in a subfolder of {parts[1]}/: images sit directly in the class folder)")
        elif (reason := name_reason(parts[-1])) is not None:
            skipped.append(f"{rel} ({reason})")
        else:
            yield rel, split, label


def _shipped_metadata(source: DatasetSource) -> pd.DataFrame | None:
    """The ``manifest.csv`` of the project's compact copy, when present (adds ``source_kind``)."""
    try:
        raw = source.read("manifest.csv")
    except (FileNotFoundError, KeyError):
        return None
    try:
        meta = pd.read_csv(io.BytesIO(raw), keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None  # another tool's manifest.csv, or none at all: not the project's
    if not {"path", "source_kind"} <= set(meta.columns) or meta["path"].duplicated().any():
        return None
    return meta.set_index("path")


def scan_dataset(root: str | os.PathLike | None, *, cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per readable image (columns: see ``COLUMNS``).

    Images are the files `pneumo predict` reads in a folder (`pneumo.data.files`: JPEG, PNG, DICOM, ...) that its
    decoder accepts; other, unreadable, truncated or refused files are skipped and listed in one warning. A layout
    without the expected classes or without images is an error. Reading and hashing every image takes ~3-10 s for
    the 5,856 of the Kermany set, so what only reading tells (hash, size, readable or not) is kept in
    ``cache_dir/scans`` (default ``$PNEUMO_CACHE``), keyed by the location, every file's name, size, modification and
    change times and inode (a zip member's size and CRC), the decoder's version and limits and the scan's version: a
    file added, removed, replaced or changed, or another decoder, scans again. Names, labels and splits always come
    from the listing itself; a kept scan that does not match it exactly is ignored.
    """
    source = DatasetSource(resolve_root(root))
    skipped: list[str] = []
    candidates = list(_candidates(source, skipped))
    folder = Path(cache_dir or default_cache_dir()) / "scans"
    place = hashlib.sha256(str(source.location.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    stored = folder / f"{place}-{_scan_key(source, candidates)}.json"
    found = _kept_scan(stored, candidates)
    if found is None:
        found = _probe_all(source, candidates)
        try:
            for old in folder.glob(f"{place}-*.json"):  # this location's earlier scans: out of date
                old.unlink(missing_ok=True)
            atomic.write_json(stored, {"read": found[0], "skipped": found[1]})
        except OSError as exc:  # a read-only cache: scan each time
            log.debug("scan not kept in %s: %s", stored, exc)
    read, unreadable = found
    skipped += [f"{rel} ({why})" for rel, why in unreadable.items()] + source.links
    if skipped:
        log.warning("skipped %d file(s): %s", len(skipped), "; ".join(skipped[:20]))
    rows = [{"path": rel, "split": split, "label": label, "subtype": subtype_of(PurePosixPath(rel).name, label),
             "patient_key": patient_key(rel, label), "sha256": read[rel][0],
             "width": read[rel][1], "height": read[rel][2]} for rel, split, label in candidates if rel in read]
    if not rows:
        raise DataError(f"no readable images under {source.location}")
    df = pd.DataFrame(rows)
    _check_classes(df, source)
    _warn_about_identity(df)
    meta = _shipped_metadata(source)
    df["source_kind"] = df["path"].map(meta["source_kind"]).fillna("unknown") if meta is not None else "unknown"
    df["dup_group"] = _duplicate_groups(df)
    df.attrs["skipped"] = skipped
    df.attrs["location"] = str(source.location)
    return df[COLUMNS].reset_index(drop=True)


def _kept_scan(stored: Path, candidates: list[tuple[str, str, str]]) -> tuple[dict, dict] | None:
    """The kept ``({path: [sha256, width, height]}, {path: why not read})`` when it covers exactly the listed files
    with values of the right kinds; None otherwise (absent, damaged, hand-edited: scanned again)."""
    try:
        kept = json.loads(stored.read_text(encoding="utf-8"))
        read, unreadable = dict(kept["read"]), dict(kept["skipped"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    names = {rel for rel, _, _ in candidates}
    if set(read) | set(unreadable) != names or set(read) & set(unreadable):
        return None
    for value in read.values():
        if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and len(value[0]) == 64
                and all(isinstance(v, int) and v > 0 for v in value[1:])):
            return None
    return read, {rel: str(why) for rel, why in unreadable.items()}


def _scan_key(source: DatasetSource, candidates: list[tuple[str, str, str]]) -> str:
    from pneumo.data import decode, dicom

    digest = hashlib.sha256("\0".join(map(str, (
        SCAN_VERSION, __version__, decode.DECODER_VERSION, PROBE_SIZE, decode.MAX_PIXELS, decode.MAX_DECODE_BYTES,
        decode.pixel_libraries(), dicom.LATERAL_VIEWS, source.location.resolve(),
        source.prefix))).encode("utf-8", "surrogateescape"))
    for rel, _, _ in candidates:
        digest.update(f"\0{rel}\0{source.stamp(rel)}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _probe_all(source: DatasetSource, candidates: list[tuple[str, str, str]]) -> tuple[dict, dict]:
    """``{path: [sha256, width, height]}`` of the images the decoder reads, ``{path: why}`` of the others."""
    read, skipped = {}, {}
    for rel, _, _ in candidates:
        try:
            data = source.read(rel)
            width, height = _probe(data)
        except (InputError, OSError, zipfile.BadZipFile) as exc:  # a dangling link, a damaged zip member
            entry = None if source.is_zip or not isinstance(exc, OSError) else entry_reason(source.path_of(rel))
            skipped[rel] = entry or textwrap.shorten(str(exc), 200, placeholder=" ...")  # whole words
            continue
        read[rel] = [hashlib.sha256(data).hexdigest(), int(width), int(height)]
    return read, skipped


def _warn_about_identity(df: pd.DataFrame) -> None:
    """What a patient-grouped split cannot see: names that carry no patient, and one file under both labels."""
    unnamed = df.loc[df["patient_key"] == df["path"], "path"]
    if len(unnamed):
        log.warning("%d image(s) have names that carry no patient (not IM-XXXX-... or personN_bacteria|virus_...; "
                    "e.g. %s): each counts as its own patient, so one patient's images can fall into two folds unseen",
                    len(unnamed), ", ".join(unnamed.head(3)))
    untyped = df.loc[(df["label"] == "PNEUMONIA") & (df["subtype"] == "unknown"), "path"]
    if len(untyped):
        log.warning("%d PNEUMONIA image(s) say neither bacteria nor virus in their names (e.g. %s): subtype "
                    "'unknown', and a 3-class run (--task 3class) refuses a dataset that holds them", len(untyped),
                    ", ".join(untyped.head(3)))
    both = df.groupby("sha256")["label"].nunique()
    if (both > 1).any():
        example = df.loc[df["sha256"] == both[both > 1].index[0], "path"].tolist()
        log.warning("%d image(s) are in both NORMAL and PNEUMONIA folders (byte-identical files, e.g. %s): check "
                    "their label", int((both > 1).sum()), " and ".join(example[:2]))


def _check_classes(df: pd.DataFrame, source: DatasetSource) -> None:
    for split in ("train", "test"):
        present = set(df.loc[df["split"] == split, "label"])
        missing = [c for c in CLASSES if c not in present]
        if missing:
            raise DataError(f"{source.location}: split {split!r} has no images of class {', '.join(missing)}")


def _duplicate_groups(df: pd.DataFrame) -> pd.Series:
    """Byte-identical files get a shared group name (the first member's path: a stem would merge two groups whose
    first files share a name in different folders); others get ''."""
    first = df.groupby("sha256")["path"].transform("min")
    size = df.groupby("sha256")["path"].transform("size")
    return first.where(size > 1, "")
