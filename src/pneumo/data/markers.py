"""Burnt-in laterality markers and text ("R", "L", "A-P", dates): find them, and in-paint them away.

In this dataset the markers differ between the classes (the pneumonia images carry a differently styled "R"), so a
model can score well by reading them. Removing them at train *and* inference time (`prepare(..., markers="inpaint")`)
takes the cue away; the shortcut indicator (`pneumo.explain.shortcut`) measures how much saliency still lands on them.

Detection works on the model-input image (uint8 gray, S x S) with OpenCV and is deliberately simple: a marker is a
small, near-white, high-contrast glyph in the band along the image edges. Concretely, pixels that are bright
(>= ``MIN_BRIGHT``), stand out from their neighbourhood (white top-hat >= ``MIN_TOPHAT``) and lie on a dark
background (grey opening <= ``MAX_BACKGROUND``), grouped into
components after a small dilation (so the strokes of one letter or word join), kept when the component is letter-sized
(at most ``MAX_HEIGHT`` x ``MAX_WIDTH`` of the side) and its centre lies in the edge band (``EDGE_BAND`` of the side
from the left/right edges or ``TOP_BAND`` / ``BOTTOM_BAND`` from the top/bottom). Bones are large or sit inside the
body, so they rarely pass; a miss only leaves a marker in place.

Corner text (method ``inpaint-text``; ``inpaint`` stays as it was, so a model keeps the preprocessing it was trained
with): exposure values, times and IDs ("KV59", "17:54:36", "ID:1067247") printed in the corners are too faint or too
long for the glyph rule, and a whole block of lines is taller than a letter. `find_text` looks for them as rows of
strokes instead: in the four ``TEXT_CORNER_X`` x ``TEXT_CORNER_Y`` corners, pixels that stand out from their
neighbourhood (white top-hat >= ``TEXT_MIN_TOPHAT``, value >= ``TEXT_MIN_BRIGHT``, background <= ``TEXT_MAX_BACKGROUND``)
count as text where one image row holds at least ``TEXT_MIN_STROKES`` stroke starts within ``TEXT_SPAN`` of the side
(a clavicle, a skin line or a wire starts once or twice per row, a number or a word four times or more). On 1,500
training images (a seeded sample, not validation or test) it fires on 214, 187 of them pneumonia (17 % of the
pneumonia images, 7 % of the normal ones): the text is a class cue, which is why it goes.
"""

from __future__ import annotations

import cv2
import numpy as np

from pneumo.config import MARKER_METHODS
from pneumo.errors import ConfigError, InputError

MIN_BRIGHT = 150  # uint8 value a marker pixel reaches (burnt in near white; thin strokes lose some in a resize)
MIN_TOPHAT = 50  # how far it stands above its neighbourhood (white top-hat, kernel ~12 % of the side)
MAX_BACKGROUND = 120  # markers sit on dark film or collimation; ribs and bones sit on brighter tissue
MAX_HEIGHT, MAX_WIDTH = 0.12, 0.22  # largest glyph group, as a fraction of the side
EDGE_BAND, TOP_BAND, BOTTOM_BAND = 0.12, 0.12, 0.08  # where markers sit, as a fraction of the side
MIN_PIXELS = 4  # smaller specks are noise
TEXT_KERNEL = 0.06  # top-hat kernel for text strokes, as a fraction of the side
TEXT_MIN_TOPHAT, TEXT_MIN_BRIGHT, TEXT_MAX_BACKGROUND = 40, 100, 150  # text strokes are fainter than markers
TEXT_CORNER_X, TEXT_CORNER_Y = 0.30, 0.15  # the four corner boxes searched for text, as fractions of the side
TEXT_SPAN, TEXT_MIN_STROKES = 0.08, 4  # stroke starts needed within this fraction of the side along one row


def find_markers(img: np.ndarray) -> np.ndarray:
    """Boolean mask (same shape as ``img``) of the detected markers and text, slightly dilated."""
    _check_gray(img)
    h, w = img.shape
    side = min(h, w)
    k = max(3, round(0.12 * side) | 1)
    tophat = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    background = img - tophat  # the grey opening: the image without structures narrower than the kernel
    candidates = ((img >= MIN_BRIGHT) & (tophat >= MIN_TOPHAT) & (background <= MAX_BACKGROUND)).astype(np.uint8)
    joined = cv2.dilate(candidates, cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3)))
    # the same components as any 8-connected labelling; BBDT is ~3x faster than OpenCV's default here
    n, comp, stats, centroids = cv2.connectedComponentsWithStatsWithAlgorithm(joined, 8, cv2.CV_32S, cv2.CCL_BBDT)
    pixels = np.bincount(comp[candidates > 0], minlength=n)  # candidate pixels per component
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    cx, cy = centroids[:, 0], centroids[:, 1]
    letter_sized = (bh <= MAX_HEIGHT * h) & (bw <= MAX_WIDTH * w)
    near_edge = (cx < EDGE_BAND * w) | (cx > (1 - EDGE_BAND) * w) | (cy < TOP_BAND * h) | (cy > (1 - BOTTOM_BAND) * h)
    keep = letter_sized & near_edge & (pixels >= MIN_PIXELS)
    keep[0] = False  # the background
    mask = _components(comp, stats, np.flatnonzero(keep))
    return cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))) > 0


def find_text(img: np.ndarray) -> np.ndarray:
    """Boolean mask (same shape as ``img``) of the text rows detected in the four corners, slightly dilated."""
    _check_gray(img)
    h, w = img.shape
    side = min(h, w)
    k = max(3, round(TEXT_KERNEL * side) | 1)
    tophat = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    strokes = (tophat >= TEXT_MIN_TOPHAT) & (img >= TEXT_MIN_BRIGHT) & (img - tophat <= TEXT_MAX_BACKGROUND)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    strokes &= ((cols < TEXT_CORNER_X * w) | (cols > (1 - TEXT_CORNER_X) * w)) & (
        (rows < TEXT_CORNER_Y * h) | (rows > (1 - TEXT_CORNER_Y) * h))
    starts = np.zeros((h, w), np.float32)
    starts[:, 1:] = strokes[:, 1:] & ~strokes[:, :-1]
    span = max(3, round(TEXT_SPAN * side) | 1)
    per_window = cv2.boxFilter(starts, -1, (span, 1), normalize=False, borderType=cv2.BORDER_CONSTANT)
    dense = (per_window >= TEXT_MIN_STROKES).astype(np.uint8)
    rows_of_text = cv2.dilate(dense, cv2.getStructuringElement(cv2.MORPH_RECT, (span, 3))) > 0
    mask = (rows_of_text & strokes).astype(np.uint8)
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))) > 0


def _check_gray(img: np.ndarray) -> None:
    if img.ndim != 2 or img.dtype != np.uint8:
        raise InputError(f"expected a uint8 gray 2-D image, got {img.dtype} with shape {img.shape}")


def _components(comp: np.ndarray, stats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels labelled ``labels`` (label 0, the background, never among them): within each one's
    bounding box, which for the few markers of an image is much cheaper than looking up every pixel's label."""
    if len(labels) > 32:  # many small components (noise): one lookup over the image
        return np.isin(comp, labels)
    mask = np.zeros(comp.shape, dtype=bool)
    for label in labels:
        x, y, width, height = stats[label, :4]
        box = np.s_[y : y + height, x : x + width]
        mask[box] |= comp[box] == label
    return mask


def remove_markers(img: np.ndarray, method: str = "inpaint") -> np.ndarray:
    """``img`` with its detected markers (``inpaint``), or markers and corner text (``inpaint-text``), in-painted from
    their surroundings (``method="none"``: unchanged)."""
    if method == "none":
        return img
    if method not in MARKER_METHODS:
        raise ConfigError(f"unknown marker method {method!r}; choose {', '.join(MARKER_METHODS)}")
    mask = find_markers(img)
    if method == "inpaint-text":
        mask |= find_text(img)
    if not mask.any():
        return img
    return cv2.inpaint(np.ascontiguousarray(img), mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)
