"""The one preprocessing path: dataset bytes -> uint8 gray -> uint8 S x S (resize policy, optional intensity step).

The dataset cache, `pneumo predict`, the service and the explanations all go through these functions, so that a model
sees at inference exactly what it saw in training.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pneumo.data.markers import remove_markers
from pneumo.errors import ConfigError, InputError

RESIZE_POLICIES = ("squash", "letterbox")
INTENSITY_METHODS = ("none", "equalize", "clahe", "standardize")
STANDARD_MEAN, STANDARD_STD = 128.0, 48.0  # "standardize": every image to this mean and spread (uint8)


def decode_gray(data: bytes, *, target: int | None = None) -> np.ndarray:
    """Decode dataset image bytes to uint8 gray H x W.

    Args:
        data: JPEG/PNG bytes.
        target: model input size; JPEGs are decoded at the smallest DCT scale whose short side stays >= 2 * target
            (Pillow ``draft``), which is much faster for large originals and loses nothing after the resize.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if target is not None and img.format == "JPEG":
                w, h = img.size
                scale = max(1.0, min(w, h) / (2 * target))
                img.draft("L", (int(w / scale), int(h / scale)))
            gray = img.convert("L")
            gray.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad bytes
        raise InputError(f"cannot decode image: {exc}") from None
    return np.asarray(gray, dtype=np.uint8)


def resize_gray(img: np.ndarray, *, size: int, policy: str = "squash") -> np.ndarray:
    """Resize uint8 gray H x W to size x size.

    ``squash`` stretches to a square (what the 224 px copies in the training data already are); ``letterbox`` keeps the
    aspect ratio and pads the short side with black, centred.
    """
    if policy not in RESIZE_POLICIES:
        raise ConfigError(f"unknown resize policy {policy!r}; choose {', '.join(RESIZE_POLICIES)}")
    if img.ndim != 2 or img.dtype != np.uint8:
        raise InputError(f"expected a uint8 gray 2-D image, got {img.dtype} with shape {img.shape}")
    pil = Image.fromarray(img)
    if policy == "squash":
        out = pil.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(out, dtype=np.uint8)
    h, w = img.shape
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = pil.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def apply_intensity(img: np.ndarray, method: str = "none") -> np.ndarray:
    """Optional intensity normalisation on uint8 gray: global histogram equalisation, CLAHE (8x8 tiles, clip 2) or
    per-image standardisation (each image shifted and scaled to mean 128, standard deviation 48, clipped)."""
    if method == "none":
        return img
    if method == "standardize":
        x = img.astype(np.float32)
        z = (x - x.mean()) / max(float(x.std()), 1.0)
        return np.clip(np.rint(STANDARD_MEAN + STANDARD_STD * z), 0, 255).astype(np.uint8)
    import cv2  # opencv-python-headless (a dependency of grad-cam)

    if method == "equalize":
        return cv2.equalizeHist(np.ascontiguousarray(img))
    if method == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.ascontiguousarray(img))
    raise ConfigError(f"unknown intensity method {method!r}; choose {', '.join(INTENSITY_METHODS)}")


def prepare(img: np.ndarray, *, size: int, policy: str = "squash", intensity: str = "none",
            markers: str = "none") -> np.ndarray:
    """uint8 gray H x W -> the uint8 size x size array the model is fed (after / 255): resize, then (optionally)
    in-paint burnt-in markers and text (`pneumo.data.markers`), then the intensity step."""
    return apply_intensity(remove_markers(resize_gray(img, size=size, policy=policy), markers), intensity)


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where the image lies inside a letterboxed size x size canvas: (top, left, new_h, new_w)."""
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w
