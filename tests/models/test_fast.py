"""The CPU fast path: a traced copy gives the eager model's logits; a model of a structure traced before reuses that
graph with its own weights, bit for bit what its own trace gives; a model that cannot be traced falls back to the
eager one with one visible warning per architecture."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from pneumo.models import create
from pneumo.models.fast import fast_inference


class Untraceable(nn.Module):
    arch = "untraceable_for_test"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError("data-dependent control flow")
        return self.conv(x).mean(dim=(2, 3))


def test_traced_copy_matches_the_eager_model() -> None:
    torch.manual_seed(0)
    model = create("scratch_cnn", num_classes=2, weights="none").eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fast_inference(model, x[:2])(x), model(x), atol=1e-5)


def test_untraceable_model_falls_back_to_eager_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    model = Untraceable().eval()
    x = torch.rand(2, 1, 16, 16)
    with caplog.at_level(logging.WARNING, logger="pneumo.models.fast"):
        first = fast_inference(model, x)
        fast_inference(model, x)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "untraceable_for_test" in warnings[0].getMessage()
    assert "2x slower" in warnings[0].getMessage()
    with torch.no_grad():
        assert torch.allclose(first(x), model(x))


def test_a_feature_extractor_traces_once_for_many_sets_and_matches_separate_extractions(monkeypatch) -> None:
    """The orientation check extracts 12 sets of features from one model: one trace, the same numbers bit for bit."""
    import numpy as np

    from pneumo.train import probe

    torch.manual_seed(0)
    model = create("scratch_cnn", num_classes=2, weights="none").eval()
    sets = [np.random.default_rng(i).integers(0, 256, (n, 64, 64), dtype=np.uint8) for i, n in enumerate((5, 70, 3))]
    separate = [probe.extract_features(model, x, device=torch.device("cpu"), amp=False) for x in sets]
    traces = []
    monkeypatch.setattr(probe, "fast_inference", lambda *a, **k: traces.append(1) or fast_inference(*a, **k))
    extract = probe.feature_extractor(model, device=torch.device("cpu"), amp=False)
    shared = [extract(x, "set") for x in sets]
    assert len(traces) == 1
    assert all(np.array_equal(a, b) for a, b in zip(separate, shared, strict=True))


def test_a_second_model_of_one_structure_reuses_the_graph_with_its_own_weights(monkeypatch) -> None:
    """adapt scores 6 models of one architecture, an evaluation builds a Predictor per model: one trace each structure,
    and what each model gives is bit for bit its own trace's, also after a later model loaded its weights."""
    from pneumo.models import fast

    torch.manual_seed(0)
    first, second = (create("scratch_cnn", num_classes=2, weights="none").eval() for _ in range(2))
    other = create("scratch_cnn", num_classes=3, weights="none").eval()  # another head: another structure
    x = torch.rand(4, 1, 64, 64)
    traces = []
    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: traces.append(1) or real_trace(*a, **k))
    monkeypatch.setattr(fast, "_TRACED", type(fast._TRACED)())
    with torch.no_grad():
        run_first = fast_inference(first, x[:2])
        before = run_first(x).clone()
        run_second = fast_inference(second, x[:2])
        fast_inference(other, x[:2])
        assert len(traces) == 2  # scratch_cnn with 2 classes once, with 3 classes once
        assert torch.equal(run_first(x), before)  # the first model's copy kept its weights
        reused = run_second(x)
        fast._TRACED.clear()
        own = fast_inference(second, x[:2])(x)
        assert len(traces) == 3 and torch.equal(reused, own) and not torch.equal(reused, before)
        assert torch.allclose(reused, second(x), atol=1e-5)
