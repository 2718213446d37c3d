"""DICOM Part 10 bytes -> uint8 gray H x W, for `pneumo.data.decode` (which sniffs the format and owns the rules).

Modality LUT (rescale slope/intercept or LUT), then the VOI window (the first window centre/width, else the VOI LUT)
mapped over the window's full output range to 0..255; MONOCHROME1 (or Presentation LUT Shape INVERSE) is inverted;
RGB/YBR become luma. A lateral film (`_lateral`), a FOR PROCESSING image, a screen capture (`_screen_capture`) and a
multi-frame object are refused. Only the tags needed for the
pixels and those (view, series description, protocol name, presentation intent) are read, so patient data is never parsed, logged
or put in a message (`pneumo.data.dicom_header` reads the view and a keyed hash of PatientID apart). Numbers that cannot
be pixels (a rescale slope of 1e308, NaN) are refused with `InputError`; an unusable window (width 0, NaN) is ignored
and the data's own min..max (without the PixelPaddingValue's pixels) is shown instead. Values are converted a strip
of rows at a time (`pneumo.data.pixels`). Nothing is decoded or inflated past the limits: a compressed frame's own
header must agree with Rows, Columns and SamplesPerPixel (`pneumo.data.codestream`), and a deflated data set is
inflated here, up to half the decode budget (`_read`), not whole by pydicom.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pneumo.data.codestream import check_frame, first_frame, inflate
from pneumo.data.pixels import MAX_ABS_VALUE, check_budget, check_size, scale_strips, value_range
from pneumo.errors import InputError, NotAssessed

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

log = logging.getLogger(__name__)
T = TypeVar("T")

# The only DICOM elements read: enough to decode and display the pixels, nothing about the patient.
_DICOM_TAGS = (
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
    "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "ViewPosition", "ViewCodeSequence", "SeriesDescription", "ProtocolName", "PresentationLUTShape",
    "PresentationIntentType", "PixelPaddingValue", "PixelPaddingRangeLimit", "SOPClassUID", "ConversionType",
)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage (and its .7.1-.7.4 multi-frame kin)
# ConversionType (PS3.3 C.8.6.1) of a capture that is never a film: a synthetic image, a scanned document. A
# workstation capture (WSD) in gray is often a film exported as a secondary capture (the OOD check judges it); in colour
# it is a viewer's screenshot. Digitised film (DF) and a digitised image (DI) are films.
NOT_FILMS = {"SYN": "a synthetic image", "SD": "a scanned document"}
# the pydicom plugins for the compressed syntaxes a PACS uses: JPEG, JPEG-LS and JPEG Lossless (libjpeg), JPEG 2000
DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
# a lateral film (PS3.3 C.8.11.5: ViewPosition LL/RL, or the legacy LATERAL): the model reads frontal (PA/AP) films.
# Words of ViewPosition (and of the View Code Sequence's meaning; of SeriesDescription / ProtocolName where the image
# states no view) that name a lateral view; a decubitus view (LLD, "left lateral decubitus") is frontal.
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")
FRONTAL_WORDS = ("PA", "AP", "FRONTAL", "DECUBITUS", "LLD", "RLD")
_PIXEL_BITS = {"PixelData": 0, "FloatPixelData": 32, "DoubleFloatPixelData": 64}  # 0: BitsAllocated says
_LUMA = np.array([0.299, 0.587, 0.114])
DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR
JPEG_8BIT = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")  # JPEG Baseline, JPEG Extended (8 bits here)
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the data set after the file meta is deflated
Rows = Callable[[int, int], np.ndarray]


def decode_dicom(data: bytes, *, max_pixels: int, max_decode_bytes: int,
                 jpeg: Callable[[bytes], np.ndarray] | None = None) -> np.ndarray:
    """Decode a single-frame DICOM image; the header is checked against both limits before any pixel is decoded.
    ``jpeg``: decodes an 8-bit gray JPEG frame as a JPEG file is decoded (`_jpeg_frame`)."""
    ds = _read(data, max_decode_bytes)
    keyword = next((k for k in _PIXEL_BITS if k in ds), None)
    if keyword is None:
        if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == DIRECTORY:
            raise NotAssessed("a DICOM file-set's index (DICOMDIR), not an image: give its folder")
        raise NotAssessed("DICOM file has no pixel data (a report or presentation state?)")
    lateral = _lateral(ds)
    if lateral:
        raise NotAssessed(f"a lateral film ({lateral}): the model reads frontal (PA or AP) chest films")
    if str(ds.get("PresentationIntentType", "") or "").strip().upper() == "FOR PROCESSING":
        raise NotAssessed("a FOR PROCESSING image (raw detector data, not for display): export the FOR PRESENTATION "
                         "image from the PACS or the modality")
    capture = _screen_capture(ds)
    if capture:
        raise NotAssessed(f"{capture}, not a radiograph: send the film itself")
    frames = _dicom_int(ds, "NumberOfFrames", 1)
    if frames > 1:  # (an error was a failed run; the model reads one film: a DICOM audit)
        raise NotAssessed(f"a multi-frame DICOM object ({frames} frames): export the film as a single-frame image")
    height, width = _dicom_int(ds, "Rows", 0), _dicom_int(ds, "Columns", 0)
    check_size(width, height, max_pixels)
    samples = _dicom_int(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):  # decoders allocate rows x columns x samples up front
        raise InputError("DICOM SamplesPerPixel must be 1 or 3")
    bits = _PIXEL_BITS[keyword] or _dicom_int(ds, "BitsAllocated", 8)
    compressed = _dicom_is_compressed(ds)
    # the samples twice (the parsed dataset keeps the pixel bytes, or the compressed frame inflated first, while
    # pixel_array makes its array) + the uint8 result
    sample_bytes = samples * max(1, math.ceil(bits / 8))
    check_budget(width * height, sample_bytes * 2 + 1, max_decode_bytes)
    _dicom_check_decoder(ds, compressed)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise InputError("PALETTE COLOR DICOM is not supported")
    frame = first_frame(ds) if compressed else None
    if frame is not None:  # decoders allocate what the frame's own header says, not Rows x Columns
        check_frame(frame, _dicom_transfer_syntax(ds), rows=height, columns=width, samples=samples,
                    bits_allocated=bits)
    _check_rescale(ds)
    _widen_8bit_voi_lut(ds)
    as_jpeg = jpeg is not None and frame is not None and _jpeg_frame(ds, samples, photometric)
    pixels = jpeg(frame) if as_jpeg else ds.pixel_array
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            if pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB (YBR is converted to RGB by pydicom)
                stored = _dicom_int(ds, "BitsStored", 8)
                top = 255.0 if stored <= 8 else float(2**stored - 1)
                return scale_strips(height, width, lambda r0, r1: pixels[r0:r1].astype(np.float64) @ _LUMA, 0.0, top)
            if pixels.ndim != 2 or not photometric.startswith("MONOCHROME"):
                raise InputError(f"unsupported DICOM pixel layout: {photometric or 'no photometric interpretation'}, "
                                 f"array shape {pixels.shape}")
            gray = _display(pixels, ds)
    except FloatingPointError:
        raise InputError("DICOM pixel values overflow when rescaled or windowed") from None
    if photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "") or "").strip().upper() == "INVERSE":
        np.subtract(255, gray, out=gray)  # (MONOCHROME1 comes with INVERSE: one inversion, not two)
    return gray


def _jpeg_frame(ds: Dataset, samples: int, photometric: str) -> bool:
    """Whether the compressed frame is an 8-bit gray JPEG (Baseline or Extended) that is decoded as a JPEG file is
    (Pillow, at the model's DCT scale): the same bytes as a ``.jpeg`` and inside a DICOM gave P(pneumonia) up to 0.07
    apart (a full decode against a reduced one), and 0.02 with pydicom's pylibjpeg plugin (a DICOM audit)."""
    return (str(_dicom_transfer_syntax(ds)) in JPEG_8BIT and samples == 1 and photometric.startswith("MONOCHROME")
            and _dicom_int(ds, "BitsStored", 8) <= 8 and _dicom_int(ds, "PixelRepresentation", 0) == 0)


def _read(data: bytes, max_decode_bytes: int) -> Dataset:
    """The elements of `_DICOM_TAGS`. pydicom inflates a deflated data set whole before reading any of them (a 1 MB
    upload inflated to 1 GB): that one is inflated here, to at most half of ``max_decode_bytes`` (the pixel data of an
    image within the budget is less than that), after the file meta information says so."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.tag import Tag

    stream = io.BytesIO(data)
    try:  # the same reading of the file meta as dcmread's, which inflates right after it
        read_preamble(stream, force=False)
        meta = _read_file_meta_info(stream)
        deflated = meta.get("TransferSyntaxUID") == DEFLATED
    except Exception:  # noqa: BLE001 - dcmread fails on it the same way, before inflating, with its own message
        deflated = False
    if not deflated:
        return pydicom.dcmread(io.BytesIO(data), force=False, specific_tags=list(_DICOM_TAGS))
    body = inflate(memoryview(data)[stream.tell() :], max_decode_bytes)
    ds = read_dataset(body, is_implicit_VR=False, is_little_endian=True,
                      specific_tags=[Tag(keyword) for keyword in _DICOM_TAGS])
    ds.file_meta = meta
    return ds


def _screen_capture(ds: Dataset) -> str | None:
    """What a secondary capture that is no film is (a synthetic image, a scanned document, or a colour capture of a
    workstation's screen or of unstated kind: a viewer's screenshot), or None (a DICOM audit: a screenshot with
    burnt-in patient text got a NORMAL verdict)."""
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
    if sop != SECONDARY_CAPTURE and not sop.startswith(SECONDARY_CAPTURE + "."):
        return None
    kind = str(ds.get("ConversionType", "") or "").strip().upper()
    if kind in NOT_FILMS:
        return f"{NOT_FILMS[kind]} (ConversionType {kind})"
    if kind in ("WSD", "") and _dicom_int(ds, "SamplesPerPixel", 1) == 3:
        return f"a colour screen capture (ConversionType {kind or 'not stated'})"
    return None


def _names_lateral(text: object, lateral: tuple[str, ...] = ("LATERAL", "LAT", "LATERO")) -> bool:
    """Whether ``text`` has a word of ``lateral`` and none of `FRONTAL_WORDS`."""
    words = set(re.findall(r"[A-Z]+", str(text or "").upper()))
    return bool(words & set(lateral)) and not words & set(FRONTAL_WORDS)


def _lateral(ds: Dataset) -> str | None:
    """Which element says the film is lateral, or None: ViewPosition (LL, RL, LATERAL, "LEFT LATERAL"), the View Code
    Sequence's meaning (DX images must have one), or, where the image states no view at all, SeriesDescription or
    ProtocolName naming a lateral view and no frontal one ("CHEST LAT"; not "CHEST PA/LAT"). Only those words are
    read; the message names the element, never its text."""
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if _names_lateral(position, LATERAL_VIEWS):
        return f"ViewPosition {position}"
    codes = [item.get("CodeMeaning", "") for item in ds.get("ViewCodeSequence") or []]
    if any(_names_lateral(meaning) for meaning in codes):
        return "its View Code Sequence says lateral"
    if not position and not codes:
        for keyword in ("SeriesDescription", "ProtocolName"):
            if _names_lateral(ds.get(keyword, "")):
                return f"its {keyword} names a lateral view"
    return None


def _display(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> uint8 through the modality LUT and the VOI window/LUT if usable, else 8-bit data as stored,
    else the modality values' min..max."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    height, width = pixels.shape

    def modality(r0: int, r1: int) -> np.ndarray:
        return apply_modality_lut(pixels[r0:r1], ds)

    if _usable_voi(ds):
        def shown(r0: int, r1: int) -> np.ndarray:
            with np.errstate(over="ignore"):  # SIGMOID: exp() of far-out values overflows to inf, giving 0 or 1
                return apply_voi_lut(modality(r0, r1), ds, index=0, prefer_lut=False)

        try:
            found = value_range(height, width, shown)
            if found is not None:
                lo, hi = _voi_output_range(modality(0, 1).dtype, ds, found)
                return scale_strips(height, width, shown, lo, hi)
        except (InputError, FloatingPointError):
            raise
        except Exception as exc:  # noqa: BLE001 - an unusable LUT must not lose the image
            log.debug("ignoring unusable DICOM VOI window/LUT: %s", type(exc).__name__)
    identity = "ModalityLUTSequence" not in ds and _float(ds, "RescaleSlope", 1.0) == 1.0 \
        and _float(ds, "RescaleIntercept", 0.0) == 0.0
    if identity and pixels.dtype == np.uint8 and _dicom_int(ds, "BitsStored", 8) == 8:
        return np.array(pixels, dtype=np.uint8)
    padding = _padding(ds)

    def unpadded(r0: int, r1: int) -> np.ndarray:  # the collimator's padding is not part of the image's range
        values = np.array(modality(r0, r1), dtype=np.float64)
        stored = pixels[r0:r1]
        values[(stored >= padding[0]) & (stored <= padding[1])] = np.nan
        return values

    found = value_range(height, width, unpadded if padding else modality)
    if found is None:
        return np.zeros((height, width), dtype=np.uint8)
    return scale_strips(height, width, modality, *found)


def _padding(ds: Dataset) -> tuple[float, float] | None:
    """The stored values that are padding (PixelPaddingValue, up to PixelPaddingRangeLimit), or None."""
    try:
        value = ds.get("PixelPaddingValue")
        limit = ds.get("PixelPaddingRangeLimit")
        if value is None or isinstance(value, (bytes, list)):
            return None
        first = float(value)
        last = first if limit is None or isinstance(limit, (bytes, list)) else float(limit)
    except (TypeError, ValueError):  # an unreadable padding element: the image's full range, as before
        return None
    return (min(first, last), max(first, last)) if math.isfinite(first) and math.isfinite(last) else None


def _widen_8bit_voi_lut(ds: Dataset) -> None:
    """pydicom (3.0) indexes a VOI LUT whose entries are 8 bits wide in uint8, so a LUT of more than 256 entries
    wraps around and shows noise (a [4096, 0, 8] LUT was up to 240 grey levels off). The entries (0..255) read the
    same as 16-bit ones, so this file's own parsed descriptor is widened to 16 bits before the lookup."""
    for item in ds.get("VOILUTSequence") or []:
        descriptor = item.get("LUTDescriptor")
        if descriptor is not None and len(descriptor) == 3 and int(descriptor[2]) == 8:
            item.LUTDescriptor = [descriptor[0], descriptor[1], 16]


def _usable_voi(ds: Dataset) -> bool:
    """A VOI LUT, or a window whose first centre and width are finite, in range and width >= 1 (PS3.3 C.11.2.1.2)."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            log.debug("ignoring a DICOM window that is not a number")
            return False
        usable = math.isfinite(center) and math.isfinite(width) and 1.0 <= width <= MAX_ABS_VALUE \
            and abs(center) <= MAX_ABS_VALUE
        if not usable:
            log.debug("ignoring an unusable DICOM window (centre %s, width %s)", center, width)
        return usable
    return "VOILUTSequence" in ds


def _voi_output_range(dtype: np.dtype, ds: Dataset, found: tuple[float, float]) -> tuple[float, float]:
    """The VOI output range: where far-out-of-window inputs land (so a window wider than the data keeps its
    contrast), widened by the actual output ``found``."""
    from pydicom.pixels import apply_voi_lut

    windowing = "WindowCenter" in ds and "WindowWidth" in ds
    if windowing or not np.issubdtype(dtype, np.integer):
        probe = np.array([-MAX_ABS_VALUE, MAX_ABS_VALUE], dtype=np.float64)
    else:  # a VOI LUT clips its input to the LUT's range: the dtype's ends reach both LUT ends
        info = np.iinfo(dtype)
        probe = np.array([info.min, info.max], dtype=dtype)
    lo, hi = found
    try:
        with np.errstate(all="ignore"):
            ends = apply_voi_lut(probe, ds, index=0, prefer_lut=False).astype(np.float64)
        if np.isfinite(ends).all():
            lo, hi = min(lo, float(ends.min())), max(hi, float(ends.max()))
    except Exception:  # noqa: BLE001 - the data range is a safe fallback
        log.debug("VOI output range taken from the data only")
    return lo, hi


def _check_rescale(ds: Dataset) -> None:
    """Refuse a rescale slope/intercept that is not a finite number or maps the stored range beyond
    ``MAX_ABS_VALUE``."""
    slope, intercept = _float(ds, "RescaleSlope", 1.0), _float(ds, "RescaleIntercept", 0.0)
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise InputError("DICOM RescaleSlope/RescaleIntercept is not a finite number")
    stored_max = 2.0 ** min(64, _dicom_int(ds, "BitsStored", _dicom_int(ds, "BitsAllocated", 16)))
    if abs(slope) * stored_max + abs(intercept) > MAX_ABS_VALUE:
        raise InputError(f"DICOM RescaleSlope {slope:.3g} / RescaleIntercept {intercept:.3g} put pixel values out of "
                         "range")


def _float(ds: Dataset, keyword: str, default: float) -> float:
    return _element(ds, keyword, default, _first, "a number")


def _first(value: object) -> float:
    """The first value of a possibly multi-valued DS/IS element, as a float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _dicom_int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer element (IS/US) that may be missing, empty or malformed; malformed -> InputError."""
    return _element(ds, keyword, default, int, "an integer")


def _element(ds: Dataset, keyword: str, default: T, convert: Callable[[Any], T], kind: str) -> T:
    """Element ``keyword`` through ``convert``; ``default`` when missing or empty, InputError when malformed."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return convert(value)
    except (TypeError, ValueError, IndexError):
        raise InputError(f"DICOM element {keyword} is not {kind}") from None


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


def _dicom_check_decoder(ds: Dataset, compressed: bool) -> None:
    """Raise InputError naming the transfer syntax when no installed plugin decodes it."""
    from pydicom.pixels import get_decoder

    if not compressed:
        return
    uid = _dicom_transfer_syntax(ds)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        named = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)  # (an unknown UID is its own name)
        raise InputError(f"DICOM transfer syntax {named} is not supported") from None
    # Pillow decodes JPEG Extended at 8 bits only: a 12-bit one needs libjpeg (pydicom would say so without the hint)
    twelve_bit = uid == "1.2.840.10008.1.2.4.51" and _dicom_int(ds, "BitsStored", 8) > 8
    if twelve_bit and set(decoder.available_plugins) <= {"pillow"}:
        raise InputError(f"cannot decode 12-bit DICOM compressed as {uid.name} ({uid}): no decoder installed "
                         f"({DECODER_HINT})")
    if not decoder.is_available:  # pydicom's own list of plugins runs past the one-line message: a short hint
        name = uid.name if len(uid.name) <= 40 else uid.keyword or uid.name  # JPEG Lossless: its long name cut off the hint
        raise InputError(f"cannot decode DICOM compressed as {name} ({uid}): no decoder installed ({DECODER_HINT})")
