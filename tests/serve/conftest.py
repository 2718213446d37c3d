"""Fixtures for the service tests: a tiny real checkpoint, its predictor, real X-rays and app clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import png_bytes

from pneumo.config import ServeConfig
from pneumo.infer.predictor import Predictor
from pneumo.serve.app import create_app

INPUT_SIZE = 64
CARD_TEXT = "# Tiny test model\n\nRandom weights, for the service tests only.\n"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) scratch CNN checkpoint at 64 px with a markdown card next to it; returns the sidecar."""
    from pneumo.infer.card import record_card
    from pneumo.models import create
    from pneumo.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))  # 1 in an xdist worker
    model = create("scratch_cnn", num_classes=2, weights="none")
    meta = {"task": "binary", "classes": ["NORMAL", "PNEUMONIA"], "input_size": INPUT_SIZE,
            "resize_policy": "squash", "intensity": "none", "threshold": 0.5, "threshold_policy": "youden",
            "temperature": 1.5, "config": {"data": {"root": "/private/path/to/data"}},
            "operating_point": {"version": 2, "chosen_on": {"kind": "labelled CSV", "location": "/private/path/site.csv"},
                                "derived_from": {"model": "C:\\private\\runs\\model.json"}},
            "metrics": {"test": {"roc_auc": 0.5, "sensitivity": float("nan")}}}
    sidecar = save_checkpoint(tmp_path_factory.mktemp("model") / "model", model, meta)
    sidecar.with_suffix(".md").write_text(CARD_TEXT, encoding="utf-8")
    record_card(sidecar)  # as `pneumo adapt` records the card it writes
    return sidecar


@pytest.fixture()
def predictor(checkpoint: Path) -> Predictor:
    """A fresh predictor per test, so a test may wrap its methods."""
    return Predictor(checkpoint, threads=2)


@pytest.fixture(scope="session")
def xray_paths(full_data: Path) -> list[Path]:
    """Real test-split radiographs, normal and pneumonia alternating."""
    normal = sorted((full_data / "test" / "NORMAL").glob("*.jpeg"))[:8]
    pneumonia = sorted((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:8]
    return [path for pair in zip(normal, pneumonia, strict=True) for path in pair]


@pytest.fixture(scope="session")
def xray(xray_paths: list[Path]) -> bytes:
    return xray_paths[0].read_bytes()


@pytest.fixture()
def make_client(predictor: Predictor) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**serve_config_fields)`` (or ``config=``) -> a started TestClient (500s come back as responses)."""
    stack = []

    def make(predictor_: Predictor | None = predictor, config: ServeConfig | None = None, **fields: object) -> TestClient:
        client = TestClient(create_app(config or ServeConfig(**fields), predictor_), raise_server_exceptions=False)
        client.__enter__()
        stack.append(client)
        return client

    yield make
    for client in reversed(stack):
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture()
def fake_heatmap(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replace the Grad-CAM overlay by a cheap stand-in that records its calls (gray shape, label)."""
    from pneumo.explain import cam

    calls: list[tuple] = []

    def fake(predictor, gray, prediction, **kwargs):
        assert kwargs.get("caption") is False  # the page shows the verdict beside it (a clinical review)
        calls.append((gray.shape, prediction.label))
        return png_bytes(np.stack([gray] * 3, axis=-1))

    monkeypatch.setattr(cam, "heatmap_overlay_png", fake)
    return calls
