"""The real shortcut indicator: saliency on detected markers/text and outside the lung field, and its verdict."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pneumo.data.preprocess import prepare
from pneumo.explain.shortcut import lung_field, shortcut_stats


def _chest_with_marker(seed: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    body = 150 * np.exp(-(((xx - 0.5) / 0.32) ** 2 + ((yy - 0.55) / 0.45) ** 2))
    img = np.clip(20 + body + rng.normal(0, 4, (size, size)), 0, 255).astype(np.uint8)
    cv2.putText(img, "R", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
    return img


def _blob(size: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    return np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))).astype(np.float32)


def test_saliency_on_the_marker_is_flagged_and_on_the_lungs_is_not():
    images = np.stack([_chest_with_marker(s) for s in range(6)])
    labels = np.array([0, 1] * 3)
    on_marker = np.stack([_blob(224, 0.05, 0.08, 0.03)] * 6)
    on_lungs = np.stack([_blob(224, 0.31, 0.47, 0.08) + _blob(224, 0.69, 0.47, 0.08)] * 6)
    bad = shortcut_stats(on_marker, labels, ["NORMAL", "PNEUMONIA"], images=images)
    good = shortcut_stats(on_lungs, labels, ["NORMAL", "PNEUMONIA"], images=images)
    assert bad["verdict"]["flagged"] and bad["all"]["markers_vs_area"] > 5
    assert not good["verdict"]["flagged"]
    assert good["all"]["outside_lungs_vs_area"] < 0.7 and good["all"]["markers_vs_area"] < 1
    assert bad["all"]["markers_images"] == 6
    assert bad["verdict"]["peak_on_markers"] == 1.0 and good["verdict"]["peak_on_markers"] == 0.0


def test_a_peak_on_the_marker_is_flagged_even_with_little_mass_there():
    """A map that is broad over the chest but peaks on the marker: little mass share, yet its hottest point is the
    marker (what the issue saw with the shipped probe's Grad-CAM on val)."""
    images = np.stack([_chest_with_marker(s) for s in range(6)])
    maps = np.stack([0.6 * _blob(224, 0.5, 0.5, 0.3) + _blob(224, 0.05, 0.08, 0.015)] * 6)
    stats = shortcut_stats(maps, np.array([0, 1] * 3), ["NORMAL", "PNEUMONIA"], images=images)
    assert stats["all"]["markers_vs_area"] < 2 < stats["verdict"]["peak_on_markers_vs_chance"]
    assert stats["verdict"]["flagged"] and any("hottest point" in r for r in stats["verdict"]["reasons"])


def test_without_images_the_fixed_regions_only():
    maps = np.stack([_blob(64, 0.5, 0.5, 0.1)] * 2)
    stats = shortcut_stats(maps, [0, 1], ["NORMAL", "PNEUMONIA"])
    assert "verdict" not in stats and "markers" not in stats["all"] and stats["all"]["center_vs_area"] > 1


def test_images_without_markers_are_left_out_of_the_marker_mean():
    images = np.full((2, 64, 64), 30, np.uint8)
    stats = shortcut_stats(np.stack([_blob(64, 0.5, 0.5, 0.2)] * 2), [0, 1], ["N", "P"], images=images)
    assert stats["all"]["markers_images"] == 0 and np.isnan(stats["all"]["markers"])
    assert not stats["verdict"]["flagged"] or "outside" in stats["verdict"]["reasons"][0]


def test_lung_field_on_real_films_is_plausible(full_data: Path):
    for f in sorted((full_data / "test" / "NORMAL").glob("*.jpeg"))[:6]:
        img = prepare(np.asarray(Image.open(f).convert("L")), size=224)
        mask, _segmented = lung_field(img)
        assert 0.12 <= mask.mean() <= 0.6
        ys, xs = np.nonzero(mask)
        assert 0.3 < xs.mean() / 224 < 0.7 and 0.25 < ys.mean() / 224 < 0.7  # centred on the chest
        assert mask[:, :112].any() and mask[:, 112:].any()  # both sides


def test_saliency_on_corner_text_is_reported_and_flagged():
    """A number printed in the top-right corner (finding 11 of issue 23): the glyph rule does not see it as a
    marker, the corner-text region does, and a model whose maps sit on it is flagged for it."""
    images = np.stack([_chest_with_marker(s) for s in range(6)])
    for img in images:
        cv2.putText(img, "17:54", (176, 12), cv2.FONT_HERSHEY_PLAIN, 0.6, 230, 1, cv2.LINE_AA)
    on_text = np.stack([_blob(224, 0.89, 0.035, 0.02)] * 6)
    on_lungs = np.stack([_blob(224, 0.31, 0.47, 0.08) + _blob(224, 0.69, 0.47, 0.08)] * 6)
    bad = shortcut_stats(on_text, np.array([0, 1] * 3), ["NORMAL", "PNEUMONIA"], images=images)
    good = shortcut_stats(on_lungs, np.array([0, 1] * 3), ["NORMAL", "PNEUMONIA"], images=images)
    assert bad["all"]["corner_text_images"] == 6 and bad["all"]["corner_text_vs_area"] > 5
    assert bad["verdict"]["peak_on_corner_text"] == 1.0 and good["verdict"]["peak_on_corner_text"] == 0.0
    assert any("corner text" in r for r in bad["verdict"]["reasons"]) and not good["verdict"]["flagged"]


def test_outside_the_lungs_is_not_judged_when_the_lungs_were_mostly_a_template():
    """On images whose lungs were not segmented the 'outside the lungs' share measured a fixed two-ellipse template
    (explanations review: 14 % of pneumonia films segmented): it no longer flags a model, and the counts say why."""
    images = np.full((4, 64, 64), 30, np.uint8)  # nothing to segment: the template for every image
    maps = np.stack([_blob(64, 0.05, 0.05, 0.05)] * 4)  # all saliency in a corner, outside the template's lungs
    stats = shortcut_stats(maps, [0, 1, 0, 1], ["N", "P"], images=images)
    verdict = stats["verdict"]
    assert stats["all"]["outside_lungs_vs_area"] > 1 and verdict["lungs_segmented"] == 0
    assert verdict["outside_lungs_images"] == 4 and not verdict["outside_lungs_judged"] and not verdict["flagged"]


def test_a_peak_on_a_flat_plateau_is_placed_at_its_centre():
    """An upsampled Grad-CAM is flat over whole cells: argmax took the plateau's first pixel (row or column 0), so a
    peak on a marker in the middle of an edge cell was missed."""
    from pneumo.explain.shortcut import peak_hits

    size = 224
    maps = np.zeros((2, size, size), np.float32)
    maps[0, 100:110, :64] = 1.0  # a plateau at the left edge, 64 px wide
    maps[1, 100:110, size - 64:] = 1.0  # its mirror image at the right edge
    marker = np.zeros((2, size, size), bool)
    marker[0, 104, 31:33] = True  # in the middle of each plateau
    marker[1, 104, size - 33:size - 31] = True
    hit, _ = peak_hits(maps, {"markers": marker})["markers"]
    assert hit.tolist() == [True, True]
