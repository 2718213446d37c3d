"""Batched augmentation: random erasing on top of the geometric and intensity steps."""

from __future__ import annotations

import pytest
import torch

from pneumo.config import AugmentConfig, load_config
from pneumo.errors import ConfigError
from pneumo.train.augment import augment, random_erase


def _batch(n: int = 16, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, size, size, generator=g) * 0.5 + 0.25


def test_erase_replaces_one_rectangle_per_image_and_keeps_the_rest():
    x = _batch()
    out = random_erase(x, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = out != x
    for img in changed[:, 0]:
        rows, cols = img.any(1).nonzero().squeeze(1), img.any(0).nonzero().squeeze(1)
        assert len(rows) and len(cols)
        box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        share = box.numel() / img.numel()
        assert 0.015 <= share <= 0.34  # 2-33 % of the image, up to rounding to whole pixels
        assert box.float().mean() > 0.95  # one filled rectangle (noise equals a pixel only by chance)
        assert not img[rows.max() + 1:].any() and not img[:, cols.max() + 1:].any()  # nothing outside it


def test_erase_probability_zero_and_one_and_reproducible():
    x = _batch(64)
    assert torch.equal(random_erase(x, 0.0, torch.Generator().manual_seed(0)), x)
    half = random_erase(x, 0.5, torch.Generator().manual_seed(0))
    erased = (half != x).flatten(1).any(1).sum().item()
    assert 16 <= erased <= 48
    assert torch.equal(half, random_erase(x, 0.5, torch.Generator().manual_seed(0)))


def test_erasing_draws_after_every_other_step():
    """Erasing is the last step: the same seed gives the same affine and intensity draws with and without it, one box
    replaced (that erase=0 draws nothing at all: test_augment_acquisition.py)."""
    x = _batch()
    cfg = AugmentConfig()
    a = augment(x, cfg, torch.Generator().manual_seed(3))
    b = augment(x, cfg.model_copy(update={"erase": 1.0}), torch.Generator().manual_seed(3))
    assert not torch.equal(a, b)
    assert (a == b).float().mean() > 0.6  # the same affine and intensity draws, one box replaced


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_erase_probability_is_validated(value):
    with pytest.raises(ConfigError, match="train.augment.erase"):
        load_config("lite0-partial", [f"train.augment.erase={value}"]).validate()
