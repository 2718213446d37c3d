"""`pneumo.data.crop` (``data.crop``): the border crop's pixels, the lung-field heuristic on real radiographs and its
fallback on images without lungs, `prepare` applying the crop before resizing, the cache key and config checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.config import load_config, parse_crop
from pneumo.data.cache import CACHE_VERSION, build_cache, cache_key
from pneumo.data.crop import FALLBACK_BORDER, border_box, crop_box, crop_image
from pneumo.data.decode import DECODER_VERSION, load_image, load_image_file, pixel_libraries
from pneumo.data.manifest import scan_dataset
from pneumo.data.preprocess import prepare, resize_gray
from pneumo.errors import ConfigError


def test_border_crop_cuts_the_fraction_from_every_side() -> None:
    img = np.ascontiguousarray(np.add.outer(np.arange(100), np.arange(200)) % 251).astype(np.uint8)
    result = crop_image(img, "border:0.1")
    assert result.box == (10, 20, 80, 160) and not result.fallback
    assert np.array_equal(result.image, img[10:90, 20:180])
    assert crop_image(img, "none").image is img and crop_image(img, "none").box == (0, 0, 100, 200)


def test_border_box_rounds_and_always_leaves_pixels() -> None:
    assert border_box(7, 9, 0.25) == (2, 2, 3, 5)
    top, left, h, w = border_box(2, 2, 0.39)
    assert h >= 1 and w >= 1 and top + h <= 2 and left + w <= 2


def test_prepare_crops_before_resizing() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160), dtype=np.uint8)
    expected = resize_gray(img[24:96, 32:128], size=32)
    assert np.array_equal(prepare(img, size=32, crop="border:0.2"), expected)
    assert not np.array_equal(prepare(img, size=32), expected)


@pytest.mark.parametrize("bad", ["border:0", "border:0.4", "border:-0.1", "border:x", "border", "lung", "", "Lungs"])
def test_bad_crop_values_are_config_errors(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="crop must be"):
        parse_crop(bad)
    with pytest.raises(ConfigError, match="data.crop"):
        load_config("lite0-probe", [f"out_dir={tmp_path}", f"data.crop={bad}"])
    with pytest.raises(ConfigError):
        crop_image(np.zeros((50, 50), np.uint8), bad)


def test_good_crop_values_load() -> None:
    assert load_config("lite0-probe", ["data.crop=border:0.1"]).data.crop == "border:0.1"
    assert load_config("lite0-probe", ["data.crop=lungs"]).data.crop == "lungs"
    assert load_config("lite0-probe", []).data.crop == "none"
    assert parse_crop("border:0.15") == ("border", 0.15)


def _real_paths(full_data: Path, n: int) -> list[Path]:
    meta = pd.read_csv(full_data / "manifest.csv", usecols=["path", "split", "source_kind"])
    rows = meta[(meta["split"] == "test") & (meta["source_kind"] == "original")].sort_values("path")
    picked = pd.concat([rows[rows["path"].str.contains(f"/{label}/")].sample(n // 2, random_state=0)
                        for label in ("NORMAL", "PNEUMONIA")])
    return [full_data / p for p in picked["path"]]


def test_lung_box_on_real_radiographs_is_inside_not_whole_and_holds_the_centre(full_data: Path) -> None:
    found, areas = 0, []
    for path in _real_paths(full_data, 16):
        gray = load_image_file(path)
        height, width = gray.shape
        (top, left, h, w), fallback = crop_box(gray, "lungs")
        assert top >= 0 and left >= 0 and top + h <= height and left + w <= width, path.name
        assert h * w < height * width, path.name  # a crop, not the whole image
        areas.append(h * w / (height * width))
        # the central region (40-60 % of each side) is between the lungs: inside the box
        assert top <= 0.4 * height and top + h >= 0.6 * height and left <= 0.4 * width and left + w >= 0.6 * width
        if fallback:
            assert (top, left, h, w) == border_box(height, width, FALLBACK_BORDER)
        else:
            found += 1
            assert h * w >= 0.15 * height * width, path.name
    # bench/bench_lung_crop.py: it finds them on ~90 % of normal and ~65 % of pneumonia films
    assert np.mean(areas) < 0.85  # on average a real crop
    assert found >= 10, f"the heuristic found the lungs on only {found} of 16 real radiographs"


@pytest.mark.parametrize("kind", ["black", "white", "grey", "noise", "tiny"])
def test_images_without_lungs_fall_back_to_the_central_crop(kind: str) -> None:
    rng = np.random.default_rng(1)
    img = {"black": np.zeros((300, 400), np.uint8), "white": np.full((300, 400), 255, np.uint8),
           "grey": np.full((300, 400), 128, np.uint8), "noise": rng.integers(0, 256, (300, 400), dtype=np.uint8),
           "tiny": rng.integers(0, 256, (10, 12), dtype=np.uint8)}[kind]
    result = crop_image(img, "lungs")
    assert result.fallback
    assert result.box == border_box(*img.shape, FALLBACK_BORDER)
    top, left, h, w = result.box
    assert np.array_equal(result.image, img[top : top + h, left : left + w])
    assert prepare(img, size=32, crop="lungs").shape == (32, 32)


def _old_key(df: pd.DataFrame, size: int, policy: str, intensity: str) -> str:
    """The cache key in the form it had before crops existed (the decoder's and libraries' versions added since)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|decoder={DECODER_VERSION}|{pixel_libraries()}|{size}|{policy}|"
                       f"{intensity}".encode())
    for path, digest in zip(df["path"], df["sha256"]):
        h.update(f"|{path}:{digest}".encode())
    return h.hexdigest()[:20]


def test_cache_key_changes_with_the_crop_and_is_unchanged_without_one() -> None:
    df = pd.DataFrame({"path": ["a.jpeg", "b.jpeg"], "sha256": ["1" * 64, "2" * 64]})
    base = cache_key(df, size=64, policy="squash", intensity="none")
    assert base == cache_key(df, size=64, policy="squash", intensity="none", crop="none") == _old_key(
        df, 64, "squash", "none")
    keys = {cache_key(df, size=64, policy="squash", intensity="none", crop=c)
            for c in ("none", "border:0.1", "border:0.2", "lungs")}
    assert len(keys) == 4


def test_cache_built_with_a_crop_holds_the_cropped_images(data_slice: Path, cache_dir: Path) -> None:
    df = scan_dataset(data_slice).iloc[:6]
    plain = build_cache(df, data_slice, size=48, cache_dir=cache_dir, progress=False, workers=1)
    cropped = build_cache(df, data_slice, size=48, crop="border:0.1", cache_dir=cache_dir, progress=False, workers=1)
    lungs = build_cache(df, data_slice, size=48, crop="lungs", cache_dir=cache_dir, progress=False, workers=1)
    assert len({plain.file, cropped.file, lungs.file}) == 3
    for i in range(len(df)):
        gray = load_image((data_slice / df["path"].iloc[i]).read_bytes(), target=48)
        assert np.array_equal(cropped.images[i], prepare(gray, size=48, crop="border:0.1"))
        assert np.array_equal(lungs.images[i], prepare(gray, size=48, crop="lungs"))
