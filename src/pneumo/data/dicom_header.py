"""DICOM header elements read apart from the pixels, one element each (`pneumo.data.dicom` decodes the image): the
view (``ViewPosition``, for ``--by view``) and a patient group key, a keyed hash of ``PatientID`` (the ID itself is
never kept, logged or written)."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Iterable

log = logging.getLogger(__name__)
_GROUP_KEY = secrets.token_bytes(32)  # `patient_group`'s key: this process's only


def view_position(path: str | os.PathLike) -> str | None:
    """A DICOM file's ViewPosition (PA, AP, ...; upper case), or None for a file that is not DICOM or states none."""
    value = _header(path, "ViewPosition")
    return value.upper() if value else None


def _header(path: str | os.PathLike, keyword: str) -> str | None:
    """One element of a DICOM file's header as text (only it is read), or None."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[keyword])
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, EOFError):
        return None
    return str(ds.get(keyword, "") or "").strip() or None


def patient_groups(paths: Iterable[str | os.PathLike]) -> list[str | None]:
    """Each image's DICOM PatientID group (`patient_group`), or None for all when one ID holds more than half of three
    or more tagged images: a de-identified export writes one constant ID ("ANON"), which would make the whole site
    one patient (and no cross-fitting possible)."""
    tagged = [patient_group(path) for path in paths]
    ids = [tag for tag in tagged if tag is not None]
    if len(ids) >= 3 and max(ids.count(tag) for tag in set(ids)) > len(ids) / 2:
        log.warning("the DICOM files' PatientID is one value for most of them (a de-identified export?): not used, "
                    "every image counts as its own patient; give a patient_id column in a CSV")
        return [None] * len(tagged)
    return tagged


def patient_group(path: str | os.PathLike) -> str | None:
    """The DICOM file's PatientID as a group key: an HMAC-SHA-256 under a key made for this process and never stored
    (16 hex digits), so that a patient's films stay together in a split while the key cannot be reversed by trying
    every medical record number, nor linked across runs; None for a file that is not DICOM or has no PatientID.
    Only that element is read."""
    value = _header(path, "PatientID")
    return hmac.new(_GROUP_KEY, value.encode("utf-8", "surrogateescape"), "sha256").hexdigest()[:16] if value else None
