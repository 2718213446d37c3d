"""The augmentation knobs of the fifth study round that stay in the product: Gaussian blur and noise (off by default).
(Mixup, EMA of the weights and distillation left for the study: BENCHMARKS.md records the commits that ran them.)"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pneumo.config import AugmentConfig, load_config
from pneumo.errors import ConfigError
from pneumo.train.augment import augment, gaussian_blur


def _batch(n: int = 6, size: int = 40) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(3))


def test_blur_matches_torchvision_per_image_and_sigma_zero_is_identity() -> None:
    x = _batch()
    sigma = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 0.8])
    out = gaussian_blur(x, sigma)
    radius = 6  # 3 x the largest sigma
    assert torch.allclose(out[0], x[0], atol=1e-6)
    for i in range(1, len(x)):
        expected = TF.gaussian_blur(x[i:i + 1], kernel_size=[2 * radius + 1] * 2, sigma=[float(sigma[i])] * 2)
        assert torch.allclose(out[i:i + 1], expected, atol=1e-5), i
    assert out[4].std() < out[1].std() < x[1].std()  # more blur, less pixel-level variation


def test_blur_and_noise_in_augment_are_bounded_reproducible_and_off_by_default() -> None:
    x = _batch(8)
    still = AugmentConfig(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0, gamma=0)
    assert torch.allclose(augment(x, still, torch.Generator().manual_seed(0)), x, atol=1e-5)
    noisy = AugmentConfig(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0, gamma=0, noise=0.1)
    a = augment(x, noisy, torch.Generator().manual_seed(0))
    assert torch.equal(a, augment(x, noisy, torch.Generator().manual_seed(0)))
    assert 0.0 <= a.min() and a.max() <= 1.0 and not torch.allclose(a, x, atol=1e-3)
    assert (a - x).std() < 0.1
    blurred = augment(x, AugmentConfig(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0, gamma=0,
                                       blur=2.0), torch.Generator().manual_seed(0))
    assert blurred.diff(dim=3).abs().mean() < x.diff(dim=3).abs().mean()


@pytest.mark.parametrize(("override", "message"), [
    ("train.augment.blur=20", "blur"), ("train.augment.noise=0.9", "noise"), ("train.augment.blur=-1", "blur"),
])
def test_bad_values_fail_with_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("default", [override])
