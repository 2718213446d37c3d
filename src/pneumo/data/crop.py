"""Crop the decoded image before it is resized (``data.crop``), so that the model cannot read the film's edges.

Two crops, both on the decoded uint8 gray H x W image (`prepare` applies them before `resize_gray`, in training and at
inference alike):

* ``border:F`` cuts the fraction ``F`` (0 < F < 0.4) of the height from the top and bottom and of the width from the
  left and right: the frame, collimation edges and most burnt-in markers go, the chest stays.
* ``lungs`` crops to the lung fields' bounding box found by a simple image heuristic (no network weights, they are not
  available offline), on a copy whose longer side is ``WORK_SIDE`` px:

  1. Gaussian blur; the dark pixels are those below Otsu's threshold of the central window (``CENTRE_WINDOW``), which
     splits the lungs from the mediastinum, bones and soft tissue.
  2. A film with air around the body: the body is the largest component above the whole image's Otsu threshold, its
     holes filled, eroded; the candidates are the dark pixels inside it. Failing that (a film framed tightly on the
     chest, no air around it), all dark pixels are candidates and a lung may touch the left, right or bottom edge.
  3. The candidates are eroded (radius ``ERODE`` of the side, which cuts thin links to the air outside the body);
     components touching the image edge (air outside the body), below ``MIN_LUNG`` of the image or centred within
     ``CENTRE_BAND`` of an edge are dropped. The two largest that lie side by side (centres at least ``MIN_APART`` of
     the width apart) are the lungs; one component alone counts as both when it is at least ``MIN_BOTH_WIDTH`` of
     the width, else as one lung (the other one may be opaque: pneumonia) whose box is mirrored about the vertical
     midline of the image.
  4. Their joint bounding box, grown back by the erosion radius, must be plausible: ``LUNG_AREA`` of the image, at
     least ``MIN_LUNG_SIDE`` of each side, reaching ``MIDLINE`` past the midline on both sides. Grown by ``MARGIN`` of
     the side on every side and clipped to the image, it is the crop.

  When no pair is found or the box is implausible, the fixed central crop ``border:FALLBACK_BORDER`` stands in and
  `crop_box` says so, so a bench can count fallbacks (``bench/bench_lung_crop.py``).

Boxes are ``(top, left, height, width)`` in the coordinates of the image given (see `pneumo.explain.cam`, which maps a
model-input-sized map back into this box of the original image).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from pneumo.config import parse_crop
from pneumo.errors import InputError

Box = tuple[int, int, int, int]  # top, left, height, width

WORK_SIDE = 256  # the heuristic runs on a copy whose longer side is this
CENTRE_WINDOW = 0.2  # Otsu's threshold is computed on the central window from this fraction to 1 - it of each side
ERODE = 0.02  # erosion radius, as a fraction of the longer side
MIN_LUNG = 0.015  # smallest lung component, as a fraction of the image area
CENTRE_BAND = 0.08  # a lung's centre lies at least this far (fraction of the side) from every edge
MIN_APART = 0.15  # two lungs' centres lie at least this far apart horizontally (fraction of the width)
MIN_BOTH_WIDTH = 0.4  # one component alone counts as both lungs when at least this wide (fraction of the width)
MARGIN = 0.08  # the box grows by this fraction of the side on every side
LUNG_AREA = (0.1, 0.85)  # the lungs' own box (before the margin) covers this fraction of the image
MIN_LUNG_SIDE = 0.25  # and at least this fraction of each side
MIDLINE = 0.05  # the lungs' box reaches at least this far (fraction of the width) past the midline on both sides
MIN_CONTRAST = 16  # the central window's grey range below which there is nothing to segment
FALLBACK_BORDER = 0.1  # when detection fails: the central crop border:0.1


@dataclass(frozen=True)
class CropResult:
    """The cropped image, its box in the coordinates of the image given, and whether the lungs heuristic fell back
    to the fixed central crop (always False for ``none`` and ``border:F``)."""

    image: np.ndarray
    box: Box
    fallback: bool = False


def threshold_otsu(img: np.ndarray) -> float:
    """Otsu's threshold of a uint8 array (OpenCV's: pixels above it are the brighter class)."""
    return float(cv2.threshold(np.ascontiguousarray(img), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])


def border_box(height: int, width: int, fraction: float) -> Box:
    """The box left after cutting ``fraction`` of each side (at least one pixel remains on each axis)."""
    dy, dx = round(fraction * height), round(fraction * width)
    new_h, new_w = max(1, height - 2 * dy), max(1, width - 2 * dx)
    return min(dy, height - new_h), min(dx, width - new_w), new_h, new_w


def lung_box(img: np.ndarray) -> Box | None:
    """The lung fields' bounding box plus margin (see the module docstring), or None when detection fails."""
    height, width = img.shape
    scale = WORK_SIDE / max(height, width)
    small = img if scale >= 1 else cv2.resize(img, (max(1, round(width * scale)), max(1, round(height * scale))),
                                              interpolation=cv2.INTER_AREA)
    h, w = small.shape
    if min(h, w) < 16:
        return None
    blur = cv2.GaussianBlur(small, (0, 0), max(h, w) / 120)
    c = CENTRE_WINDOW
    window = blur[int(c * h) : int((1 - c) * h), int(c * w) : int((1 - c) * w)]
    if int(window.max()) - int(window.min()) < MIN_CONTRAST:
        return None  # (nearly) flat: nothing to segment
    radius = max(1, round(ERODE * max(h, w)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    dark = (blur < threshold_otsu(window)).astype(np.uint8)
    box = _pair_box(cv2.erode(dark & _body(blur, kernel), kernel), radius)  # a film with air around the body
    if box is None:
        box = _pair_box(cv2.erode(dark, kernel), radius, sides=True)  # a film framed tightly on the chest
    if box is None:
        return None
    fy, fx = height / h, width / w
    top, left, bottom, right = box
    return (int(top * fy), int(left * fx), min(height, int(np.ceil(bottom * fy))) - int(top * fy),
            min(width, int(np.ceil(right * fx))) - int(left * fx))


def _body(blur: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The body on a film with air around it: the largest component brighter than the image's Otsu threshold, its
    holes filled, eroded (uint8 0/1)."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats((blur > threshold_otsu(blur)).astype(np.uint8),
                                                         connectivity=4)
    if n < 2:
        return np.zeros_like(blur)
    body = ndimage.binary_fill_holes(comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))
    return cv2.erode(body.astype(np.uint8), kernel)


def _pair_box(mask: np.ndarray, radius: int, *, sides: bool = False) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the lungs in a 0/1 mask of dark regions with margin, or None (see the module
    docstring: steps 2 to 4 and the plausibility checks). ``sides``: a lung may touch the
    left, right and bottom edges (a film framed tightly on the chest), never the top."""
    h, w = mask.shape
    _, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=4)
    x, y, bw, bh, area = (stats[1:, i] for i in range(5))
    cx, cy = centroids[1:, 0] / w, centroids[1:, 1] / h
    off_edges = (y > 0) if sides else (y > 0) & (x > 0) & (x + bw < w) & (y + bh < h)
    plausible = (off_edges & (area >= MIN_LUNG * h * w)
                 & (np.minimum(cx, 1 - cx) > CENTRE_BAND) & (np.minimum(cy, 1 - cy) > CENTRE_BAND))
    order = [int(i) for i in np.argsort(-area) if plausible[i]][:2]
    if len(order) == 2 and abs(cx[order[0]] - cx[order[1]]) < MIN_APART:
        order = order[:1]  # not side by side: the larger one alone, if it is wide enough
    if not order:
        return None
    sel = np.array(order)
    top, left = int(y[sel].min()) - radius, int(x[sel].min()) - radius
    bottom, right = int((y[sel] + bh[sel]).max()) + radius, int((x[sel] + bw[sel]).max()) + radius
    if len(order) == 1 and bw[order[0]] < MIN_BOTH_WIDTH * w:  # one lung (the other one opaque): mirror it
        left, right = min(left, w - right), max(right, w - left)
    lung_h, lung_w = bottom - top, right - left
    if not (LUNG_AREA[0] <= lung_h * lung_w / (h * w) <= LUNG_AREA[1]) or min(lung_h / h, lung_w / w) < MIN_LUNG_SIDE:
        return None
    if not (left < (0.5 - MIDLINE) * w and right > (0.5 + MIDLINE) * w):
        return None  # the lungs straddle the midline
    my, mx = round(MARGIN * h), round(MARGIN * w)
    return max(0, top - my), max(0, left - mx), min(h, bottom + my), min(w, right + mx)


def crop_box(img: np.ndarray, crop: str = "none") -> tuple[Box, bool]:
    """Where ``crop`` (``none``, ``border:F`` or ``lungs``) cuts the uint8 gray ``img``: its box, and whether the
    lungs heuristic fell back to the central crop. ConfigError for an unknown crop."""
    kind, fraction = parse_crop(crop)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise InputError(f"expected a uint8 gray 2-D image, got {img.dtype} with shape {img.shape}")
    height, width = img.shape
    if kind == "none":
        return (0, 0, height, width), False
    if kind == "border":
        return border_box(height, width, float(fraction)), False
    box = lung_box(img)
    if box is None:
        return border_box(height, width, FALLBACK_BORDER), True
    return box, False


def crop_image(img: np.ndarray, crop: str = "none") -> CropResult:
    """``img`` cut to its `crop_box` (a view for ``none``; otherwise a contiguous copy)."""
    box, fallback = crop_box(img, crop)
    top, left, h, w = box
    if box == (0, 0, *img.shape):
        return CropResult(img, box, fallback)
    return CropResult(np.ascontiguousarray(img[top : top + h, left : left + w]), box, fallback)
