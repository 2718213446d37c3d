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
