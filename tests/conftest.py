"""Shared fixtures: a small real slice of ../shared/data in the Kaggle layout, and a tmp cache dir."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from corpus import CorpusCase, build_corpus

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several test processes (pytest-xdist): one thread each, so the
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers share the cores instead of fighting over them (also in
    os.environ.setdefault("MKL_NUM_THREADS", "1")  # the subprocesses they start)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PNEUMO_TEST_DATA", REPO.parent / "shared" / "data" / "chest_xray"))
PER_GROUP = 12  # images per split x subtype in the slice


@pytest.fixture(autouse=True, scope="session")
def _threads_per_worker() -> None:
    """One torch thread in each pytest-xdist worker (see above); the default elsewhere."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def full_data() -> Path:
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def _pick(meta: pd.DataFrame) -> pd.DataFrame:
    """Whole patients, deterministic: the first patients (by key) of each split x subtype until PER_GROUP images."""
    parts = []
    for _, part in meta.groupby(["split", "subtype"], sort=True):
        part = part.sort_values(["patient_key", "path"])
        keys = part["patient_key"].drop_duplicates().tolist()
        chosen, count = [], 0
        for key in keys:
            n = int((part["patient_key"] == key).sum())
            if count + n > PER_GROUP and count:
                continue
            chosen.append(key)
            count += n
            if count >= PER_GROUP:
                break
        parts.append(part[part["patient_key"].isin(chosen)])
    return pd.concat(parts)


@pytest.fixture(scope="session")
def data_slice(full_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a small real slice of the dataset (Kaggle layout + manifest.csv), ~12 images per split x subtype."""
    meta = pd.read_csv(full_data / "manifest.csv", keep_default_na=False, dtype=str)
    picked = _pick(meta)
    root = tmp_path_factory.mktemp("chest_xray_slice")
    for rel in picked["path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(full_data / rel, root / rel)
    picked.to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("PNEUMO_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real checkpoint (scratch CNN, 64 px, seeded random weights) with a full sidecar; returns its .json."""
    import torch

    from pneumo.models import create
    from pneumo.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create("scratch_cnn", num_classes=2, weights="none")
    stem = tmp_path_factory.mktemp("tiny_model") / "model"
    meta = {"task": "binary", "classes": ["NORMAL", "PNEUMONIA"], "input_size": 64, "resize_policy": "squash",
            "intensity": "none", "mode": "scratch", "threshold": 0.5, "threshold_policy": "youden",
            "temperature": 1.5}
    save_checkpoint(stem, model, meta)
    return stem.with_suffix(".json")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusCase]:
    """Every corpus case written once per session, by name."""
    return {case.name: case for case in build_corpus(tmp_path_factory.mktemp("input_corpus"))}


@pytest.fixture(scope="session")
def largest_test_jpeg(full_data: Path) -> Path:
    """The test-split JPEG with the most pixels (826 x 320 in the shipped copy): a wide, real radiograph."""
    import pandas as pd

    meta = pd.read_csv(full_data / "manifest.csv", usecols=["path", "split", "width", "height"])
    test = meta[meta["split"] == "test"]
    return full_data / test.loc[(test["width"] * test["height"]).idxmax(), "path"]
