"""What the network computes: first-layer filters, activation maps of a few layers, and its most confident errors.

Activations are captured with forward hooks inside :func:`capture_activations`, removed on exit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumo.errors import ModelError
from pneumo.explain.cam import cam_maps, layer_names
from pneumo.explain.render import blend
from pneumo.explain.target import to_tensor
from pneumo.templates import fmt_threshold
from pneumo.templates.figures import new_figure, save_png


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first ``Conv2d`` in module order (the stem)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ModelError(f"{type(model).__name__} has no Conv2d layer")


def filters_figure(model: nn.Module, path: str | os.PathLike, *, max_filters: int = 64) -> Path:
    """The first conv layer's kernels as a grid, as they act on the gray image.

    A 3-channel stem sees the gray channel repeated, so its effective kernel is the sum over input channels. Each
    kernel has its own symmetric colour scale (blue negative, red positive).
    """
    name, conv = first_conv(model)
    weights = conv.weight.detach().float().cpu().numpy().sum(axis=1)[:max_filters]
    cols = min(8, len(weights))
    rows = math.ceil(len(weights) / cols)
    fig = new_figure(1.1 * cols, 1.1 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, kernel in zip(axes.flat, weights, strict=False):
        scale = float(np.abs(kernel).max()) or 1.0
        ax.imshow(kernel, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    k = conv.kernel_size
    fig.suptitle(f"{name}: {len(weights)} of {conv.out_channels} filters, {k[0]}x{k[1]}, stride {conv.stride[0]}",
                 fontsize=10)
    return save_png(fig, path)


@contextmanager
def capture_activations(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on the named modules; the dict fills with their (detached) outputs; hooks removed on exit."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ModelError(f"no module {missing[0]!r} in {type(model).__name__}")
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str):
        def store(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                captured[name] = output.detach()
        return store

    try:
        for n in names:
            handles.append(modules[n].register_forward_hook(hook(n)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def activation_layers(model: nn.Module, size: int, *, count: int = 4) -> list[str]:
    """The last layer computed at each of the ``count`` coarsest feature-map resolutions, in execution order
    (for EfficientNet-Lite0 at 224: the 56, 28, 14 and 7 px maps)."""

    candidates = layer_names(model)
    leaves = [n for n in candidates if not any(o.startswith(n + ".") for o in candidates)]
    was_training = model.training
    model.eval()
    try:
        with capture_activations(model, leaves) as captured, torch.inference_mode():
            model(to_tensor(np.zeros((1, size, size), np.uint8), model))
    finally:
        model.train(was_training)
    last_at: dict[tuple[int, int], str] = {}
    for name, out in captured.items():  # insertion order = execution order
        if out.ndim == 4:
            last_at.pop(tuple(out.shape[-2:]), None)
            last_at[tuple(out.shape[-2:])] = name
    return list(last_at.values())[-count:]


def activations_figure(model: nn.Module, images: np.ndarray, titles: Sequence[str], path: str | os.PathLike, *,
                       layers: Sequence[str] | None = None) -> Path:
    """One row per image: the input, then the mean absolute activation over channels of each layer."""

    images = np.asarray(images)
    layers = list(layers) if layers is not None else activation_layers(model, images.shape[-1])
    was_training = model.training
    model.eval()
    try:
        with capture_activations(model, layers) as captured, torch.inference_mode():
            model(to_tensor(images, model))
            maps = {n: captured[n].abs().mean(dim=1).float().cpu().numpy() for n in layers if n in captured}
    finally:
        model.train(was_training)
    cols = 1 + len(maps)
    fig = new_figure(2.0 * cols, 2.2 * len(images))
    axes = fig.subplots(len(images), cols, squeeze=False)
    for row, (img, title) in enumerate(zip(images, titles, strict=True)):
        axes[row, 0].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(title, fontsize=9)
        for col, (name, act) in enumerate(maps.items(), start=1):
            axes[row, col].imshow(act[row], cmap="viridis")
            axes[row, col].set_title(f"{name.removeprefix('backbone.')}\n{act.shape[1]}x{act.shape[2]}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return save_png(fig, path)


def confident_errors(y_positive: np.ndarray, probs: np.ndarray, threshold: float, *, k: int = 4
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` most confident false positives (highest p) and false negatives (lowest p)."""
    y_positive = np.asarray(y_positive, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs >= threshold
    fp = np.flatnonzero(predicted & ~y_positive)
    fn = np.flatnonzero(~predicted & y_positive)
    return fp[np.argsort(-probs[fp], kind="stable")][:k], fn[np.argsort(probs[fn], kind="stable")][:k]


def confident_errors_gallery(model: nn.Module, images: np.ndarray, y: np.ndarray, probs: np.ndarray,
                             threshold: float, path: str | os.PathLike, *, subtypes: Sequence[str] | None = None,
                             k: int = 4, layer: str | None = None) -> tuple[Path | None, int, int]:
    """A 2 x k grid: the most confident false positives (top) and false negatives (bottom) with Grad-CAM overlays.

    Each map shows the evidence for the (wrong) predicted label. ``y`` holds class indices (0 = normal).

    Returns:
        ``(path or None when there is no error, number of false positives shown, false negatives shown)``.
    """

    fp, fn = confident_errors(np.asarray(y) != 0, probs, threshold, k=k)
    if len(fp) + len(fn) == 0:
        return None, 0, 0
    picks = np.concatenate([fp, fn]).astype(int)
    images = np.asarray(images)
    maps = cam_maps(model, images[picks], layer=layer, toward_pneumonia=np.asarray(probs)[picks] >= threshold)
    cols = max(len(fp), len(fn))
    fig = new_figure(2.3 * cols, 5.2)
    axes = fig.subplots(2, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, group, kind in ((0, fp, "false positive"), (1, fn, "false negative")):
        for col, index in enumerate(group):
            heat = maps[list(picks).index(index)]
            axes[row, col].imshow(blend(images[index], heat))
            sub = f" ({subtypes[index]})" if subtypes is not None else ""
            axes[row, col].set_title(f"{kind}{sub}\nP(pneumonia) {probs[index]:.3f}", fontsize=8)
    fig.suptitle(f"Most confident errors at threshold {fmt_threshold(threshold)} (Grad-CAM: evidence for the predicted label)",
                 fontsize=10)
    return save_png(fig, path), len(fp), len(fn)
