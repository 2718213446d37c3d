"""Sanity check for saliency maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", model randomization).

A "trained" model is built in seconds: EfficientNet-Lite0 with its real ImageNet weights and a logistic-regression
probe head fitted on 60 real training radiographs. Its Grad-CAM maps on real test radiographs must differ clearly
from those of the same architecture with every weight re-initialised (mean |Spearman rho| < 0.5), while a positive
control (the same trained model on the images plus +-3 grey levels of noise) must stay similar: so the rank
correlation can detect similarity, and a low value means the maps depend on what the model learned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression

from pneumo.data.decode import load_image
from pneumo.data.preprocess import prepare
from pneumo.explain.cam import cam_maps
from pneumo.explain.embeddings import model_features
from pneumo.models import PneumoNet, create

SIZE = 224


def _load(root: Path, paths: list[str]) -> np.ndarray:
    return np.stack([prepare(load_image((root / p).read_bytes(), target=SIZE), size=SIZE) for p in paths])


def _rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho per map pair; a constant map (e.g. all zero) shares no ranking: rho = 0."""
    return np.array([0.0 if np.ptp(x) == 0 or np.ptp(y) == 0 else spearmanr(x.ravel(), y.ravel())[0]
                     for x, y in zip(a, b, strict=True)])


def _randomized(model: PneumoNet) -> PneumoNet:
    """The same architecture with every layer re-initialised (conv/linear weights, BN affine and statistics)."""
    torch.manual_seed(0)
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if module is not clone and hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return clone.eval()


@pytest.fixture(scope="module")
def trained_setup(full_data: Path, pick: Callable[..., list[str]]) -> tuple[PneumoNet, np.ndarray, np.ndarray]:
    """(trained model, uint8 test images, their Grad-CAM maps)."""
    x_train = _load(full_data, pick(split="train", per_class=30))
    y_train = np.repeat([0, 1], 30)
    x_test = _load(full_data, pick(split="test", per_class=6))
    model = create("efficientnet_lite0", num_classes=2, weights="imagenet").eval()
    probe = LogisticRegression(C=0.5, max_iter=2000).fit(model_features(model, x_train), y_train)
    with torch.no_grad():  # logits [-s/2, s/2] with s the probe's score: the margin is exactly s
        w = torch.as_tensor(probe.coef_[0], dtype=torch.float32)
        b = float(probe.intercept_[0])
        model.head.weight.copy_(torch.stack([-w / 2, w / 2]))
        model.head.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return model, x_test, cam_maps(model, x_test)


def test_gradcam_of_a_trained_model_differs_from_a_randomized_copy(
        trained_setup: tuple[PneumoNet, np.ndarray, np.ndarray]) -> None:
    model, images, maps = trained_setup
    rho = _rank_correlations(maps, cam_maps(_randomized(model), images))
    assert np.abs(rho).mean() < 0.5, rho


def test_gradcam_of_a_trained_model_is_stable_under_slight_noise(
        trained_setup: tuple[PneumoNet, np.ndarray, np.ndarray]) -> None:
    model, images, maps = trained_setup
    noise = np.random.default_rng(0).integers(-3, 4, size=images.shape)
    noisy = np.clip(images.astype(int) + noise, 0, 255).astype(np.uint8)
    rho = _rank_correlations(maps, cam_maps(model, noisy))
    assert rho.mean() > 0.7, rho
