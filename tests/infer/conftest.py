"""Fixtures for the input-decoding tests: the generated bad-input corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import CorpusCase, build_corpus


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
