"""The input gate: refuse a decoded image that cannot be a chest radiograph (too small, too elongated, nearly constant,
mostly padding), before any model sees it. Predict, serve, evaluate and the site check apply it to what
`pneumo.data.decode` returns; all 5,856 Kermany images pass it (BENCHMARKS.md, "input gate")."""

from __future__ import annotations

import math

import cv2
import numpy as np

from pneumo.errors import InputError

MIN_SIDE = 64  # pixels, the short side
MAX_ASPECT = 4.0  # long side / short side
MIN_SPREAD = 16  # gray levels between the 1st and the 99th percentile
MIN_CONTENT = 0.25  # share of the image left once uniform borders (padding) are cut off
UNIFORM_RANGE = 8  # a row or column spanning at most this many gray levels is uniform
_GATE_SIDE = 512  # the gate looks at a strided view of about this many pixels per side


def check_radiograph(gray: np.ndarray) -> None:
    """Refuse a decoded image that cannot be a chest radiograph.

    The checks, in order: short side under ``MIN_SIDE``; long / short side over ``MAX_ASPECT``; 1st..99th percentile
    spread under ``MIN_SPREAD`` gray levels (nearly constant: blank, or a truncated file whose missing part decodes
    flat); less than ``MIN_CONTENT`` of the image left once flat borders are cut off (mostly padding).
    Deterministic and cheap: a strided view of about 512 x 512 pixels.

    Raises:
        InputError: one line saying which check failed and by how much.
    """
    if gray.ndim != 2:
        raise InputError(f"expected a gray 2-D image, got shape {gray.shape}")
    height, width = gray.shape
    short, long = min(height, width), max(height, width)
    if short < MIN_SIDE:
        raise InputError(f"not a chest radiograph: {width}x{height} pixels is too small (short side < {MIN_SIDE})")
    if long / short > MAX_ASPECT:
        raise InputError(f"not a chest radiograph: {width}x{height} pixels, aspect ratio {long / short:.1f}:1 "
                         f"> {MAX_ASPECT:g}:1")
    step = max(1, math.ceil(long / _GATE_SIDE))
    view = gray[::step, ::step]
    low, high = percentiles(view, (1, 99))
    if high - low < MIN_SPREAD:
        raise InputError(f"not a chest radiograph: nearly constant (98% of the pixels within {high - low:.0f} gray "
                         "levels; blank, or a truncated file?)")
    content = _content_share(view)
    if content < MIN_CONTENT:
        raise InputError(f"not a chest radiograph: {100 * (1 - content):.0f}% of the image is uniform padding "
                         "(a truncated file, or a small picture on a large canvas?)")


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
    """``np.percentile(values, qs)`` (linear interpolation); for uint8 from a histogram, without sorting."""
    if values.dtype != np.uint8 or values.size == 0:
        return tuple(float(v) for v in np.percentile(values, qs))
    below = np.cumsum(_histogram(values))  # below[v] = how many values are <= v

    def order_statistic(k: int) -> int:  # the k-th smallest value (0-based)
        return int(np.searchsorted(below, k, side="right"))

    out = []
    for q in qs:
        position = q / 100 * (values.size - 1)
        lo = math.floor(position)
        a, b = order_statistic(lo), order_statistic(min(lo + 1, values.size - 1))
        out.append(a + (b - a) * (position - lo))
    return tuple(out)


def _histogram(values: np.ndarray) -> np.ndarray:
    """How many of the uint8 ``values`` take each of the 256 levels. OpenCV's histogram (exact: float32 counts below
    2**24 values) releases the GIL, which numpy's bincount (a cast to int64 first) holds: the gate runs on the decode
    threads (issue 24)."""
    if values.size >= 1 << 24:
        return np.bincount(values.ravel(), minlength=256)
    flat = np.ascontiguousarray(values).reshape(-1, 1)
    return cv2.calcHist([flat], [0], None, [256], [0, 256]).ravel().astype(np.int64)


def _lines(view: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(max - min, mean) of each row (``axis=1``) or column (``axis=0``) of a uint8 image: exactly ``np.ptp`` and
    ``mean`` (an integer sum divided by the count, as numpy's float64 sum of integers is exact), the sums by OpenCV,
    ~10x faster than numpy's float64 mean (issue 24)."""
    if view.shape[axis] * 255 >= 1 << 31:  # an int32 sum could overflow (never for the gate's ~512-pixel lines)
        return np.ptp(view, axis=axis), view.mean(axis=axis)
    total = cv2.reduce(np.ascontiguousarray(view), 1 if axis == 1 else 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S)
    return np.ptp(view, axis=axis), total.ravel() / view.shape[axis]


def _content_share(view: np.ndarray) -> float:
    """Share of the image left once the padding is cut off each side: the runs of rows / columns, from the edge
    inward, that are uniform and at the level of the outermost one (a ramp is not padding; a flat border is)."""
    (rows_range, rows_level), (cols_range, cols_level) = _lines(view, 1), _lines(view, 0)
    height = len(rows_range) - _padding_run(rows_range, rows_level) - _padding_run(rows_range[::-1], rows_level[::-1])
    width = len(cols_range) - _padding_run(cols_range, cols_level) - _padding_run(cols_range[::-1], cols_level[::-1])
    return max(0, height) * max(0, width) / view.size


def _padding_run(ranges: np.ndarray, levels: np.ndarray) -> int:
    """How many lines from the start are uniform and within ``UNIFORM_RANGE`` of the first line's level."""
    padding = (ranges <= UNIFORM_RANGE) & (np.abs(levels - levels[0]) <= UNIFORM_RANGE)
    return len(padding) if padding.all() else int(np.argmin(padding))


# --- sniffing --------------------------------------------------------------------------------------------------------
