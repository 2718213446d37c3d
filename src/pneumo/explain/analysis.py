"""The run report's analysis blocks: the Grad-CAM shortcut indicator, the most confident errors, embeddings,
first-layer filters and activation maps. `analysis_sections` fits the ``analysis`` hook of
``pneumo.evaluate.runner.evaluate_run``: the caller above both layers (the CLI) passes it in.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from pneumo import atomic
from pneumo.errors import ConfigError
from pneumo.explain.cam import cam_maps, default_layer_name
from pneumo.explain.embeddings import embedding_figures, subsample
from pneumo.explain.filters import activations_figure, confident_errors_gallery, filters_figure
from pneumo.explain.shortcut import region_masks, shortcut_stats, shortcut_table_rows
from pneumo.templates import escape, figure, fmt_threshold, table
from pneumo.templates.figures import new_figure, save_png

log = logging.getLogger(__name__)
Section = tuple[str, str]


@dataclass
class _TestSet:
    run_dir: Path
    fig_dir: Path
    model: nn.Module
    images: np.ndarray
    y: np.ndarray
    subtypes: np.ndarray
    probs: np.ndarray
    threshold: float
    class_names: list[str]
    max_cam: int
    max_embed: int | None
    seed: int
    before_inpainting: np.ndarray | None = None

    @property
    def class_labels(self) -> np.ndarray:
        return np.asarray(self.class_names)[self.y]


def analysis_sections(run_dir: str | os.PathLike, model: nn.Module, meta: dict, images_test: np.ndarray,
                      y_test: Sequence[int] | np.ndarray, subtypes_test: Sequence[str], probs_test: np.ndarray,
                      threshold: float, class_names: Sequence[str], *, max_cam: int = 96,
                      max_embed: int | None = None, seed: int = 0,
                      before_inpainting: np.ndarray | None = None) -> list[Section]:
    """The report's analysis blocks; PNGs go to ``run_dir/figures/`` and are linked relative to ``run_dir``.

    Sections: Grad-CAM shortcut indicator (on a seeded class-stratified subsample of ``max_cam`` test images),
    the most confident errors with Grad-CAM, PCA/t-SNE of pixels and of learned features, first-layer filters and
    activation maps. A section that fails is replaced by a one-line note (logged), the others still come.

    Args:
        run_dir: the run folder (holds report.html).
        model: the trained model (CPU is fine).
        meta: the checkpoint sidecar (used for the caption: architecture, input size).
        images_test: uint8 ``(N, S, S)`` preprocessed test images.
        y_test: class index per image (0 = normal).
        subtypes_test: normal / bacteria / virus per image.
        probs_test: P(pneumonia) per image.
        threshold: the validation-chosen threshold on P(pneumonia).
        class_names: names of the class indices.
        max_cam: Grad-CAM maps for the shortcut indicator (bounded for CPU time).
        max_embed: images in the PCA/t-SNE figures (None: all).
        seed: subsample and t-SNE seed.
        before_inpainting: the same test images preprocessed without the in-painting of burnt-in markers and text
            (a model that in-paints them): the shortcut check looks for markers where they were, not on the patches
            the model saw.
    """
    run_dir = Path(run_dir)
    n = len(images_test)
    if not len(y_test) == len(subtypes_test) == len(probs_test) == n:
        raise ConfigError(f"analysis needs one label, subtype and probability per image: {n} images, "
                          f"{len(y_test)} labels, {len(subtypes_test)} subtypes, {len(probs_test)} probabilities")
    data = _TestSet(run_dir=run_dir, fig_dir=run_dir / "figures", model=model, images=np.asarray(images_test),
                    y=np.asarray(y_test, dtype=int), subtypes=np.asarray(subtypes_test, dtype=str),
                    probs=np.asarray(probs_test, dtype=float), threshold=float(threshold),
                    class_names=list(class_names), max_cam=max_cam, max_embed=max_embed, seed=seed,
                    before_inpainting=None if before_inpainting is None else np.asarray(before_inpainting))
    builders: list[tuple[str, Callable[[_TestSet], str]]] = [
        ("Where the model looks: Grad-CAM shortcut indicator", _shortcut_section),
        ("Most confident errors (Grad-CAM)", _errors_section),
        ("Embeddings: raw pixels vs learned features", _embedding_section),
        ("First-layer filters and activation maps", _filters_section),
    ]
    sections = []
    for title, build in builders:
        start = time.perf_counter()
        try:
            body = build(data)
        except Exception as exc:  # noqa: BLE001 - one figure must not cost the others or the report
            log.warning("analysis section %r skipped: %s: %s", title, type(exc).__name__, exc)
            body = f"<p>Not available: {escape(type(exc).__name__)}: {escape(exc)}</p>"
        log.info("analysis: %s in %.1f s", title, time.perf_counter() - start)
        sections.append((title, body))
    return sections


def _times(ratio: float | None) -> str:
    """A saliency-to-area ratio as shown: ``1.23x``, or ``n/a`` where no image had the region."""
    return "n/a" if ratio is None or not np.isfinite(ratio) else f"{ratio:.2f}x"


def _shortcut_section(data: _TestSet) -> str:
    rows = subsample(data.y, data.max_cam, seed=data.seed)
    maps = cam_maps(data.model, data.images[rows], toward_pneumonia=data.probs[rows] >= data.threshold)
    found_on = data.images if data.before_inpainting is None else data.before_inpainting  # markers where they were
    stats = shortcut_stats(maps, data.y[rows], data.class_names, images=found_on[rows])
    stats["images"] = len(rows)
    stats["layer"] = default_layer_name(data.model)
    atomic.write_bytes(data.fig_dir / "shortcut_stats.json", json.dumps(atomic.to_jsonable(stats), indent=2).encode())
    mean_path = _mean_map_figure(maps, data.y[rows], data.class_names, data.fig_dir / "gradcam_mean.png")
    header, table_rows = shortcut_table_rows(stats)
    sampled = (f"a seeded class-stratified subsample of {len(rows)} of the {len(data.y)} test images"
               if len(rows) < len(data.y) else f"all {len(rows)} test images")
    regions = stats["regions"]
    verdict = stats["verdict"]
    verdict_html = (f"<p><b>Shortcut check: {'FLAGGED' if verdict['flagged'] else 'not flagged'}.</b> "
                    + escape("; ".join(verdict["reasons"]) if verdict["reasons"] else
                             f"saliency on detected markers/text {_times(verdict['markers_vs_area'])} their area "
                             f"(on {verdict['markers_images']} images with a detected marker), on corner text "
                             f"{_times(verdict['corner_text_vs_area'])} (on {verdict['corner_text_images']} images), "
                             f"outside the lung field {_times(verdict['outside_lungs_vs_area'])} its area")
                    + ". Flagged at 2x on markers or corner text, or 1x outside the lungs (no preference for the "
                      f"lungs). Lung fields segmented on {verdict['lungs_segmented']} of "
                      f"{verdict['outside_lungs_images']} images, a two-ellipse template on the others"
                    + ("" if verdict["outside_lungs_judged"] else ": too few to judge the saliency outside the lungs")
                    + ".</p>")
    return (
        verdict_html
        + f"<p>Grad-CAM ({escape(stats['layer'])}, evidence for the predicted label) on {sampled}. Share of the "
        f"saliency mass in the <b>border</b> band ({escape(regions['border']['definition'])}), the <b>corners</b> "
        f"({escape(regions['corners']['definition'])}) and the <b>center</b> "
        f"({escape(regions['center']['definition'])}), on the <b>markers</b> and the <b>corner text</b> detected on each "
        "image and <b>outside the lungs</b> (each image's lung field), averaged per true class; in brackets the share divided by "
        "the region's area (1.00x = no preference). Mass concentrated in the border or corners (well above 1x) "
        "hints at a shortcut: text markers, collimation edges or padding rather than the lungs.</p>"
        + table(header, table_rows, caption="Saliency mass share per region (model input geometry)")
        + figure(mean_path, "Mean Grad-CAM map per true class; dashed: the border band (white), corner squares "
                             "(magenta) and center box (black)", relative_to=data.run_dir)
    )


def _mean_map_figure(maps: np.ndarray, y: np.ndarray, class_names: list[str], path: Path) -> Path:
    present = [i for i in range(len(class_names)) if (y == i).any()]
    masks = region_masks(maps.shape[-1])
    fig = new_figure(2.8 * len(present), 3.0)
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, i in zip(axes, present, strict=True):
        ax.imshow(maps[y == i].mean(axis=0), cmap="turbo", vmin=0, vmax=1)
        for name, color in (("border", "white"), ("corners", "magenta"), ("center", "black")):
            ax.contour(masks[name].astype(float), levels=[0.5], colors=color, linewidths=0.8, linestyles="--")
        ax.set_title(f"{class_names[i]} (n={(y == i).sum()})", fontsize=9)
        ax.axis("off")
    return save_png(fig, path)


def _errors_section(data: _TestSet) -> str:
    path, n_fp, n_fn = confident_errors_gallery(data.model, data.images, data.y, data.probs, data.threshold,
                                                data.fig_dir / "confident_errors.png", subtypes=data.subtypes)
    if path is None:
        return "<p>No test errors at this threshold.</p>"
    return figure(path, f"The {n_fp} most confident false positives (top) and {n_fn} most confident false "
                         f"negatives (bottom) at threshold {fmt_threshold(data.threshold)}, with Grad-CAM for the predicted "
                         "label", relative_to=data.run_dir)


def _embedding_section(data: _TestSet) -> str:
    figures = embedding_figures(data.fig_dir, data.model, data.images, data.class_labels, data.subtypes,
                                max_points=data.max_embed, seed=data.seed)
    return "".join(figure(path, caption, relative_to=data.run_dir) for path, caption in figures)


def _filters_section(data: _TestSet) -> str:
    parts = [figure(filters_figure(data.model, data.fig_dir / "first_layer_filters.png"),
                     "First conv layer's filters as applied to the gray image", relative_to=data.run_dir)]
    picks = [int(np.flatnonzero(data.y == i)[0]) for i in (0, 1) if (data.y == i).any()]
    titles = [f"{data.class_labels[i]} ({data.subtypes[i]})\nP(pneumonia) {data.probs[i]:.2f}" for i in picks]
    path = activations_figure(data.model, data.images[picks], titles, data.fig_dir / "activation_maps.png")
    parts.append(figure(path, "Mean absolute activation of a few layers, input to output, for the first normal "
                               "and the first pneumonia test image", relative_to=data.run_dir))
    return "".join(parts)


def error_gallery(out: Path, model: nn.Module | None, images: np.ndarray, y: np.ndarray, p: np.ndarray,
                  threshold: float, *, subtypes: list[str] | None = None, members: int = 1) -> Section:
    """The external-validation report's section: Grad-CAM of the most confident errors at ``threshold``, drawn into
    ``out/figures`` (`evaluate.external.evaluate_external` takes it as its ``analysis`` hook). A model without PyTorch
    weights, or a figure that fails, gets a line saying so: a figure must not cost the evaluation."""
    title = "Most confident errors (Grad-CAM)"
    if model is None:
        return title, "<p>Not available: the model has no PyTorch weights.</p>"
    try:
        path, n_fp, n_fn = confident_errors_gallery(model, images, y, p, threshold,
                                                    out / "figures" / "confident_errors.png", subtypes=subtypes)
    except Exception as exc:  # noqa: BLE001 - a figure must not cost the evaluation
        log.warning("error gallery skipped: %s: %s", type(exc).__name__, exc)
        return title, f"<p>Not available: {escape(type(exc).__name__)}: {escape(exc)}</p>"
    if path is None:
        return title, "<p>No errors at this threshold.</p>"
    member = " (Grad-CAM of the first member)" if members > 1 else ""
    return title, figure(path, f"The {n_fp} most confident false positive{'s' * (n_fp != 1)} (top) and {n_fn} false "
                               f"negative{'s' * (n_fn != 1)} "
                               f"(bottom) at threshold {fmt_threshold(threshold)}{member}", relative_to=out)
