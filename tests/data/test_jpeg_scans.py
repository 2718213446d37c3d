"""The progressive JPEG scan bomb (issue 24 item 1): a JPEG with more than `MAX_JPEG_SCANS` scans is refused from its
markers, before any pixel is decoded, in every decode path; ordinary progressive JPEGs still decode."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from corpus import gradient, pil_bytes
from PIL import Image, ImageFile

from pneumo.cli import main
from pneumo.data.decode import load_image, load_image_file
from pneumo.data.jpeg import MAX_JPEG_SCANS, count_scans
from pneumo.errors import InputError

_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def _progressive(mode: str = "L", side: int = 96) -> bytes:
    return pil_bytes(Image.fromarray(np.tile(gradient(48, 48), (side // 48, side // 48))).convert(mode), "JPEG",
                     quality=90, progressive=True)


def _scan_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every SOS segment with its entropy-coded data."""
    found, pos = [], 2
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 1] == 0xDA:
            end = _MARKER.search(data, end).start()
            found.append((pos, end))
        pos = end
    return found


def scan_bomb(scans: int, mode: str = "L", side: int = 96) -> bytes:
    """A decodable progressive JPEG with ``scans`` scans: the encoder's own, then copies of its smallest refinement
    scan (one bit per block, near empty) before the EOI, as in the red-team file (4,000 of them)."""
    data = _progressive(mode, side)
    segments = _scan_segments(data)
    start, end = min(segments[1:], key=lambda s: s[1] - s[0])
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + data[start:end] * (scans - len(segments)) + data[eoi:]


@pytest.mark.parametrize(("mode", "expected"), [("L", 6), ("RGB", 10)])
def test_encoder_scans_are_counted(mode: str, expected: int) -> None:
    data = _progressive(mode)
    assert count_scans(data) == expected  # libjpeg's default progressive script
    assert load_image(data).shape == (96, 96)
    assert count_scans(pil_bytes(Image.fromarray(gradient(48, 64)), "JPEG")) == 1  # baseline


def test_the_bomb_is_a_real_jpeg_that_decodes_to_the_same_image() -> None:
    bomb = scan_bomb(MAX_JPEG_SCANS + 50)
    assert count_scans(bomb, limit=10**6) == MAX_JPEG_SCANS + 50
    with Image.open(io.BytesIO(bomb)) as img:  # Pillow alone decodes every scan
        np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(_progressive()))))


def test_scan_count_at_the_limit_decodes() -> None:
    assert load_image(scan_bomb(MAX_JPEG_SCANS)).shape == (96, 96)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_more_scans_than_the_limit_are_refused_before_decoding(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(self: object) -> None:
        raise AssertionError("the JPEG was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("the JPEG was opened"))
    with pytest.raises(InputError, match=rf"^bomb.jpeg: JPEG with more than {MAX_JPEG_SCANS} scans") as caught:
        load_image(scan_bomb(MAX_JPEG_SCANS + 1, mode), name="bomb.jpeg", target=224)
    assert "\n" not in str(caught.value)


def test_an_exif_thumbnail_or_an_mpo_image_after_the_first_is_not_counted() -> None:
    primary = _progressive()
    thumbnail = _progressive()
    app1 = b"Exif\x00\x00" + thumbnail  # not a valid EXIF block, but its bytes hold another JPEG's scans
    with_thumbnail = primary[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + primary[2:]
    assert count_scans(with_thumbnail) == 6
    assert count_scans(primary + scan_bomb(MAX_JPEG_SCANS + 10)) == 6  # the walk ends at the first EOI


def test_a_truncated_jpeg_is_left_to_the_decoder() -> None:
    data = _progressive()
    assert count_scans(data[: len(data) // 2]) < 6
    assert count_scans(data[:3]) == 0


def test_predict_refuses_the_bomb_with_one_line(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    bomb = tmp_path / "bomb.jpeg"
    bomb.write_bytes(scan_bomb(MAX_JPEG_SCANS + 1, side=480))
    with pytest.raises(InputError, match="scans"):
        load_image_file(bomb)
    assert main(["predict", str(bomb), "--model", str(tiny_model), "--backend", "torch"]) == 2  # the only input could not be read
    err = capsys.readouterr().err
    assert f"bomb.jpeg: JPEG with more than {MAX_JPEG_SCANS} scans" in err
    assert all(line.startswith(("pneumo predict", "summary: ")) for line in err.splitlines() if line.strip())


# Stray bytes (red team, round 4): one 0x00 before the first scan hid 4,000 scans from the count
# bytes no encoder writes between two segments, all skipped by libjpeg ("extraneous bytes before marker"): one zero
# (the red team's file), a stuffed 0xFF outside a scan, text, fill bytes and a restart marker
STRAY = [b"\x00", b"\xff\x00", b"junk", b"\x00\xff\xff\xff\x00\xff\xd3\x17"]


def _insert(data: bytes, at: int, stray: bytes) -> bytes:
    return data[:at] + stray + data[at:]


@pytest.mark.parametrize("stray", STRAY)
def test_stray_bytes_before_the_first_scan_do_not_hide_thescan_bomb(stray: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = scan_bomb(MAX_JPEG_SCANS + 1)
    hidden = _insert(bomb, bomb.index(b"\xff\xda"), stray)
    with Image.open(io.BytesIO(hidden)) as img:  # libjpeg skips the stray bytes and decodes every scan after them
        np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(bomb))))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the JPEG was decoded"))
    with pytest.raises(InputError, match=rf"^bomb.jpeg: JPEG with more than {MAX_JPEG_SCANS} scans"):
        load_image(hidden, name="bomb.jpeg", target=224)


@pytest.mark.parametrize("stray", [*STRAY, b"\xff\x01\x17"])  # and a TEM marker (Pillow refuses it in the header)
def test_stray_bytes_between_scans_leave_the_count_as_libjpeg_sees_it(stray: bytes) -> None:
    data = scan_bomb(40)
    starts = [start for start, _ in _scan_segments(data)]
    for at in (starts[0], starts[1], starts[-1], data.rindex(b"\xff\xd9")):  # before scans 1, 2, the last, and EOI
        assert count_scans(_insert(data, at, stray)) == 40


def test_a_progressive_jpeg_is_charged_for_its_coefficients_whatever_its_scan_count() -> None:
    data = _progressive("RGB")  # 96 x 96, 4:2:0: 4 bytes a pixel + 1 for the result; 13,824 coefficients x 2 bytes
    segments = _scan_segments(data)
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
