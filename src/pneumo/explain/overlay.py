"""The per-image writer used by predict/explain (overlay PNG + raw map per input, safe output names) and the
contact sheet of a folder of overlays."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from pneumo import __version__, atomic
from pneumo.errors import ConfigError
from pneumo.explain import CAM_METHODS, METHODS
from pneumo.explain.cam import explain_image, resolve_layer, torch_model_of
from pneumo.explain.occlusion import window_starts
from pneumo.explain.render import npy_bytes, overlay_image, png_bytes
from pneumo.explain.target import PredictionLike, PredictorLike
from pneumo.templates import fmt_threshold, render

METHOD_TAGS = {"gradcam": "cam", "gradcam++": "campp", "occlusion": "occlusion", "integrated_gradients": "ig"}
MAX_STEM = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(path: str | os.PathLike) -> str:
    """A file-name-safe stem: the last path component without suffix, odd characters -> ``_``, no leading dots."""
    stem = Path(str(path).replace("\\", "/")).stem
    stem = _UNSAFE.sub("_", stem).lstrip(".")[:MAX_STEM].strip("_")
    return stem or "image"


def heatmap_name(path: str | os.PathLike) -> str:
    """The one heat-map file name of `pneumo predict` and `pneumo explain`: the safe stem plus 8 hex digits of the
    absolute path's SHA-1 (the same input always gets the same name; two inputs with one stem never collide)."""
    digest = hashlib.sha1(str(Path(path).absolute()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe_stem(path)[:80]}-{digest}"


@dataclass
class Written:
    """What ``HeatmapWriter.write`` produced for one input."""

    source: str
    overlay: Path
    raw_map: Path
    prediction: PredictionLike
    scale: float | None = None  # the unscaled value the map draws as 1 (``ExplainResult.scale``)


class HeatmapWriter:
    """Writes ``<stem>.<tag>.png`` (overlay below a caption band with a colour bar) and ``<stem>.<tag>.npy``
    (float32 map, original geometry) per image.

    ``tag`` is ``cam`` for Grad-CAM (``campp``, ``occlusion``, ``ig`` for the others), then ``-pneumonia`` for that
    target and ``-<layer>`` for a layer given. Names come from the input
    file (`heatmap_name`: the stem with odd characters replaced, then 8 hex digits of the absolute path's SHA-1, so
    two inputs with one stem never collide).
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

    def __init__(self, predictor: PredictorLike, out_dir: str | os.PathLike, *, method: str = "gradcam",
                 layer: str | None = None, target: str = "predicted", window: int = 32, stride: int = 16,
                 flag: str = "--out") -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown explanation method {method!r}; choose {', '.join(METHODS)}")
        if layer is not None and method not in CAM_METHODS:
            raise ConfigError(f"--layer applies to {' and '.join(CAM_METHODS)} only, not {method}")
        if method != "occlusion" and (window, stride) != (32, 16):  # (they were ignored without a word)
            raise ConfigError(f"--window and --stride apply to occlusion only, not {method}")
        model = torch_model_of(predictor)
        if layer is not None:  # fail before the first image
            resolve_layer(model, layer)
        if method == "occlusion":
            window_starts(int(predictor.size), window, stride)
        self.predictor = predictor
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"{out_dir} is a file (or below one): heat maps go to a folder") from None
        except OSError as exc:  # (was the bare "[Errno 2] ...", naming no flag: an explain audit)
            raise ConfigError(f"{flag} {out_dir}: cannot make the folder ({exc.strerror or exc})") from None
        self.method, self.layer, self.target = method, layer, target
        self.window, self.stride = window, stride
        # another target or layer gets its own files (a second run into the same --out overwrote the first's)
        self.tag = METHOD_TAGS[method] + ("-pneumonia" if target == "pneumonia" else "") + (
            f"-{_UNSAFE.sub('_', layer)[:MAX_STEM]}" if layer else "") + (
            f"-w{window}s{stride}" if method == "occlusion" and (window, stride) != (32, 16) else "")
        # the settings that made the map, in its caption (another layer's map read exactly as the default's)
        self.detail = (f"window {window}, stride {stride} px" if method == "occlusion" else None)

    def write(self, path: str | os.PathLike, gray: np.ndarray, prediction: PredictionLike | None = None, *,
              prepared: np.ndarray | None = None) -> Path:
        """Explain the original uint8 gray image ``gray`` read from ``path`` (``prepared``: the model input it was
        scored on, see `explain_image`); returns the overlay PNG path (``<heatmap_name(path)>.<method tag>.png``)."""
        return self.write_result(path, gray, prediction, prepared=prepared).overlay

    def write_result(self, path: str | os.PathLike, gray: np.ndarray,
                     prediction: PredictionLike | None = None, *, prepared: np.ndarray | None = None) -> Written:
        """Like ``write`` but returns both paths and the prediction."""
        result = explain_image(self.predictor, gray, method=self.method, layer=self.layer, target=self.target,
                               prediction=prediction, window=self.window, stride=self.stride, prepared=prepared)
        name = heatmap_name(path)
        root = self.out_dir.resolve()
        overlay_path = root / f"{name}.{self.tag}.png"
        npy_path = root / f"{name}.{self.tag}.npy"
        if overlay_path.parent != root or npy_path.parent != root:  # cannot happen with safe_stem; belt and braces
            raise ConfigError(f"refusing to write outside {root}: {name!r}")
        detail = self.detail or (f"layer {result.layer}" if result.layer else None)
        image = overlay_image(gray, result.map_original, result.prediction, method=self.method, toward=result.toward,
                              band=True, detail=detail, box=result.box, scale=result.scale)
        atomic.write_bytes(npy_path, npy_bytes(result.map_original.astype(np.float32)))
        atomic.write_bytes(overlay_path, png_bytes(image, self._made_by(result.prediction, result.scale)))
        return Written(source=str(path), overlay=overlay_path, raw_map=npy_path, prediction=result.prediction,
                       scale=result.scale)


    def _made_by(self, prediction: PredictionLike, scale: float | None) -> dict[str, str]:
        """The overlay's tEXt chunks: the model, its operating point and the method (an audit-trail review: a map
        written into the same folder by another model replaced this one's under the same name, and nothing in the file
        said which model drew it), and the unscaled value the map draws as 1 (``pneumo:map_scale``; see
        ``ExplainResult.scale``)."""
        meta = self.predictor.meta
        return {"pneumo:model_id": str(getattr(meta, "model_id", "")), "pneumo:version": __version__,
                "pneumo:threshold": f"{prediction.threshold:.6g}",
                "pneumo:threshold_policy": str(getattr(meta, "threshold_policy", None)), "pneumo:method": self.tag,
                "pneumo:map_scale": f"{scale:.6g}" if scale is not None else ""}


def write_contact_sheet(out_dir: str | os.PathLike, written: list[Written], *, title: str = "pneumo explain",
                        thumb_side: int = 256, subtitle: str = "", failed: list[tuple[str, str]] = ()) -> Path:
    """``out_dir/index.html``: a grid of overlay thumbnails (``out_dir/thumbs/``) with label and probability, and the
    ``failed`` inputs by name with the reason (the sheet counted only the films it showed: an explain audit). Films
    without a verdict come first, then the rest by P(pneumonia), highest first (a reviewer of hundreds of maps
    looked for the positive calls in input order: a volume audit)."""
    out_dir = Path(out_dir).resolve()
    cells = []
    names = [Path(item.source).name for item in written]
    if len(set(names)) < len(names) and len(written) > 1:  # PACS exports: IM00001 in every series folder
        try:
            common = os.path.commonpath([os.path.abspath(item.source) for item in written])
            names = [os.path.relpath(os.path.abspath(item.source), common) for item in written]
        except ValueError:  # files on several drives (Windows): their full paths
            names = [os.path.abspath(item.source) for item in written]
    order = sorted(range(len(written)), key=lambda i: (getattr(written[i].prediction, "reason", None) is None,
                                                       -written[i].prediction.p_pneumonia))
    for item, name in ((written[i], names[i]) for i in order):
        thumb = out_dir / "thumbs" / item.overlay.name
        with Image.open(item.overlay) as img:
            img.thumbnail((thumb_side, thumb_side), Image.Resampling.BILINEAR)
            atomic.write_bytes(thumb, png_bytes(img.convert("RGB")))
        p = item.prediction
        cells.append({"href": _href(item.overlay, out_dir), "thumb": _href(thumb, out_dir),
                      "name": name,
                      "caption": f"{p.label} · P(pneumonia) {p.p_pneumonia:.3f} (threshold {fmt_threshold(p.threshold)})"
                      + (f" · map 1 = {item.scale:.3g}" if item.scale is not None else "")
                      + (f" · no verdict: {p.reason}; map for audit only" if getattr(p, "reason", None) else "")})
    page = render("contact_sheet.html.j2", title=title, subtitle=subtitle, cells=cells, thumb_side=thumb_side,
                  stamp="", failed=list(failed))
    return atomic.write_text(out_dir / "index.html", page)


def _href(path: Path, root: Path) -> str:
    return quote(path.relative_to(root).as_posix())


