"""User images (JPEG/PNG/DICOM and a few other formats) -> uint8 gray H x W, or one `InputError` line.

The format is sniffed from the first bytes, never from the file name. Rules, in one place:

* **Accepted**: JPEG (MPO: its primary image), PNG, BMP, single-frame GIF/TIFF/WebP, DICOM Part 10 (the 128-byte
  preamble and ``DICM``). Anything else, multi-frame images (animated GIF/PNG/WebP, multi-page TIFF, multi-frame
  DICOM), images over ``max_pixels`` and every decoding failure raise `InputError`.
* **Size first**: the declared width x height is checked before any pixel is decoded (Pillow and pydicom read the
  header only), so a decompression bomb costs nothing.
* **8-bit data is kept as stored**: L, RGB (ITU-R 601 luma, as ``Image.convert("L")``), palette, CMYK, 1-bit.
  Alpha is composited onto black (transparent areas become black, like air on a radiograph). ICC profiles are
  ignored, as in the dataset preprocessing. EXIF orientation is applied; an unreadable EXIF block is ignored.
* **Other depths** (16-bit and 32-bit PNG/TIFF, float TIFF, DICOM with other than 8 stored bits and no window) are
  scaled linearly from the data's own min..max to 0..255; a constant image becomes all black.
* **DICOM**: Modality LUT (rescale slope/intercept or LUT), then the VOI window (the first window centre/width,
  else the VOI LUT) mapped over the window's full output range to 0..255; MONOCHROME1 is inverted; RGB/YBR become
  luma. Compressed transfer syntaxes decode where pydicom has a plugin (RLE natively, JPEG and JPEG 2000 through
  Pillow, others with pylibjpeg or gdcm installed); otherwise the error names the transfer syntax. Only the tags
  needed for the pixels are read, so patient data is never parsed, logged or put in a message.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from pneumo.errors import ConfigError, InputError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

log = logging.getLogger(__name__)

MAX_PIXELS = 50_000_000
MAX_BYTES = 256 * 1024 * 1024
ACCEPTED = "JPEG, PNG, BMP, GIF, TIFF, WebP or DICOM"

_PIL_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)
_NON_IMAGE_MAGIC = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip data"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "an executable"),
)
# Elements that start a Part 10 file or a plain dataset when the preamble and "DICM" are missing.
_BARE_DICOM_STARTS = (b"\x02\x00\x00\x00", b"\x02\x00\x01\x00", b"\x08\x00\x00\x00", b"\x08\x00\x05\x00",
                      b"\x08\x00\x08\x00", b"\x08\x00\x16\x00")
# The only DICOM elements read: enough to decode and display the pixels, nothing about the patient.
_DICOM_TAGS = (
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
    "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ORIENTATION = {  # EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def load_image(data: bytes, *, name: str = "", target: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to a C-contiguous uint8 gray H x W array.

    Args:
        data: the file content.
        name: the file name, only used to label error messages (its extension is ignored).
        target: the model input size; JPEGs are then decoded at a reduced DCT scale whose short side stays >= 2 *
            target (much faster for large photos, lossless after the resize to the model size).
        max_pixels: refuse images whose declared width x height exceeds this.

    Raises:
        InputError: not an accepted image, too large, corrupt, truncated, multi-frame or undecodable (one line).
    """
    if target is not None and target < 1:
        raise ConfigError(f"target size must be a positive number of pixels, got {target}")
    data = bytes(data) if not isinstance(data, bytes) else data
    prefix = f"{_label(name)}: " if name else ""
    kind = _sniff(data)
    if kind is None:
        raise InputError(f"{prefix}not an image: {_describe(data)}; expected {ACCEPTED}")
    try:
        if kind == "DICOM":
            gray = _decode_dicom(data, max_pixels=max_pixels)
        else:
            gray = _decode_pillow(data, kind, target=target, max_pixels=max_pixels)
    except InputError as exc:  # our own messages may quote file content (a UID): keep them on one line
        raise InputError(f"{prefix}{_one_line(exc)}") from None
    except MemoryError:
        raise InputError(f"{prefix}not enough memory to decode this {kind} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # raised by Image.open itself
        raise InputError(f"{prefix}image too large: {_one_line(exc)}") from None
    except UnidentifiedImageError:
        raise InputError(f"{prefix}cannot decode {kind}: the header is corrupt or unsupported") from None
    except Exception as exc:  # noqa: BLE001 - Pillow, pydicom and numpy raise many types on hostile input
        log.debug("decoding failed: %s", type(exc).__name__)
        raise InputError(f"{prefix}cannot decode {kind}: {_one_line(exc)}") from None
    return np.ascontiguousarray(gray, dtype=np.uint8)


def load_image_file(path: str | os.PathLike, *, target: int | None = None, max_pixels: int = MAX_PIXELS,
                    max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Read a regular file of at most ``max_bytes`` and decode it with `load_image`.

    Messages do not repeat the path (the caller knows it). Directories, FIFOs and devices are refused without
    blocking on them.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InputError("not a regular file (a directory, pipe or device)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):  # swapped between stat and open
                raise InputError("not a regular file (a directory, pipe or device)")
            if info.st_size > max_bytes:
                raise InputError(f"file too large: {info.st_size} bytes > limit {max_bytes}")
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or type(exc).__name__}") from None
    if len(data) > max_bytes:
        raise InputError(f"file too large: more than {max_bytes} bytes")
    if not data:
        raise InputError("empty file")
    return load_image(data, target=target, max_pixels=max_pixels)


# --- sniffing --------------------------------------------------------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    """The decoder to use, from magic bytes: a Pillow format name, "DICOM", or None."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _PIL_MAGIC if data.startswith(magic)), None)


def _describe(data: bytes) -> str:
    """What a non-image most likely is, for the error message."""
    if not data:
        return "the file is empty"
    head = data[:512]
    for magic, what in _NON_IMAGE_MAGIC:
        if head.startswith(magic):
            return f"looks like {what}"
    if head[:4] in _BARE_DICOM_STARTS:
        return "looks like DICOM without the 128-byte preamble and 'DICM' prefix (re-save it as a DICOM file)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "looks like an HTML page"
    if text.startswith((b"<?xml", b"<svg")):
        return "looks like XML or SVG (vector images are not supported)"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "looks like text"
    return f"unknown content starting with {head[:8].hex(' ')}"


def _label(name: str) -> str:
    """A file name safe for a one-line message: printable characters only, at most 80."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in os.path.basename(name.replace("\\", "/")))
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text or isinstance(exc, KeyError):
        text = f"{type(exc).__name__} {text}".strip()
    return text if len(text) <= 200 else text[:197] + "..."


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise InputError(f"image has no pixels: {width}x{height}")
    if width * height > max_pixels:
        raise InputError(f"image too large: {width}x{height} pixels > limit {max_pixels}")


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map lo..hi linearly to 0..255 (clipped, rounded); all black when hi <= lo."""
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Full-range linear scaling of the data's own min..max (NaN -> min, +-inf clipped)."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    return _scale(np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo), lo, hi)


# --- Pillow formats --------------------------------------------------------------------------------------------------


def _decode_pillow(data: bytes, fmt: str, *, target: int | None, max_pixels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=[fmt]) as img:
        width, height = img.size
        _check_size(width, height, max_pixels)
        if fmt != "JPEG" and getattr(img, "is_animated", False):
            raise InputError(f"multi-frame {fmt} is not supported: save the frame to analyse as its own image")
        if fmt == "JPEG" and target is not None:
            scale = max(1.0, min(width, height) / (2 * target))
            img.draft("L", (int(width / scale), int(height / scale)))
        orientation = _exif_orientation(img)
        img.load()
        gray = _to_gray(img)
    if orientation in _ORIENTATION:
        gray = np.ascontiguousarray(np.asarray(Image.fromarray(gray).transpose(_ORIENTATION[orientation])))
    return gray


def _exif_orientation(img: Image.Image) -> int:
    """EXIF orientation tag (1 = upright); a corrupt EXIF block is ignored rather than failing the image."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - EXIF is optional metadata
        log.debug("ignoring unreadable EXIF block")
        return 1


def _to_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "L":
        return np.array(img, dtype=np.uint8)
    if mode in ("I", "F") or mode.startswith("I;"):
        return _min_max(np.asarray(img))
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return np.array(Image.alpha_composite(black, img.convert("RGBA")).convert("L"), dtype=np.uint8)
    if img.mode not in ("RGB", "1"):  # CMYK, YCbCr, LAB, HSV, RGBX ...
        img = img.convert("RGB")
    return np.array(img.convert("L"), dtype=np.uint8)


# --- DICOM -----------------------------------------------------------------------------------------------------------


def _decode_dicom(data: bytes, *, max_pixels: int) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(io.BytesIO(data), force=False, specific_tags=list(_DICOM_TAGS))
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise InputError("DICOM file has no pixel data (a report or presentation state?)")
    frames = _dicom_int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise InputError(f"multi-frame DICOM is not supported ({frames} frames): pick one frame")
    _check_size(_dicom_int(ds, "Columns", 0), _dicom_int(ds, "Rows", 0), max_pixels)
    if _dicom_int(ds, "SamplesPerPixel", 1) not in (1, 3):  # decoders allocate rows x columns x samples up front
        raise InputError("DICOM SamplesPerPixel must be 1 or 3")
    _dicom_check_decoder(ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise InputError("PALETTE COLOR DICOM is not supported")
    pixels = ds.pixel_array
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB (YBR is converted to RGB by pydicom)
        luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        bits = _dicom_int(ds, "BitsStored", 8)
        return _scale(luma, 0.0, 255.0) if bits <= 8 else _scale(luma, 0.0, float(2**bits - 1))
    if pixels.ndim != 2 or not photometric.startswith("MONOCHROME"):
        raise InputError(f"unsupported DICOM pixel layout: {photometric or 'no photometric interpretation'}, "
                         f"array shape {pixels.shape}")
    gray = _dicom_display(apply_modality_lut(pixels, ds), ds, stored=pixels)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _dicom_display(values: np.ndarray, ds: Dataset, *, stored: np.ndarray) -> np.ndarray:
    """Modality values -> uint8 through the VOI window/LUT if any, else 8-bit data as stored, else min..max."""
    from pydicom.pixels import apply_voi_lut

    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if has_window or "VOILUTSequence" in ds:
        try:
            shown = apply_voi_lut(values, ds, index=0, prefer_lut=False)
            lo, hi = _voi_output_range(values, ds, shown)
            return _scale(shown, lo, hi)
        except Exception as exc:  # noqa: BLE001 - an unusable window (width 0, bad LUT) must not lose the image
            log.debug("ignoring unusable DICOM VOI window/LUT: %s", type(exc).__name__)
    eight_bit = stored.dtype == np.uint8 and _dicom_int(ds, "BitsStored", 8) == 8
    if eight_bit and (values is stored or np.array_equal(values, stored)):
        return stored
    return _min_max(values)


def _voi_output_range(values: np.ndarray, ds: Dataset, shown: np.ndarray) -> tuple[float, float]:
    """The VOI output range: where far-out-of-window inputs land (so a window wider than the data keeps its
    contrast), widened by the actual output."""
    from pydicom.pixels import apply_voi_lut

    windowing = "WindowCenter" in ds and "WindowWidth" in ds
    if windowing or not np.issubdtype(values.dtype, np.integer):
        probe = np.array([-1e30, 1e30], dtype=np.float64)
    else:  # a VOI LUT clips its input to the LUT's range: the dtype's ends reach both LUT ends
        info = np.iinfo(values.dtype)
        probe = np.array([info.min, info.max], dtype=values.dtype)
    lo, hi = float(np.nanmin(shown)), float(np.nanmax(shown))
    try:
        with np.errstate(all="ignore"):
            ends = apply_voi_lut(probe, ds, index=0, prefer_lut=False).astype(np.float64)
        lo, hi = min(lo, float(ends.min())), max(hi, float(ends.max()))
    except Exception:  # noqa: BLE001 - the data range is a safe fallback
        log.debug("VOI output range taken from the data only")
    return lo, hi


def _dicom_int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer element (IS/US) that may be missing, empty or malformed; malformed -> InputError."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"DICOM element {keyword} is not an integer") from None


def _dicom_transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if not uid:
        raise InputError("DICOM file meta has no transfer syntax UID")
    return uid


def _dicom_is_compressed(ds: Dataset) -> bool:
    """True for an encapsulated (compressed) transfer syntax; unknown UIDs count as compressed."""
    uid = _dicom_transfer_syntax(ds)
    return not uid.is_transfer_syntax or bool(uid.is_compressed)


def _dicom_check_decoder(ds: Dataset) -> None:
    """Raise InputError naming the transfer syntax when no installed plugin decodes it."""
    from pydicom.pixels import get_decoder

    uid = _dicom_transfer_syntax(ds)
    if not _dicom_is_compressed(ds):
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise InputError(f"DICOM transfer syntax {uid.name} ({uid}) is not supported") from None
    if not decoder.is_available:
        hint = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise InputError(f"cannot decode DICOM compressed as {uid.name} ({uid}): no decoder installed ({hint})")
