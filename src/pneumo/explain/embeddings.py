"""PCA and t-SNE maps of the test images: raw pixels (downsampled) vs the model's learned features.

If the classes separate in the model's features but not in the pixels, the model learned something beyond global
brightness and size; if bacteria and virus mix, so will the 3-class predictions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pneumo.data.preprocess import to_unit
from pneumo.errors import ConfigError
from pneumo.explain.target import to_tensor
from pneumo.models.fast import ForwardFeatures, fast_inference
from pneumo.templates.figures import new_figure, save_png

CLASS_COLORS = {"NORMAL": "#1f77b4", "PNEUMONIA": "#d62728", "normal": "#1f77b4", "bacteria": "#d62728",
                "virus": "#ff7f0e"}
FALLBACK_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def pixel_features(images: np.ndarray, *, side: int = 32) -> np.ndarray:
    """uint8 ``(N, S, S)`` -> float32 ``(N, side * side)`` in [0, 1] (area-averaged downsampling)."""
    import cv2

    images = np.asarray(images)
    if images.ndim != 3:
        raise ConfigError(f"expected uint8 images (N, S, S), got shape {images.shape}")
    small = [cv2.resize(np.ascontiguousarray(img), (side, side), interpolation=cv2.INTER_AREA) for img in images]
    return to_unit(np.stack(small).reshape(len(images), -1))


def model_features(model: nn.Module, images: np.ndarray, *, batch_size: int = 32, fast: bool = True) -> np.ndarray:
    """Pooled features ``model.forward_features`` of uint8 ``(N, S, S)`` images -> float32 ``(N, F)``.

    ``fast``: on the CPU, a copy with its BatchNorms folded into its convolutions (``models.fast.fast_inference``).
    """

    if len(images) == 0:
        raise ConfigError("no images to compute features of")
    was_training = model.training
    model.eval()
    out = []
    try:
        first = to_tensor(np.asarray(images[:2]), model)
        run = fast_inference(model, first, features=True) if fast else ForwardFeatures(model)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = to_tensor(np.asarray(images[start : start + batch_size]), model)
                out.append(run(x).float().flatten(1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def pca_2d(features: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of the standardized features, and the share of the variance each holds."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    pca = PCA(n_components=2, random_state=seed)
    coords = pca.fit_transform(StandardScaler().fit_transform(np.asarray(features, dtype=np.float64)))
    return coords, pca.explained_variance_ratio_


def project(features: np.ndarray, *, method: str, seed: int = 0) -> np.ndarray:
    """2-D coordinates: ``pca`` (standardized features) or ``tsne`` (on the first 50 principal components)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    if method == "pca":
        return pca_2d(features, seed=seed)[0]
    z = StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))
    if method != "tsne":
        raise ConfigError(f"unknown projection {method!r}; choose pca or tsne")
    n_components = min(50, z.shape[0] - 1, z.shape[1])
    reduced = PCA(n_components=n_components, random_state=seed).fit_transform(z)
    perplexity = float(min(30, max(2, (len(z) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                max_iter=750).fit_transform(reduced)


def _scatter(ax, coords: np.ndarray, groups: Sequence[str], title: str) -> None:
    groups = np.asarray(groups)
    names = list(dict.fromkeys(groups.tolist()))
    for i, name in enumerate(names):
        pick = groups == name
        color = CLASS_COLORS.get(name, FALLBACK_COLORS[i % len(FALLBACK_COLORS)])
        ax.scatter(coords[pick, 0], coords[pick, 1], s=7, alpha=0.7, c=color, label=f"{name} ({pick.sum()})",
                   linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=2, loc="best", frameon=False)


def embedding_figure(coords: dict[str, np.ndarray], class_labels: Sequence[str], subtypes: Sequence[str],
                     path: str | os.PathLike, *, title: str) -> Path:
    """One row per projection (``coords``: name -> (N, 2)), coloured by class (left) and by subtype (right)."""
    fig = new_figure(8.0, 3.6 * len(coords))
    axes = fig.subplots(len(coords), 2, squeeze=False)
    for row, (name, xy) in enumerate(coords.items()):
        _scatter(axes[row, 0], xy, class_labels, f"{name}: by true class")
        _scatter(axes[row, 1], xy, subtypes, f"{name}: by true subtype")
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def embedding_figures(fig_dir: str | os.PathLike, model: nn.Module, images: np.ndarray,
                      class_labels: Sequence[str], subtypes: Sequence[str], *, max_points: int | None = None,
                      seed: int = 0) -> list[tuple[Path, str]]:
    """Write ``embedding_pixels.png`` and ``embedding_features.png``; returns ``(path, caption)`` pairs.

    Args:
        fig_dir: output folder.
        model: the trained model (``forward_features``).
        images: uint8 ``(N, S, S)`` preprocessed test images.
        class_labels: class name per image.
        subtypes: subtype per image (normal / bacteria / virus).
        max_points: a seeded, class-stratified subsample of at most this many images (None: all).
        seed: subsample and t-SNE seed.
    """
    fig_dir = Path(fig_dir)
    total = len(class_labels)
    rows = subsample(np.asarray(class_labels), max_points, seed=seed)
    note = (f"{len(rows)} of {total} test images (a seeded class-stratified subsample)" if len(rows) < total
            else f"all {total} test images")
    images = np.asarray(images)[rows]
    class_labels = np.asarray(class_labels)[rows]
    subtypes = np.asarray(subtypes)[rows]
    out = []
    for key, feats, what in (("pixels", pixel_features(images), "raw pixels (32 x 32)"),
                             ("features", model_features(model, images), "the model's pooled features")):
        xy, share = pca_2d(feats, seed=seed)
        pca_name = f"PCA (PC1 {share[0]:.1%}, PC2 {share[1]:.1%} of the variance)"
        coords = {pca_name: xy, "t-SNE": project(feats, method="tsne", seed=seed)}
        path = embedding_figure(coords, class_labels, subtypes, fig_dir / f"embedding_{key}.png",
                                title=f"PCA and t-SNE of {what}")
        caption = (f"PCA and t-SNE of {what}, {note}; the PCA plane holds {share.sum():.1%} of the variance; "
                   "colour = the true class (left) and the true subtype (right), from the labels.")
        out.append((path, caption))
    return out


def subsample(groups: np.ndarray, limit: int | None, *, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded subsample of ``limit`` rows, proportional per group."""
    n = len(groups)
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    names = sorted(set(groups.tolist()))
    counts = np.array([(groups == name).sum() for name in names])
    takes = np.floor(limit * counts / n).astype(int)
    for i in np.argsort(-(limit * counts / n - takes))[: limit - takes.sum()]:  # largest remainders
        takes[i] += 1
    picked = [rng.choice(np.flatnonzero(groups == name), size=take, replace=False) for name, take in zip(names, takes)]
    return np.sort(np.concatenate(picked))
