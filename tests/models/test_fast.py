"""The CPU fast path: a copy with each BatchNorm folded into the convolution it reads gives the eager model's outputs
without gradients and leaves the caller's model as it was; a BatchNorm is folded only into the convolution whose output
it reads, and a model whose folded copy gives other outputs runs eager with one visible warning per architecture."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from pneumo.models import create
from pneumo.models.fast import fast_inference, folded


def _with_statistics(model: nn.Module) -> nn.Module:
    """Running statistics far from (0, 1), so that a wrong fold shows."""
    g = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=g) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) * 3 + 0.5)
    return model.eval()


class ReadTwice(nn.Module):
    """A convolution's output read by its BatchNorm and by a skip connection: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return (self.bn(y) + y).mean(dim=(2, 3))


class ReadsItsNorm(nn.Module):
    """A forward that reads its BatchNorm's weight (a channel gate): folding replaces that BatchNorm, so it fails."""
    arch = "reads_its_norm_for_test"

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.bn(self.conv(x)) * self.bn.weight[:, None, None]).mean(dim=(2, 3))


class Shared(nn.Module):
    """One convolution called twice, each time into a BatchNorm of its own: neither can be folded into it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1), nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv(self.bn1(self.conv(x)))).mean(dim=(2, 3))


class InPlaceBetween(nn.Module):
    """conv1 -> bn1 folds; conv2 -> ReLU(inplace) -> bn2 does not: bn2 reads conv2's tensor, changed in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
        self.conv2, self.act, self.bn2 = nn.Conv2d(2, 2, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.act(self.conv2(self.bn1(self.conv1(x))))).mean(dim=(2, 3))


@pytest.mark.parametrize(("arch", "size"), [("scratch_cnn", 64), ("tf_efficientnet_lite0", 64)])
def test_the_folded_copy_gives_the_eager_models_outputs_without_its_batchnorms(arch: str, size: int) -> None:
    torch.manual_seed(0)
    model = _with_statistics(create(arch, num_classes=2, weights="none"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, size, size)
    copy = folded(model, x[:2])
    assert not [m for m in copy.modules() if isinstance(m, nn.BatchNorm2d)]  # every one folded
    run = fast_inference(model, x[:2])
    with torch.no_grad():
        want = model(x)
    got = run(x)  # (outside no_grad: the copy needs no autograd graph)
    assert not got.requires_grad and torch.allclose(got, want, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters()) and any(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_a_batchnorm_is_folded_only_into_the_convolution_it_reads(caplog: pytest.LogCaptureFixture) -> None:
    """A convolution called twice keeps its BatchNorms, and so does one whose output an in-place ReLU changed before
    its BatchNorm read it, or that a skip connection also reads; the other pairs fold; no warning, the eager outputs."""
    cases = ((Shared(), ["bn1", "bn2"]), (InPlaceBetween(), ["bn2"]), (ReadTwice(), ["bn"]))
    with caplog.at_level(logging.WARNING, logger="pneumo.models.fast"):
        for model, kept in cases:
            model = _with_statistics(model)
            x = torch.rand(2, 1, 8, 8)
            copy = folded(model, x)
            assert [n for n, m in copy.named_modules() if isinstance(m, nn.BatchNorm2d)] == kept
            with torch.no_grad():
                assert torch.allclose(copy(x), model(x), atol=1e-6)  # (channels-last: rounding only)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_folding_under_inference_mode_gives_the_same_copy() -> None:
    """`torch.inference_mode()` tensors carry no version counter: the fold makes its own tensors."""
    torch.manual_seed(0)
    model = _with_statistics(create("scratch_cnn", num_classes=2, weights="none"))
    x = torch.rand(3, 1, 64, 64)
    with torch.inference_mode():
        run = fast_inference(model, x[:2])
        got = run(x)
    with torch.no_grad():
        assert torch.equal(got, fast_inference(model, x[:2])(x))


def test_a_model_that_cannot_be_folded_runs_eager_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    model = _with_statistics(ReadsItsNorm())
    x = torch.rand(2, 1, 16, 16)
    with caplog.at_level(logging.WARNING, logger="pneumo.models.fast"):
        first = fast_inference(model, x)
        fast_inference(model, x)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "reads_its_norm_for_test" in warnings[0].getMessage()
    assert "AttributeError" in warnings[0].getMessage() and "eager model" in warnings[0].getMessage()
    with torch.no_grad():
        assert torch.allclose(first(x), model(x), atol=1e-6)
    assert isinstance(folded(model, x).bn, nn.BatchNorm2d)


def test_a_feature_extractor_folds_once_for_many_sets_and_matches_separate_extractions(monkeypatch) -> None:
    """The orientation check extracts 12 sets of features from one model: one fold, the same numbers bit for bit."""
    import numpy as np

    from pneumo.train import probe

    torch.manual_seed(0)
    model = create("scratch_cnn", num_classes=2, weights="none").eval()
    sets = [np.random.default_rng(i).integers(0, 256, (n, 64, 64), dtype=np.uint8) for i, n in enumerate((5, 70, 3))]
    separate = [probe.extract_features(model, x, device=torch.device("cpu"), amp=False) for x in sets]
    folds = []
    monkeypatch.setattr(probe, "fast_inference", lambda *a, **k: folds.append(1) or fast_inference(*a, **k))
    extract = probe.feature_extractor(model, device=torch.device("cpu"), amp=False)
    shared = [extract(x, "set") for x in sets]
    assert len(folds) == 1
    assert all(np.array_equal(a, b) for a, b in zip(separate, shared, strict=True))
