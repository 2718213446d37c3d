"""DICOM bombs (red team round 4, items 1 and 2): a compressed frame whose own header declares more than the DICOM
header (a 2 KB file took a JPEG 2000 decode to 4.4 GB), and a deflated data set that pydicom inflated whole (1 MB ->
1 GB). Each is refused before decoding or inflating past the limits; ordinary compressed and deflated files decode."""

from __future__ import annotations

import io
import os
import re
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from corpus import dicom_bytes, gradient, pil_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pneumo.data.decode import load_image
from pneumo.errors import InputError

J2K_LOSSLESS, RLE, DEFLATED = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99"
GRAY = gradient(72, 96)
SIZ_FIELDS = {"Xsiz": 6, "Ysiz": 10, "XOsiz": 14, "YOsiz": 18, "XTsiz": 22, "YTsiz": 26}  # from the SIZ marker
_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns about the malformed frames on purpose


def _encapsulated(frame: bytes, transfer_syntax: str, gray: np.ndarray = GRAY, **elements: object) -> bytes:
    from pydicom.encaps import encapsulate

    return dicom_bytes(gray, transfer_syntax=transfer_syntax, pixel_data=encapsulate([frame]), **elements)


def _j2k(gray: np.ndarray = GRAY, *, jp2: bool = False, **siz: int) -> bytes:
    """A lossless JPEG 2000 codestream of ``gray`` (in a JP2 file if ``jp2``), with the SIZ fields ``siz`` replaced."""
    data = bytearray(pil_bytes(Image.fromarray(gray), "JPEG2000", no_jp2=not jp2, irreversible=False))
    at = data.index(b"\xff\x51")
    for name, value in siz.items():
        data[at + SIZ_FIELDS[name] : at + SIZ_FIELDS[name] + 4] = value.to_bytes(4, "big")
    return bytes(data)


def _jpeg(marker: int = 0xC0, rows: int = 72, columns: int = 96, mode: str = "L") -> bytes:
    """A JPEG of `GRAY` whose frame header is made an SOF ``marker`` saying ``rows`` x ``columns``."""
    data = bytearray(pil_bytes(Image.fromarray(GRAY).convert(mode), "JPEG", quality=90))
    at = data.index(b"\xff\xc0")
    data[at + 1] = marker
    data[at + 5 : at + 9] = struct.pack(">HH", rows, columns)
    return bytes(data)


def _rle(*segments: bytes) -> bytes:
    """An RLE frame: the 64-byte header listing ``segments``, then the segments."""
    offsets, at = [], 64
    for segment in segments:
        offsets.append(at)
        at += len(segment)
    return struct.pack(f"<{1 + len(segments)}L", len(segments), *offsets).ljust(64, b"\x00") + b"".join(segments)


def _refusal(data: bytes, **limits: int) -> str:
    with pytest.raises(InputError) as info:
        load_image(data, **limits)
    return str(info.value)


def _header_refusal(frame: bytes, transfer_syntax: str) -> str:
    """The frame-header check's refusal of ``frame`` under a 72 x 96 one-sample 8-bit header; through `load_image` as
    well where this environment has the syntax's decoder (without one, the missing decoder is named first)."""
    from pydicom.pixels import get_decoder

    from pneumo.data.codestream import check_frame

    with pytest.raises(InputError) as info:
        check_frame(frame, transfer_syntax, rows=72, columns=96, samples=1, bits_allocated=8)
    if get_decoder(transfer_syntax).is_available:
        assert _refusal(_encapsulated(frame, transfer_syntax)) == str(info.value)
    return str(info.value)


@pytest.mark.parametrize("transfer_syntax", [J2K_LOSSLESS, "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201"])
def test_a_jpeg2000_frame_declaring_30000_pixels_a_side_is_refused_before_decoding(transfer_syntax: str) -> None:
    frame = _j2k(Xsiz=30_000, Ysiz=30_000, XTsiz=30_000, YTsiz=30_000)  # the red team's file, at 2 KB
    assert len(frame) < 4096
    assert "says 30000 x 30000 pixels, the header 96 x 72" in _header_refusal(frame, transfer_syntax)


def test_a_jp2_file_is_checked_by_the_codestream_in_its_box() -> None:
    assert np.array_equal(load_image(_encapsulated(_j2k(jp2=True), J2K_LOSSLESS)), GRAY)
    lying = _encapsulated(_j2k(jp2=True, Xsiz=30_000, Ysiz=30_000, XTsiz=30_000, YTsiz=30_000), J2K_LOSSLESS)
    assert "says 30000 x 30000 pixels" in _refusal(lying)


def test_a_jpeg2000_frame_cut_into_thousands_of_tiles_is_refused() -> None:
    """OpenJPEG spends ~10 KB per tile whatever its size: 16,384 tiles cost 150 MB, 52,000 500 MB."""
    gray = np.tile(GRAY[:64, :64], (4, 4))
    message = _refusal(_encapsulated(_j2k(gray, XTsiz=2, YTsiz=2), J2K_LOSSLESS, gray))
    assert "16384 tiles" in message


@pytest.mark.parametrize(("transfer_syntax", "marker"), [
    ("1.2.840.10008.1.2.4.50", 0xC0), ("1.2.840.10008.1.2.4.51", 0xC1), ("1.2.840.10008.1.2.4.57", 0xC3),
    ("1.2.840.10008.1.2.4.70", 0xC3), ("1.2.840.10008.1.2.4.80", 0xF7), ("1.2.840.10008.1.2.4.81", 0xF7),
])
def test_a_jpeg_frame_declaring_more_pixels_than_the_header_is_refused_before_decoding(transfer_syntax: str,
                                                                                       marker: int) -> None:
    frame = _jpeg(marker, rows=30_000, columns=30_000)
    assert "says 30000 x 30000 pixels, the header 96 x 72" in _header_refusal(frame, transfer_syntax)


def test_a_colour_frame_in_a_one_sample_dicom_is_refused() -> None:
    message = _refusal(_encapsulated(_jpeg(mode="RGB"), "1.2.840.10008.1.2.4.50"))
    assert "has 3 components, the header SamplesPerPixel 1" in message


def test_a_progressive_scan_bomb_inside_a_dicom_is_refused() -> None:
    """The JPEG file's scan limit holds for a JPEG frame in a DICOM (Pillow decodes a progressive one)."""
    data = pil_bytes(Image.fromarray(GRAY), "JPEG", quality=90, progressive=True)
    scans, pos = [], 2
    while data[pos + 1] != 0xD9:  # every SOS segment with its entropy-coded data
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] == 0xDA:
            end = _MARKER.search(data, end).start()
            scans.append(data[pos:end])
        pos = end
    bomb = data[:pos] + min(scans[1:], key=len) * 150 + data[pos:]  # a refinement scan again and again
    assert "more than 100 scans" in _refusal(_encapsulated(bomb, "1.2.840.10008.1.2.4.51"))


def test_an_rle_segment_that_decodes_past_its_plane_is_refused() -> None:
    """pydicom decodes a segment whole before looking at its length: 100 KB of runs made 6.4 MB for a 64 x 64 plane
    (and a 20 MB upload 1.3 GB)."""
    gray = GRAY[:64, :64]
    message = _refusal(_encapsulated(_rle(b"\x81\x00" * 50_000), RLE, gray))
    assert "decodes to more than 8192 bytes" in message


def test_an_rle_frame_with_a_segment_too_many_is_refused() -> None:
    plane = b"\x7f" + bytes(128)  # a literal run of 128 bytes
    message = _refusal(_encapsulated(_rle(plane * 32, plane * 32), RLE, GRAY[:64, :64]))
    assert "has 2 segments, the header's pixel format needs 1" in message


def test_the_frame_checked_is_the_one_pydicom_decodes_by_the_extended_offset_table() -> None:
    """An honest first fragment and a lying second one, which the Extended Offset Table names as the frame."""
    from pydicom.encaps import encapsulate

    honest, lying = _j2k(), _j2k(gradient(144, 192))
    data = dicom_bytes(GRAY, transfer_syntax=J2K_LOSSLESS, pixel_data=encapsulate([honest, lying], has_bot=False),
                       ExtendedOffsetTable=struct.pack("<Q", 8 + len(honest) + len(honest) % 2),
                       ExtendedOffsetTableLengths=struct.pack("<Q", len(lying)))
    assert "says 192 x 144 pixels, the header 96 x 72" in _refusal(data)


def _deflated_zeros(megabytes: int) -> bytes:
    """A Part 10 file in Deflated Explicit VR Little Endian whose data set is ``megabytes`` MB of zeros (~1000:1)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4"
    meta.TransferSyntaxUID = DEFLATED
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = b"".join(deflater.compress(bytes(1 << 20)) for _ in range(megabytes)) + deflater.flush()
    return bytes(128) + b"DICM" + buffer.getvalue() + body


def test_a_deflated_data_set_is_refused_once_it_inflates_past_half_the_budget() -> None:
    data = _deflated_zeros(64)
    assert len(data) < 100_000
    tracemalloc.start()
    try:
        message = _refusal(data, max_decode_bytes=8_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "inflates to more than 4 MB" in message
    assert peak < 16_000_000  # pydicom inflated all 64 MB


def _pydicom_test_file(name: str) -> Path:
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.is_file():
        pytest.skip(f"pydicom's test file {name} is not installed here")
    return path


def _as_film(data: bytes) -> bytes:
    """``data`` with a secondary capture's ConversionType made digitised film (DF): many of pydicom's test files are
    colour or synthetic captures, which pneumo refuses before decoding (`pneumo.data.dicom._screen_capture`)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    if not str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.7"):
        return data
    ds.ConversionType = "DF"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# pydicom's own compressed single-frame test files that pneumo decodes: JPEG 2000, JPEG Baseline, Extended and
# Lossless, JPEG-LS, RLE (8, 16 and 32 bits, 1 and 3 samples)
REAL_FILES = [
    "693_J2KI.dcm", "GDCMJ2K_TextGBR.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm",
    "SC_rgb_gdcm_KY.dcm", "examples_jpeg2k.dcm", "JPGExtended.dcm", "SC_jpeg_no_color_transform.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_jpeg_app14_dcmd.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_small_odd_jpeg.dcm",
    "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jls_lossy_line.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm",
    "rtdose_rle_1frame.dcm",
]


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_compressed_files_agree_with_their_frame_header_and_still_decode(name: str) -> None:
    import pydicom

    from pneumo.data.codestream import check_frame, first_frame

    data = _pydicom_test_file(name).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    check_frame(first_frame(ds), ds.file_meta.TransferSyntaxUID, rows=ds.Rows, columns=ds.Columns,
                samples=ds.SamplesPerPixel, bits_allocated=ds.BitsAllocated)
    try:
        _ = ds.pixel_array
    except Exception:  # noqa: BLE001 - no decoder here that reads it (CI installs no pylibjpeg): the check is tested
        return
    assert load_image(_as_film(data)).shape == (ds.Rows, ds.Columns)


@pytest.mark.parametrize("data", [
    pytest.param(lambda: dicom_bytes(GRAY, transfer_syntax=DEFLATED), id="corpus"),
    pytest.param(lambda: _pydicom_test_file("image_dfl.dcm").read_bytes(), id="pydicom-image_dfl"),
])
def test_a_deflated_file_inflates_to_what_zlib_gives_and_still_decodes(data: Callable[[], bytes]) -> None:
    from pydicom.filereader import _read_file_meta_info, read_preamble

    from pneumo.data.codestream import inflate

    content = data()
    stream = io.BytesIO(content)
    read_preamble(stream, force=False)
    _read_file_meta_info(stream)
    body = content[stream.tell() :]
    assert inflate(memoryview(body), 256_000_000).getvalue() == zlib.decompress(body, -zlib.MAX_WBITS)
    assert load_image(content).ndim == 2


@pytest.mark.parametrize(("frame", "says"), [
    pytest.param(b"\x00\x00" + _jpeg()[2:], "SOI", id="no-SOI"),
    pytest.param(_jpeg().replace(b"\xff\xc0", b"\xff\xe5", 1), "no frame header", id="SOF-made-APP5"),
    pytest.param(_jpeg()[:2] + b"\xff\xde\x00\x0b\x08\x75\x30\x75\x30\x01\x01\x11\x00" + _jpeg()[2:], "hierarchical",
                 id="DHP-30000"),
    pytest.param(_jpeg()[:2] + b"\xff\xf8\x00\x0d\x04\x04\x00\x00\x75\x30\x00\x00\x75\x30" + _jpeg()[2:], "oversize",
                 id="LSE-oversize-30000"),
    pytest.param(_jpeg()[:2] + b"\x00" + _jpeg()[2:], "malformed", id="stray-byte"),
    pytest.param(_jpeg()[:30], "cut short", id="cut-in-DQT"),
    pytest.param(_jpeg().replace(b"\xff\xda", b"\xff\xc1", 1), "second frame header", id="two-SOF"),
    pytest.param(_jpeg()[:2] + b"\xff\xfe\x00\x02" * 10_001 + _jpeg()[2:], "marker segments", id="comment-flood"),
])
def test_a_jpeg_frame_header_that_cannot_be_read_strictly_is_refused(frame: bytes, says: str) -> None:
    from pneumo.data.codestream import jpeg_shape

    with pytest.raises(InputError, match=says):
        jpeg_shape(frame)


def test_fill_bytes_before_a_marker_are_read_like_the_decoder_does() -> None:
    from pneumo.data.codestream import jpeg_shape

    frame = _jpeg()
    assert jpeg_shape(frame[:2] + b"\xff\xff" + frame[2:]) == (72, 96, 1)


SYNTAXES = [J2K_LOSSLESS, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", RLE, "1.2.840.10008.1.2.4.201"]
SEEDS = [_j2k(), _j2k(jp2=True), _jpeg(), _rle(bytes([127]) + bytes(128))]
fuzz = settings(max_examples=int(os.environ.get("PNEUMO_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@fuzz
@given(seed=st.sampled_from(SEEDS), syntax=st.sampled_from(SYNTAXES), cut=st.none() | st.integers(0, 300),
       patches=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8)), max_size=4))
def test_a_mangled_frame_header_raises_nothing_but_input_error(seed: bytes, syntax: str, cut: int | None,
                                                               patches: list[tuple[float, bytes]]) -> None:
    from pneumo.data.codestream import check_frame

    frame = bytearray(seed[:cut])
    for where, patch in patches:
        at = int(where * len(frame))
        frame[at : at + len(patch)] = patch
    try:
        check_frame(bytes(frame), syntax, rows=72, columns=96, samples=1, bits_allocated=8)
    except InputError:
        pass


@fuzz
@given(garbage=st.binary(max_size=512))
def test_a_garbage_deflated_data_set_raises_nothing_but_input_error(garbage: bytes) -> None:
    from pneumo.data.codestream import inflate

    try:
        inflate(memoryview(garbage), 1_000_000)
    except InputError:
        pass
