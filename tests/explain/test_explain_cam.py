"""Grad-CAM through the predictor: layer choice, hook hygiene, geometry, the overlay PNG."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.errors import ConfigError, ModelError
from pneumo.explain.cam import (
    cam_maps,
    cam_maps_and_peaks,
    explain_image,
    heatmap_overlay_png,
    layer_names,
    resolve_layer,
    to_original_geometry,
)
from pneumo.infer.predictor import Predictor


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_unknown_layer_name_raises_config_error_listing_valid_layers(predictor: Predictor) -> None:
    with pytest.raises(ConfigError) as err:
        explain_image(predictor, np.zeros((80, 100), np.uint8), layer="backbone.no_such_block")
    message = str(err.value)
    assert "no_such_block" in message and "\n" not in message
    for name in layer_names(predictor.torch_model):
        assert name in message
    assert "backbone.blocks.4" in message and "backbone.blocks.0" in message


def test_layer_names_can_omit_the_backbone_prefix(predictor: Predictor) -> None:
    name, module = resolve_layer(predictor.torch_model, "blocks.2")
    assert name == "backbone.blocks.2" and module is predictor.torch_model.backbone.blocks[2]


def test_a_layer_without_a_feature_map_is_refused_with_the_valid_names(predictor: Predictor) -> None:
    with pytest.raises(ConfigError, match="no 2-D feature map.*backbone.blocks.4"):
        explain_image(predictor, np.zeros((80, 100), np.uint8), layer="head")


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_explaining_leaves_no_hook_and_restores_training_mode_and_requires_grad(
        predictor: Predictor, real_grays: list[np.ndarray], method: str) -> None:
    model = predictor.torch_model
    model.train()
    model.head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = _hook_count(model)
    explain_image(predictor, real_grays[0], method=method)
    assert _hook_count(model) == before
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_hooks_are_removed_even_when_the_explanation_fails(predictor: Predictor) -> None:
    model = predictor.torch_model
    before = _hook_count(model)
    with pytest.raises(ConfigError):
        cam_maps(model, np.zeros((1, 64, 64), np.uint8), layer="head")
    assert _hook_count(model) == before


def test_maps_come_in_model_and_original_geometry_within_unit_range(
        predictor: Predictor, real_grays: list[np.ndarray]) -> None:
    gray = real_grays[2]
    result = explain_image(predictor, gray)
    assert result.map_model.shape == (64, 64) and result.map_model.dtype == np.float32
    assert result.map_original.shape == gray.shape and result.map_original.dtype == np.float32
    for heat in (result.map_model, result.map_original):
        assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert result.map_model.max() > 0
    assert result.layer == "backbone.blocks.4"


def test_letterbox_map_drops_the_padding_before_restoring_the_aspect() -> None:
    size, height, width = 64, 50, 100  # a 2:1 image sits in rows 16..47 of the 64 x 64 canvas
    map_model = np.zeros((size, size), np.float32)
    map_model[16:48] = 1.0
    restored = to_original_geometry(map_model, height, width, policy="letterbox")
    squashed = to_original_geometry(map_model, height, width, policy="squash")
    assert restored.shape == squashed.shape == (height, width)
    assert restored.min() > 0.99
    assert squashed[:5].max() < 0.01


def test_letterbox_predictor_maps_back_onto_a_wide_image(letterbox_predictor: Predictor,
                                                         real_grays: list[np.ndarray]) -> None:
    gray = real_grays[1]
    result = explain_image(letterbox_predictor, gray)
    assert result.map_original.shape == gray.shape


def test_target_pneumonia_and_target_normal_give_different_maps(predictor: Predictor,
                                                                real_grays: list[np.ndarray]) -> None:
    model, prepared = predictor.torch_model, predictor.preprocess(real_grays[3])[None]
    toward_pneumonia = cam_maps(model, prepared, toward_pneumonia=True)[0]
    toward_normal = cam_maps(model, prepared, toward_pneumonia=False)[0]
    assert not np.allclose(toward_pneumonia, toward_normal, atol=1e-3)


def test_the_unscaled_grad_cam_peak_grows_with_the_evidence_the_scaled_map_hides(
        predictor: Predictor, real_grays: list[np.ndarray]) -> None:
    """An explain audit: every map is scaled to its own maximum, so a map 4-400x weaker than a pneumonia film's was
    drawn in the same red and nothing kept its strength. Doubling the model's logits doubles the explained margin's
    gradients: the unscaled peak doubles, the scaled map stays as it was."""
    import copy

    model, prepared = predictor.torch_model, predictor.preprocess(real_grays[3])[None]
    louder = copy.deepcopy(model)
    last = [m for m in louder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(2)
        last.bias.mul_(2)
    maps, peaks = cam_maps_and_peaks(model, prepared)
    maps_louder, peaks_louder = cam_maps_and_peaks(louder, prepared)
    assert peaks[0] > 0 and peaks_louder[0] == pytest.approx(2 * peaks[0], rel=1e-3)
    np.testing.assert_allclose(maps_louder, maps, atol=1e-3)
    assert explain_image(predictor, real_grays[3], target="pneumonia").scale == pytest.approx(float(peaks[0]), rel=1e-5)


def test_overlay_png_is_a_valid_rgb_png_of_the_original_size(predictor: Predictor,
                                                             real_grays: list[np.ndarray]) -> None:
    gray = real_grays[0]
    data = heatmap_overlay_png(predictor, gray)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.size == (gray.shape[1], gray.shape[0]) and img.mode == "RGB"


def test_a_predictor_without_a_torch_model_gives_a_clear_model_error() -> None:
    onnx_like = SimpleNamespace(backend="onnx", meta={}, classes=["NORMAL", "PNEUMONIA"])
    with pytest.raises(ModelError, match="PyTorch checkpoint"):
        explain_image(onnx_like, np.zeros((64, 64), np.uint8))


def test_two_explanations_of_one_model_never_run_at_once(predictor: Predictor, real_grays: list[np.ndarray],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The service explains on several threads; Grad-CAM hooks the shared model, so a second explanation running
    beside the first recorded its activations (the lock it took was a `Predictor` attribute that no longer exists)."""
    import threading
    import time

    from pneumo.explain import cam

    real, running, overlaps = cam.explain_prepared, [], []

    def watched(*args, **kwargs):
        running.append(1)
        overlaps.append(len(running))
        time.sleep(0.05)  # long enough for the other thread to arrive
        try:
            return real(*args, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(cam, "explain_prepared", watched)
    threads = [threading.Thread(target=explain_image, args=(predictor, gray)) for gray in real_grays[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert overlaps == [1, 1]


def test_an_explanation_without_a_prediction_applies_the_input_gate_as_predict_does(
        predictor: Predictor, real_grays: list[np.ndarray]) -> None:
    """A library review: explain_image scored a 48 x 48 copy of an X-ray without the input gate and gave it a verdict
    (and the overlay its caption) that `Predictor.predict` withholds."""
    small = np.asarray(Image.fromarray(real_grays[0]).resize((48, 48)))
    expected = predictor.predict([small])[0]
    assert expected.refused == "input"
    result = explain_image(predictor, small)
    assert (result.prediction.label, result.prediction.refused, result.prediction.reason) == \
        (expected.label, expected.refused, expected.reason)
    assert explain_image(predictor, real_grays[0]).prediction.label == predictor.predict([real_grays[0]])[0].label


def test_wrong_model_inputs_and_sizes_are_refused_not_drawn(predictor: Predictor, real_grays: list[np.ndarray]) -> None:
    """A 100 x 100 `prepared` gave a 100 x 100 map, not the model's S x S, and ``max_side=0`` a 69-byte PNG (a library
    review)."""
    from pneumo.errors import InputError

    gray = real_grays[0]
    with pytest.raises(InputError, match=f"uint8 {predictor.size} x {predictor.size} model input"):
        explain_image(predictor, gray, prepared=predictor.preprocess(gray)[: predictor.size // 2])
    for side in (0, -5):
        with pytest.raises(ConfigError, match="max_side must be None or an integer >= 1"):
            heatmap_overlay_png(predictor, gray, max_side=side)


def test_an_overlay_without_its_caption_is_the_bare_map_over_the_film(predictor: Predictor,
                                                                      real_grays: list[np.ndarray]) -> None:
    """The web page lays the map over its preview and shows the verdict beside it: a caption written on the film hid
    the top 9-18 % (the lung apices) under the map (a clinical review)."""
    from pneumo.explain.render import overlay_image, png_bytes

    gray = real_grays[0]
    bare = heatmap_overlay_png(predictor, gray, max_side=200, caption=False)
    expected = png_bytes(overlay_image(gray, explain_image(predictor, gray).map_original, None, max_side=200))
    assert bare == expected and bare != heatmap_overlay_png(predictor, gray, max_side=200)
