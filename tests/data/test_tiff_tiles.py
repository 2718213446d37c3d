"""TIFF tiles (red team, round 4, item 1): libtiff sizes its buffer from TileWidth x TileLength, not from the image, so
a 4.5 KB file declaring 1024 x 1024 pixels in 46336 x 46336 tiles took 2.2 GB. Tiles far larger than the image are
refused from the header, and a tile's bytes count in the memory budget."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from corpus import gradient
from PIL import TiffImagePlugin

from pneumo.data.decode import MAX_TIFF_TILE_SIDE, load_image
from pneumo.errors import InputError


def _tiff(width: int, height: int, tile: tuple[int, int], blocks: list[bytes]) -> bytes:
    """A little-endian 8-bit gray TIFF of ``width`` x ``height`` whose ``blocks`` are deflated tiles of ``tile``
    (width, length) pixels, written by hand (Pillow writes no tiles)."""
    entries = [(256, 4, [width]), (257, 4, [height]), (258, 3, [8]), (259, 3, [8]), (262, 3, [1]), (277, 3, [1]),
               (322, 4, [tile[0]]), (323, 4, [tile[1]]), (324, 4, [0] * len(blocks)),
               (325, 4, [len(block) for block in blocks])]
    arrays_at = 8 + 2 + 12 * len(entries) + 4  # values longer than 4 bytes follow the IFD, then the tiles
    data_at = arrays_at + sum(4 * len(values) for _, _, values in entries if len(values) > 1)
    entries[8] = (324, 4, [data_at + sum(len(block) for block in blocks[:i]) for i in range(len(blocks))])
    ifd, arrays = struct.pack("<H", len(entries)), b""
    for tag, kind, values in entries:
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) > 4:
            ifd += struct.pack("<HHII", tag, kind, len(values), arrays_at + len(arrays))
            arrays += packed
        else:
            ifd += struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\x00")
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + arrays + b"".join(blocks)


def _tiled(pixels: np.ndarray, tile: tuple[int, int]) -> bytes:
    """``pixels`` (uint8 H x W) as a tiled TIFF, edge tiles padded with zeros as encoders do."""
    height, width = pixels.shape
    blocks = []
    for y in range(0, height, tile[1]):
        for x in range(0, width, tile[0]):
            block = np.zeros((tile[1], tile[0]), np.uint8)
            part = pixels[y : y + tile[1], x : x + tile[0]]
            block[: part.shape[0], : part.shape[1]] = part
            blocks.append(zlib.compress(block.tobytes()))
    return _tiff(width, height, tile, blocks)


def test_the_red_team_tiles_are_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tiff(1024, 1024, (46336, 46336), [zlib.compress(bytes(range(256)) * 4096, 9)])
    assert len(data) < 5000
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "load", lambda self: pytest.fail("the TIFF was decoded"))
    with pytest.raises(InputError, match=r"^tiles.tif: TIFF tiles of 46336x46336 pixels for a 1024x1024 image: refused "
                                         r"before decoding") as caught:
        load_image(data, name="tiles.tif", target=224)
    assert "\n" not in str(caught.value)


def test_tiles_up_to_the_image_or_the_fixed_side_decode_and_larger_ones_are_refused() -> None:
    accepted = [((100, 80), (256, 256)),  # GDAL's 256 x 256 blocks for a small raster
                ((200, 120), (64, 32)),  # many tiles, partial ones at the right and bottom edges
                ((40, 5000), (48, 5008)),  # one tile: the image rounded up to a multiple of 16
                ((64, 64), (MAX_TIFF_TILE_SIDE, 16))]
    for (width, height), tile in accepted:
        pixels = gradient(height, width)
        np.testing.assert_array_equal(load_image(_tiled(pixels, tile)), pixels)
    refused = [((64, 64), (MAX_TIFF_TILE_SIDE + 16, 16)), ((40, 5000), (48, 5024)), ((1024, 1024), (46336, 16))]
    for (width, height), tile in refused:
        with pytest.raises(InputError, match=rf"TIFF tiles of {tile[0]}x{tile[1]} pixels for a {width}x{height} image"):
            load_image(_tiff(width, height, tile, [zlib.compress(b"\x00" * 4096)]))
    with pytest.raises(InputError, match=r"TIFF with invalid tile dimensions 0 x 16"):
        load_image(_tiff(64, 64, (0, 16), [zlib.compress(b"\x00" * 4096)]))


def test_a_tiles_bytes_count_in_the_memory_budget() -> None:
    pixels = gradient(64, 64)
    data = _tiled(pixels, (2048, 2048))  # one tile of 4.2 MB for 4,096 pixels
    np.testing.assert_array_equal(load_image(data), pixels)
    with pytest.raises(InputError, match=r"4096 pixels x 2 bytes \+ 4 MB for one TIFF tile = 4 MB > limit 1 MB"):
        load_image(data, max_decode_bytes=1_000_000)
    np.testing.assert_array_equal(load_image(_tiled(pixels, (16, 16)), max_decode_bytes=64 * 64 * 2 + 256), pixels)
