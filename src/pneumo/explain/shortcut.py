"""Shortcut indicator: how much of the saliency lies on burnt-in markers and text, and outside the lung fields.

Per image (``image_regions``): ``markers`` are the markers/text `pneumo.data.markers.find_markers` detects on the
model input, ``corner_text`` the rows of text `pneumo.data.markers.find_text` finds in its corners, ``outside_lungs`` is everything outside `lung_field` (an Otsu dark-region segmentation of the two lungs,
falling back to a two-ellipse template of where the lungs lie on a squashed frontal film). `shortcut_verdict` flags
a model whose Grad-CAM mass on markers (or on corner text) is at least ``MARKER_FLAG`` times their area, whose hottest
point lies on one at least ``PEAK_FLAG`` times as often as chance (a Grad-CAM cell is coarse: markers cover ~1 % of the image,
so the mass share alone misses a model that peaks on them), or whose mass outside the lungs is at least
``OUTSIDE_FLAG`` times that area (no preference for the lungs at all). Fixed geometric regions follow:

A model that reads burnt-in letters, markers or the padding/collimation edge (the classic chest X-ray shortcut)
puts its saliency mass in the border band and the corners. Each share is compared with the region's area: a uniform
map gets ``share == area``, so ``share / area`` above 1 means the maps concentrate there.

Regions on the S x S model input (fractions of the side):
* ``border``: the outer band, ``border`` of the side deep on each of the four sides.
* ``corners``: the four ``corner`` x ``corner`` squares (they overlap the border band).
* ``center``: the central box from ``center_margin`` to ``1 - center_margin`` on both axes (disjoint from both).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pneumo.data.markers import find_markers, find_text
from pneumo.errors import ConfigError

REGIONS = ("border", "corners", "center")
MARKER_FLAG = 2.0  # saliency share on detected markers / their area at which a model is flagged
OUTSIDE_FLAG = 1.0  # saliency share outside the lung field / its area at which a model is flagged
PEAK_TOLERANCE = 1 / 14  # a map's peak counts as on a marker within this fraction of the side (half a 7x7 cell)
PEAK_FLAG = 2.0  # share of peaks on markers / its chance at which a model is flagged
MIN_SEGMENTED = 0.5  # share of images with their own lung field below which "outside the lungs" is not judged


def _lung_template(size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for cx in (0.31, 0.69):
        cv2.ellipse(mask, (round(cx * size), round(0.47 * size)), (round(0.16 * size), round(0.30 * size)), 0, 0, 360,
                    1, -1)
    return mask > 0


def lung_field(img: np.ndarray) -> tuple[np.ndarray, bool]:
    """Boolean lung-field mask of a uint8 S x S model input, and whether it was segmented (else the template).

    The lungs are the two largest dark (Otsu) regions inside the body that do not touch the image edge, eroded apart
    from the film and filled to their convex hulls; when that does not give two plausible regions (12-60 % of the
    image together), a fixed two-ellipse template stands in.
    """
    size = img.shape[0]
    blur = cv2.GaussianBlur(img, (0, 0), size / 120)
    _, dark = cv2.threshold(blur, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, size // 30) | 1,) * 2)
    n, comp, stats, centroids = cv2.connectedComponentsWithStats(cv2.erode(dark, kernel), connectivity=4)
    found = []
    for i in range(1, n):
        x, y, w, h, area = stats[i]
        cx, cy = centroids[i] / size
        inside = x > 0 and y > 0 and x + w < size and y + h < size
        if inside and area >= 0.015 * size * size and 0.1 < cx < 0.9 and 0.15 < cy < 0.85:
            found.append((area, i))
    mask = np.zeros((size, size), np.uint8)
    for _, i in sorted(found, reverse=True)[:2]:
        hull = cv2.convexHull(cv2.findNonZero(cv2.dilate((comp == i).astype(np.uint8), kernel)))
        cv2.fillPoly(mask, [hull], 1)
    if len(found) < 2 or not 0.12 <= mask.mean() <= 0.6:
        return _lung_template(size), False
    return mask > 0, True


def image_regions(images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-image boolean masks ``(N, S, S)``: detected markers/text, corner text, and outside the lung field; and
    whether each image's lungs were segmented (else the two-ellipse template stands in)."""
    images = np.asarray(images)
    lungs = [lung_field(img) for img in images]
    return ({"markers": np.stack([find_markers(img) for img in images]),
             "corner_text": np.stack([find_text(img) for img in images]),
             "outside_lungs": np.stack([~mask for mask, _ in lungs])},
            np.array([segmented for _, segmented in lungs], dtype=bool))


def region_masks(size: int, *, border: float = 0.10, corner: float = 0.15, center_margin: float = 0.20
                 ) -> dict[str, np.ndarray]:
    """Boolean S x S masks of the three regions (see the module docstring)."""
    if not (0 < border < 0.5 and 0 < corner < 0.5 and max(border, corner) <= center_margin < 0.5):
        raise ConfigError("shortcut regions need 0 < border, corner <= center_margin < 0.5 (fractions of the side)")
    idx = np.arange(size)
    b, c, m = round(border * size), round(corner * size), round(center_margin * size)
    near_edge = (idx < b) | (idx >= size - b)
    in_corner_band = (idx < c) | (idx >= size - c)
    in_center = (idx >= m) & (idx < size - m)
    return {
        "border": near_edge[:, None] | near_edge[None, :],
        "corners": in_corner_band[:, None] & in_corner_band[None, :],
        "center": in_center[:, None] & in_center[None, :],
    }


def mass_shares(maps: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per map, the fraction of its total (non-negative) mass inside each mask (S x S, or N x S x S: one per map);
    NaN for an all-zero map."""
    maps = np.clip(np.asarray(maps, dtype=np.float64), 0.0, None)
    total = maps.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: np.where(total > 0, (maps * mask).sum(axis=(1, 2)) / total, np.nan)
                for name, mask in masks.items()}


def shortcut_stats(maps: np.ndarray, labels: Sequence[int] | np.ndarray, class_names: Sequence[str], *,
                   border: float = 0.10, corner: float = 0.15, center_margin: float = 0.20,
                   images: np.ndarray | None = None) -> dict:
    """Mean saliency mass share per region, per true class and overall.

    Args:
        maps: ``(N, S, S)`` non-negative saliency maps on the model input.
        labels: class index per map.
        class_names: names for the class indices.
        border: depth of the border band (fraction of the side).
        corner: side of each corner square (fraction of the side).
        center_margin: distance of the central box from each edge (fraction of the side).
        images: the uint8 ``(N, S, S)`` model inputs the maps belong to; adds the per-image regions ``markers``
            (images without a detected marker are left out of that mean) and ``outside_lungs``, and a ``verdict``.

    Returns:
        ``{"regions": {name: {"area": fraction of pixels, "definition": text}}, "per_class": {class: {"n": maps,
        "n_empty": all-zero maps left out, <region>: mean share, <region>_vs_area: mean share / area}},
        "all": {...same keys}}``.
    """
    maps = np.asarray(maps)
    labels = np.asarray(labels)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2] or len(labels) != len(maps):
        raise ConfigError(f"expected (N, S, S) maps with one label each, got {maps.shape} and {len(labels)} labels")
    masks = region_masks(maps.shape[1], border=border, corner=corner, center_margin=center_margin)
    shares = mass_shares(maps, masks)
    areas = {name: np.full(len(maps), mask.mean()) for name, mask in masks.items()}
    present = {name: np.ones(len(maps), dtype=bool) for name in REGIONS}
    definitions = {"border": f"outer {border:.0%} of each side", "corners": f"four {corner:.0%} corner squares",
                   "center": f"central box {center_margin:.0%}-{1 - center_margin:.0%} on both axes",
                   "markers": "markers/text detected on each image (pneumo.data.markers)",
                   "corner_text": "rows of text detected in each image's corners (pneumo.data.markers.find_text)",
                   "outside_lungs": "outside each image's lung field (segmented, else a two-ellipse template; "
                                    f"judged only when at least {MIN_SEGMENTED:.0%} of the images were segmented)"}
    names = list(REGIONS)
    if images is not None:
        if len(images) != len(maps) or np.asarray(images).shape[1:] != maps.shape[1:]:
            raise ConfigError(f"images {np.asarray(images).shape} do not match the maps {maps.shape}")
        regions, segmented = image_regions(images)
        shares.update(mass_shares(maps, regions))  # (N, S, S) masks broadcast like the fixed (S, S) ones
        for name, per_image in regions.items():
            areas[name] = per_image.mean(axis=(1, 2))
            present[name] = per_image.any(axis=(1, 2))
            names.append(name)
        peaks = peak_hits(maps, regions)

    def summary(rows: np.ndarray) -> dict:
        valid = rows & ~np.isnan(shares["center"])
        out: dict = {"n": int(rows.sum()), "n_empty": int(rows.sum() - valid.sum())}
        for name in names:
            use = valid & present[name]
            mean = float(shares[name][use].mean()) if use.any() else float("nan")
            out[name] = mean
            out[f"{name}_vs_area"] = mean / float(areas[name][use].mean()) if use.any() else float("nan")
            if name not in REGIONS:
                out[f"{name}_images"] = int(use.sum())
                if name == "outside_lungs":  # how many of them had their own lung field, not the template
                    out["lungs_segmented"] = int((use & segmented).sum())
                hit, chance = peaks[name]
                out[f"peak_on_{name}"] = float(hit[use].mean()) if use.any() else float("nan")
                out[f"peak_on_{name}_chance"] = float(chance[use].mean()) if use.any() else float("nan")
        return out

    per_class = {str(name): summary(labels == i) for i, name in enumerate(class_names) if (labels == i).any()}
    stats = {"regions": {name: {"area": float(areas[name][present[name]].mean()) if present[name].any() else 0.0,
                                "definition": definitions[name]} for name in names},
             "per_class": per_class, "all": summary(np.ones(len(labels), dtype=bool))}
    if images is not None:
        stats["verdict"] = shortcut_verdict(stats)
    return stats


def peak_hits(maps: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per region: whether each map's hottest point (the centre of its hottest plateau) lies in it (grown by
    ``PEAK_TOLERANCE`` of the side: a Grad-CAM cell is that coarse), and the chance of that for a peak placed uniformly
    at random (the grown region's area). Uniform placement is conservative for a model whose peaks gather in the
    centre (markers lie near the edges); a permutation null (peaks against other images' markers) was not taken,
    because it cannot see a model that always peaks where the markers always are."""
    n, size = maps.shape[0], maps.shape[1]
    # the centre of the hottest plateau (an upsampled Grad-CAM is flat over its edge cells: argmax took the first
    # tied pixel, so a peak at the top or left edge sat at pixel 0 and one at the bottom or right 16 px inside)
    top = maps >= maps.max(axis=(1, 2), keepdims=True)
    count = np.maximum(top.sum(axis=(1, 2)), 1)
    idx = np.arange(size)
    rows = np.rint((top.sum(axis=2) * idx).sum(axis=1) / count).astype(int)
    cols = np.rint((top.sum(axis=1) * idx).sum(axis=1) / count).astype(int)
    k = max(1, round(PEAK_TOLERANCE * size)) * 2 + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    out = {}
    for name, masks in regions.items():
        grown = masks if name == "outside_lungs" else np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0
                                                                 for m in masks])
        out[name] = (grown[np.arange(n), rows, cols], grown.mean(axis=(1, 2)))
    return out


def shortcut_verdict(stats: dict) -> dict:
    """``{"flagged": bool, "reasons": [...]}`` from the overall marker, corner-text and outside-lung ratios (see the
    module)."""
    overall, reasons = stats["all"], []
    out: dict = {}
    for name, what in (("markers", "detected markers/text"), ("corner_text", "detected corner text")):
        ratio = overall.get(f"{name}_vs_area", float("nan"))
        if np.isfinite(ratio) and ratio >= MARKER_FLAG:
            reasons.append(f"{ratio:.1f}x the uniform saliency on {what} (flag at {MARKER_FLAG:g}x)")
        hit, chance = overall.get(f"peak_on_{name}", float("nan")), overall.get(f"peak_on_{name}_chance", float("nan"))
        peak = hit / chance if np.isfinite(hit) and chance > 0 else float("nan")
        if np.isfinite(peak) and peak >= PEAK_FLAG:
            reasons.append(f"the hottest point lies on {what} in {hit:.0%} of the maps, {peak:.1f}x chance "
                           f"(flag at {PEAK_FLAG:g}x)")
        out |= {f"{name}_vs_area": ratio, f"peak_on_{name}": hit, f"peak_on_{name}_vs_chance": peak,
                f"{name}_images": overall.get(f"{name}_images", 0)}
    outside = overall.get("outside_lungs_vs_area", float("nan"))
    segmented, n = overall.get("lungs_segmented", 0), overall.get("outside_lungs_images", 0)
    judged = n > 0 and segmented >= MIN_SEGMENTED * n  # mostly the template: the ratio says little about the lungs
    if judged and np.isfinite(outside) and outside >= OUTSIDE_FLAG:
        reasons.append(f"{outside:.2f}x the uniform saliency outside the lung field (flag at {OUTSIDE_FLAG:g}x)")
    return {"flagged": bool(reasons), "reasons": reasons, **out, "outside_lungs_vs_area": outside,
            "lungs_segmented": segmented, "outside_lungs_images": n, "outside_lungs_judged": judged}


def shortcut_table_rows(stats: dict) -> tuple[list[str], list[list[object]]]:
    """Header and rows for an HTML/markdown table of ``shortcut_stats`` output."""
    names = list(stats["regions"])
    header = ["class", "maps", *[f"{name} share (x area)" for name in names]]
    rows = []
    for name, part in [*stats["per_class"].items(), ("all", stats["all"])]:
        cells = [f"{part[r]:.3f} ({part[f'{r}_vs_area']:.2f}x)" if np.isfinite(part[r]) else "n/a" for r in names]
        rows.append([name, part["n"] - part["n_empty"], *cells])
    rows.append(["uniform map", "", *[f"{stats['regions'][r]['area']:.3f} (1.00x)" for r in names]])
    return header, rows
