"""Image bytes (JPEG/PNG/DICOM and a few other formats) -> uint8 gray H x W, or one `InputError` line: the ONE decoder.

The dataset cache (training), `pneumo predict`, the service and the explanations all decode through `load_image`;
`pneumo.data.preprocess.prepare` then makes the model input, so a model sees at inference what it saw in training.
The format is sniffed from the first bytes, never from the file name. Rules, in one place:

* **Accepted**: JPEG (MPO: its primary image), PNG, BMP, single-frame GIF/TIFF/WebP, DICOM Part 10 (the 128-byte
  preamble and ``DICM``). Anything else, multi-frame images (animated GIF/PNG/WebP, multi-page TIFF, multi-frame
  DICOM), images over the limits and every decoding failure raise `InputError`.
* **Size and memory first**: the declared width x height is checked against ``max_pixels``, and the bytes the decode
  will hold (pixels x (bytes per decoded pixel + 1 for the uint8 result)) against ``max_decode_bytes``, before any
  pixel is decoded (Pillow and pydicom read the header only), so a decompression bomb or a 16-bit / float giant costs
  nothing; a progressive or multi-scan JPEG's coefficient buffer and a tiled TIFF's tile buffer count too, and a JPEG
  with more than `pneumo.data.jpeg.MAX_JPEG_SCANS` scans or a TIFF with tiles far larger than the image is refused.
  JPEGs decode at a reduced DCT scale when the model size is given (``target``). At most `decode_slots`
  decodes run at once in a process (the others wait), so decoding holds at most slots x (max_decode_bytes + ~40 MB).
* **8-bit data is kept as stored**: L, RGB (ITU-R 601 luma, as ``Image.convert("L")``), palette, CMYK, 1-bit.
  Alpha is composited onto black (transparent areas become black, like air on a radiograph). ICC profiles are
  ignored. EXIF orientation is applied; an unreadable EXIF block is ignored.
* **Other depths** (16-bit and 32-bit PNG/TIFF, float TIFF, DICOM with other than 8 stored bits and no window) are
  scaled linearly from the data's own min..max to 0..255; a constant image becomes all black.
* **DICOM**: see `pneumo.data.dicom` (modality LUT, VOI window, MONOCHROME1; no patient data is read).

The input gate applied after decoding (`check_radiograph`: too small, extreme aspect ratio, nearly constant, mostly
padding) is `pneumo.data.gate`.
"""

from __future__ import annotations

import io
import logging
import math
import os
import stat
import threading

import numpy as np
from PIL import Image, UnidentifiedImageError

from pneumo.data.dicom import decode_dicom
from pneumo.data.jpeg import JpegScans, read_scans
from pneumo.data.pixels import check_budget, check_size, scale_strips, strips, value_range
from pneumo.errors import ConfigError, InputError, one_line

log = logging.getLogger(__name__)

# bump when a change here or in dicom.py can change which files are read or their pixels: kept dataset scans
# (`pneumo.data.manifest.scan_dataset`) and image caches (`pneumo.data.cache.cache_key`) are then made again
DECODER_VERSION = 4  # 4: JPEG markers found as libjpeg does, TIFF tiles, DICOM frame headers and deflate (round 4)
MAX_PIXELS = 50_000_000
MAX_BYTES = 256 * 1024 * 1024
MAX_DECODE_BYTES = 256_000_000  # decoded samples + the uint8 result, for one image
DECODE_SLOTS = 2  # decodes at once per process, by default (`decode_slots`)
# Pillow decodes WebP (libwebp's animation decoder, also for a still image) through several full-size RGBA copies:
# peak RSS measured at 16.3-16.5 bytes per pixel for 4000 x 4000 lossless and lossy RGB WebPs, uint8 result included
# (Pillow 13, ru_maxrss; 4.0 B/px is Pillow's own RGB image). Counted as 16 + 1 for the result.
WEBP_BYTES_PER_PIXEL = 16
COEFFICIENT_BYTES = 2  # libjpeg buffers every DCT coefficient (int16) of a multi-scan JPEG until its last scan
MAX_TIFF_TILE_SIDE = 4096  # a tile side accepted whatever the image's size (GDAL writes 256 x 256 for a small raster)
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
_BARE_DICOM_STARTS = (b"\x02\x00\x00\x00", b"\x02\x00\x01\x00", b"\x02\x00\x02\x00", b"\x02\x00\x03\x00",
                      b"\x02\x00\x10\x00", b"\x08\x00\x00\x00", b"\x08\x00\x05\x00", b"\x08\x00\x08\x00",
                      b"\x08\x00\x16\x00")  # (0002,0000-0003 / 0010), (0008,0000 / 0005 / 0008 / 0016)
_ORIENTATION = {  # EXIF orientation -> the view that makes the image upright (as ImageOps.exif_transpose)
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a, 1),
}

_slots = threading.BoundedSemaphore(DECODE_SLOTS)
_slot_count = DECODE_SLOTS


def decode_slots(count: int | None = None) -> int:
    """The number of decodes that may run at once in this process; ``count`` sets it first (decodes already waiting
    keep the old bound). Peak decoding memory is about slots x (max_decode_bytes + ~40 MB)."""
    global _slots, _slot_count
    if count is not None:
        if count < 1:
            raise ConfigError(f"decode slots must be at least 1, got {count}")
        _slots, _slot_count = threading.BoundedSemaphore(count), count
    return _slot_count


def load_image(data: bytes, *, name: str = "", target: int | None = None, max_pixels: int = MAX_PIXELS,
               max_decode_bytes: int = MAX_DECODE_BYTES) -> np.ndarray:
    """Decode image bytes to a C-contiguous uint8 gray H x W array.

    Args:
        data: the file content.
        name: the file name, only used to label error messages (its extension is ignored).
        target: the model input size; JPEGs are then decoded at a reduced DCT scale whose short side stays >= 2 *
            target (much faster for large photos; close to, not the same as, a full decode after the resize to the
            model size: up to 0.04 in P(pneumonia) on 4x and 7x upscaled test JPEGs; every pneumo path decodes so).
        max_pixels: refuse images whose declared width x height exceeds this.
        max_decode_bytes: refuse images whose decode would hold more than this (decoded samples + uint8 result).

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
        with _slots:
            if kind == "DICOM":  # (an 8-bit gray JPEG frame is decoded as a JPEG file: one image, one score)
                gray = decode_dicom(data, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes,
                                    jpeg=lambda frame: _decode_pillow(frame, "JPEG", target=target,
                                                                      max_pixels=max_pixels,
                                                                      max_decode_bytes=max_decode_bytes))
            else:
                gray = _decode_pillow(data, kind, target=target, max_pixels=max_pixels,
                                      max_decode_bytes=max_decode_bytes)
    except InputError as exc:  # our own messages may quote file content (a UID): keep them on one line
        again = type(exc)(f"{prefix}{_one_line(exc)}")  # (a NotAssessed film stays one, of its kind)
        again.__dict__.update(exc.__dict__)
        raise again from None
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
                    max_bytes: int = MAX_BYTES, max_decode_bytes: int = MAX_DECODE_BYTES) -> np.ndarray:
    """Read a regular file of at most ``max_bytes`` (`read_file`) and decode it with `load_image`."""
    return load_image(read_file(path, max_bytes), target=target, max_pixels=max_pixels,
                      max_decode_bytes=max_decode_bytes)


def read_file(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular, non-empty file of at most ``max_bytes``, read at most that far (a file whose size says
    0, as procfs and FUSE report, cannot make it read on).

    Messages do not repeat the path (the caller knows it). Directories, FIFOs and devices are refused without
    blocking on them.

    Raises:
        InputError: not a regular file, unreadable, empty or too large.
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
    return data


# --- the input gate -------------------------------------------------------------------------------------------------


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is read as DICOM (Part 10: the 128-byte preamble, then ``DICM``)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def looks_like_image(head: bytes) -> bool:
    """Whether a file whose first bytes are ``head`` (132 are enough) is read as an image: an image format or DICOM,
    a DICOM data set without its preamble included (so that it is named with that reason)."""
    return _sniff(head) is not None or head[:4] in _BARE_DICOM_STARTS or head.startswith(b"DICM")


def _sniff(data: bytes) -> str | None:
    """The decoder to use, from magic bytes: a Pillow format name, "DICOM", or None."""
    if is_dicom(data):
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
    if head[:4] in _BARE_DICOM_STARTS or head.startswith(b"DICM"):  # no elements, or "DICM" without the preamble
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
    """The exception as one short printable line (a DICOM tag's text may hold escape sequences)."""
    text = one_line(" ".join(str(exc).split()))
    if not text or isinstance(exc, KeyError):
        text = f"{type(exc).__name__} {text}".strip()
    return text if len(text) <= 200 else text[:197] + "..."


# --- Pillow formats --------------------------------------------------------------------------------------------------


def _decode_pillow(data: bytes, fmt: str, *, target: int | None, max_pixels: int, max_decode_bytes: int) -> np.ndarray:
    scans = read_scans(data) if fmt == "JPEG" else JpegScans(0, False)  # before Pillow reads past the header
    with Image.open(io.BytesIO(data), formats=[fmt]) as img:
        width, height = img.size
        check_size(width, height, max_pixels)
        if fmt != "JPEG" and getattr(img, "is_animated", False):
            raise InputError(f"multi-frame {fmt} is not supported: save the frame to analyse as its own image")
        if fmt == "JPEG" and target is not None:
            scale = max(1.0, min(width, height) / (2 * target))
            img.draft("L", (int(width / scale), int(height / scale)))
        multi_scan = scans.count > 1 or scans.progressive or (fmt == "JPEG" and bool(img.info.get("progressive")))
        buffered = _coefficient_bytes(img, width, height) if multi_scan else 0  # full size, whatever the draft
        tiled = {}
        if fmt == "TIFF" and (buffered := _tile_bytes(img, width, height)):
            tiled = {"buffer": "for one TIFF tile", "hint": "re-save it without tiles or with smaller ones"}
        width, height = img.size  # after draft: what will be decoded
        check_budget(width * height, _decoded_bytes_per_pixel(img, fmt) + 1, max_decode_bytes, buffered=buffered,
                     **tiled)
        orientation = _exif_orientation(img)
        img.load()
        gray = _to_gray(img)
    if orientation in _ORIENTATION:
        gray = np.ascontiguousarray(_ORIENTATION[orientation](gray))
    return gray


def _decoded_bytes_per_pixel(img: Image.Image, fmt: str) -> int:
    """Bytes Pillow holds per decoded pixel: 1 for 1/L/P, 2 for I;16, 4 for I, F and every multi-band mode; WebP
    ``WEBP_BYTES_PER_PIXEL`` whatever its mode (measured)."""
    if fmt == "WEBP":
        return WEBP_BYTES_PER_PIXEL
    mode = img.mode
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _coefficient_bytes(img: Image.Image, width: int, height: int) -> int:
    """The coefficient buffer libjpeg holds for a multi-scan JPEG of ``width`` x ``height`` (before any draft):
    every component's blocks at its own sampling, ``COEFFICIENT_BYTES`` per coefficient (measured 3.1 B/px in all
    for a 4000 x 4000 gray progressive JPEG, 7.1 for 4:2:0 RGB, where 2 and 3 are coefficients)."""
    layers = getattr(img, "layer", None) or [(None, 1, 1, None)] * 3  # (id, h, v, table) per component, from SOF
    h_max = max(max(int(layer[1]) for layer in layers), 1)
    v_max = max(max(int(layer[2]) for layer in layers), 1)
    total = 0
    for _, h, v, _ in layers:
        cols = math.ceil(math.ceil(width * max(int(h), 1) / h_max) / 8) * 8
        rows = math.ceil(math.ceil(height * max(int(v), 1) / v_max) / 8) * 8
        total += cols * rows
    return total * COEFFICIENT_BYTES


def _tile_bytes(img: Image.Image, width: int, height: int) -> int:
    """The buffer libtiff fills for one tile of a tiled TIFF (0 for strips, which libtiff clips to the image): it is
    sized from TileWidth x TileLength, not from the image (a 4.5 KB file declaring 46336^2 tiles for 1024^2 pixels took
    2.2 GB, red team round 4). Pillow unpacks YCbCr and old-style JPEG tiles as RGBA: 4 bytes a pixel at least.

    Raises:
        InputError: tile sides that are no positive integers, or larger than `MAX_TIFF_TILE_SIDE` and than the image
            rounded up to a multiple of 16 (TIFF 6.0 tile sides are multiples of 16).
    """
    tags = getattr(img, "tag_v2", {})
    if 322 not in tags and 323 not in tags:  # TileWidth, TileLength
        return 0
    tile_width, tile_length = tags.get(322), tags.get(323)
    if not all(isinstance(side, int) and side > 0 for side in (tile_width, tile_length)):
        shown = " x ".join(str(side) if isinstance(side, int) else type(side).__name__ for side in (tile_width, tile_length))
        raise InputError(f"TIFF with invalid tile dimensions {shown}")
    if any(side > max(math.ceil(image_side / 16) * 16, MAX_TIFF_TILE_SIDE)
           for side, image_side in ((tile_width, width), (tile_length, height))):
        raise InputError(f"TIFF tiles of {tile_width}x{tile_length} pixels for a {width}x{height} image: refused "
                         f"before decoding (tiles up to {MAX_TIFF_TILE_SIDE} pixels a side or the image's size); "
                         "re-save it without tiles")
    bits = tags.get(258, (1,))  # BitsPerSample, one per sample
    bits = bits if isinstance(bits, tuple) else (bits,)
    samples = max(int(tags.get(277, 1)), len(bits))  # SamplesPerPixel
    stored = math.ceil(max(int(b) for b in bits) * samples / 8)
    rgba = tags.get(262) == 6 or tags.get(259) == 6  # YCbCr or old-style JPEG: unpacked through TIFFRGBAImage
    return tile_width * tile_length * max(stored, 4 if rgba else 1)


def _exif_orientation(img: Image.Image) -> int:
    """EXIF orientation tag (1 = upright); a corrupt EXIF block is ignored rather than failing the image."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - EXIF is optional metadata
        log.debug("ignoring unreadable EXIF block")
        return 1


def _to_gray(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 gray, a strip of rows at a time (temporaries stay small whatever the image size)."""
    width, height = img.size

    def rows(r0: int, r1: int) -> Image.Image:
        return img.crop((0, r0, width, r1))

    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        def values(r0: int, r1: int) -> np.ndarray:
            return np.asarray(rows(r0, r1))

        found = value_range(height, width, values)
        if found is None:
            return np.zeros((height, width), dtype=np.uint8)
        return scale_strips(height, width, values, *found)
    out = np.empty((height, width), dtype=np.uint8)
    for r0, r1 in strips(height, width):
        out[r0:r1] = _strip_to_gray(rows(r0, r1))
    return out


def _strip_to_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "L":
        return np.asarray(img)
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, img.convert("RGBA")).convert("L"))
    if img.mode not in ("RGB", "1"):  # CMYK, YCbCr, LAB, HSV, RGBX ...
        img = img.convert("RGB")
    return np.asarray(img.convert("L"))


def pixel_libraries() -> str:
    """The versions of the libraries that make the pixels (Pillow and its codecs, pydicom and the plugins that decode
    compressed DICOM, OpenCV for resizing and in-painting, SciPy for the lung crop, NumPy): a kept scan or image cache
    made with others is not reused."""
    import importlib.util

    import cv2
    import PIL
    import pydicom

    from pneumo.provenance import package_version

    packages = {"pylibjpeg": "pylibjpeg", "libjpeg": "pylibjpeg-libjpeg", "openjpeg": "pylibjpeg-openjpeg",
                "jpeg_ls": "pyjpegls", "gdcm": "python-gdcm"}  # module: distribution
    plugins = ",".join(f"{m}={package_version(package)}" for m, package in packages.items()
                       if importlib.util.find_spec(m) is not None)
    return (f"PIL={PIL.__version__}|pydicom={pydicom.__version__}|cv2={cv2.__version__}|scipy={package_version('scipy')}"
            f"|numpy={package_version('numpy')}|{plugins}")
