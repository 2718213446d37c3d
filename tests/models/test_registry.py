"""The model registry: names, timm fall-through, weights modes and their errors."""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from pneumo.errors import ModelError
from pneumo.models import PneumoNet, build, create, list_models, register_model


def test_list_models_names_the_registered_builders() -> None:
    assert {"scratch_cnn", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_models())


def test_unknown_model_error_lists_the_registered_names() -> None:
    with pytest.raises(ModelError) as err:
        create("no_such_net", num_classes=2, weights="none")
    message = str(err.value)
    assert "no_such_net" in message and "\n" not in message
    assert all(name in message for name in list_models())
    assert "timm" in message


def test_any_timm_architecture_builds_by_its_plain_name() -> None:
    model = create("test_resnet", num_classes=3, weights="none")
    assert isinstance(model, PneumoNet)
    assert model.arch == "test_resnet"
    assert type(model.backbone).__name__ == "ResNet"
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)


def test_timm_prefix_bypasses_the_registry() -> None:
    ours, timms = build("efficientnet_lite0", num_classes=2), build("timm/efficientnet_lite0", num_classes=2)
    assert timms.arch == "timm/efficientnet_lite0"
    assert ours.mean == (0.5, 0.5, 0.5)
    assert timms.mean == pytest.approx((0.485, 0.456, 0.406))


def test_registering_a_name_twice_is_refused() -> None:
    def scratch_cnn(**kwargs: object) -> PneumoNet:
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="twice"):
        register_model(scratch_cnn)


def test_random_init_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pneumo"):
        create("test_resnet", num_classes=2, weights="none")
    assert any(r.levelno == logging.WARNING and "random" in r.getMessage() for r in caplog.records)


def test_build_for_a_checkpoint_stays_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        build("efficientnet_lite0", num_classes=2)
    assert not caplog.records


def test_failed_imagenet_download_is_a_one_line_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as err:
        create("test_resnet", num_classes=2, weights="imagenet")
    message = str(err.value)
    assert "--weights FILE" in message and "--weights none" in message and "\n" not in message


def test_missing_weights_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        create("test_resnet", num_classes=2, weights=str(tmp_path / "absent.safetensors"))


def test_zero_classes_are_refused() -> None:
    with pytest.raises(ModelError, match="num_classes"):
        create("scratch_cnn", num_classes=0, weights="none")
