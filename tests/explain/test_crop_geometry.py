"""Explanations of a model trained on cropped inputs (``data.crop``) land in the crop box of the original image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sidecars import signed

from pneumo.data.crop import crop_box
from pneumo.explain.cam import explain_image, to_original_geometry
from pneumo.infer.predictor import Predictor
from pneumo.models import create
from pneumo.models.checkpoint import save_checkpoint


def test_a_map_lands_in_the_crop_box_and_is_zero_outside() -> None:
    size, box = 32, (20, 40, 60, 120)  # top, left, height, width inside a 100 x 200 original
    map_model = np.zeros((size, size), np.float32)
    map_model[:, : size // 2] = 1.0  # the left half of the model input
    out = to_original_geometry(map_model, 100, 200, box=box)
    assert out.shape == (100, 200)
    assert out[:20].max() == 0 and out[80:].max() == 0 and out[:, :40].max() == 0 and out[:, 160:].max() == 0
    assert out[22:78, 42:95].min() > 0.99  # the left half of the box
    assert out[22:78, 105:158].max() < 0.01  # its right half


def test_a_letterboxed_map_is_unpadded_within_the_crop_box() -> None:
    size, box = 64, (10, 0, 40, 80)  # the crop is 2:1, so it fills rows 16..47 of the letterboxed input
    map_model = np.zeros((size, size), np.float32)
    map_model[16:48] = 1.0
    out = to_original_geometry(map_model, 60, 80, policy="letterbox", box=box)
    assert out[10:50].min() > 0.99 and out[:10].max() == 0 and out[50:].max() == 0


@pytest.fixture(scope="module")
def border_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    torch.manual_seed(0)
    model = create("scratch_cnn", num_classes=2, weights="none").eval()
    meta = {"classes": ["NORMAL", "PNEUMONIA"], "task": "binary", "input_size": 64, "resize_policy": "squash",
            "intensity": "none", "crop": "border:0.2", "threshold": 0.5, "temperature": 1.0}
    return Predictor(save_checkpoint(tmp_path_factory.mktemp("crop") / "model", model, meta))


def test_explain_image_places_the_map_in_the_predictors_crop_box(border_predictor: Predictor,
                                                                 real_grays: list[np.ndarray]) -> None:
    gray = real_grays[0]
    result = explain_image(border_predictor, gray, method="occlusion", window=16, stride=16)
    top, left, h, w = crop_box(gray, "border:0.2")[0]
    outside = np.ones(gray.shape, bool)
    outside[top : top + h, left : left + w] = False
    assert result.map_original.shape == gray.shape
    assert result.map_original[outside].max() == 0
    assert result.map_original[~outside].max() > 0
    expected = to_original_geometry(result.map_model, *gray.shape, box=(top, left, h, w))
    assert np.allclose(result.map_original, expected)
    # the overlay outlines the box and says so: outside it the film the model never saw looked like "no evidence"
    from pneumo.explain.render import overlay_image

    assert result.box == (top, left, h, w)
    plain = np.asarray(overlay_image(gray, result.map_original))
    drawn = np.asarray(overlay_image(gray, result.map_original, box=result.box))
    assert (drawn[top, left + 1 : left + w - 1] == 255).all() and (drawn[top + h // 2, left] == 255).all()
    assert np.array_equal(drawn[:top], plain[:top])  # nothing else drawn on the film


def test_the_predictor_feeds_the_model_the_cropped_image(border_predictor: Predictor,
                                                         real_grays: list[np.ndarray]) -> None:
    from pneumo.data.preprocess import prepare

    gray = real_grays[1]
    assert border_predictor.meta.crop == "border:0.2"
    assert np.array_equal(border_predictor.preprocess(gray), prepare(gray, size=64, crop="border:0.2"))
    assert not np.array_equal(border_predictor.preprocess(gray), prepare(gray, size=64))


def test_old_sidecars_without_a_crop_read_as_none(tmp_path: Path) -> None:
    model = create("scratch_cnn", num_classes=2, weights="none")
    sidecar = save_checkpoint(tmp_path / "m", model, {"input_size": 64})
    payload = json.loads(sidecar.read_text())
    payload.pop("crop", None)  # as written before the field existed
    sidecar.write_text(json.dumps(signed(payload)))
    assert Predictor(sidecar).meta.crop == "none"
