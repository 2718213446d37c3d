"""The acquisition-shift augmentation the second item-4 round picked (BENCHMARKS.md): down/up-sampling, a JPEG round
trip and collimation borders, each on about half of a batch, reproducible from the generator."""

from __future__ import annotations

import pytest
import torch

from pneumo.config import AugmentConfig
from pneumo.train.augment import augment, collimate, jpeg, low_resolution


def _batch(n: int = 64, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, size, size, generator=g)


def _changed(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return (out - x).abs().flatten(1).amax(1) > 1e-6


def test_each_acts_on_about_half_the_images_and_keeps_shape_and_range() -> None:
    x = _batch()
    for fn, arg in ((low_resolution, 0.6), (jpeg, 20), (collimate, 0.12)):
        out = fn(x, arg, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
        share = _changed(x, out).float().mean()
        assert 0.25 <= share <= 0.75, (fn.__name__, share)


def test_low_resolution_loses_fine_detail_and_jpeg_stays_close() -> None:
    x = _batch()
    low = low_resolution(x, 0.6, torch.Generator().manual_seed(0))
    hit = _changed(x, low)
    # down/up-sampling smooths: the changed images lose high-frequency energy (neighbour differences)
    def detail(t: torch.Tensor) -> torch.Tensor:
        return (t[..., 1:] - t[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert (detail(low[hit]) < detail(x[hit])).all()
    out = jpeg(x, 20, torch.Generator().manual_seed(0))
    assert (out - x).abs().mean() < 0.25  # a lossy copy of the same image, not another one


def test_collimation_blacks_out_borders_only() -> None:
    x = _batch() * 0.5 + 0.25  # no black pixels of its own
    out = collimate(x, 0.12, torch.Generator().manual_seed(0))
    assert (out[:, 0] == 0).flatten(1).any(1).any()  # some images were collimated (else the loop checks nothing)
    for before, after in zip(x[:, 0], out[:, 0]):
        black = after == 0
        if black.any():
            centre = after[16:48, 16:48]  # 25 %-75 %: never inside a 12 % border
            assert (centre == before[16:48, 16:48]).all()
            rows, cols = black.any(1), black.any(0)
            assert rows[0] or rows[-1] or cols[0] or cols[-1]


def test_the_same_generator_gives_the_same_batch() -> None:
    x = _batch(16)
    cfg = AugmentConfig(resolution=0.6, jpeg=20, collimation=0.12)
    assert torch.equal(augment(x, cfg, torch.Generator().manual_seed(3)), augment(x, cfg, torch.Generator().manual_seed(3)))


def test_steps_that_are_off_draw_nothing_so_runs_made_before_them_reproduce(monkeypatch: pytest.MonkeyPatch) -> None:
    """An acquisition step (or random erasing) that is off is never called: it takes no draw from the generator, so
    the batches of a configuration without it are the ones they were before the step existed."""
    import pneumo.train.augment as module

    def drawn(*args, **kwargs):
        raise AssertionError("a step that is off was called")

    for name in ("low_resolution", "jpeg", "collimate", "random_erase"):
        monkeypatch.setattr(module, name, drawn)
    x, g = _batch(16), torch.Generator().manual_seed(3)
    module.augment(x, AugmentConfig(blur=1.5, noise=0.05), g)  # the others on: they still draw, in their order
    with pytest.raises(AssertionError, match="off was called"):  # and the check sees a step that is on
        module.augment(x, AugmentConfig(jpeg=20), torch.Generator().manual_seed(3))
