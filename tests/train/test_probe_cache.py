"""The probe's feature cache (features of every cached image, kept beside the image cache) is keyed by precision:
bf16 features (a probe trained on CUDA with autocast) are never read back as the fp32 ones (CPU, evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.models.registry import build
from pneumo.models.scratch import scratch_cnn  # noqa: F401 (registers the architecture)
from pneumo.train import probe


def test_bf16_features_are_cached_apart_from_fp32_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("scratch_cnn", num_classes=2)
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64), dtype=np.uint8)
    computed = []
    real = probe.extract_features
    monkeypatch.setattr(probe, "extract_features", lambda *a, **k: computed.append(1) or real(*a, **k))

    def cached() -> np.ndarray:
        return probe.cached_features(model, images, cache_key="k", cache_dir=tmp_path, device=torch.device("cpu"),
                                     amp=True, batch_size=4)

    fp32 = cached()
    assert np.array_equal(cached(), fp32) and len(computed) == 1  # kept: read back, not computed again
    monkeypatch.setattr(probe, "features_in_bf16", lambda device, amp: amp)  # as on a GPU
    cached()
    assert len(computed) == 2  # not the fp32 file
    cached()
    assert len(computed) == 2
    assert len(list(tmp_path.glob("features-k-*.npy"))) == 2


def test_the_backbones_digest_reads_every_byte_its_architecture_and_the_model_code(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first 4 KB of each tensor and no architecture gave two backbones one digest, and one was given the other's
    kept features (a cache review)."""
    from pneumo import provenance

    model = build("scratch_cnn", num_classes=2)
    first = probe.model_digest(model)
    big = max((t for n, t in model.state_dict().items() if not n.startswith("head.")), key=lambda t: t.numel())
    assert big.numel() > 1024  # a change past the first 4 KB of the tensor
    last = big.view(-1)[-1].item()
    with torch.no_grad():
        big.view(-1)[-1] = last + 1.0
    assert probe.model_digest(model) != first
    with torch.no_grad():
        big.view(-1)[-1] = last
    assert probe.model_digest(model) == first
    with torch.no_grad():  # the head does not change the features
        model.head.weight.add_(1.0)
    assert probe.model_digest(model) == first
    monkeypatch.setattr(model, "arch", "another_arch", raising=False)
    assert probe.model_digest(model) != first
    monkeypatch.undo()
    monkeypatch.setattr(provenance, "MODEL_CODE_VERSION", provenance.MODEL_CODE_VERSION + 1)
    assert probe.model_digest(model) != first
