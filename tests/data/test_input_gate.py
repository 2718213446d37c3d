"""The input gate `check_radiograph`: generated edge cases on both sides of each threshold, and real radiographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus import gradient

from pneumo.data.decode import load_image
from pneumo.data.gate import MAX_ASPECT, MIN_SIDE, check_radiograph
from pneumo.errors import InputError


def _refusal(gray: np.ndarray) -> str:
    with pytest.raises(InputError, match="^not a chest radiograph") as info:
        check_radiograph(gray)
    return str(info.value)


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def test_short_side_limit_is_inclusive() -> None:
    check_radiograph(_noise(MIN_SIDE, 100))
    assert "too small" in _refusal(_noise(MIN_SIDE - 1, 100))
    assert "too small" in _refusal(_noise(1, 1))


def test_aspect_ratio_limit_is_inclusive() -> None:
    check_radiograph(_noise(100, int(100 * MAX_ASPECT)))
    assert "aspect ratio 4.1:1" in _refusal(_noise(100, 410))
    assert "aspect ratio" in _refusal(_noise(50_000, 64))


def test_nearly_constant_images_are_refused() -> None:
    flat = np.full((512, 512), 200, np.uint8)
    assert "nearly constant" in _refusal(flat)
    flat[:2, :2] = 0  # a few odd pixels do not make a picture
    assert "nearly constant" in _refusal(flat)
    assert "nearly constant" in _refusal((128 + _noise(300, 300) // 32).astype(np.uint8))  # 8 gray levels of noise


def test_a_small_picture_on_a_flat_canvas_is_refused_whatever_the_canvas_level() -> None:
    for level in (0, 128, 255):
        canvas = np.full((1000, 800), level, np.uint8)
        canvas[400:600, 300:500] = _noise(200, 200)  # 5 % of the canvas
        assert "uniform padding" in _refusal(canvas)


def test_truncated_file_decoding_flat_below_its_first_rows_is_refused() -> None:
    gray = np.full((875, 875), 128, np.uint8)
    gray[:2] = _noise(2, 875)
    _refusal(gray)


def test_ramps_and_moderate_borders_are_not_padding() -> None:
    check_radiograph(np.tile(np.arange(256, dtype=np.uint8), (128, 1)))  # every column uniform, but a ramp
    check_radiograph(np.tile(np.arange(256, dtype=np.uint8), (128, 1)).T.copy())
    framed = np.zeros((1000, 1000), np.uint8)
    framed[200:800, 200:800] = _noise(600, 600)  # 36 % content inside a black frame
    check_radiograph(framed)
    check_radiograph(gradient(72, 96))


def test_a_large_radiograph_sized_picture_is_gated_like_a_small_one() -> None:
    big = np.kron(_noise(100, 80), np.ones((70, 70), np.uint8))  # 7000 x 5600, seen through a strided view
    check_radiograph(big)
    big[:, 1000:] = big[0, -1]  # 82 % flat border on the right
    assert "uniform padding" in _refusal(big) or "nearly constant" in _refusal(big)


def test_every_image_of_the_real_slice_passes_at_model_and_full_scale(data_slice: Path) -> None:
    meta = pd.read_csv(data_slice / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(meta["split"]) == {"train", "val", "test"} and len(meta) >= 80
    for rel in meta["path"]:
        data = (data_slice / rel).read_bytes()
        for target in (224, None):
            check_radiograph(load_image(data, target=target))


def test_the_gate_percentiles_are_numpys_linear_percentiles() -> None:
    from pneumo.data.gate import percentiles

    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 256, size, dtype=np.uint8) for size in (1, 2, 3, 99, 100, 101, 4097)]
    cases += [np.full(50, 7, np.uint8), np.r_[np.zeros(98, np.uint8), [255, 255]],
              rng.integers(0, 256, (320, 451), dtype=np.uint8)[::3, ::2], rng.normal(size=77)]
    for values in cases:
        for qs in ((1, 99), (0, 50, 100), (12.5, 87.5)):
            np.testing.assert_allclose(percentiles(values, qs), np.percentile(values, qs), rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 1), (3, 900), (320, 451), (517, 2), (600, 600)])
def test_the_gates_statistics_are_numpys_exactly(shape: tuple[int, int]) -> None:
    """The histogram and the per-line range/mean come from OpenCV for speed (issue 24); they must be numpy's, bit for
    bit, on any uint8 image, also a strided view."""
    from pneumo.data.gate import _histogram, _lines

    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    image[: shape[0] // 3] = 17  # a flat band, as padding would be
    for view in (image, image[::2, ::3]):
        np.testing.assert_array_equal(_histogram(view), np.bincount(view.ravel(), minlength=256))
        for axis in (0, 1):
            ranges, levels = _lines(view, axis)
            np.testing.assert_array_equal(ranges, np.ptp(view, axis=axis))
            assert ranges.dtype == np.uint8
            np.testing.assert_array_equal(levels, view.mean(axis=axis))
