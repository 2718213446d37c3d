"""The shortcut indicator: saliency mass shares in the border band, the corners and the central chest region."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.errors import ConfigError
from pneumo.explain.shortcut import REGIONS, region_masks, shortcut_stats, shortcut_table_rows

SIZE = 100
NAMES = ["NORMAL", "PNEUMONIA"]


def _corner_map() -> np.ndarray:
    heat = np.zeros((SIZE, SIZE))
    for rows in (slice(0, 15), slice(85, 100)):
        for cols in (slice(0, 15), slice(85, 100)):
            heat[rows, cols] = 1.0
    return heat


def _center_map() -> np.ndarray:
    heat = np.zeros((SIZE, SIZE))
    heat[30:70, 30:70] = 1.0
    return heat


def test_a_corner_only_map_puts_all_its_mass_in_the_corners() -> None:
    stats = shortcut_stats(_corner_map()[None], [1], NAMES)
    assert stats["per_class"]["PNEUMONIA"]["corners"] == pytest.approx(1.0)
    assert stats["per_class"]["PNEUMONIA"]["center"] == 0.0


def test_disjoint_region_shares_never_sum_above_one() -> None:
    maps = np.random.default_rng(0).random((20, SIZE, SIZE)) ** 4
    stats = shortcut_stats(maps, np.arange(20) % 2, NAMES)
    for part in [*stats["per_class"].values(), stats["all"]]:
        assert part["border"] + part["center"] <= 1.0 + 1e-9
        assert part["corners"] + part["center"] <= 1.0 + 1e-9


def test_a_uniform_map_gets_each_region_its_area() -> None:
    stats = shortcut_stats(np.ones((1, SIZE, SIZE)), [0], NAMES)
    for name in REGIONS:
        assert stats["all"][name] == pytest.approx(stats["regions"][name]["area"])
        assert stats["all"][f"{name}_vs_area"] == pytest.approx(1.0)
    assert stats["regions"]["border"]["area"] == pytest.approx(1 - 0.8**2)


def test_shares_are_averaged_per_true_class() -> None:
    maps = np.stack([_corner_map(), _corner_map(), _center_map()])
    stats = shortcut_stats(maps, [0, 0, 1], NAMES)
    assert stats["per_class"]["NORMAL"]["n"] == 2 and stats["per_class"]["NORMAL"]["corners"] == pytest.approx(1.0)
    assert stats["per_class"]["PNEUMONIA"]["center"] == pytest.approx(1.0)
    assert stats["all"]["corners"] == pytest.approx(2 / 3)


def test_all_zero_maps_are_counted_as_empty_not_averaged() -> None:
    maps = np.stack([_center_map(), np.zeros((SIZE, SIZE))])
    stats = shortcut_stats(maps, [0, 0], NAMES)
    assert stats["per_class"]["NORMAL"]["n_empty"] == 1
    assert stats["per_class"]["NORMAL"]["center"] == pytest.approx(1.0)


def test_center_box_is_disjoint_from_border_and_corners() -> None:
    masks = region_masks(224)
    assert not (masks["center"] & masks["border"]).any()
    assert not (masks["center"] & masks["corners"]).any()


def test_impossible_region_fractions_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        region_masks(SIZE, border=0.3, center_margin=0.2)


def test_table_has_one_row_per_class_plus_all_and_the_uniform_reference() -> None:
    header, rows = shortcut_table_rows(shortcut_stats(np.stack([_corner_map(), _center_map()]), [0, 1], NAMES))
    assert [r[0] for r in rows] == ["NORMAL", "PNEUMONIA", "all", "uniform map"]
    assert len(header) == len(rows[0])
