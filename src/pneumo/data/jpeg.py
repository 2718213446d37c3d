"""A JPEG's structure from its bytes, before any pixel is decoded: how many scans (SOS segments) its first image has,
and whether it is progressive.

A progressive JPEG codes the image in successive scans, and libjpeg revisits the whole coefficient buffer for each one,
so decoding time grows with the scan count: 4,000 near-empty scans in a 513 KB 7000 x 7000 file took 16 s to decode
(issue 24). Encoders write about 10 (libjpeg's default script: 6 for gray, 10 for colour; mozjpeg up to ~20 when it
optimises the script); `MAX_JPEG_SCANS` leaves ample room for those and refuses the rest before decoding.

The markers are found the way libjpeg finds them (``next_marker`` in jdmarker.c): bytes that are not a marker are
skipped, with a warning Pillow ignores, so one stray byte before a scan cannot hide it from the count (red team,
round 4: a 0x00 before the first SOS made 4,000 scans count as 0 and decode for 20 s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pneumo.errors import InputError

MAX_JPEG_SCANS = 100  # scans (SOS markers) in one image; libjpeg's default progressive script writes 6 or 10
MAX_JPEG_SEGMENTS = 10_000  # marker segments before the first image's end (a few dozen in any camera or PACS file)

_EOI, _SOS = 0xD9, 0xDA
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})  # SOF2/6/10/14: progressive DCT (Huffman, arithmetic)
# A marker libjpeg acts on: 0xFF (the last of a run of fill bytes) followed by neither a stuffed 0x00, nor another 0xFF,
# nor a marker without a length field (TEM and RSTn, which libjpeg passes over; a second SOI, which it refuses).
# Everything else, entropy-coded data included, is skipped on the way to it, as libjpeg does; one byte of look-ahead
# keeps the search linear.
_MARKER = re.compile(rb"\xff(?=[^\x00\x01\xd0-\xd8\xff])")
_NOT_A_MARKER = frozenset({0x00, 0x01, *range(0xD0, 0xD9), 0xFF})  # the bytes after 0xFF that `_MARKER` passes over


@dataclass(frozen=True)
class JpegScans:
    """The scans of a JPEG's first image.

    Attributes:
        count: SOS segments before the first EOI.
        progressive: a progressive frame header (SOF2/6/10/14) was seen: libjpeg then buffers every DCT coefficient
            of the image, whatever the number of scans.
    """

    count: int
    progressive: bool


def read_scans(data: bytes, *, limit: int = MAX_JPEG_SCANS) -> JpegScans:
    """The scans of the first image of a JPEG (an MPO's primary image), walking its marker segments as libjpeg does.

    Stops at the first image's EOI, so an EXIF thumbnail (inside an APP1 segment) or an MPO's further images are not
    counted. A truncated or malformed stream ends the walk with the scans found so far: the decoder then reports it.

    Raises:
        InputError: more than ``limit`` scans (checked as they are found, so a bomb is not walked to its end).
    """
    if data[:2] != b"\xff\xd8":
        return JpegScans(0, False)
    scans, progressive, pos, size, segments = 0, False, 2, len(data), 0
    while pos + 1 < size:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:  # 20 MB of 4-byte comments took ~3.5 s to walk (a red-team note)
            raise InputError(f"JPEG with more than {MAX_JPEG_SEGMENTS} marker segments: refused before decoding")
        if data[pos] != 0xFF or data[pos + 1] in _NOT_A_MARKER:  # not at a marker (as after a segment): search on
            found = _MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
        marker, pos = data[pos + 1], pos + 2
        if marker == _EOI or pos + 2 > size:
            break
        if marker in _PROGRESSIVE_SOF:
            progressive = True
        elif marker == _SOS:
            scans += 1
            if scans > limit:
                raise InputError(f"JPEG with more than {limit} scans (progressive passes): refused before decoding, "
                                 "its decoding time grows with each scan; re-save it as a baseline JPEG")
        pos += max(2, int.from_bytes(data[pos : pos + 2], "big"))  # the segment's length counts its own 2 bytes
    return JpegScans(scans, progressive)


def count_scans(data: bytes, *, limit: int = MAX_JPEG_SCANS) -> int:
    """The number of scans in the first image of a JPEG (`read_scans`).

    Raises:
        InputError: more than ``limit`` scans.
    """
    return read_scans(data, limit=limit).count
