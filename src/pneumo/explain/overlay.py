"""Heatmap overlays on the original image, safe output names, and the per-image writer used by predict/explain.

Colours: turbo, blended in proportion to the map (alpha = 0.6 x map), so regions without evidence show the plain
radiograph. Text: the predicted label, P(pneumonia), the threshold and what the map shows.
"""

from __future__ import annotations

import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pneumo import atomic
from pneumo.errors import ConfigError
from pneumo.explain.cam import explain_image

if TYPE_CHECKING:
    from pneumo.infer.predictor import Prediction, Predictor

METHOD_TAGS = {"gradcam": "cam", "gradcam++": "campp", "occlusion": "occlusion", "integrated_gradients": "ig"}
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "occlusion": "Occlusion",
                 "integrated_gradients": "Integrated gradients"}
MAX_STEM = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(path: str | os.PathLike) -> str:
    """A file-name-safe stem: the last path component without suffix, odd characters -> ``_``, no leading dots."""
    stem = Path(str(path).replace("\\", "/")).stem
    stem = _UNSAFE.sub("_", stem).lstrip(".")[:MAX_STEM].strip("_")
    return stem or "image"


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic.write_bytes(path, data)


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


def caption_lines(prediction: Prediction, *, method: str = "gradcam", toward: str | None = None) -> list[str]:
    lines = [f"{prediction.label}   P(pneumonia) {prediction.p_pneumonia:.2f}   threshold {prediction.threshold:.2f}"]
    lines.append(f"{METHOD_TITLES.get(method, method)}: evidence for {toward or prediction.label}")
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


def overlay_image(gray: np.ndarray, heat: np.ndarray, prediction: Prediction | None = None, *,
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


@dataclass
class Written:
    """What ``HeatmapWriter.write`` produced for one input."""

    source: str
    overlay: Path
    raw_map: Path
    prediction: Prediction


class HeatmapWriter:
    """Writes ``<stem>.<tag>.png`` (overlay) and ``<stem>.<tag>.npy`` (float32 map, original geometry) per image.

    ``tag`` is ``cam`` for Grad-CAM (``campp``, ``occlusion``, ``ig`` for the others). Names come from the input
    file stem with odd characters replaced; two inputs with the same stem get ``-2``, ``-3`` ... in input order.
    Nothing is written outside ``out_dir``.

    Args:
        predictor: a torch-backend ``Predictor``.
        out_dir: the output folder (created).
        method: explanation method.
        layer: module to hook for CAM methods.
        target: ``predicted`` or ``pneumonia`` (see ``explain_image``).
        window: occlusion window.
        stride: occlusion stride.
    """

    def __init__(self, predictor: Predictor, out_dir: str | os.PathLike, *, method: str = "gradcam",
                 layer: str | None = None, target: str = "predicted", window: int = 32, stride: int = 16) -> None:
        from pneumo.explain.cam import CAM_METHODS, METHODS, resolve_layer, torch_model_of

        if method not in METHODS:
            raise ConfigError(f"unknown explanation method {method!r}; choose {', '.join(METHODS)}")
        if layer is not None and method not in CAM_METHODS:
            raise ConfigError(f"--layer applies to {' and '.join(CAM_METHODS)} only, not {method}")
        model = torch_model_of(predictor)
        if layer is not None:  # fail before the first image
            resolve_layer(model, layer)
        if method == "occlusion":
            from pneumo.explain.occlusion import window_starts

            window_starts(int(predictor.size), window, stride)
        self.predictor = predictor
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.method, self.layer, self.target = method, layer, target
        self.window, self.stride = window, stride
        self.tag = METHOD_TAGS[method]
        self._used: set[str] = set()

    def _name(self, path: str | os.PathLike) -> str:
        stem = safe_stem(path)
        name, n = stem, 1
        while name.lower() in self._used:
            n += 1
            name = f"{stem}-{n}"
        self._used.add(name.lower())
        return name

    def write(self, path: str | os.PathLike, gray: np.ndarray, prediction: Prediction | None = None) -> Path:
        """Explain the original uint8 gray image ``gray`` read from ``path``; returns the overlay PNG path."""
        return self.write_result(path, gray, prediction).overlay

    def write_result(self, path: str | os.PathLike, gray: np.ndarray,
                     prediction: Prediction | None = None) -> Written:
        """Like ``write`` but returns both paths and the prediction."""
        result = explain_image(self.predictor, gray, method=self.method, layer=self.layer, target=self.target,
                               prediction=prediction, window=self.window, stride=self.stride)
        name = self._name(path)
        root = self.out_dir.resolve()
        overlay_path = root / f"{name}.{self.tag}.png"
        npy_path = root / f"{name}.{self.tag}.npy"
        if overlay_path.parent != root or npy_path.parent != root:  # cannot happen with safe_stem; belt and braces
            raise ConfigError(f"refusing to write outside {root}: {name!r}")
        image = overlay_image(gray, result.map_original, result.prediction, method=self.method, toward=result.toward)
        write_bytes_atomic(npy_path, npy_bytes(result.map_original.astype(np.float32)))
        write_bytes_atomic(overlay_path, png_bytes(image))
        return Written(source=str(path), overlay=overlay_path, raw_map=npy_path, prediction=result.prediction)


def write_contact_sheet(out_dir: str | os.PathLike, written: list[Written], *, title: str = "pneumo explain",
                        thumb_side: int = 256) -> Path:
    """``out_dir/index.html``: a grid of overlay thumbnails (``out_dir/thumbs/``) with label and probability."""
    out_dir = Path(out_dir).resolve()
    cells = []
    for item in written:
        thumb = out_dir / "thumbs" / item.overlay.name
        with Image.open(item.overlay) as img:
            img.thumbnail((thumb_side, thumb_side), Image.Resampling.BILINEAR)
            write_bytes_atomic(thumb, png_bytes(img.convert("RGB")))
        p = item.prediction
        caption = f"{p.label} · P(pneumonia) {p.p_pneumonia:.2f} (threshold {p.threshold:.2f})"
        cells.append(
            f"<figure><a href='{_href(item.overlay, out_dir)}'><img src='{_href(thumb, out_dir)}' alt='' "
            f"loading='lazy'></a><figcaption><b>{html.escape(Path(item.source).name)}</b><br>"
            f"{html.escape(caption)}</figcaption></figure>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font:14px system-ui,sans-serif;margin:24px;color:#1d2430}"
            "main{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;width:" + str(thumb_side) + "px}"
            "img{max-width:100%;border:1px solid #dde2ea}figcaption{color:#5b6575;word-break:break-all}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><p>{len(written)} image(s). Research use only, not a "
            f"medical device.</p><main>{''.join(cells)}</main></body></html>\n")
    return write_bytes_atomic(out_dir / "index.html", page.encode("utf-8"))


def _href(path: Path, root: Path) -> str:
    from urllib.parse import quote

    return html.escape(quote(path.relative_to(root).as_posix()), quote=True)
