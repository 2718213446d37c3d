from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pneumo.data.manifest import patient_key, scan_dataset
from pneumo.errors import DataError


def test_scan_of_the_real_slice_matches_the_shipped_manifest(data_slice: Path) -> None:
    df = scan_dataset(data_slice)
    shipped = pd.read_csv(data_slice / "manifest.csv", keep_default_na=False, dtype=str).set_index("path")
    assert len(df) == len(shipped)
    scanned = df.set_index("path").loc[shipped.index]
    for column in ("split", "label", "subtype", "patient_key", "source_kind"):
        assert (scanned[column] == shipped[column]).all(), column
    assert (df["width"].astype(str).to_numpy() == shipped.loc[df["path"], "width"].to_numpy()).all()


def test_patient_keys_separate_bacteria_and_virus_sequences() -> None:
    assert patient_key("person1954_bacteria_4886.jpeg", "PNEUMONIA") == "bacteria-1954"
    assert patient_key("person1954_virus_4887.jpeg", "PNEUMONIA") == "virus-1954"
    assert patient_key("IM-0001-0001.jpeg", "NORMAL") == "IM-0001"
    assert patient_key("NORMAL2-IM-0095-0001.jpeg", "NORMAL") == "NORMAL2-IM-0095"


def test_patient_key_rule_reproduces_every_key_of_the_full_dataset(full_data: Path) -> None:
    meta = pd.read_csv(full_data / "manifest.csv", keep_default_na=False, dtype=str)
    keys = [patient_key(Path(p).name, label) for p, label in zip(meta["path"], meta["label"])]
    assert keys == meta["patient_key"].tolist()


def test_exact_duplicates_share_a_group(data_slice: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(data_slice, root)
    first = min((root / "train" / "NORMAL").iterdir())
    shutil.copyfile(first, first.with_name("IM-9999-0001.jpeg"))
    df = scan_dataset(root)
    groups = df[df["dup_group"] != ""]
    assert sorted(groups["path"].str.split("/").str[-1]) == sorted([first.name, "IM-9999-0001.jpeg"])
    assert groups["dup_group"].nunique() == 1


def test_mendeley_layout_read_straight_from_a_zip(data_slice: Path, tmp_path: Path) -> None:
    archive = tmp_path / "ChestXRay2017.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(data_slice.rglob("*.jpeg")):
            rel = path.relative_to(data_slice)
            split = "test" if rel.parts[0] == "test" else "train"  # Mendeley: val is part of train
            zf.write(path, f"chest_xray/{split}/{rel.parts[1]}/{rel.name}")
        zf.writestr("__MACOSX/chest_xray/train/NORMAL/._junk.jpeg", b"\x00junk")
    df = scan_dataset(archive)
    assert set(df["split"]) == {"train", "test"}
    assert len(df) == len(list(data_slice.rglob("*.jpeg")))


def test_unreadable_files_are_skipped_and_listed_in_one_warning(
    data_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ds"
    shutil.copytree(data_slice, root)
    good = min((root / "train" / "NORMAL").iterdir()).read_bytes()
    (root / "train" / "NORMAL" / "IM-8000-0001.jpeg").write_bytes(good[: len(good) // 3])  # truncated
    (root / "train" / "NORMAL" / "IM-8001-0001.jpeg").write_bytes(b"<html>not an image</html>")
    (root / "train" / "NORMAL" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        df = scan_dataset(root)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for name in ("IM-8000-0001.jpeg", "IM-8001-0001.jpeg", "notes.txt"):
        assert name in warnings[0].getMessage()
        assert not df["path"].str.endswith(name).any()


def test_folder_without_a_class_names_what_is_missing(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split / "PNEUMONIA").mkdir(parents=True)
        Image.new("L", (40, 30), 90).save(tmp_path / split / "PNEUMONIA" / "person1_virus_1.jpeg")
    with pytest.raises(DataError, match="NORMAL"):
        scan_dataset(tmp_path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train"):
        scan_dataset(tmp_path)


def test_missing_dataset_names_the_option_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    with pytest.raises(DataError, match="PNEUMO_DATA"):
        scan_dataset(None)
