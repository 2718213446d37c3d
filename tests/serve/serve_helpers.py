"""Small helpers shared by the service tests (images in, images out)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png_base64(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as img:
        assert img.format == "PNG"
        return np.asarray(img)


def png_bomb(width: int = 8_000, height: int = 8_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb's calling card)."""
    data = bytearray(png_bytes(np.zeros((1, 1), dtype=np.uint8)))
    ihdr = 8  # after the signature: length (4), b"IHDR" (4), then width and height
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13 : ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


def dicom_bytes(gray: np.ndarray, *, patient_name: str = "Doe^Jane") -> bytes:
    """A 12-bit MONOCHROME2 CR DICOM file (with a VOI window) holding ``gray`` scaled to 0..4095."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.Modality = patient_name, "CR"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = (gray.astype(np.uint16) * 16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SLOW = b"SLOW"  # uploads starting with these bytes decode "forever" in `slow_or_decode`
BOOM = b"BOOM"  # and these fail with an unexpected exception whose message must not reach the client


def slow_or_decode(data: bytes, **kwargs: object) -> object:
    """`pneumo.serve.decoding.decode_upload`, except that an upload starting with ``SLOW`` hangs like a decode bomb
    (module level, so that a decode worker process can import it)."""
    import time

    from pneumo.serve.decoding import decode_upload

    if bytes(data[:4]) == SLOW:
        time.sleep(600)
    if bytes(data[:4]) == BOOM:
        raise RuntimeError("secret-internals in /srv/pneumo/decoding.py line 42")
    return decode_upload(data, **kwargs)


def worker_pid(data: bytes, **kwargs: object) -> int:
    """The decode worker's process id (module level, so that a decode worker process can import it)."""
    import os

    return os.getpid()
