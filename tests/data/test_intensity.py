"""The optional intensity step of preprocessing (equalize, clahe, standardize) on real X-rays and edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo.config import INTENSITIES
from pneumo.data.decode import load_image
from pneumo.data.preprocess import apply_intensity, prepare
from pneumo.errors import ConfigError


@pytest.fixture(scope="module")
def xray(full_data: Path) -> np.ndarray:
    path = min((full_data / "test" / "NORMAL").glob("*.jpeg"))
    return prepare(load_image(path.read_bytes()), size=224)


def test_standardize_gives_every_image_the_same_mean_and_spread(xray: np.ndarray) -> None:
    out = apply_intensity(xray, "standardize")
    assert out.dtype == np.uint8 and out.shape == xray.shape
    assert abs(out.mean() - 128) < 3 and abs(out.std() - 48) < 3


def test_standardize_removes_a_global_brightness_and_contrast_change(xray: np.ndarray) -> None:
    dimmer = np.clip(np.rint(0.6 * xray.astype(np.float32) + 30), 0, 255).astype(np.uint8)
    a = apply_intensity(xray, "standardize").astype(int)
    b = apply_intensity(dimmer, "standardize").astype(int)
    assert np.abs(a - b).mean() < 1.5  # rounding of the dimmed copy only
    assert np.abs(xray.astype(int) - dimmer.astype(int)).mean() > 20


def test_standardize_of_a_flat_image_is_flat_mid_gray() -> None:
    out = apply_intensity(np.full((32, 32), 7, np.uint8), "standardize")
    assert (out == 128).all()


def test_equalize_spreads_the_histogram_and_clahe_raises_local_contrast(xray: np.ndarray) -> None:
    eq = apply_intensity(xray, "equalize")
    cdf = np.cumsum(np.bincount(eq.ravel(), minlength=256)) / eq.size
    assert np.abs(cdf - np.linspace(0, 1, 256)).max() < 0.1  # close to uniform
    clahe = apply_intensity(xray, "clahe")

    def local_std(img: np.ndarray) -> float:
        tiles = img.astype(np.float32).reshape(14, 16, 14, 16)
        return float(tiles.std(axis=(1, 3)).mean())

    assert local_std(clahe) > local_std(xray)


@pytest.mark.parametrize("method", INTENSITIES)
def test_every_method_keeps_uint8_and_the_shape(method: str, xray: np.ndarray) -> None:
    out = prepare(xray, size=128, intensity=method)
    assert out.dtype == np.uint8 and out.shape == (128, 128)


def test_an_unknown_method_is_a_config_error(xray: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="standardize"):
        apply_intensity(xray, "zscore")
