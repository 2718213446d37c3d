"""What a compressed DICOM frame's own header declares, read before the frame is decoded.

The JPEG, JPEG-LS, JPEG 2000 and RLE decoders size their output from the frame's header (the JPEG SOF or JPEG 2000 SIZ
marker segment, the RLE segments), not from the DICOM Rows and Columns that `pneumo.data.dicom` checks against the
limits: a 2 KB file whose Rows/Columns say 512 x 512 and whose SIZ says 30000 x 30000 took a decode to 4.4 GB (red
team, round 4). `check_frame` refuses a frame whose header disagrees with the DICOM header, or cannot be read, with
`InputError`; garbage raises nothing else. Only the header is read, strictly: a stream a decoder would have to repair
before it reaches its frame header is refused, not guessed at. A deflated data set, which pydicom inflates whole before
reading a tag (a 1 MB upload made 1 GB), is inflated by `inflate`, a chunk at a time up to a limit.
"""

from __future__ import annotations

import io
import math
import zlib
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

from pneumo.data.jpeg import MAX_JPEG_SEGMENTS, count_scans
from pneumo.errors import InputError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# JPEG SOFn (n = 0-3, 5-7, 9-11, 13-15) and JPEG-LS SOF55: Lf, P, Y (rows), X (columns), Nf (components)
_SOF = ({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}
_SOI, _EOI, _SOS, _DHP, _LSE = 0xD8, 0xD9, 0xDA, 0xDE, 0xF8
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7: markers without a length field
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_SOC_SIZ = b"\xff\x4f\xff\x51"
_RLE_HEADER = 64
_INFLATE_CHUNK = 1 << 23
MAX_J2K_TILES = 4096  # encoders write one tile, or a few dozen: a 7000 x 7000 image in 128-pixel tiles has 3,025
RLE_SLACK = 2  # an RLE segment may decode to at most this many times the pixels of its plane (padding tolerated)


def first_frame(ds: Dataset) -> bytes:
    """The encapsulated pixel data's first frame, all its fragments, as pydicom's decoders take it (by the Extended
    Offset Table when there is one, else the Basic Offset Table, else all fragments of a single frame).

    Raises:
        InputError: no frame can be read from the encapsulated data.
    """
    from pydicom.encaps import generate_frames

    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1, extended_offsets=offsets))
    except Exception:  # noqa: BLE001 - pydicom raises many types on hostile encapsulated data
        raise InputError("DICOM compressed pixel data has no readable first frame") from None


def check_frame(frame: bytes, transfer_syntax: str, *, rows: int, columns: int, samples: int,
                bits_allocated: int) -> None:
    """Refuse ``frame`` (one encapsulated frame, all its fragments) unless its own header says ``rows`` x ``columns``
    with ``samples`` components (JPEG, JPEG-LS, JPEG 2000 and HTJ2K), or, for RLE, holds one segment per sample
    byte, none decoding to more than `RLE_SLACK` planes.

    Raises:
        InputError: the header disagrees, cannot be read, or the transfer syntax has no header check here.
    """
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes, RLELossless

    if transfer_syntax == RLELossless:
        check_rle(frame, pixels=rows * columns, segments=samples * math.ceil(bits_allocated / 8))
        return
    if transfer_syntax in JPEGTransferSyntaxes or transfer_syntax in JPEGLSTransferSyntaxes:
        if transfer_syntax in JPEGTransferSyntaxes:  # (JPEG-LS stuffs its entropy-coded data otherwise)
            count_scans(frame)  # a progressive scan bomb, as for a JPEG file
        found = jpeg_shape(frame)
    elif transfer_syntax in JPEG2000TransferSyntaxes:
        found = j2k_shape(frame)
    else:
        raise InputError(f"DICOM transfer syntax {transfer_syntax}: its compressed frame cannot be checked before "
                         "decoding")
    if found[:2] != (rows, columns):
        raise InputError(f"DICOM compressed pixel data says {found[1]} x {found[0]} pixels, the header {columns} x "
                         f"{rows}: refused before decoding")
    if found[2] != samples:
        raise InputError(f"DICOM compressed pixel data has {found[2]} components, the header SamplesPerPixel "
                         f"{samples}: refused before decoding")


def jpeg_shape(data: bytes) -> tuple[int, int, int]:
    """(rows, columns, components) of a JPEG or JPEG-LS stream's frame header (SOFn or SOF55), walking its marker
    segments up to the first scan.

    Raises:
        InputError: no SOI, no frame header before the first scan, a second one, a hierarchical (DHP) or JPEG-LS
            oversize-dimension (LSE 4) segment, a malformed segment, or more than `MAX_JPEG_SEGMENTS` of them.
    """
    if data[:2] != b"\xff\xd8":
        raise InputError("DICOM JPEG frame does not start with a JPEG SOI marker")
    shape, pos, segments = None, 2, 0
    while True:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise InputError(f"DICOM JPEG frame has more than {MAX_JPEG_SEGMENTS} marker segments before its first scan")
        if _byte(data, pos) != 0xFF:
            raise InputError("DICOM JPEG frame is malformed before its first scan")
        marker = _byte(data, pos + 1)
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (_SOS, _EOI, _SOI):
            break
        length = _number(data, pos + 2, 2)
        if length < 2:
            raise InputError("DICOM JPEG frame is malformed before its first scan")
        if marker == _DHP or (marker == _LSE and _byte(data, pos + 4) == 4):
            raise InputError("DICOM JPEG frame is hierarchical or has an oversize dimension: not supported")
        if marker in _SOF:
            if shape is not None or length < 8:
                raise InputError("DICOM JPEG frame has a malformed or second frame header")
            shape = (_number(data, pos + 5, 2), _number(data, pos + 7, 2), _byte(data, pos + 9))
        pos += 2 + length
    if marker != _SOS or shape is None:
        raise InputError("DICOM JPEG frame has no frame header (SOF) before its first scan")
    return shape


def j2k_shape(data: bytes) -> tuple[int, int, int]:
    """(rows, columns, components) of a JPEG 2000 codestream's SIZ marker segment (image area Ysiz - YOsiz by Xsiz -
    XOsiz), the codestream bare or in a JP2 file's contiguous codestream box.

    Raises:
        InputError: no SOC followed by SIZ, a malformed or cut SIZ segment, or more than `MAX_J2K_TILES` tiles.
    """
    at = _jp2_codestream(data) if data.startswith(_JP2_SIGNATURE) else 0
    if data[at : at + 4] != _SOC_SIZ:
        raise InputError("DICOM JPEG 2000 frame does not start with the SOC and SIZ markers")
    if _number(data, at + 4, 2) < 41:
        raise InputError("DICOM JPEG 2000 frame has a malformed SIZ marker")
    right, bottom, left, top = (_number(data, at + offset, 4) for offset in (8, 12, 16, 20))
    tile_width, tile_height, tile_left, tile_top = (_number(data, at + offset, 4) for offset in (24, 28, 32, 36))
    if not (tile_width and tile_height and tile_left <= left < right and tile_top <= top < bottom):
        raise InputError("DICOM JPEG 2000 frame has a malformed SIZ marker")
    tiles = -(-(right - tile_left) // tile_width) * -(-(bottom - tile_top) // tile_height)
    if tiles > MAX_J2K_TILES:  # about 10 KB each in OpenJPEG, whatever their size: 65,535 tiles took 500 MB
        raise InputError(f"DICOM JPEG 2000 frame is cut into {tiles} tiles (limit {MAX_J2K_TILES}): refused before "
                         "decoding")
    return bottom - top, right - left, _number(data, at + 40, 2)


def _jp2_codestream(data: bytes) -> int:
    """Where the codestream of a JP2 file starts: the content of its first top-level 'jp2c' box."""
    pos = 0
    while pos + 8 <= len(data):
        length, kind, header = _number(data, pos, 4), data[pos + 4 : pos + 8], 8
        if length == 1:  # the length follows the type, in 8 bytes
            length, header = _number(data, pos + 8, 8), 16
        if kind == b"jp2c":
            return pos + header
        if length == 0 or length < header:  # 0: the box runs to the end of the file
            break
        pos += length
    raise InputError("DICOM JPEG 2000 frame is a JP2 file without a codestream box")


def check_rle(data: bytes, *, pixels: int, segments: int) -> None:
    """Refuse an RLE frame (PS3.5 G) whose header does not list ``segments`` segments, or one of whose segments
    decodes to more than `RLE_SLACK` x ``pixels`` bytes: the decoder inflates each segment whole before looking at
    its length (up to 64 times the segment's size).

    Raises:
        InputError: the header or a segment says otherwise.
    """
    if len(data) < _RLE_HEADER:
        raise InputError("DICOM RLE frame is shorter than its 64-byte header")
    count = _number(data, 0, 4, "little")
    if not 1 <= count <= 15:
        raise InputError(f"DICOM RLE frame header lists {count} segments (1 to 15 allowed)")
    if count != segments:
        raise InputError(f"DICOM RLE frame has {count} segments, the header's pixel format needs {segments}: "
                         "refused before decoding")
    offsets = [_number(data, 4 + 4 * index, 4, "little") for index in range(count)] + [len(data)]
    limit = RLE_SLACK * pixels
    for start, end in pairwise(offsets):
        if _rle_length(data, start, end, limit) > limit:
            raise InputError(f"DICOM RLE segment decodes to more than {limit} bytes, the header says {pixels} pixels: "
                             "refused before decoding")


def _rle_length(data: bytes, start: int, end: int, limit: int) -> int:
    """How many bytes PackBits data[start:end] decodes to, counted until it passes ``limit``."""
    pos, end, total = start, min(end, len(data)), 0
    while pos < end and total <= limit:
        header = data[pos]
        if header > 128:  # the next byte, 257 - header times
            total, pos = total + 257 - header, pos + 2
        elif header < 128:  # the next header + 1 bytes as they are
            total, pos = total + header + 1, pos + header + 2
        else:  # 128: no operation
            pos += 1
    return total


def inflate(deflated: memoryview, max_decode_bytes: int) -> io.BytesIO:
    """A DICOM deflated data set (Deflated Explicit VR Little Endian, PS3.5 A.5) inflated a chunk at a time, up to
    half of ``max_decode_bytes`` (the pixel data of an image within the budget is less than that; one
    ``zlib.decompress`` call held its whole result twice).

    Raises:
        InputError: it inflates to more than half of ``max_decode_bytes``, is corrupt or is cut short.
    """
    limit = max_decode_bytes // 2
    inflater, body = zlib.decompressobj(-zlib.MAX_WBITS), io.BytesIO()
    while not inflater.eof:
        try:
            chunk = inflater.decompress(deflated, min(_INFLATE_CHUNK, limit + 1 - body.tell()))
        except zlib.error:
            raise InputError("DICOM deflated data set is corrupt") from None
        if not chunk and not inflater.unconsumed_tail:
            raise InputError("DICOM deflated data set is cut short")
        if body.write(chunk) and body.tell() > limit:
            raise InputError(f"DICOM deflated data set inflates to more than {limit / 1e6:.0f} MB (half the decode "
                             f"limit of {max_decode_bytes / 1e6:.0f} MB): refused before reading it")
        deflated = memoryview(inflater.unconsumed_tail)
    body.seek(0)
    return body


def _byte(data: bytes, at: int) -> int:
    if at >= len(data):
        raise InputError("DICOM compressed frame is cut short in its header")
    return data[at]


def _number(data: bytes, at: int, size: int, order: Literal["big", "little"] = "big") -> int:
    """The unsigned integer of ``size`` bytes at ``at``."""
    if at + size > len(data):
        raise InputError("DICOM compressed frame is cut short in its header")
    return int.from_bytes(data[at : at + size], order)
