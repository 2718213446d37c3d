"""Heat-map rendering: the turbo colour map blended over the gray image, the caption, PNG/NPY bytes.

Colours: turbo, blended in proportion to the map (alpha = 0.6 x map), so regions without evidence show the plain
radiograph. Text: the predicted label, P(pneumonia), the threshold and what the map shows.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumo.errors import ConfigError
from pneumo.explain.target import PredictionLike

METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "occlusion": "Occlusion",
                 "integrated_gradients": "Integrated gradients"}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def colorize(heat: np.ndarray) -> np.ndarray:
    """float map in [0, 1] -> uint8 RGB (turbo)."""
    import cv2

    levels = np.clip(np.nan_to_num(heat) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_TURBO)[..., ::-1]


def blend(gray: np.ndarray, heat: np.ndarray, *, alpha: float = 0.6) -> np.ndarray:
    """uint8 RGB: the gray image with the colourised map laid over it in proportion to the map."""
    if gray.shape != heat.shape:
        raise ConfigError(f"map shape {heat.shape} does not match the image {gray.shape}")
    weight = (alpha * np.clip(heat, 0.0, 1.0))[..., None].astype(np.float32)
    base = gray.astype(np.float32)[..., None]
    return (base + (colorize(heat).astype(np.float32) - base) * weight + 0.5).astype(np.uint8)


def caption_lines(prediction: PredictionLike, *, method: str = "gradcam", toward: str | None = None) -> list[str]:
    lines = [f"{prediction.label}   P(pneumonia) {prediction.p_pneumonia:.2f}   threshold {prediction.threshold:.2f}"]
    lines.append(f"{METHOD_TITLES.get(method, method)}: evidence for {toward or prediction.label}")
    reason = getattr(prediction, "reason", None)
    if reason:  # out of distribution or turned: no verdict, and the map must not read as one
        lines.append(f"NO VERDICT: {reason}; map for audit only")
    return lines


def draw_caption(image: Image.Image, lines: list[str]) -> Image.Image:
    """Write ``lines`` at the top left on a dark box (font scaled to the image width)."""
    size = max(11, min(image.size) // 28)
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    pad = max(3, size // 3)
    text = "\n".join(lines)
    _, _, right, bottom = draw.multiline_textbbox((pad, pad), text, font=font, spacing=pad // 2)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.multiline_text((pad, pad), text, fill=(255, 255, 255), font=font, spacing=pad // 2)
    return image


def overlay_image(gray: np.ndarray, heat: np.ndarray, prediction: PredictionLike | None = None, *,
                  method: str = "gradcam", toward: str | None = None, max_side: int | None = None) -> Image.Image:
    """RGB overlay of ``heat`` (same H x W as ``gray``), optionally shrunk to ``max_side``, with the caption."""
    image = Image.fromarray(blend(gray, heat))
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    if prediction is not None:
        draw_caption(image, caption_lines(prediction, method=method, toward=toward))
    return image
