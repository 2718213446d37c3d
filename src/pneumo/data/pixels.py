"""Pixel arithmetic shared by the decoders: size checks and linear scaling to uint8, a strip of rows at a time.

Working in strips bounds the float64 temporaries to ``STRIP_PIXELS * 8`` bytes whatever the image size, so the memory
a decode needs is the decoded samples plus the uint8 result (see `pneumo.data.decode`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from pneumo.errors import InputError

STRIP_PIXELS = 1 << 20  # pixels converted at once: 8 MB of float64 per temporary
MAX_ABS_VALUE = 1e30  # pixel values beyond this (a rescale slope of 1e308 ...) are refused, not overflowed


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse an empty image or one whose declared width x height exceeds ``max_pixels``."""
    if width < 1 or height < 1:
        raise InputError(f"image has no pixels: {width}x{height}")
    if width * height > max_pixels:
        raise InputError(f"image too large: {width}x{height} pixels > limit {max_pixels}")


def check_budget(pixels: int, bytes_per_pixel: int, max_decode_bytes: int, *, buffered: int = 0,
                 buffer: str = "of buffered coefficients",
                 hint: str = "send it with fewer pixels or 8 bits per sample") -> None:
    """Refuse a decode whose samples (``pixels`` x ``bytes_per_pixel``, from the header) plus the decoder's own
    ``buffered`` bytes (a multi-scan JPEG's coefficients, a tiled TIFF's tile: ``buffer`` says which) exceed
    ``max_decode_bytes``."""
    need = pixels * bytes_per_pixel + buffered
    if need > max_decode_bytes:
        extra = f" + {buffered / 1e6:.0f} MB {buffer}" if buffered else ""
        raise InputError(f"image too large to decode: {pixels} pixels x {bytes_per_pixel} bytes{extra} = "
                         f"{need / 1e6:.0f} MB > limit {max_decode_bytes / 1e6:.0f} MB ({hint})")


def strips(height: int, width: int) -> Iterator[tuple[int, int]]:
    """(first row, end row) blocks of about ``STRIP_PIXELS`` pixels covering ``height`` rows."""
    rows = max(1, STRIP_PIXELS // max(1, width))
    for start in range(0, height, rows):
        yield start, min(height, start + rows)


def value_range(height: int, width: int, strip: Callable[[int, int], np.ndarray]) -> tuple[float, float] | None:
    """Finite min and max over all strips (``strip(r0, r1)`` gives rows r0..r1 as numbers); None if none is finite.

    Raises:
        InputError: a finite value beyond ``MAX_ABS_VALUE`` (arithmetic on it would overflow).
    """
    lo, hi = np.inf, -np.inf
    for r0, r1 in strips(height, width):
        values = np.asarray(strip(r0, r1))
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    if lo > hi:
        return None
    if max(abs(lo), abs(hi)) > MAX_ABS_VALUE:
        raise InputError(f"pixel values out of range (|value| up to {max(abs(lo), abs(hi)):.3g})")
    return lo, hi


def scale_strips(height: int, width: int, strip: Callable[[int, int], np.ndarray], lo: float, hi: float) -> np.ndarray:
    """Map lo..hi linearly to 0..255 (clipped, rounded; NaN -> lo), strip by strip; all black when hi <= lo."""
    out = np.zeros((height, width), dtype=np.uint8)
    if not hi > lo:
        return out
    factor = 255.0 / (hi - lo)
    for r0, r1 in strips(height, width):
        values = np.array(strip(r0, r1), dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # +-inf and NaN are clipped / replaced right after
            np.nan_to_num(values, copy=False, nan=lo, posinf=hi, neginf=lo)
            np.clip(values, lo, hi, out=values)
        values -= lo
        values *= factor
        np.rint(values, out=values)
        out[r0:r1] = np.clip(values, 0, 255)
    return out
