"""A small CNN trained from scratch on 1-channel X-rays (after the "CNN_94" of a student report).

Five conv blocks (conv3x3-BN-ReLU, a second conv in the last two blocks, 2x2 max-pool between blocks) with
32..256 channels, global average pooling, a dense 128 layer; ``PneumoNet`` adds dropout and the output layer.
About 1.6 M parameters and 0.3 GMAC at 128 px: trainable on a CPU. Input normalization: mean 0.5, std 0.25.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pneumo.errors import ModelError
from pneumo.models import weights as W
from pneumo.models.net import PneumoNet
from pneumo.models.registry import Weights, register_model

WIDTHS = (32, 64, 128, 256, 256)
DOUBLE_CONV = (False, False, False, True, True)
HIDDEN = 128
MEAN, STD = (0.5,), (0.25,)
DEFAULT_SIZE = 128


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ScratchCNN(nn.Module):
    """Gray (normalized) images -> pooled 128-d features.

    Args:
        widths: output channels of each conv block.
        double_conv: per block, whether it has a second conv3x3-BN-ReLU.
        hidden: width of the dense layer after pooling.
    """

    def __init__(self, *, widths: Sequence[int] = WIDTHS, double_conv: Sequence[bool] = DOUBLE_CONV,
                 hidden: int = HIDDEN) -> None:
        super().__init__()
        if len(widths) != len(double_conv):
            raise ModelError("scratch CNN: one double_conv flag per block width")
        blocks, c_in = [], 1
        for i, (width, double) in enumerate(zip(widths, double_conv, strict=True)):
            layers = conv_bn_relu(c_in, width) + (conv_bn_relu(width, width) if double else [])
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in, hidden), nn.ReLU(inplace=True))
        self.num_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(x)))


@register_model
def scratch_cnn(*, num_classes: int, weights: Weights, drop_rate: float) -> PneumoNet:
    """The from-scratch CNN; ``weights`` may be ``none`` or a file (e.g. a previous pneumo checkpoint)."""
    if weights == "imagenet":
        raise ModelError("scratch_cnn has no ImageNet weights: use weights=none (mode=scratch) or a weights file")
    backbone = ScratchCNN()
    names = [n for n, _ in backbone.named_parameters()]
    per_block = [[n for n in names if n.startswith(f"blocks.{i}.")] for i in range(len(WIDTHS))]
    net = PneumoNet(backbone, nn.Linear(HIDDEN, num_classes), arch="scratch_cnn", in_chans=1,
                    input_size=DEFAULT_SIZE, mean=MEAN, std=STD, stem=per_block[0], stages=per_block[1:],
                    target=f"blocks.{len(WIDTHS) - 1}", drop_rate=drop_rate)
    if isinstance(weights, (str, os.PathLike)) and weights != "none":
        W.load_into(net, W.read_state_file(Path(weights)), classifier=["head"], source=str(weights))
    return net
