"""Weights: the offline EfficientNet-Lite mapping (checked on a real photo) and local state-dict files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from skimage import color, data, transform

from pneumo.errors import ModelError
from pneumo.models import create
from pneumo.models.weights import map_by_order, offline_lite_state

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def gray_cat(size: int) -> torch.Tensor:
    rgb = transform.resize(data.chelsea(), (size, size), anti_aliasing=True)
    return torch.from_numpy(color.rgb2gray(rgb)).float()[None, None]


def test_offline_lite0_weights_see_a_cat_in_the_scikit_image_cat() -> None:
    model = create("efficientnet_lite0", num_classes=1000).eval()  # 1000 classes keep the ImageNet classifier
    with torch.no_grad():
        probs = model(gray_cat(model.input_size)).softmax(1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[281:286].sum()) > 0.5


@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                            ("efficientnet_lite2", 260)])
def test_lite_models_keep_timms_input_size_and_half_normalization(name: str, size: int) -> None:
    model = create(name, num_classes=2)
    assert model.input_size == size
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.5, 0.5, 0.5)


def test_lite_weights_replace_the_random_init() -> None:
    offline = offline_lite_state(0)
    model = create("efficientnet_lite0", num_classes=2)
    assert torch.equal(model.backbone.conv_stem.weight, offline["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, offline["_bn1.running_var"])


def test_map_by_order_rejects_a_different_tensor_count() -> None:
    target = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ModelError, match="2 in the model"):
        map_by_order({"x": torch.zeros(2)}, target, what="test")


def test_map_by_order_rejects_a_shape_mismatch() -> None:
    target = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ModelError, match="does not fit b"):
        map_by_order({"x": torch.zeros(2), "y": torch.zeros(4)}, target, what="test")


def test_lite_accepts_a_lukemelas_style_pth_file(tmp_path: Path) -> None:
    torch.save(offline_lite_state(0), tmp_path / "lite0.pth")
    from_file = create("efficientnet_lite0", num_classes=2, weights=str(tmp_path / "lite0.pth"))
    offline = create("efficientnet_lite0", num_classes=2)
    assert torch.equal(from_file.backbone.blocks[3][0].conv_pw.weight, offline.backbone.blocks[3][0].conv_pw.weight)


def test_lukemelas_style_safetensors_cannot_be_mapped_by_order(tmp_path: Path) -> None:
    save_file({k: v.contiguous() for k, v in offline_lite_state(0).items()}, str(tmp_path / "lite0.safetensors"))
    with pytest.raises(ModelError, match="original .pth"):
        create("efficientnet_lite0", num_classes=2, weights=str(tmp_path / "lite0.safetensors"))


def timm_weights(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("test_resnet", num_classes=num_classes).state_dict()


def test_local_safetensors_weights_fill_backbone_and_head(tmp_path: Path) -> None:
    state = timm_weights()
    save_file(state, str(tmp_path / "w.safetensors"))
    model = create("test_resnet", num_classes=1000, weights=str(tmp_path / "w.safetensors"))
    assert torch.equal(model.backbone.conv1[0].weight, state["conv1.0.weight"])
    assert torch.equal(model.head.weight, state["fc.weight"])


def test_local_weights_with_another_class_count_get_a_new_head(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    state = timm_weights(1000)
    save_file(state, str(tmp_path / "w.safetensors"))
    with caplog.at_level(logging.WARNING):
        model = create("test_resnet", num_classes=2, weights=str(tmp_path / "w.safetensors"))
    assert model.head.weight.shape == (2, model.num_features)
    assert torch.equal(model.backbone.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    assert not caplog.records


def test_local_pth_weights_load_with_a_wrapper_and_module_prefix(tmp_path: Path) -> None:
    state = timm_weights()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    model = create("test_resnet", num_classes=1000, weights=str(tmp_path / "w.pth"))
    assert torch.equal(model.backbone.conv1[0].weight, state["conv1.0.weight"])


def test_pth_holding_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    torch.save({"conv1.0.weight": torch.zeros(1), "note": Path("x")}, tmp_path / "w.pth")
    with pytest.raises(ModelError, match="weights-only"):
        create("test_resnet", num_classes=2, weights=str(tmp_path / "w.pth"))


def test_weights_of_another_architecture_are_a_model_error(tmp_path: Path) -> None:
    save_file(timm.create_model("test_efficientnet").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelError, match="does not fit"):
        create("test_resnet", num_classes=2, weights=str(tmp_path / "w.safetensors"))


def test_a_saved_pneumonet_state_seeds_a_new_model(tmp_path: Path) -> None:
    trained = create("test_resnet", num_classes=2, weights="none")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "run.safetensors"))
    again = create("test_resnet", num_classes=2, weights=str(tmp_path / "run.safetensors"))
    x = torch.rand(2, 1, 64, 64)
    assert np.allclose(trained.eval()(x).detach(), again.eval()(x).detach())
