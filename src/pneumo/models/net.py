"""`PneumoNet`: a backbone that takes gray images in [0, 1], normalizes them itself, and ends in one linear head.

The input contract lives here: ``forward`` takes float32 ``(B, 1, S, S)`` in [0, 1]. A 3-channel backbone gets the
gray channel repeated (exactly what an RGB file of a gray X-ray holds, so the pretrained first conv is kept as is)
and the per-channel mean/std applied from registered buffers, so ONNX exports, predict and the web page never
restate the normalization.

Freezing: ``freeze_stages`` / ``freeze_backbone`` set ``requires_grad``; every BatchNorm whose affine parameters are
frozen stays in eval mode (running statistics untouched) because ``train()`` is overridden. A training loop only
has to call ``model.train()`` as usual; it must not flip BN layers back to train mode one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pneumo.errors import ModelError


class PneumoNet(nn.Module):
    """Backbone (pooled features) + dropout + ``head`` (``nn.Linear`` F -> num_classes).

    Args:
        backbone: maps normalized ``(B, in_chans, S, S)`` to pooled features ``(B, F)``.
        head: the classifier; ``head.in_features`` is F.
        arch: the registry name that rebuilds this model (stored in checkpoints).
        in_chans: 1 (the backbone takes gray) or 3 (gray is repeated to RGB).
        input_size: the side S the weights were made for (a default; any size the backbone accepts works).
        mean: per-channel mean subtracted from the [0, 1] input (length ``in_chans``).
        std: per-channel std dividing it.
        stem: backbone parameter names of the stem (always frozen first).
        stages: backbone parameter names of each stage, input side first.
        target: name of the backbone module Grad-CAM should hook (the last conv feature map before pooling).
        drop_rate: dropout before the head.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, *, arch: str, in_chans: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float], stem: Sequence[str], stages: Sequence[Sequence[str]],
                 target: str, drop_rate: float = 0.0) -> None:
        super().__init__()
        if in_chans not in (1, 3) or len(mean) != in_chans or len(std) != in_chans:
            raise ModelError(f"{arch}: in_chans must be 1 or 3 with one mean/std per channel, got {in_chans}")
        self.backbone = backbone
        self.drop = nn.Dropout(drop_rate)
        self.head = head
        self.arch = arch
        self.in_chans = in_chans
        self.input_size = int(input_size)
        self.register_buffer("pixel_mean", torch.tensor([float(m) for m in mean]).view(1, in_chans, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([float(s) for s in std]).view(1, in_chans, 1, 1))
        self._stem = list(stem)
        self._stages = [list(names) for names in stages]
        self._target = target

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(round(float(v), 6) for v in self.pixel_mean.flatten())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(round(float(v), 6) for v in self.pixel_std.flatten())

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def num_features(self) -> int:
        return self.head.in_features

    @property
    def num_stages(self) -> int:
        """Stages after the stem that ``freeze_stages`` counts (timm's coarse layer groups for timm backbones)."""
        return len(self._stages)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Gray ``(B, 1, S, S)`` in [0, 1] -> the backbone's normalized input (repeated to 3 channels if needed)."""
        if self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.pixel_mean) / self.pixel_std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, num_features)`` of gray images in [0, 1]."""
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of gray images ``(B, 1, S, S)`` in [0, 1]."""
        return self.head(self.drop(self.forward_features(x)))

    def target_layer(self) -> nn.Module:
        """The module whose output is the last conv feature map before pooling (for Grad-CAM)."""
        return self.backbone.get_submodule(self._target)

    def freeze_stages(self, n: int) -> None:
        """Freeze the stem and the first ``n`` stages (0 <= n <= num_stages); everything else trains."""
        if not 0 <= n <= self.num_stages:
            raise ModelError(f"{self.arch} has {self.num_stages} stages; freeze_stages must be in 0..{self.num_stages}")
        frozen = set(self._stem).union(*self._stages[:n])
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(name not in frozen)
        for param in self.head.parameters():
            param.requires_grad_(True)
        self.train(self.training)

    def freeze_backbone(self) -> None:
        """Freeze the whole backbone (linear probe): only ``head`` trains."""
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        for param in self.head.parameters():
            param.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> PneumoNet:
        """Like ``nn.Module.train``, but BatchNorm layers with frozen parameters always stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and _is_frozen(module):
                    module.eval()
        return self

    def meta(self) -> dict:
        """What a checkpoint sidecar needs to rebuild and feed this model."""
        return {"arch": self.arch, "num_classes": self.num_classes, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std)}

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, in_chans={self.in_chans}, input_size={self.input_size}"


def _is_frozen(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)
