"""A folder nested deeper than Python's recursion limit (red team, round 4, item 6): `pneumo predict` on 1,100 levels
ended in a RecursionError traceback. The walk of `pneumo.data.files` (predict, evaluate --data) keeps its own stack."""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pneumo.cli import main
from pneumo.data.files import find_images

LEVELS = 1100


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    """``deep/d/d/...`` 1,100 levels, with ``x.jpeg`` and a ``notes.txt`` at the bottom and ``a.jpeg`` at the top;
    removed bottom-up afterwards (``shutil.rmtree`` recurses once per level as well)."""
    assert LEVELS > sys.getrecursionlimit()
    bottom = tmp_path / "deep"
    for _ in range(LEVELS + 1):  # one level at a time: Path.mkdir(parents=True) recurses too
        bottom.mkdir()
        bottom = bottom / "d"
    bottom = bottom.parent
    (bottom / "x.jpeg").write_bytes(b"\xff\xd8\xff")
    (bottom / "notes.txt").write_text("not an image")
    (tmp_path / "deep" / "a.jpeg").write_bytes(b"\xff\xd8\xff")
    yield tmp_path / "deep"
    for path in (bottom / "x.jpeg", bottom / "notes.txt", tmp_path / "deep" / "a.jpeg"):
        path.unlink(missing_ok=True)
    while bottom != tmp_path:
        os.rmdir(bottom)
        bottom = bottom.parent


def test_a_folder_deeper_than_the_recursion_limit_is_walked(deep: Path) -> None:
    found = find_images(deep)
    bottom = deep.joinpath(*["d"] * LEVELS)
    assert found.images == [deep / "a.jpeg", bottom / "x.jpeg"]  # sorted by path, as before
    assert found.ignored == {bottom / "notes.txt": "not an image file name (.txt)"} and found.skipped == {}


def test_predict_reads_an_image_1100_levels_deep(deep: Path, full_data: Path, tiny_model: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    image = deep.joinpath(*["d"] * LEVELS, "x.jpeg")
    shutil.copyfile(full_data / "test" / "NORMAL" / "IM-0001-0001.jpeg", image)
    (deep / "a.jpeg").unlink()
    assert main(["predict", str(deep), "--model", str(tiny_model), "--backend", "torch"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["path"].endswith("/d/d/x.jpeg") and not rows[0]["error"]
    assert 0.0 <= float(rows[0]["p_pneumonia"]) <= 1.0
