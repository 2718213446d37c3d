"""`pneumo evaluate --data FOLDER` reads exactly the files `pneumo predict` reads (DICOM without an extension
included), lists by name every file it left out and why, and never overwrites an earlier evaluation silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus import dicom_bytes
from PIL import Image

from pneumo.cli import main
from pneumo.evaluate.labelled import find_labelled
from pneumo.infer.batch import find_inputs


@pytest.fixture()
def hospital(full_data: Path, tmp_path: Path) -> Path:
    """A labelled folder as a site would have it: JPEGs, a PACS export without extension, a broken file, clutter."""
    root = tmp_path / "hospital"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for path in sorted((full_data / "test" / label).glob("*.jpeg"))[:2]:
            shutil.copyfile(path, root / label / path.name)
    with Image.open(sorted((full_data / "test" / "NORMAL").glob("*.jpeg"))[2]) as image:
        (root / "NORMAL" / "IM00000").write_bytes(dicom_bytes(np.asarray(image.convert("L"))))
    (root / "PNEUMONIA" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "NORMAL" / "notes.txt").write_text("exported 2024-05-01")
    (root / "NORMAL" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "README.jpeg").write_bytes(b"no label folder above it")
    return root


def test_evaluate_and_predict_find_the_same_files(hospital: Path) -> None:
    table, left_out = find_labelled(hospital)
    predicted = {str(p.absolute()) for p in find_inputs([str(hospital)]).files}
    assert set(table["path"]) | {str(hospital / "README.jpeg")} == predicted
    assert str(hospital / "NORMAL" / "IM00000") in set(table["path"])
    assert table.set_index("path").loc[str(hospital / "PNEUMONIA" / "broken.jpeg"), "label"] == "PNEUMONIA"
    assert left_out == {str(hospital / "NORMAL" / ".DS_Store"): "hidden file",
                        str(hospital / "NORMAL" / "notes.txt"): "not an image file name (.txt)",
                        str(hospital / "README.jpeg"): "not in a NORMAL/ or PNEUMONIA/ folder: no label"}


def test_evaluate_scores_the_dicom_lists_what_it_left_out_and_never_overwrites_silently(
        hospital: Path, data_slice: Path, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "validation"
    argv = ["evaluate", "--data", str(hospital), "--out", str(out), "--bootstrap", "50", "--no-analysis",
            "--dataset", str(data_slice)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "left out: 4 file(s) (1 unreadable or refused, 3 not read)" in printed
    for name in ("broken.jpeg", "notes.txt", ".DS_Store", "README.jpeg"):
        assert f"{name}: " in printed, name
    assert "warning: Small sample: " in printed  # (the assessed images: 5 read, some may get no verdict)
    ext = json.loads((out / "metrics.json").read_text())["external"]
    assert ext["n"] == 5 and ext["n_unreadable"] == 1 and ext["n_not_read"] == 3
    assert list(ext["unreadable"]) == [str(hospital / "PNEUMONIA" / "broken.jpeg")]
    scored = pd.read_csv(out / "predictions.csv")["path"].map(lambda p: Path(p).name).tolist()
    assert "IM00000" in scored and len(scored) == 5
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "broken.jpeg" in report and "notes.txt" in report and "Small sample" in report

    before = (out / "metrics.json").read_bytes()
    assert main(argv) == 2  # an earlier evaluation: an error, nothing touched
    err = capsys.readouterr().err.strip()
    assert err.startswith("pneumo evaluate: error:") and "--force" in err and len(err.splitlines()) == 1
    assert (out / "metrics.json").read_bytes() == before
    (out / "metrics.json").write_text("{}")
    assert main([*argv, "--force"]) == 0
    assert json.loads((out / "metrics.json").read_text())["external"]["n"] == 5
