"""The from-scratch CNN: 1-channel input, shapes, freezing and Grad-CAM target."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pneumo.errors import ModelError
from pneumo.models import create


@pytest.mark.parametrize("size", [64, 128, 224])
def test_scratch_cnn_maps_gray_batches_to_logits_and_128_features(size: int) -> None:
    model = create("scratch_cnn", num_classes=3, weights="none").eval()
    x = torch.rand(4, 1, size, size)
    with torch.no_grad():
        assert model(x).shape == (4, 3)
        assert model.forward_features(x).shape == (4, 128)


def test_scratch_cnn_takes_one_channel_without_imagenet_normalization() -> None:
    model = create("scratch_cnn", num_classes=2, weights="none")
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1 and model.in_chans == 1
    assert model.mean == (0.5,) and model.std == (0.25,)


def test_scratch_cnn_random_init_is_expected_and_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        create("scratch_cnn", num_classes=2, weights="none")
    assert not caplog.records


def test_scratch_cnn_has_no_imagenet_weights() -> None:
    with pytest.raises(ModelError, match="weights=none"):
        create("scratch_cnn", num_classes=2, weights="imagenet")


def test_scratch_target_layer_keeps_a_sixteenth_of_the_resolution() -> None:
    model = create("scratch_cnn", num_classes=2, weights="none").eval()
    seen = {}
    handle = model.target_layer().register_forward_hook(lambda m, i, out: seen.update(shape=out.shape))
    with torch.no_grad():
        model(torch.rand(1, 1, 128, 128))
    handle.remove()
    assert seen["shape"] == (1, 256, 8, 8)


def test_scratch_freeze_stages_counts_the_blocks_after_the_first() -> None:
    model = create("scratch_cnn", num_classes=2, weights="none")
    model.freeze_stages(model.num_stages)
    free = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("backbone.blocks.") for n in free)
    assert any(n.startswith("backbone.fc.") for n in free) and "head.weight" in free


def test_scratch_cnn_loads_its_own_weights_file(tmp_path: Path) -> None:
    trained = create("scratch_cnn", num_classes=2, weights="none")
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "s.safetensors"))
    again = create("scratch_cnn", num_classes=2, weights=str(tmp_path / "s.safetensors"))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(trained.eval()(x), again.eval()(x))
