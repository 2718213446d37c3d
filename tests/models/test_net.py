"""PneumoNet: the gray input contract, freezing, Grad-CAM target and metadata."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from pneumo.errors import ModelError
from pneumo.models import PneumoNet, build, create
from pneumo.models.weights import map_by_order, offline_lite_state


@pytest.fixture(scope="module")
def lite0() -> PneumoNet:
    return create("efficientnet_lite0", num_classes=1000)


def test_gray_input_equals_timm_on_the_repeated_normalized_image(lite0: PneumoNet) -> None:
    reference = timm.create_model("tf_efficientnet_lite0").eval()
    reference.load_state_dict(map_by_order(offline_lite_state(0), reference.state_dict(), what="lite0"))
    gray = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        expected = reference((gray.repeat(1, 3, 1, 1) - 0.5) / 0.5)
        got = lite0.eval()(gray)
    assert torch.allclose(got, expected, atol=1e-4)


def test_forward_features_are_the_pooled_vectors_the_head_takes(lite0: PneumoNet) -> None:
    x = torch.rand(3, 1, 224, 224)
    with torch.no_grad():
        features = lite0.eval().forward_features(x)
        assert features.shape == (3, lite0.num_features)
        assert torch.allclose(lite0.head(features), lite0(x), atol=1e-5)
    assert isinstance(lite0.head, nn.Linear)


def trainable(model: PneumoNet) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_stages_freezes_the_stem_and_the_first_n_stages_only() -> None:
    model = build("efficientnet_lite0", num_classes=2)
    assert model.num_stages == 7
    model.freeze_stages(2)
    free = trainable(model)
    assert not any(n.startswith(("backbone.conv_stem", "backbone.bn1", "backbone.blocks.0.", "backbone.blocks.1."))
                   for n in free)
    assert any(n.startswith("backbone.blocks.2.") for n in free)
    assert {"backbone.conv_head.weight", "head.weight", "head.bias"} <= free


def test_freeze_stages_can_be_loosened_again() -> None:
    model = build("efficientnet_lite0", num_classes=2)
    model.freeze_stages(5)
    model.freeze_stages(1)
    assert any(n.startswith("backbone.blocks.1.") for n in trainable(model))


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics() -> None:
    model = build("efficientnet_lite0", num_classes=2)
    model.freeze_stages(2)
    model.train()
    frozen_bn, free_bn = model.backbone.blocks[1][0].bn1, model.backbone.blocks[3][0].bn1
    before = frozen_bn.running_mean.clone()
    model(torch.rand(2, 1, 64, 64))
    assert not frozen_bn.training and not model.backbone.bn1.training
    assert free_bn.training and model.training
    assert torch.equal(frozen_bn.running_mean, before)


def test_freeze_backbone_leaves_only_the_head_trainable() -> None:
    model = build("test_resnet", num_classes=2)
    model.freeze_backbone()
    assert trainable(model) == {"head.weight", "head.bias"}
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_freeze_stages_beyond_the_model_is_a_model_error() -> None:
    model = build("test_resnet", num_classes=2)
    with pytest.raises(ModelError, match=f"has {model.num_stages} stages"):
        model.freeze_stages(model.num_stages + 1)


@pytest.mark.parametrize(("name", "target", "channels"), [("efficientnet_lite0", "bn2", 1280),
                                                         ("test_resnet", "layer4", None)])
def test_target_layer_is_the_last_feature_map_before_pooling(name: str, target: str, channels: int | None) -> None:
    model = build(name, num_classes=2).eval()
    assert model.target_layer() is model.backbone.get_submodule(target)
    seen = {}
    handle = model.target_layer().register_forward_hook(lambda m, i, out: seen.update(shape=out.shape))
    with torch.no_grad():
        model(torch.rand(1, 1, 224, 224))
    handle.remove()
    assert seen["shape"][1] == (channels or model.num_features) and seen["shape"][2:] == (7, 7)


def test_meta_describes_what_a_checkpoint_needs() -> None:
    model = build("efficientnet_lite1", num_classes=3)
    assert model.meta() == {"arch": "efficientnet_lite1", "num_classes": 3, "input_size": 240,
                            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
