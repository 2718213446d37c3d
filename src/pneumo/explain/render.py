"""Heat-map rendering: the turbo colour map blended over the gray image, the caption, PNG/NPY bytes.

Colours: turbo, blended in proportion to the map (alpha = 0.6 x map), so regions without evidence show the plain
radiograph. Text: the predicted label, P(pneumonia), the threshold and what the map shows. A written overlay (`pneumo
predict --heatmaps`, `pneumo explain`) carries the text and a colour bar in a band above the image, so nothing covers
the radiograph (its corners hold the side markers a shortcut would use); the service's overlay keeps the image's own
geometry (the page lays it over the preview) with the text in a box at the top left.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumo.errors import ConfigError
from pneumo.explain.target import PredictionLike
from pneumo.templates import fmt_threshold

METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "occlusion": "Occlusion",
                 "integrated_gradients": "Integrated gradients"}


def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """``image`` as PNG; ``text``: tEXt chunks (what made a heat map travels with the file)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3, pnginfo=info)
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


def caption_lines(prediction: PredictionLike, *, method: str = "gradcam", toward: str | None = None,
                  detail: str | None = None) -> list[str]:
    """The overlay's caption: the verdict, the method (with ``detail``: its layer or window) and what the map shows."""
    lines = [f"{prediction.label}   P(pneumonia) {prediction.p_pneumonia:.3f}   threshold {fmt_threshold(prediction.threshold)}"]
    title = METHOD_TITLES.get(method, method) + (f" ({detail})" if detail else "")
    lines.append(f"{title}: evidence for {toward or prediction.label}")
    reason = getattr(prediction, "reason", None)
    if reason:  # out of distribution or turned: no verdict, and the map must not read as one
        lines.append(f"NO VERDICT: {reason}; map for audit only")
    elif toward and (toward.lower() == "pneumonia") != (prediction.p_pneumonia >= prediction.threshold):
        # --target pneumonia on a film called normal: a map 4-400x weaker than a pneumonia film's drawn in full red
        # (an explain audit); each map is scaled to its own maximum
        lines.append(f"the call is {prediction.label}: a map for a class it did not call, scaled to its own maximum")
    return lines


def _font(image: Image.Image) -> tuple[ImageFont.ImageFont, int, int]:
    """The caption font scaled to the image, its size and the padding around text."""
    size = max(11, min(image.size) // 28)
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    return font, size, max(3, size // 3)


def wrap(lines: list[str], font: ImageFont.ImageFont, width: float) -> list[str]:
    """``lines`` broken at spaces so that each fits ``width`` pixels in ``font`` (a word longer than that stays whole):
    a long no-verdict reason was cut off at the image's edge, "map for audit only" with it."""
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    out = []
    for line in lines:
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if current and measure.textlength(trial, font=font) > width:
                out.append(current)
                current = word
            else:
                current = trial
        out.append(current)
    return out


def draw_caption(image: Image.Image, lines: list[str]) -> Image.Image:
    """Write ``lines`` at the top left on a dark box (font scaled to the image width; wrapped to it)."""
    font, _, pad = _font(image)
    draw = ImageDraw.Draw(image)
    text = "\n".join(wrap(lines, font, image.width - 2 * pad))
    _, _, right, bottom = draw.multiline_textbbox((pad, pad), text, font=font, spacing=pad // 2)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.multiline_text((pad, pad), text, fill=(255, 255, 255), font=font, spacing=pad // 2)
    return image


BAR_LABEL = "colour bar 0 ... 1: evidence relative to the strongest in this image"
BAR_LABELS = {"integrated_gradients": "colour bar 0 ... 1: attribution relative to this image's 99.5th percentile "
                                      "(above it: 1)"}  # (an explain audit: it said "the strongest")
# what 1 on the bar was before scaling (each map is scaled to its own maximum; a weak map was drawn as red as a strong
# one and nothing kept how strong it was: an explain audit)
SCALE_UNITS = {"gradcam": "1 = {:.3g} unscaled Grad-CAM", "gradcam++": "1 = {:.3g} unscaled Grad-CAM++",
               "occlusion": "1 = a drop of {:.3g} in the log-odds", "integrated_gradients": "1 = {:.3g} log-odds a pixel"}


def bar_label(method: str, scale: float | None = None) -> str:
    """What the colour bar means for ``method``, with the unscaled value drawn as 1 when ``scale`` is known."""
    label = BAR_LABELS.get(method, BAR_LABEL)
    return label if scale is None else f"{label}; {SCALE_UNITS.get(method, '1 = {:.3g}').format(scale)}"


def with_band(image: Image.Image, lines: list[str], bar_text: str = BAR_LABEL) -> Image.Image:
    """``image`` below a dark band holding ``lines``, what the colour bar means (``bar_text``: the map is scaled to
    [0, 1] per image) and the bar; the image's pixels are left as they are. The bar's words are wrapped with the
    caption (beside the bar they ran past the edge of images under ~450 px: an explain audit)."""
    font, size, pad = _font(image)
    measure = ImageDraw.Draw(image)
    text = "\n".join(wrap([*lines, bar_text], font, image.width - 2 * pad))
    _, _, _, text_bottom = measure.multiline_textbbox((pad, pad), text, font=font, spacing=pad // 2)
    bar_top, bar_height = text_bottom + pad, max(6, size * 2 // 3)
    band = bar_top + bar_height + pad
    out = Image.new("RGB", (image.width, image.height + band), (0, 0, 0))
    out.paste(image, (0, band))
    draw = ImageDraw.Draw(out)
    draw.multiline_text((pad, pad), text, fill=(255, 255, 255), font=font, spacing=pad // 2)
    bar_width = max(16, min(image.width // 3, image.width - 2 * pad))
    ramp = np.repeat(np.linspace(0.0, 1.0, bar_width, dtype=np.float32)[None], bar_height, axis=0)
    out.paste(Image.fromarray(colorize(ramp)), (pad, bar_top))
    return out


def overlay_image(gray: np.ndarray, heat: np.ndarray, prediction: PredictionLike | None = None, *,
                  method: str = "gradcam", toward: str | None = None, max_side: int | None = None,
                  band: bool = False, detail: str | None = None,
                  box: tuple[int, int, int, int] | None = None, scale: float | None = None) -> Image.Image:
    """RGB overlay of ``heat`` (same H x W as ``gray``), optionally shrunk to ``max_side``, with the caption: on the
    image (its geometry kept), or with ``band`` in a band above it, with a colour bar. ``box``: the crop (top, left,
    height, width) the model saw, outlined (outside it, the film the model never saw looked like "no evidence": an
    explain audit). ``scale``: the unscaled value drawn as 1, said under the band's colour bar."""
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ConfigError(f"max_side must be None or an integer >= 1, got {max_side!r}")
    image = Image.fromarray(blend(gray, heat))
    if box is not None:
        top, left, height, width = box
        ImageDraw.Draw(image).rectangle((left, top, left + width - 1, top + height - 1), outline=(255, 255, 255),
                                        width=max(1, min(image.size) // 200))
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    if prediction is None:
        return image
    lines = caption_lines(prediction, method=method, toward=toward, detail=detail) + (
        ["outlined: the part of the film the model saw (its crop)"] if box is not None else [])
    return with_band(image, lines, bar_label(method, scale)) if band else draw_caption(image, lines)
