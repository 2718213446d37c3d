"""A corpus of hostile and odd user inputs, generated in code (no external files).

``build_corpus(directory)`` writes every case and returns `CorpusCase` records saying what `load_image` must do with
it: ``expect == "ok"`` -> a uint8 gray array of ``shape`` (H, W); ``expect == "error"`` -> `InputError`;
``expect == "refused"`` -> decodes to ``shape``, but the input gate (`check_radiograph`) refuses it. The CLI and service
tests reuse it: iterate the cases, feed ``case.path`` (or its bytes, uploaded as ``case.upload_name``) and check
ok/error/refused. Cases that need an encoder this machine lacks are left out of the returned list.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Fake patient identity in every corpus DICOM: tests check it never shows up in a message.
PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "SECRET-ID-4711"


@dataclass(frozen=True)
class CorpusCase:
    """One input file and the documented outcome.

    Attributes:
        name: stable identifier (used as the pytest id).
        path: the file on disk.
        expect: "ok", "error" or "refused" (decodes; the input gate refuses it).
        reason: why, in a few words.
        shape: (H, W) of the decoded array for "ok" and "refused" cases.
        upload_name: the file name to present on upload (may hold path separators or control characters).
    """

    name: str
    path: Path
    expect: str
    reason: str
    shape: tuple[int, int] | None = None
    upload_name: str = ""


# --- building blocks, also used by the tests ---------------------------------------------------------------------------


def gradient(height: int, width: int) -> np.ndarray:
    """A deterministic uint8 test pattern: diagonal gradient with a bright square in the top-left corner."""
    img = ((np.add.outer(np.arange(height), np.arange(width)) * 255) // max(1, height + width - 2)).astype(np.uint8)
    img[: max(1, height // 4), : max(1, width // 4)] = 255
    return img


def pil_bytes(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def jpeg_bytes(height: int = 48, width: int = 64, **save: object) -> bytes:
    return pil_bytes(Image.fromarray(gradient(height, width)), "JPEG", quality=90, **save)


def png_chunk(kind: bytes, payload: bytes, *, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", value & 0xFFFFFFFF)


def png_by_hand(width: int, height: int, idat: bytes, *, bit_depth: int = 8, color_type: int = 0,
                before_idat: tuple[bytes, ...] = (), ihdr_crc: int | None = None) -> bytes:
    """PNG bytes from parts, so that sizes, CRCs and chunks can lie."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr, crc=ihdr_crc) + b"".join(before_idat)
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def dicom_bytes(pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                frames: int = 1, transfer_syntax: str | None = None, pixel_data: bytes | None = None,
                **elements: object) -> bytes:
    """A DICOM Part 10 file (CR image) around ``pixels`` (H x W or H x W x 3; frames stacked on axis 0 if > 1).

    ``pixel_data`` replaces the encoded pixels (e.g. encapsulated compressed frames); ``elements`` are set last.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.4711"
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "CR"
    if pixels is not None:
        shape = pixels.shape[1:] if frames > 1 else pixels.shape
        ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
        ds.SamplesPerPixel = 3 if len(shape) == 3 else 1
        if ds.SamplesPerPixel == 3:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.tobytes() if pixel_data is None else pixel_data
        if pixel_data is not None:
            ds["PixelData"].VR = "OB"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- the cases -----------------------------------------------------------------------------------------------------------


def _exif_rotated_jpeg() -> bytes:
    """Stored 128 wide x 80 high, EXIF orientation 6 (rotate 90 deg clockwise to display): shown 80 wide x 128 high,
    the bright top-left block of the stored image ends up top-right."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return pil_bytes(Image.fromarray(gradient(80, 128)), "JPEG", quality=95, exif=exif.tobytes())


def _jpeg_truncated_giant() -> bytes:
    """A 16 x 16 JPEG whose frame header is patched to say 7000 x 7000: decoders fill the missing rest flat."""
    data = bytearray(pil_bytes(Image.fromarray(gradient(16, 16)), "JPEG", quality=90))
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", 7000, 7000)
    return bytes(data)


def _png_constant() -> bytes:
    noise = np.random.default_rng(2).integers(-2, 3, (256, 256))
    return _png(Image.fromarray((128 + noise).astype(np.uint8)))


def _png_small_on_canvas() -> bytes:
    canvas = np.zeros((512, 512), np.uint8)
    canvas[224:288, 224:288] = gradient(64, 64)
    return _png(Image.fromarray(canvas))


def _cmyk_jpeg() -> bytes:
    return pil_bytes(Image.fromarray(gradient(96, 144)).convert("RGB").convert("CMYK"), "JPEG", quality=90)


def _icc_jpeg() -> bytes:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return pil_bytes(Image.fromarray(gradient(96, 144)).convert("RGB"), "JPEG", quality=90, icc_profile=icc)


def _jpeg_garbage_after_header() -> bytes:
    data = jpeg_bytes()
    start = data.index(b"\xff\xda") + 20  # keep the headers and the start of the scan
    return data[:start] + np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()


def _png(img: Image.Image, **save: object) -> bytes:
    return pil_bytes(img, "PNG", **save)


def _png_bad_crc(chunk: bytes) -> bytes:
    data = bytearray(_png(Image.fromarray(gradient(72, 96))))
    at = data.index(chunk)
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0x01  # first byte of the chunk's CRC
    return bytes(data)


def _png_16bit() -> bytes:
    return _png(Image.fromarray((gradient(72, 96).astype(np.uint16) * 64 + 1000).astype(np.uint16)))


def _alpha_parts() -> tuple[np.ndarray, np.ndarray]:
    """Gray 200 with a brighter block in the middle rows and columns, and alpha rising from 0 (left) to 255 (right)."""
    gray = np.full((72, 96), 200, np.uint8)
    gray[16:56, 16:88] = 255
    return gray, np.tile(np.linspace(0, 255, 96).astype(np.uint8), (72, 1))


def _png_rgba() -> bytes:
    gray, alpha = _alpha_parts()
    return _png(Image.fromarray(np.dstack([gray] * 3 + [alpha]), "RGBA"))


def _png_la() -> bytes:
    return _png(Image.fromarray(np.dstack(_alpha_parts()), "LA"))


def _png_palette() -> bytes:
    img = Image.fromarray(gradient(72, 96)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _png(img, transparency=0)


def _png_bomb() -> bytes:
    """30000 x 30000 1-bit gray (900 Mpixel): ~100 kB on disk, ~110 MB of zeros once inflated."""
    width = height = 30_000
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    block = row * 256
    parts = [packer.compress(block) for _ in range(height // 256)]
    parts += [packer.compress(row * (height % 256)), packer.flush()]
    return png_by_hand(width, height, b"".join(parts), bit_depth=1)


def _png_text_bomb() -> bytes:
    """80 zTXt chunks, each inflating to just under Pillow's 1 MB per-chunk cap: 80 MB of text > its 64 MB budget."""
    payload = zlib.compress(b"A" * (1024 * 1024 - 64), 9)
    chunks = tuple(png_chunk(b"zTXt", f"k{i}".encode() + b"\x00\x00" + payload) for i in range(80))
    return png_by_hand(8, 8, zlib.compress(b"\x00\x80" * 8 * 4 + b"\x00" * 9 * 4), before_idat=chunks)


def _frames(n: int) -> list[Image.Image]:
    return [Image.fromarray(np.roll(gradient(72, 96), 7 * i, axis=1)) for i in range(n)]


def _animated(fmt: str, **save: object) -> bytes:
    first, *rest = _frames(3)
    return pil_bytes(first, fmt, save_all=True, append_images=rest, **save)


def _tiff_huge_header() -> bytes:
    """A hand-written TIFF whose IFD declares 100000 x 100000 8-bit pixels and holds 16 bytes."""
    entries = [(256, 4, 100_000), (257, 4, 100_000), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, 100_000), (279, 4, 16)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        ifd += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("xray.jpg", jpeg_bytes())
    return buf.getvalue()


def _dicom_windowed() -> bytes:
    """12-bit stored (`WINDOWED_STORED`), modality = 2 * stored - 1024, window centre 1000, width 2000."""
    return dicom_bytes(WINDOWED_STORED, bits_stored=12, RescaleSlope="2", RescaleIntercept="-1024", WindowCenter="1000",
                       WindowWidth="2000")


def _dicom_rle() -> bytes | None:
    from pydicom import dcmread
    from pydicom.pixels import get_encoder
    from pydicom.uid import RLELossless

    if not get_encoder(RLELossless).is_available:
        return None
    ds = dcmread(io.BytesIO(dicom_bytes((gradient(72, 96).astype(np.uint16) * 16), bits_stored=12)))
    ds.compress(RLELossless, generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_encapsulated(fmt: str, transfer_syntax: str, **save: object) -> bytes | None:
    from pydicom.encaps import encapsulate

    try:
        frame = pil_bytes(Image.fromarray(gradient(72, 96)), fmt, **save)
    except (OSError, KeyError):  # Pillow built without this encoder
        return None
    return dicom_bytes(gradient(72, 96), transfer_syntax=transfer_syntax, pixel_data=encapsulate([frame]))


def _dicom_no_decoder() -> bytes:
    """JPEG-LS declared: pydicom has no native JPEG-LS decoder (it needs pyjpegls, pylibjpeg or gdcm)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    frame = b"\xff\xd8\xff\xf7" + bytes(range(256)) * 4 + b"\xff\xd9"
    return dicom_bytes(gradient(72, 96), transfer_syntax=JPEGLSLossless, pixel_data=encapsulate([frame]))


def _dicom_deflated() -> bytes:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    return dicom_bytes(gradient(72, 96), transfer_syntax=DeflatedExplicitVRLittleEndian)


def _dicom_1bit() -> bytes:
    from pydicom.pixels import pack_bits

    bits = (gradient(72, 96) > 127).astype(np.uint8)
    return dicom_bytes(bits, pixel_data=pack_bits(bits), BitsAllocated=1, BitsStored=1, HighBit=0)


def _dicom_8bit() -> bytes:
    return dicom_bytes(gradient(72, 96))


_SIGNED = np.add.outer(np.linspace(0, 500, 72), np.linspace(-2000, 2500, 96)).astype(np.int16)
# stored values of the windowed DICOM: rising along each row (0..1980), a little down each column
WINDOWED_STORED = np.add.outer(np.arange(96) * 4, np.linspace(0, 1600, 256)).astype(np.uint16)
_ODD_DISK_NAME = os.fsdecode(b"odd\\name \n\xff.jpg")  # backslash, newline and a non-UTF-8 byte
ODD_UPLOAD_NAME = "../..\\etc/pass\u202ewd\r\nx.jpg"  # separators, right-to-left override, CR LF

# (name, file name on disk, expect, reason, builder, shape (H, W) or None, upload name)
_Spec = tuple[str, str, str, str, Callable[[], bytes | None], tuple[int, int] | None, str]
SPECS: list[_Spec] = [
    ("empty", "empty.jpg", "error", "no bytes", lambda: b"", None, ""),
    ("one_byte", "one.png", "error", "a single 0xFF byte", lambda: b"\xff", None, ""),
    ("text", "notes.jpg", "error", "plain text named .jpg", lambda: b"patient looks fine\n" * 20, None, ""),
    ("html_named_jpg", "page.jpg", "error", "an HTML page named .jpg",
     lambda: b"<!DOCTYPE html><html><body><img src=x.jpg></body></html>", None, ""),
    ("svg", "vector.png", "error", "SVG is not a raster image",
     lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', None, ""),
    ("zip", "archive.png", "error", "a ZIP archive holding a JPEG", _zip, None, ""),
    ("pdf", "report.jpg", "error", "a PDF header", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
     None, ""),
    ("random_bytes", "noise.jpg", "error", "seeded random bytes",
     lambda: b"\x00" + np.random.default_rng(1).integers(0, 256, 4095, dtype=np.uint8).tobytes(), None, ""),
    ("jpeg_magic_only", "magic.jpg", "error", "JPEG magic then zeros", lambda: b"\xff\xd8\xff\xe0" + bytes(200),
     None, ""),
    ("jpeg_truncated", "half.jpg", "error", "first half of a JPEG",
     lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2], None, ""),
    ("jpeg_garbage_after_header", "garbled.jpg", "error", "valid headers, random scan data",
     _jpeg_garbage_after_header, None, ""),
    ("jpeg_trailing_garbage", "trailing.jpg", "ok", "bytes after EOI are ignored by JPEG decoders",
     lambda: jpeg_bytes(96, 128) + b"GARBAGE" * 100, (96, 128), ""),
    ("jpeg_cmyk", "cmyk.jpg", "ok", "CMYK JPEG converts to gray", _cmyk_jpeg, (96, 144), ""),
    ("jpeg_exif_rotated", "rotated.jpg", "ok", "EXIF orientation 6 is applied", _exif_rotated_jpeg, (128, 80), ""),
    ("jpeg_icc_profile", "icc.jpg", "ok", "an embedded ICC profile is ignored", _icc_jpeg, (96, 144), ""),
    ("jpeg_1x1", "tiny.jpg", "refused", "a 1 x 1 image", lambda: jpeg_bytes(1, 1), (1, 1), ""),
    ("png_strip", "strip.png", "refused", "a 50000 x 1 strip", lambda: _png(Image.fromarray(gradient(1, 50_000))),
     (1, 50_000), ""),
    ("png_wide", "wide.png", "refused", "aspect ratio 5:1", lambda: _png(Image.fromarray(gradient(100, 500))),
     (100, 500), ""),
    ("png_constant", "blank.png", "refused", "one gray level with faint noise", _png_constant, (256, 256), ""),
    ("png_small_on_canvas", "canvas.png", "refused", "a 64 x 64 picture on a black 512 x 512 canvas",
     _png_small_on_canvas, (512, 512), ""),
    ("jpeg_truncated_giant", "giant.jpg", "refused", "header says 7000 x 7000, the data hold 16 x 16",
     _jpeg_truncated_giant, (7000, 7000), ""),
    ("odd_file_name", _ODD_DISK_NAME, "ok", "odd characters in the name do not matter", lambda: jpeg_bytes(96, 128), (96, 128),
     ODD_UPLOAD_NAME),
    ("png_bad_ihdr_crc", "badcrc.png", "error", "IHDR CRC mismatch", lambda: _png_bad_crc(b"IHDR"), None, ""),
    ("png_bad_idat_crc", "badidatcrc.png", "ok",
     "Pillow does not verify IDAT CRCs; zlib's own checksum still guards the pixels", lambda: _png_bad_crc(b"IDAT"),
     (72, 96), ""),
    ("png_truncated", "cut.png", "error", "PNG cut inside IDAT",
     lambda: _png(Image.fromarray(gradient(72, 96)))[:-30], None, ""),
    ("png_16bit", "deep.png", "ok", "16-bit gray scaled by its own min..max", _png_16bit, (72, 96), ""),
    ("png_rgba", "rgba.png", "ok", "alpha composited onto black", _png_rgba, (72, 96), ""),
    ("png_la", "la.png", "ok", "gray + alpha composited onto black", _png_la, (72, 96), ""),
    ("png_palette", "palette.png", "ok", "palette with a transparent entry", _png_palette, (72, 96), ""),
    ("png_1bit", "bilevel.png", "ok", "1-bit image", lambda: _png(Image.fromarray(gradient(72, 96)).convert("1")),
     (72, 96), ""),
    ("png_bomb", "bomb.png", "error", "30000 x 30000 decompression bomb", _png_bomb, None, ""),
    ("png_forged_ihdr", "forged.png", "error", "IHDR claims 6000 x 6000, data holds a few bytes",
     lambda: png_by_hand(6000, 6000, zlib.compress(b"\x00" * 16)), None, ""),
    ("png_zero_width", "zero.png", "error", "IHDR width 0", lambda: png_by_hand(0, 8, zlib.compress(b"")), None, ""),
    ("png_text_bomb", "textbomb.png", "error", "80 MB of zTXt chunks", _png_text_bomb, None, ""),
    ("png_animated", "anim.png", "error", "APNG with 3 frames", lambda: _animated("PNG"), None, ""),
    ("gif_palette", "still.gif", "ok", "single-frame palette GIF",
     lambda: pil_bytes(Image.fromarray(gradient(72, 96)).convert("P"), "GIF"), (72, 96), ""),
    ("gif_animated", "anim.gif", "error", "animated GIF", lambda: _animated("GIF"), None, ""),
    ("bmp", "scan.bmp", "ok", "BMP", lambda: pil_bytes(Image.fromarray(gradient(72, 96)), "BMP"), (72, 96), ""),
    ("webp", "scan.webp", "ok", "lossless WebP",
     lambda: pil_bytes(Image.fromarray(gradient(72, 96)), "WEBP", lossless=True), (72, 96), ""),
    ("webp_animated", "anim.webp", "error", "animated WebP", lambda: _animated("WEBP", lossless=True), None, ""),
    ("tiff_float", "float.tif", "ok", "32-bit float TIFF scaled by min..max",
     lambda: pil_bytes(Image.fromarray(gradient(72, 96).astype(np.float32) / 7.0 - 3.0, "F"), "TIFF"), (72, 96), ""),
    ("tiff_huge_header", "huge.tif", "error", "TIFF header declares 100000 x 100000", _tiff_huge_header, None, ""),
    ("tiff_multipage", "pages.tif", "error", "3-page TIFF", lambda: _animated("TIFF"), None, ""),
    ("dicom_8bit", "ct.dcm", "ok", "8-bit MONOCHROME2 kept as stored", _dicom_8bit, (72, 96), ""),
    ("dicom_1bit", "bits.dcm", "ok", "1-bit DICOM stretched to 0/255", _dicom_1bit, (72, 96), ""),
    ("dicom_as_png", "really_dicom.png", "ok", "DICOM content with a .png name", _dicom_8bit, (72, 96), ""),
    ("dicom_monochrome1", "mono1.dcm", "ok", "MONOCHROME1 is inverted",
     lambda: dicom_bytes(gradient(72, 96), photometric="MONOCHROME1"), (72, 96), ""),
    ("dicom_windowed_16bit", "windowed.dcm", "ok", "rescale slope/intercept then window centre/width",
     _dicom_windowed, (96, 256), ""),
    ("dicom_signed_16bit", "signed.dcm", "ok", "signed 16-bit, no window: min..max",
     lambda: dicom_bytes(_SIGNED), (72, 96), ""),
    ("dicom_zero_window_width", "badwindow.dcm", "ok", "unusable window width 0 falls back to min..max",
     lambda: dicom_bytes(_SIGNED, WindowCenter="0", WindowWidth="0"), (72, 96), ""),
    ("dicom_rgb", "color.dcm", "ok", "RGB DICOM converted to luma",
     lambda: dicom_bytes(np.dstack([gradient(72, 96)] * 3), photometric="RGB"), (72, 96), ""),
    ("dicom_rle", "rle.dcm", "ok", "RLE Lossless decodes natively", _dicom_rle, (72, 96), ""),
    ("dicom_deflated", "deflated.dcm", "ok", "Deflated Explicit VR decodes natively", _dicom_deflated, (72, 96), ""),
    ("dicom_jpeg_baseline", "jpeg.dcm", "ok", "JPEG Baseline through Pillow",
     lambda: _dicom_encapsulated("JPEG", "1.2.840.10008.1.2.4.50", quality=95), (72, 96), ""),
    ("dicom_jpeg2000", "j2k.dcm", "ok", "JPEG 2000 Lossless through Pillow/OpenJPEG",
     lambda: _dicom_encapsulated("JPEG2000", "1.2.840.10008.1.2.4.90", no_jp2=True, irreversible=False),
     (72, 96), ""),
    ("dicom_no_decoder", "jpegls.dcm", "error", "JPEG-LS with no decoder installed", _dicom_no_decoder, None, ""),
    ("dicom_no_pixels", "report.dcm", "error", "DICOM without pixel data", lambda: dicom_bytes(None), None, ""),
    ("dicom_multiframe", "cine.dcm", "error", "two frames",
     lambda: dicom_bytes(np.stack([gradient(72, 96)] * 2), frames=2), None, ""),
    ("dicom_truncated", "cut.dcm", "error", "pixel data cut short", lambda: _dicom_8bit()[:-100], None, ""),
    ("dicom_huge_dimensions", "huge.dcm", "error", "Rows x Columns = 60000 x 60000",
     lambda: dicom_bytes(gradient(4, 4), Rows=60_000, Columns=60_000), None, ""),
    ("dicom_preamble_only", "empty.dcm", "error", "preamble and DICM, then garbage",
     lambda: bytes(128) + b"DICM" + b"\x07" * 64, None, ""),
    ("dicom_without_preamble", "raw.dcm", "error", "a dataset without preamble and DICM",
     lambda: _dicom_8bit()[132:], None, ""),
]
CASE_NAMES = [spec[0] for spec in SPECS]


def build_corpus(directory: str | os.PathLike) -> list[CorpusCase]:
    """Write every case into ``directory`` (created if needed) and return the cases, in a stable order."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, filename, expect, reason, build, shape, upload_name in SPECS:
        data = build()
        if data is None:
            continue
        path = root / filename
        try:
            path.write_bytes(data)
        except (OSError, UnicodeEncodeError):  # file systems that refuse odd names (e.g. non-UTF-8 on macOS)
            path = root / f"{name}{Path(filename).suffix}"
            path.write_bytes(data)
        cases.append(CorpusCase(name, path, expect, reason, shape, upload_name or path.name))
    return cases
