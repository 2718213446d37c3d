"""The model input: uint8 gray H x W (from `pneumo.data.decode.load_image`) -> uint8 S x S (optional crop, resize
policy, optional marker in-painting and intensity step).

The dataset cache, `pneumo predict`, the service and the explanations all decode with `load_image` and then call
`prepare`, so that a model sees at inference exactly what it saw in training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, overload

import numpy as np
from PIL import Image

from pneumo.config import INTENSITIES, RESIZE_POLICIES
from pneumo.data.crop import crop_image
from pneumo.data.markers import remove_markers
from pneumo.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

STANDARD_MEAN, STANDARD_STD = 128.0, 48.0  # "standardize": every image to this mean and spread (uint8)


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
    raise ConfigError(f"unknown intensity method {method!r}; choose {', '.join(INTENSITIES)}")


def prepare(img: np.ndarray, *, size: int, policy: str = "squash", intensity: str = "none",
            markers: str = "none", crop: str = "none") -> np.ndarray:
    """uint8 gray H x W -> the uint8 size x size array the model is fed (after / 255): crop (`pneumo.data.crop`:
    ``none``, ``border:F``, ``lungs``), resize, then (optionally) in-paint burnt-in markers and text
    (`pneumo.data.markers`), then the intensity step."""
    if crop != "none":
        img = crop_image(img, crop).image
    return apply_intensity(remove_markers(resize_gray(img, size=size, policy=policy), markers), intensity)


@overload
def to_unit(images: torch.Tensor) -> torch.Tensor: ...
@overload
def to_unit(images: np.ndarray) -> np.ndarray: ...
def to_unit(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The last step: uint8 images -> float32 in [0, 1], the model's input contract (training, features, predict
    and ONNX alike). A tensor stays a tensor (no torch import here), an array an array."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) / np.float32(255)
    return images.float().div_(255)


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where the image lies inside a letterboxed size x size canvas: (top, left, new_h, new_w)."""
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w
