"""The scan-count limit and the coefficient budget against bytes between markers (red team, round 4, item 3): libjpeg
skips bytes that are no marker and decodes every scan after them, so the count does too; and every progressive JPEG
is charged for its coefficient buffer, whatever its counted scans."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from corpus import gradient, pil_bytes
from PIL import Image, ImageFile

from pneumo.data.decode import load_image
from pneumo.data.jpeg import MAX_JPEG_SCANS, count_scans
from pneumo.errors import InputError

_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
# bytes no encoder writes between two segments, all skipped by libjpeg ("extraneous bytes before marker"): one zero
# (the red team's file), a stuffed 0xFF outside a scan, text, fill bytes and a restart marker
STRAY = [b"\x00", b"\xff\x00", b"junk", b"\x00\xff\xff\xff\x00\xff\xd3\x17"]


def _progressive(mode: str = "L", side: int = 96) -> bytes:
    return pil_bytes(Image.fromarray(np.tile(gradient(48, 48), (side // 48, side // 48))).convert(mode), "JPEG",
                     quality=90, progressive=True)


def _scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every SOS segment with its entropy-coded data, in a file as the encoder wrote it."""
    found, pos = [], 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] == 0xDA:
            end = _MARKER.search(data, end).start()
            found.append((pos, end))
        pos = end
    return found


def _bomb(scans: int) -> bytes:
    """A progressive JPEG with ``scans`` scans: copies of its smallest refinement scan before the EOI."""
    data = _progressive()
    segments = _scans(data)
    start, end = min(segments[1:], key=lambda s: s[1] - s[0])
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + data[start:end] * (scans - len(segments)) + data[eoi:]


def _insert(data: bytes, at: int, stray: bytes) -> bytes:
    return data[:at] + stray + data[at:]


@pytest.mark.parametrize("stray", STRAY)
def test_stray_bytes_before_the_first_scan_do_not_hide_the_bomb(stray: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _bomb(MAX_JPEG_SCANS + 1)
    hidden = _insert(bomb, bomb.index(b"\xff\xda"), stray)
    with Image.open(io.BytesIO(hidden)) as img:  # libjpeg skips the stray bytes and decodes every scan after them
        np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(bomb))))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the JPEG was decoded"))
    with pytest.raises(InputError, match=rf"^bomb.jpeg: JPEG with more than {MAX_JPEG_SCANS} scans"):
        load_image(hidden, name="bomb.jpeg", target=224)


@pytest.mark.parametrize("stray", [*STRAY, b"\xff\x01\x17"])  # and a TEM marker (Pillow refuses it in the header)
def test_stray_bytes_between_scans_leave_the_count_as_libjpeg_sees_it(stray: bytes) -> None:
    data = _bomb(40)
    starts = [start for start, _ in _scans(data)]
    for at in (starts[0], starts[1], starts[-1], data.rindex(b"\xff\xd9")):  # before scans 1, 2, the last, and EOI
        assert count_scans(_insert(data, at, stray)) == 40


def test_a_progressive_jpeg_is_charged_for_its_coefficients_whatever_its_scan_count() -> None:
    data = _progressive("RGB")  # 96 x 96, 4:2:0: 4 bytes a pixel + 1 for the result; 13,824 coefficients x 2 bytes
    segments = _scans(data)
    dc_only = data[: segments[0][1]] + b"\xff\xd9"  # the first (DC) scan alone: still a progressive image
    assert count_scans(dc_only) == 1
    assert load_image(dc_only).shape == (96, 96)
    for charged in (dc_only, _insert(data, segments[0][0], b"\x00")):  # one scan; ten behind a stray byte
        with pytest.raises(InputError, match=r"9216 pixels x 5 bytes \+ 0 MB of buffered coefficients = 0 MB"):
            load_image(charged, max_decode_bytes=9216 * 5 + 20_000)
    baseline = pil_bytes(Image.fromarray(gradient(96, 96)).convert("RGB"), "JPEG", quality=90)
    assert load_image(baseline, max_decode_bytes=9216 * 5).shape == (96, 96)  # one sequential scan: no buffer


def test_a_jpeg_of_endless_marker_segments_is_refused_before_it_is_walked_to_its_end() -> None:
    """Comment segments of 4 bytes each: walking 20 MB of them took ~3.5 s, 256 MB (the command line's file limit)
    ~40 s; a real file has a few dozen segments."""
    from pneumo.data.jpeg import MAX_JPEG_SEGMENTS, read_scans

    comments = b"\xff\xfe\x00\x02" * (MAX_JPEG_SEGMENTS + 5)
    with pytest.raises(InputError, match="marker segments"):
        read_scans(b"\xff\xd8" + comments + b"\xff\xd9")
    assert read_scans(b"\xff\xd8" + comments[: 4 * 100] + b"\xff\xd9").count == 0
