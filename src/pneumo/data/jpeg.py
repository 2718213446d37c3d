"""A JPEG's structure from its bytes, before any pixel is decoded: how many scans (SOS segments) its first image has.

A progressive JPEG codes the image in successive scans, and libjpeg revisits the whole coefficient buffer for each one,
so decoding time grows with the scan count: 4,000 near-empty scans in a 513 KB 7000 x 7000 file took 16 s to decode
(issue 24). Encoders write about 10 (libjpeg's default script: 6 for gray, 10 for colour; mozjpeg up to ~20 when it
optimises the script); `MAX_JPEG_SCANS` leaves ample room for those and refuses the rest before decoding.
"""

from __future__ import annotations

import re

from pneumo.errors import InputError

MAX_JPEG_SCANS = 100  # scans (SOS markers) in one image; libjpeg's default progressive script writes 6 or 10

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7: markers without a length field
# The next marker after entropy-coded data: 0xFF followed by neither a stuffed 0x00, nor RSTn, nor fill 0xFF.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def count_scans(data: bytes, *, limit: int = MAX_JPEG_SCANS) -> int:
    """The number of scans in the first image of a JPEG (an MPO's primary image), walking its marker segments.

    Stops at the first image's EOI, so an EXIF thumbnail (inside an APP1 segment) or an MPO's further images are not
    counted. A truncated or malformed stream ends the walk with the scans found so far: the decoder then reports it.

    Raises:
        InputError: more than ``limit`` scans (checked as they are found, so a bomb is not walked to its end).
    """
    if data[:2] != b"\xff\xd8":
        return 0
    scans, pos, size = 0, 2, len(data)
    while pos + 1 < size:
        if data[pos] != 0xFF:
            break  # not at a marker: malformed, the decoder says more
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE or marker == _SOI:
            pos += 2
            continue
        if pos + 4 > size:
            break
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _SOS:
            scans += 1
            if scans > limit:
                raise InputError(f"JPEG with more than {limit} scans (progressive passes): refused before decoding, "
                                 "its decoding time grows with each scan; re-save it as a baseline JPEG")
            found = _NEXT_MARKER.search(data, pos)  # skip the entropy-coded data
            if found is None:
                break
            pos = found.start()
    return scans
