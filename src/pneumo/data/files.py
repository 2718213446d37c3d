"""Which files in a folder are images to read: ONE rule, used by `pneumo predict` (folders on its command line) and by
`pneumo evaluate --data` (labelled folders), so both read exactly the same files.

A file is read when its name has an image suffix, no suffix at all (DICOM exported by PACS: ``IM00000``) or a numeric
one (DICOM named by UID: ``1.2.840.113619.2.55``) whose first bytes are an image's or DICOM's (a patient CD's viewer
program and README are not images); hidden files, a file-set's ``DICOMDIR`` index and other names are not, nor anything in a
hidden folder (``.Trash-1000/``, ``.thumbnails/``: listed, not walked). Folders are walked
recursively in sorted order; linked folders are followed once (a link back to a folder already walked is a loop,
reported, not followed). Nothing found is dropped silently: every entry not read comes back with its reason.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# .ima: Siemens PACS exports DICOM under it (the format is sniffed from the bytes whatever the name)
# Files not read are listed by name up to this many (all counted): a folder linked to /etc or a home folder must not
# put thousands of unrelated paths into a report a hospital shares.
MAX_LISTED = 50
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm", ".dicom", ".ima", ".bmp", ".tif", ".tiff", ".webp",
                            ".gif"})


@dataclass
class FoundFiles:
    """The outcome of walking a folder.

    Attributes:
        images: regular files with an image name, sorted by path: what is read.
        skipped: entries with an image name (or folders) that are no readable file or folder (a dangling link, a
            symlink loop, a named pipe, a device), with the reason.
        ignored: files not read because of their name (hidden, another suffix), with the reason.
    """

    images: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)
    ignored: dict[Path, str] = field(default_factory=dict)


def name_reason(name: str) -> str | None:
    """None when a file of this name is read as an image, else why it is not."""
    if name.startswith("."):
        return "hidden file"
    if name.upper() == "DICOMDIR":  # every PACS / CD export has one (DICOM PS3.10): counted as an error, it made a
        return "a DICOM file-set's index (DICOMDIR), not an image"  # clean export exit 1
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix == "" or suffix[1:].isdigit():
        return None
    return f"not an image file name ({suffix})"


def entry_reason(path: str | os.PathLike) -> str | None:
    """None when ``path`` is a regular file or a folder (after links), else why it cannot be read as one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return "dangling symlink (its target does not exist)"
        if exc.errno == errno.ENOENT:
            return "no such file"
        return f"cannot read: {exc.strerror or type(exc).__name__}"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a file"
    return "a socket or device, not a file"


def find_images(folder: str | os.PathLike) -> FoundFiles:
    """Every image file under ``folder`` (recursive), and every entry not read with its reason (see the module doc).

    The walk keeps its own stack of folders (one sorted listing per level), not Python's: a folder 1,100 levels deep
    raised RecursionError (red team, round 4). Entries are met in the same order as a recursive walk: a folder's
    contents before its next sibling.
    """
    found = FoundFiles()
    root = Path(folder)
    seen = {_identity(root)}
    stack = [_listing(root, found)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        subfolder = _visit(entry, found, seen)
        if subfolder is not None:
            stack.append(_listing(subfolder, found))
    found.images.sort()
    return found


def _identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _listing(folder: Path, found: FoundFiles) -> Iterator[os.DirEntry[str]]:
    """The entries of ``folder`` sorted by name (none, with the reason in ``found.skipped``, if it cannot be listed)."""
    try:
        return iter(sorted(os.scandir(folder), key=lambda e: e.name))
    except OSError as exc:
        found.skipped[folder] = f"cannot list folder: {exc.strerror or type(exc).__name__}"
        return iter(())


def _visit(entry: os.DirEntry[str], found: FoundFiles, seen: set[tuple[int, int]]) -> Path | None:
    """Sort one entry into ``found``; the folder to walk next when it is one not walked yet (marked as seen)."""
    path = Path(entry.path)
    problem = entry_reason(path)
    if problem is None and entry.is_dir():
        if entry.name.startswith("."):  # .Trash-1000, .thumbnails, .git: not the images a user means
            found.ignored[path] = "hidden folder"
            return None
        identity = _identity(path)
        if identity in seen:
            found.skipped[path] = "symlink loop (a link to a folder already read)"
            return None
        seen.add(identity)
        return path
    by_name = name_reason(entry.name)
    if by_name is not None:
        found.ignored[path] = by_name
    elif problem is not None:
        found.skipped[path] = problem
    elif by_content := _content_reason(path):
        found.ignored[path] = by_content
    else:
        found.images.append(path)
    return None


def _content_reason(path: Path) -> str | None:
    """Why a file read for a name without an image suffix is no image by its first bytes, else None (a DICOM audit: a
    patient CD's viewer and README, named like PACS files, were errors that failed the run)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:  # named an image: read, and named with its reason if it is none
        return None
    from pneumo.data.decode import looks_like_image

    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:  # the reader names it
        return None
    return None if looks_like_image(head) else "no image suffix, and not DICOM or an image by its first bytes"
