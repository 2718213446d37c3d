"""`pneumo predict --format csv` never writes a cell a spreadsheet would run as a formula (file names starting with
=, +, -, @): such cells get a leading quote; numbers and ordinary names are unchanged."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest

from pneumo.cli import main

DANGEROUS = ["=1+1.jpeg", "+SUM(1).jpeg", "-2+3.jpeg", "@cmd.jpeg"]


def test_file_names_that_look_like_formulas_are_written_as_text(full_data: Path, tiny_model: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    xray = min((full_data / "test" / "NORMAL").glob("*.jpeg"))
    for name in [*DANGEROUS, "plain.jpeg"]:
        shutil.copyfile(xray, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert main(["predict", *(f"./{name}" for name in DANGEROUS), "plain.jpeg", "--model", str(tiny_model)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(row["path"] for row in rows) == sorted([*(f"'{name}" for name in DANGEROUS), "plain.jpeg"])
    assert len({row["p_pneumonia"] for row in rows}) == 1  # the same image five times, numbers untouched
    assert 0.0 <= float(rows[0]["p_pneumonia"]) <= 1.0
