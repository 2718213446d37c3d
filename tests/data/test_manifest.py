from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo.data.cache import build_cache
from pneumo.data.decode import load_image_file
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


def test_a_zip_whose_folders_are_separated_by_backslashes_is_read(data_slice: Path, tmp_path: Path) -> None:
    """Windows PowerShell 5.1's Compress-Archive writes "chest_xray\\train\\NORMAL\\x.jpeg": the scan said the zip had
    no train/NORMAL folder (data review)."""
    archive = tmp_path / "windows.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(data_slice.rglob("*.jpeg")):
            zf.write(path, "chest_xray\\" + "\\".join(path.relative_to(data_slice).parts))
    df = scan_dataset(archive)
    assert len(df) == len(list(data_slice.rglob("*.jpeg"))) and set(df["split"]) == {"train", "val", "test"}
    assert df["path"].str.contains("/").all() and not df["path"].str.contains("\\", regex=False).any()
    cache = build_cache(df.head(4), archive, size=32, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert cache.images.shape == (4, 32, 32)  # the members are read back by their stored names


def test_a_zip_with_another_data_set_beside_the_layout_is_read(data_slice: Path, tmp_path: Path) -> None:
    """Mendeley's ZhangLabData.zip holds CellData/chest_xray and CellData/OCT (train/ x CNV, DME, DRUSEN, NORMAL): OCT
    counted as a second copy of the layout, and the error said to give --dataset a folder inside the zip."""
    archive = tmp_path / "ZhangLabData.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(data_slice.rglob("*.jpeg")):
            rel = path.relative_to(data_slice)
            zf.write(path, f"CellData/chest_xray/{rel.as_posix()}")
        for kind in ("CNV", "NORMAL"):
            zf.writestr(f"CellData/OCT/train/{kind}/{kind}-1-1.jpeg", b"\x00")
    df = scan_dataset(archive)
    assert len(df) == len(list(data_slice.rglob("*.jpeg")))
    with zipfile.ZipFile(archive, "a") as zf:  # a real second copy: an error that says to unzip first
        zf.writestr("CellData/copy/train/NORMAL/IM-0001-0001.jpeg", b"\x00")
        zf.writestr("CellData/copy/train/PNEUMONIA/person1_virus_1.jpeg", b"\x00")
    with pytest.raises(DataError, match=r"copies of the dataset layout .* \(unzip it first\)"):
        scan_dataset(archive)


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
    assert "or DICOM" in warnings[0].getMessage()  # the reason whole (it was cut at 80 characters: "WebP or DIC")


def _dicom(gray: np.ndarray) -> bytes:
    """A 16-bit MONOCHROME2 DICOM file (Part 10) holding ``gray``."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, "1.2.3.4", "CR"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (gray.astype(np.uint16) * 257).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_scan_keeps_what_the_decoder_reads_dicom_included_and_the_cache_builds(
    data_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One rule with `pneumo predict`: DICOM files in the class folders are images (they were skipped as "not an
    image file name"), and a file Pillow opens but the decoder refuses (an animated PNG) is skipped by the scan
    (it was kept, and building the cache then failed)."""
    root = tmp_path / "ds"
    shutil.copytree(data_slice, root)
    normal = root / "train" / "NORMAL"
    gray = load_image_file(min(normal.glob("*.jpeg")))
    (normal / "IM-7000-0001.dcm").write_bytes(_dicom(gray))
    (normal / "IM-7001-0001").write_bytes(_dicom(gray[:, ::2].copy()))  # PACS export: no suffix
    frames = [Image.fromarray(gray), Image.fromarray(255 - gray)]
    frames[0].save(normal / "IM-7002-0001.png", save_all=True, append_images=frames[1:])  # animated PNG
    with caplog.at_level(logging.WARNING):
        df = scan_dataset(root)
    rows = df.set_index("path")
    assert rows.loc["train/NORMAL/IM-7000-0001.dcm", ["width", "height"]].tolist() == [gray.shape[1], gray.shape[0]]
    assert rows.loc["train/NORMAL/IM-7001-0001", "width"] == (gray.shape[1] + 1) // 2
    assert "train/NORMAL/IM-7002-0001.png" not in rows.index
    assert "IM-7002-0001.png (multi-frame PNG" in caplog.text
    cache = build_cache(df, root, size=32, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert cache.images.shape == (len(df), 32, 32)
    dcm = cache.images[df.index[df["path"] == "train/NORMAL/IM-7000-0001.dcm"][0]]
    jpeg = cache.images[df.index[df["path"] == f"train/NORMAL/{min(normal.glob('*.jpeg')).name}"][0]]
    assert np.corrcoef(dcm.ravel(), jpeg.ravel())[0, 1] > 0.99  # the same image (16 bits: stretched to its range)


def test_folder_without_a_class_names_what_is_missing(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split / "PNEUMONIA").mkdir(parents=True)
        Image.new("L", (40, 30), 90).save(tmp_path / split / "PNEUMONIA" / "person1_virus_1.jpeg")
    with pytest.raises(DataError, match="NORMAL"):
        scan_dataset(tmp_path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train"):
        scan_dataset(tmp_path)
    for split in ("train", "test"):  # the class folders there but empty: "no image under", not "no folder" (an audit)
        for label in ("NORMAL", "PNEUMONIA"):
            (tmp_path / split / label).mkdir(parents=True)
    with pytest.raises(DataError, match="has no image under a train/NORMAL or train/PNEUMONIA folder"):
        scan_dataset(tmp_path)


def test_a_truncated_archive_says_what_it_probably_is(data_slice: Path, tmp_path: Path) -> None:
    archive = Path(shutil.make_archive(str(tmp_path / "chest_xray"), "zip", data_slice))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # a download stopped half-way
    with pytest.raises(DataError, match=r"a truncated or damaged download\? fetch it again"):
        scan_dataset(cut)


def test_missing_dataset_names_the_option_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    with pytest.raises(DataError, match="PNEUMO_DATA"):
        scan_dataset(None)


def _small(data_slice: Path, root: Path) -> Path:
    """The slice's train and test folders under ``root`` (val left out: the Mendeley layout)."""
    for split in ("train", "test"):
        shutil.copytree(data_slice / split, root / split)
    return root


def test_linked_split_folders_are_read_and_two_copies_of_the_layout_are_an_error(data_slice: Path,
                                                                                  tmp_path: Path) -> None:
    """os.walk did not follow a linked split folder: its images were left out silently. Two copies of the layout at
    one depth were read by a coin toss (the hash seed): now an error naming them."""
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copytree(data_slice / "train", linked / "train")
    (linked / "test").symlink_to(data_slice / "test")
    assert (scan_dataset(linked)["split"] == "test").sum() == len(list((data_slice / "test").rglob("*.jpeg")))
    two = tmp_path / "two"
    _small(data_slice, two / "copy1")
    _small(data_slice, two / "copy2")
    with pytest.raises(DataError, match="holds 2 copies of the dataset layout .copy1, copy2.: give --dataset one"):
        scan_dataset(two)


def test_what_the_scan_cannot_use_is_listed_and_what_a_split_cannot_see_is_said(
        data_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another class folder, a subfolder of a class and a dangling link are listed (the first two were dropped
    without a word, the link was a traceback); a lower-case IM name is the same patient; names without a patient
    and a file under both labels are warned about; another tool's manifest.csv is not read as the project's."""
    root = _small(data_slice, tmp_path / "ds")
    normal = sorted((root / "train" / "NORMAL").glob("*.jpeg"))
    (root / "train" / "COVID").mkdir()
    shutil.copyfile(normal[0], root / "train" / "COVID" / "c1.jpeg")
    (root / "train" / "NORMAL" / "old").mkdir()
    shutil.copyfile(normal[0], root / "train" / "NORMAL" / "old" / "IM-9100-0001.jpeg")
    (root / "train" / "NORMAL" / "IM-9200-0001.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    shutil.copyfile(normal[1], root / "train" / "NORMAL" / "im-9300-0002.jpeg")
    shutil.copyfile(normal[2], root / "train" / "NORMAL" / "IM-9300-0003.jpeg")
    shutil.copyfile(normal[3], root / "train" / "NORMAL" / "scan17.jpeg")
    shutil.copyfile(normal[4], root / "train" / "PNEUMONIA" / "person9400_bacteria_1.jpeg")
    sick = min((root / "train" / "PNEUMONIA").glob("*.jpeg"))
    shutil.copyfile(sick, root / "train" / "PNEUMONIA" / "person9401_bact_1.jpeg")  # no subtype in the name
    (root / "train" / "NORMAL" / "IM-9800-0001.jpeg").symlink_to(root / "train" / "NORMAL" / "IM-9800-0001.jpeg")
    (root / "validation" / "NORMAL").mkdir(parents=True)  # a split folder under another name: was left out silently
    shutil.copyfile(normal[5], root / "validation" / "NORMAL" / "IM-9600-0001.jpeg")
    shutil.copyfile(normal[5], root / "train" / "loose.jpeg")
    (root / "chest_xray" / "train" / "NORMAL").mkdir(parents=True)  # a nested copy of the layout: not listed
    shutil.copyfile(normal[5], root / "chest_xray" / "train" / "NORMAL" / "IM-9700-0001.jpeg")
    (root / "manifest.csv").write_text("")
    with caplog.at_level(logging.WARNING):
        df = scan_dataset(root)
    text = caplog.text
    assert "train/COVID/c1.jpeg (not in a NORMAL/ or PNEUMONIA/ folder)" in text
    assert "train/NORMAL/old/IM-9100-0001.jpeg (in a subfolder of NORMAL/" in text
    # a dangling link and a link to itself, in the words `pneumo predict` uses (were errno texts)
    assert "train/NORMAL/IM-9200-0001.jpeg (dangling symlink (its target does not exist))" in text
    assert "train/NORMAL/IM-9800-0001.jpeg (symlink loop)" in text and "Errno" not in text
    assert "validation/NORMAL/IM-9600-0001.jpeg (not under a train/, val/, test/ folder)" in text
    assert "train/loose.jpeg (not in a NORMAL/ or PNEUMONIA/ folder)" in text and "IM-9700" not in text
    keys = df.set_index("path")["patient_key"]
    assert keys["train/NORMAL/im-9300-0002.jpeg"] == keys["train/NORMAL/IM-9300-0003.jpeg"] == "IM-9300"
    assert "2 image(s) have names that carry no patient" in text and "e.g. train/NORMAL/scan17.jpeg" in text
    assert "1 PNEUMONIA image(s) say neither bacteria nor virus in their names (e.g. " \
           "train/PNEUMONIA/person9401_bact_1.jpeg)" in text  # (3-class runs refuse them: said at the scan)
    assert "1 image(s) are in both NORMAL and PNEUMONIA folders" in text


def test_a_folder_link_into_the_dataset_itself_is_not_followed_and_hides_nothing(
        data_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Followed first (a walk meets test/ before val/), a link in test/NORMAL/ to ../../val made the real val/ a
    folder already seen: its images were dropped, and a link to train/ hid train/ (the scan said the dataset had no
    train folder). Such a link is listed, not followed; a split folder linked from elsewhere is still read."""
    root = tmp_path / "copy"
    shutil.copytree(data_slice, root)
    (root / "test" / "NORMAL" / "old_val").symlink_to(Path("..", "..", "val"))
    (root / "test" / "PNEUMONIA" / "train_link").symlink_to(Path("..", "..", "train"))
    with caplog.at_level(logging.WARNING):
        scanned = scan_dataset(root)
    plain = scan_dataset(data_slice)
    assert sorted(scanned["path"]) == sorted(plain["path"]) and (scanned["split"] == "val").sum() > 0
    assert "test/NORMAL/old_val/ (a link to a folder of the dataset itself: not followed)" in caplog.text
    assert "test/PNEUMONIA/train_link/ (a link to a folder of the dataset itself" in caplog.text


def test_a_file_name_that_is_not_utf8_is_cached(data_slice: Path, tmp_path: Path) -> None:
    root = _small(data_slice, tmp_path / "ds")
    normal = root / "train" / "NORMAL"
    odd = os.fsdecode(b"IM-9500-0001\xff.jpeg")  # not UTF-8: a surrogate in the str
    shutil.copyfile(min(normal.glob("*.jpeg")), normal / odd)
    df = scan_dataset(root)
    cache = build_cache(df, root, size=32, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert cache.images.shape[0] == len(df) and any(odd in p for p in df["path"])


def test_a_second_scan_reads_no_image_until_a_file_changes(data_slice: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Every `pneumo evaluate` of a model whose val fold is rebuilt scanned the whole dataset again: ~10 s of reading
    and hashing the 5,856 Kermany images. The scan is kept in the cache; a file added, changed or removed scans again."""
    from pneumo.data.manifest import DatasetSource

    root, cache = tmp_path / "ds", tmp_path / "cache"
    shutil.copytree(data_slice, root)
    (root / "train" / "NORMAL" / "IM-8001-0001.jpeg").write_bytes(b"<html>not an image</html>")
    first = scan_dataset(root, cache_dir=cache)
    real_read = DatasetSource.read
    reads: list[str] = []
    monkeypatch.setattr(DatasetSource, "read", lambda self, rel: reads.append(rel) or real_read(self, rel))
    with caplog.at_level(logging.WARNING):
        again = scan_dataset(root, cache_dir=cache)
    assert [r for r in reads if r != "manifest.csv"] == []  # the project's manifest.csv only (source_kind)
    pd.testing.assert_frame_equal(again, first)
    assert again.attrs["skipped"] == first.attrs["skipped"] and "IM-8001-0001.jpeg" in caplog.text  # still said
    changed = min((root / "test" / "PNEUMONIA").iterdir())
    changed.write_bytes(changed.read_bytes()[:200])  # truncated: no longer readable
    third = scan_dataset(root, cache_dir=cache)
    assert changed.name not in set(third["path"].str.split("/").str[-1]) and len(third) == len(first) - 1
    assert scan_dataset(root, cache_dir=tmp_path / "other").equals(third)  # the same as a fresh scan
    from pneumo import atomic

    def read_only(path, payload, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "write_json", read_only)  # a read-only cache: scanned each time, no error
    (root / "test" / "NORMAL" / "IM-8002-0001.jpeg").write_bytes(min((root / "train" / "NORMAL").glob("IM-0*")).read_bytes())
    assert len(scan_dataset(root, cache_dir=cache)) == len(third) + 1


def test_a_kept_scan_is_not_trusted_past_a_replaced_file_or_a_hand_edit(data_slice: Path, tmp_path: Path) -> None:
    """A file replaced with its size and mtime kept (cp -p, rsync -t) kept the old hash, and a hand-edited kept scan
    could flip labels or name files outside the dataset: the key has the change time and inode, and the labels,
    splits and names always come from the listing."""
    import json

    root, cache = tmp_path / "ds", tmp_path / "cache"
    shutil.copytree(data_slice, root)
    first = scan_dataset(root, cache_dir=cache)
    target = root / first["path"].iloc[0]
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, another file
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime, as cp -p leaves it
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    again = scan_dataset(root, cache_dir=cache).set_index("path")["sha256"]
    assert again.get(first["path"].iloc[0]) != first["sha256"].iloc[0]  # read again (or skipped), not the kept hash
    kept = next((cache / "scans").glob("*.json"))
    assert len(list((cache / "scans").glob("*.json"))) == 1  # the location's older scan was removed
    edited = json.loads(kept.read_text())
    edited["read"]["../../outside.jpeg"] = edited["read"].pop(first["path"].iloc[1])
    kept.write_text(json.dumps(edited))
    fresh = scan_dataset(root, cache_dir=cache)
    assert "../../outside.jpeg" not in set(fresh["path"]) and first["path"].iloc[1] in set(fresh["path"])
    kept = next((cache / "scans").glob("*.json"))
    kept.write_text(json.dumps({"read": "abc", "skipped": {}}))
    assert scan_dataset(root, cache_dir=cache)[["path", "label", "split"]].equals(fresh[["path", "label", "split"]])


def test_generic_names_in_two_folders_are_two_patients_and_two_duplicate_groups(data_slice: Path,
                                                                              tmp_path: Path) -> None:
    """A name that carries no patient made the file stem the patient: two different images called 0001.jpeg in train
    and test were one patient straddling the splits (`data split` refused a correct dataset), and duplicate groups
    named by a stem merged two unrelated groups in the report (data review)."""
    from pneumo.cli import main
    from pneumo.data.splits import check_leakage

    root = _small(data_slice, tmp_path / "ds")
    train, test = sorted((root / "train" / "PNEUMONIA").glob("*.jpeg")), sorted((root / "test" / "PNEUMONIA").glob("*.jpeg"))
    train[0].rename(train[0].with_name("0001.jpeg"))
    test[0].rename(test[0].with_name("0001.jpeg"))
    for folder, image in ((root / "train" / "NORMAL", train[1]), (root / "test" / "PNEUMONIA", test[1])):
        shutil.copyfile(image, folder / "x.jpeg")  # two byte-identical pairs, each named x.jpeg / y.jpeg
        shutil.copyfile(image, folder / "y.jpeg")
    df = scan_dataset(root).set_index("path")
    assert df.loc["train/PNEUMONIA/0001.jpeg", "patient_key"] != df.loc["test/PNEUMONIA/0001.jpeg", "patient_key"]
    check_leakage(df.reset_index(), column="split")  # no patient in two official splits
    groups = df.loc[["train/NORMAL/x.jpeg", "train/NORMAL/y.jpeg", "test/PNEUMONIA/x.jpeg", "test/PNEUMONIA/y.jpeg"],
                    "dup_group"]
    assert groups.iloc[0] == groups.iloc[1] != groups.iloc[2] == groups.iloc[3]
    assert main(["data", "split", "--dataset", str(root), "--output", str(tmp_path / "folds.csv")]) == 0


def test_a_dataset_that_is_not_there_says_from_where_it_was_looked_for_and_what_to_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Older runs record their dataset as typed (`data`): from another folder it was "dataset not found: data", with
    no word of where it was looked for or of --dataset (an upgrade review)."""
    from pneumo.data.manifest import resolve_root

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"dataset not found: data, relative to {tmp_path}: pass --dataset DIR"):
        resolve_root("data")
    with pytest.raises(DataError, match=r"not found: /nowhere/data: pass --dataset DIR"):
        resolve_root("/nowhere/data")


def test_hidden_folders_are_not_walked(data_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A git-annex copy's ``.git/annex/objects`` (and ``.Trash-1000/``, ``.thumbnails/``) were walked and listed as
    skipped by every data command, while `pneumo predict` reads no hidden folder (a data audit)."""
    root = tmp_path / "copy"
    shutil.copytree(data_slice, root)
    image = next((root / "train" / "NORMAL").glob("*.jpeg"))
    for hidden in (root / ".git" / "annex" / "objects", root / ".Trash-1000" / "NORMAL",
                   root / "train" / "NORMAL" / ".thumbnails"):
        hidden.mkdir(parents=True)
        shutil.copyfile(image, hidden / "copy.jpeg")
    with caplog.at_level(logging.WARNING):
        scanned = scan_dataset(root)
    assert len(scanned) == len(scan_dataset(data_slice)) and not scanned["path"].str.contains("/.", regex=False).any()
    assert ".git" not in caplog.text and ".Trash" not in caplog.text and ".thumbnails" not in caplog.text
