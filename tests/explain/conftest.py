"""Fixtures for the explanation tests: small saved checkpoints behind a real ``Predictor``, and real test images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pneumo.data.decode import load_image
from pneumo.infer.predictor import Predictor
from pneumo.models import create
from pneumo.models.checkpoint import save_checkpoint

SIZE = 64  # model input side for the fast tests


@pytest.fixture(autouse=True, scope="session")
def _modest_threads() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))  # 1 in an xdist worker


def save_scratch(stem: Path, *, policy: str = "squash", size: int = SIZE, seed: int = 0) -> Path:
    """A randomly initialised scratch_cnn saved as a checkpoint with a complete sidecar; returns the .json path."""
    torch.manual_seed(seed)
    model = create("scratch_cnn", num_classes=2, weights="none").eval()
    meta = {"classes": ["NORMAL", "PNEUMONIA"], "task": "binary", "input_size": size, "resize_policy": policy,
            "intensity": "none", "threshold": 0.5, "temperature": 1.0}
    return save_checkpoint(stem, model, meta)


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    made: dict[tuple, Path] = {}

    def make(policy: str = "squash", size: int = SIZE) -> Path:
        key = (policy, size)
        if key not in made:
            made[key] = save_scratch(tmp_path_factory.mktemp("ckpt") / "model", policy=policy, size=size)
        return made[key]

    return make


@pytest.fixture()
def predictor(checkpoint_factory: Callable[..., Path]) -> Predictor:
    return Predictor(checkpoint_factory("squash"))


@pytest.fixture()
def letterbox_predictor(checkpoint_factory: Callable[..., Path]) -> Predictor:
    return Predictor(checkpoint_factory("letterbox"))


@pytest.fixture(scope="session")
def test_manifest(full_data: Path) -> pd.DataFrame:
    return pd.read_csv(full_data / "manifest.csv", keep_default_na=False, dtype=str)


def pick_paths(manifest: pd.DataFrame, *, split: str, per_class: int, seed: int = 0, original_only: bool = True
               ) -> list[str]:
    """A seeded sample of ``per_class`` paths of each label in ``split`` (NORMAL first)."""
    rows = manifest[(manifest["split"] == split)]
    if original_only:
        rows = rows[rows["source_kind"] == "original"]
    picked = [part.sample(n=per_class, random_state=seed)["path"].tolist()
              for _, part in rows.groupby("label", sort=True)]
    return [p for part in picked for p in part]


@pytest.fixture(scope="session")
def pick(test_manifest: pd.DataFrame) -> Callable[..., list[str]]:
    """``pick(split=..., per_class=...)``: seeded manifest paths, NORMAL first (see ``pick_paths``)."""
    return lambda **kwargs: pick_paths(test_manifest, **kwargs)


@pytest.fixture(scope="session")
def real_paths(full_data: Path, test_manifest: pd.DataFrame) -> list[Path]:
    """Four real test radiographs: 2 normal, then 2 pneumonia."""
    return [full_data / p for p in pick_paths(test_manifest, split="test", per_class=2)]


@pytest.fixture(scope="session")
def real_grays(real_paths: list[Path]) -> list[np.ndarray]:
    """``real_paths`` decoded at their stored resolution."""
    return [load_image(p.read_bytes()) for p in real_paths]
