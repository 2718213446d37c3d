"""Occlusion sensitivity and integrated gradients on a toy model whose pneumonia logit reads one known region."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pneumo.errors import ConfigError
from pneumo.explain.occlusion import integrated_gradients_map, occlusion_map, window_starts

SIZE = 64
REGION = (slice(36, 52), slice(8, 24))  # rows, columns the toy model looks at


class RegionModel(nn.Module):
    """logits = [0, 20 * mean brightness of REGION]; counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        score = self.scale * x[:, 0, REGION[0], REGION[1]].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(20, 60, size=(SIZE, SIZE), dtype=np.uint8)
    img[REGION] = 230
    return img


def _inside() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[REGION] = True
    return mask


def test_occlusion_map_peaks_on_the_region_the_model_reads() -> None:
    heat, _ = occlusion_map(RegionModel(), _image(), window=8, stride=4)
    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32 and heat.max() == pytest.approx(1.0)
    assert _inside()[np.unravel_index(np.argmax(heat), heat.shape)]
    assert heat[_inside()].mean() > 0.5
    far = np.ones((SIZE, SIZE), bool)
    far[REGION[0].start - 8 : REGION[0].stop + 8, REGION[1].start - 8 : REGION[1].stop + 8] = False
    assert heat[far].max() == 0.0


def test_occlusion_toward_normal_shows_no_evidence_where_occluding_lowers_pneumonia() -> None:
    heat, scale = occlusion_map(RegionModel(), _image(), window=8, stride=4, toward_pneumonia=False)
    assert heat[_inside()].max() == 0.0 and scale >= 0.0


def test_occlusion_returns_the_drop_it_draws_as_one_in_log_odds() -> None:
    """An explain audit: each map is scaled to its own maximum and the scale was thrown away, so a map 100x weaker
    than another was drawn in the same red. The toy model's logit is 20 x the region's mean brightness: covering an
    8 x 8 window inside the 16 x 16 region with the image mean drops it by 20 / 4 x (230 / 255 - mean)."""
    image = _image()
    fill = float(np.float32(image.astype(np.float32).mean() / 255))
    _, scale = occlusion_map(RegionModel(), image, window=8, stride=4, fast=False)
    assert scale == pytest.approx(20 / 4 * (230 / 255 - fill), rel=1e-4)
    dim = image.copy()
    dim[REGION] = 140  # half the region's contrast: half the evidence, the same scaled map
    heat_dim, scale_dim = occlusion_map(RegionModel(), dim, window=8, stride=4, fast=False)
    assert scale_dim < 0.6 * scale and heat_dim.max() == pytest.approx(1.0)


def test_occluded_copies_are_batched_into_few_forward_passes() -> None:
    model = RegionModel()
    occlusion_map(model, _image(), window=8, stride=4, batch_size=64, fast=False)  # eager: counts calls
    windows = len(window_starts(SIZE, 8, 4)) ** 2
    assert windows == 225
    assert model.calls == 1 + int(np.ceil(windows / 64))


def test_windows_always_reach_the_far_edge() -> None:
    assert window_starts(224, 32, 16)[-1] == 192 and len(window_starts(224, 32, 16)) == 13
    assert window_starts(70, 32, 16) == [0, 16, 32, 38]


@pytest.mark.parametrize(("window", "stride"), [(0, 4), (65, 4), (8, 0), (8, 32)])  # wider stride: NaN maps
def test_impossible_window_or_stride_raises_config_error(window: int, stride: int) -> None:
    with pytest.raises(ConfigError, match="occlusion"):
        occlusion_map(RegionModel(), _image(), window=window, stride=stride)


def test_occlusion_restores_training_mode() -> None:
    model = RegionModel().train()
    occlusion_map(model, _image(), window=16, stride=16)
    assert model.training


def test_integrated_gradients_put_the_attribution_on_the_region() -> None:
    pytest.importorskip("captum")
    heat, scale = integrated_gradients_map(RegionModel(), _image(), steps=16, smooth_sigma=0)
    # completeness: the region's 256 pixels share the logit 20 x 230 / 255 from the black baseline
    assert scale == pytest.approx(20 * 230 / 255 / 256, rel=1e-2)
    assert heat[_inside()].mean() > 0.9
    assert heat[~_inside()].max() == 0.0
