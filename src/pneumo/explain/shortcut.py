"""Shortcut indicator: how much of the saliency lies where no lung is (image border, corners) vs the central chest.

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

import numpy as np

from pneumo.errors import ConfigError

REGIONS = ("border", "corners", "center")


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
    """Per map, the fraction of its total (non-negative) mass inside each mask; NaN for an all-zero map."""
    maps = np.clip(np.asarray(maps, dtype=np.float64), 0.0, None)
    total = maps.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {name: np.where(total > 0, (maps * mask).sum(axis=(1, 2)) / total, np.nan)
                for name, mask in masks.items()}


def shortcut_stats(maps: np.ndarray, labels: Sequence[int] | np.ndarray, class_names: Sequence[str], *,
                   border: float = 0.10, corner: float = 0.15, center_margin: float = 0.20) -> dict:
    """Mean saliency mass share per region, per true class and overall.

    Args:
        maps: ``(N, S, S)`` non-negative saliency maps on the model input.
        labels: class index per map.
        class_names: names for the class indices.
        border: depth of the border band (fraction of the side).
        corner: side of each corner square (fraction of the side).
        center_margin: distance of the central box from each edge (fraction of the side).

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
    areas = {name: float(mask.mean()) for name, mask in masks.items()}
    definitions = {"border": f"outer {border:.0%} of each side", "corners": f"four {corner:.0%} corner squares",
                   "center": f"central box {center_margin:.0%}-{1 - center_margin:.0%} on both axes"}

    def summary(rows: np.ndarray) -> dict:
        valid = rows & ~np.isnan(shares["center"])
        out: dict = {"n": int(rows.sum()), "n_empty": int(rows.sum() - valid.sum())}
        for name in REGIONS:
            mean = float(shares[name][valid].mean()) if valid.any() else float("nan")
            out[name] = mean
            out[f"{name}_vs_area"] = mean / areas[name]
        return out

    per_class = {str(name): summary(labels == i) for i, name in enumerate(class_names) if (labels == i).any()}
    return {"regions": {name: {"area": areas[name], "definition": definitions[name]} for name in REGIONS},
            "per_class": per_class, "all": summary(np.ones(len(labels), dtype=bool))}


def shortcut_table_rows(stats: dict) -> tuple[list[str], list[list[object]]]:
    """Header and rows for an HTML/markdown table of ``shortcut_stats`` output."""
    header = ["class", "maps", *[f"{name} share (x area)" for name in REGIONS]]
    rows = []
    for name, part in [*stats["per_class"].items(), ("all", stats["all"])]:
        cells = [f"{part[r]:.3f} ({part[f'{r}_vs_area']:.2f}x)" if np.isfinite(part[r]) else "n/a" for r in REGIONS]
        rows.append([name, part["n"] - part["n_empty"], *cells])
    rows.append(["uniform map", "", *[f"{stats['regions'][r]['area']:.3f} (1.00x)" for r in REGIONS]])
    return header, rows
