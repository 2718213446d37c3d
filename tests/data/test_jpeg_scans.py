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
