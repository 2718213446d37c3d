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
from pneumo.errors import ConfigError, DataError
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
    shutil.copyfile(hospital / "NORMAL" / "IM00000", hospital / "NORMAL" / "IM00001.IMA")  # Siemens PACS: read too
    (hospital / "NORMAL" / "DICOMDIR").write_bytes(dicom_bytes(np.zeros((2, 2), np.uint8)))  # an export's index
    table, left_out = find_labelled(hospital)
    assert str(hospital / "NORMAL" / "IM00001.IMA") in set(table["path"])
    predicted = {str(p.absolute()) for p in find_inputs([str(hospital)]).files}
    assert set(table["path"]) | {str(hospital / "README.jpeg")} == predicted
    assert str(hospital / "NORMAL" / "IM00000") in set(table["path"])
    assert table.set_index("path").loc[str(hospital / "PNEUMONIA" / "broken.jpeg"), "label"] == "PNEUMONIA"
    assert left_out == {str(hospital / "NORMAL" / ".DS_Store"): "hidden file",
                        str(hospital / "NORMAL" / "DICOMDIR"): "a DICOM file-set's index (DICOMDIR), not an image",
                        str(hospital / "NORMAL" / "notes.txt"): "not an image file name (.txt)",
                        str(hospital / "README.jpeg"): "not in a NORMAL/ or PNEUMONIA/ folder: no label"}


def test_evaluate_scores_the_dicom_lists_what_it_left_out_and_never_overwrites_silently(
        hospital: Path, data_slice: Path, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
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
    (out / "figures" / "left-by-an-older-version.png").write_bytes(b"")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C (or a crash) half-way through writing the folder

    monkeypatch.setattr("pneumo.evaluate.report.write_evaluation_report", killed)
    assert main([*argv, "--force"]) == 130
    assert (out / "metrics.json").read_text() == "{}" and (out / "predictions.csv").is_file()  # as it was
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written folder beside it
    monkeypatch.undo()
    assert main([*argv, "--force"]) == 0
    assert json.loads((out / "metrics.json").read_text())["external"]["n"] == 5
    assert not (out / "figures" / "left-by-an-older-version.png").exists()  # the folder holds this evaluation, whole

    run = tmp_path / "runs" / "b"  # --force replaces an earlier evaluation, never a run (its metrics.json too)
    run.mkdir(parents=True)
    for name in ("metrics.json", "model.json", "model.safetensors"):
        (run / name).write_text("the run's")
    assert main([*argv[:3], "--out", str(run), *argv[5:], "--force"]) == 2
    assert "holds other files (model.json, model.safetensors: not an earlier evaluation)" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.json", "model.safetensors"]


def test_hidden_folders_are_listed_not_read(hospital: Path) -> None:
    """A trash or thumbnail folder inside a class folder is not the site's data: its images got the class label."""
    trash = hospital / ".Trash-1000" / "PNEUMONIA"
    trash.mkdir(parents=True)
    shutil.copyfile(hospital / "NORMAL" / min(p.name for p in (hospital / "NORMAL").glob("*.jpeg")),
                    trash / "deleted.jpeg")
    (hospital / "NORMAL" / ".thumbnails").mkdir()
    shutil.copyfile(trash / "deleted.jpeg", hospital / "NORMAL" / ".thumbnails" / "thumb.jpeg")
    table, left_out = find_labelled(hospital)
    assert not table["path"].str.contains("deleted|thumb").any()
    assert left_out[str(hospital / ".Trash-1000")] == left_out[str(hospital / "NORMAL" / ".thumbnails")] == "hidden folder"
    assert not any("deleted" in str(p) or "thumb" in str(p) for p in find_inputs([str(hospital)]).files)


def _csv(folder: Path, text: str) -> Path:
    csv = folder / "labels.csv"
    csv.write_text(text)
    return csv


def test_a_csv_subtype_column_is_the_subtype(hospital: Path) -> None:
    """The CSV's own subtype (a hospital's names say nothing of bacteria or virus) wins over the file-name guess;
    an unknown or contradicting one is an error naming its line."""
    jpegs = {label: sorted(p.name for p in (hospital / label).glob("*.jpeg") if "broken" not in p.name)
             for label in ("NORMAL", "PNEUMONIA")}
    bacterial = next(n for n in jpegs["PNEUMONIA"] if "bacteria" in n)
    csv = _csv(hospital, f"path,label,subtype\nNORMAL/{jpegs['NORMAL'][0]},NORMAL,normal\n"
                         f"PNEUMONIA/{bacterial},PNEUMONIA,Viral\nNORMAL/{jpegs['NORMAL'][1]},NORMAL,\n")
    table = find_labelled(csv)[0].set_index("path")
    assert table.loc[str(hospital / "PNEUMONIA" / bacterial), "subtype"] == "virus"  # the name says bacteria
    assert table.loc[str(hospital / "NORMAL" / jpegs["NORMAL"][1]), "subtype"] == "normal"  # empty: as before
    for cell, message in (("flu", "unknown subtype 'flu'"), ("normal", "subtype 'normal' contradicts the label")):
        bad = _csv(hospital, f"path,label,subtype\n\nPNEUMONIA/{bacterial},PNEUMONIA,{cell}\n")
        with pytest.raises(DataError, match=f":3: {message}"):  # line 3 of the file: the blank line counts
            find_labelled(bad)


def test_a_file_listed_twice_is_refused_by_evaluate_and_operating_point(hospital: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Listed twice (even as ``x/../x``), an image was scored twice by evaluate and operating-point, with two labels
    when they disagreed; adapt already refused it. Now all three read the table the same way."""
    normal = sorted(p.name for p in (hospital / "NORMAL").glob("*.jpeg"))
    pneumonia = sorted(p.name for p in (hospital / "PNEUMONIA").glob("*.jpeg") if "broken" not in p.name)
    csv = _csv(hospital, f"path,label\nNORMAL/{normal[0]},NORMAL\nNORMAL/../NORMAL/{normal[0]},PNEUMONIA\n"
                         f"PNEUMONIA/{pneumonia[0]},PNEUMONIA\n")
    for argv in (["evaluate", "--data", str(csv), "--out", str(tmp_path / "e")],
                 ["operating-point", "--threshold-policy", "youden", "--data", str(csv), "--out", str(tmp_path / "o")],
                 ["adapt", "--data", str(csv), "--out", str(tmp_path / "a")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "1 file(s) listed more than once" in err and len(err.splitlines()) == 1, err
        assert normal[0] in err  # the file is named
    assert not (tmp_path / "o").exists() and not (tmp_path / "a").exists()


def test_csv_mistakes_are_one_line_errors_that_say_what_to_fix(hospital: Path) -> None:
    name = min(p.name for p in (hospital / "NORMAL").glob("*.jpeg"))
    cases = {"path;label\nNORMAL/x.jpeg;NORMAL\n": "separated by semicolons: save it with commas",
             f"path,label\nNORMAL/{name},NORMAL\n,PNEUMONIA\n": ":3: no path",
             "path,label\nsite/NORMAL/x.jpeg,NORMAL\nb.jpeg,PNEUMONIA\n": "relative to its folder",
             f"path,label\nNORMAL/{name},NORMAL\nNORMAL/{name},NORMAL,x\n": "Expected 2 fields in line 3, saw 3",
             "path,label\nNORMAL/a,b.jpeg,NORMAL\n": "more fields than its header",
             # one class: named for what needs both (adapt and operating-point read it too: "external validation" was
             # the wrong operation there)
             f"path,label\nNORMAL/{name},NORMAL\n": "only NORMAL images: sensitivity, specificity and a threshold need"}
    for text, message in cases.items():
        with pytest.raises(DataError, match=message) as caught:
            find_labelled(_csv(hospital, text))
        assert "\n" not in str(caught.value) and "\\n" not in str(caught.value)


def test_operating_point_lists_what_it_left_out_and_warns_on_few_images(hospital: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """As evaluate does: the files not used are named (they were dropped without a word), and a threshold chosen on
    a handful of images says so (adapt's rule: fewer than 30 of each class for youden)."""
    out = tmp_path / "local"
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(hospital), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "left out: 4 file(s)" in captured.out and "broken.jpeg" in captured.out and "README.jpeg" in captured.out
    # (its DICOM files name their patients: counted as patients)
    assert "warning: 2 pneumonia and 3 normal patients: the youden threshold is uncertain" in captured.err
    for name in ("PNEUMONIA/broken.jpeg", "NORMAL/notes.txt", "NORMAL/.DS_Store", "README.jpeg"):
        assert f"  {hospital / name}: " in captured.out
    # the new folder travels: its record counts them and names the labelled set by its name, no path of the site's
    text = (out / "model.json").read_text()
    record = json.loads(text)["operating_point"]
    assert record["chosen_on"]["n_left_out"] == 4 and "left_out" not in record["chosen_on"]
    assert record["chosen_on"]["location"] == hospital.name and str(hospital) not in text and "broken" not in text
    assert record["warning"].startswith("2 pneumonia and 3 normal patients")


def test_a_header_only_csv_and_links_in_csv_paths(hospital: Path, tmp_path: Path) -> None:
    """A CSV with a header and no rows is "no labelled images" (not a KeyError); ``link/../x`` is the file the system
    reads (the link target's parent), not ``x`` beside the link; a ``bacteria`` label with a ``virus`` subtype is an
    error."""
    with pytest.raises(DataError, match="no labelled images"):
        find_labelled(_csv(hospital, "path,label\n\n"))
    nas = tmp_path / "nas" / "images"
    nas.mkdir(parents=True)
    name = min(p.name for p in (hospital / "PNEUMONIA").glob("*.jpeg") if "broken" not in p.name)
    shutil.copyfile(hospital / "PNEUMONIA" / name, nas.parent / name)
    (hospital / "link").symlink_to(nas)
    normal = min(p.name for p in (hospital / "NORMAL").glob("*.jpeg"))
    table = find_labelled(_csv(hospital, f"path,label\nlink/../{name},PNEUMONIA\nNORMAL/{normal},NORMAL\n"))[0]
    path = table.loc[table["label"] == "PNEUMONIA", "path"].item()
    assert Path(path).read_bytes() == (nas.parent / name).read_bytes()
    with pytest.raises(DataError, match="subtype 'virus' contradicts the label"):
        find_labelled(_csv(hospital, f"path,label,subtype\nPNEUMONIA/{name},bacteria,virus\nNORMAL/{normal},0,\n"))


def test_a_derived_model_is_named_and_described_as_itself(hospital: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A model from `operating-point --data` carried the shipped card (its name, its threshold and test figures) and
    its evaluation said the threshold was "chosen on val": now it goes by its folder's name and the report says
    where its threshold was chosen."""
    out = tmp_path / "site-op"
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(hospital), "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert "model_card" not in meta and meta["config"]["name"] == "site-op"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(hospital), "--out", str(tmp_path / "v"),
                 "--no-analysis", "--bootstrap", "20"]) == 0
    assert capsys.readouterr().out.startswith("site-op: external data")
    result = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert result["threshold_chosen_on"] == "5 images of a labelled folder (pneumo operating-point)"
    html = (tmp_path / "v" / "report.html").read_text()
    assert "chosen on 5 images of a labelled folder" in html and "chosen on val)" not in html


def test_files_not_read_are_all_counted_and_the_first_fifty_named(hospital: Path, data_slice: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """A folder linked to /etc inside a site's folder put its 1,076 paths into stdout, report.html and metrics.json
    (the review's finding): other files are counted, and named up to `MAX_LISTED` as the site check names them."""
    from pneumo.data.files import MAX_LISTED

    for i in range(MAX_LISTED + 7):
        (hospital / "NORMAL" / f"export-{i:03d}.txt").write_text("not an image")
        (hospital / "NORMAL" / f"broken-{i:03d}.jpeg").write_bytes(b"\xff\xd8 not a jpeg")  # read, unreadable
    out = tmp_path / "v"
    assert main(["evaluate", "--data", str(hospital), "--out", str(out), "--bootstrap", "0", "--no-analysis",
                 "--dataset", str(data_slice)]) == 0
    printed = capsys.readouterr().out
    ext = json.loads((out / "metrics.json").read_text())["external"]
    assert ext["n_not_read"] == MAX_LISTED + 7 + 3 and len(ext["not_read"]) == MAX_LISTED  # (+ the fixture's 3)
    # the unreadable ones too: a folder linked to / listed all of its ~83k names (a review)
    assert ext["n_unreadable"] == MAX_LISTED + 7 + 1 and len(ext["unreadable"]) == MAX_LISTED
    assert f"left out: {2 * (MAX_LISTED + 7) + 4} file(s)" in printed
    assert "... and 18 more files left out (counted, not named)" in printed
    assert "18 more files left out are counted above, not named" in (out / "report.html").read_text()


def test_by_view_reads_the_view_a_dicom_states(full_data: Path, tmp_path: Path) -> None:
    """A DICOM site has no CSV column for the view, but every file states it: --by view was 'no such column'. (The
    suite's cache: the shipped model's val fold is scored once for every test that validates it, not here again.)"""
    root = tmp_path / "pacs"
    views = {}
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for i, path in enumerate(sorted((full_data / "test" / label).glob("*.jpeg"))[:12]):
            with Image.open(path) as image:
                view = "AP" if i % 2 else "PA"
                (root / label / f"IM{i:05d}").write_bytes(dicom_bytes(np.asarray(image.convert("L")), ViewPosition=view,
                                                                      PatientID=f"MRN-{label}-{i // 2}"))
                views[str(root / label / f"IM{i:05d}")] = view
    out = tmp_path / "v"
    assert main(["evaluate", "--data", str(root), "--by", "view", "--out", str(out), "--bootstrap", "0",
                 "--no-analysis"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv")
    assessed = preds[preds["assessed"] == 1]
    for view in ("AP", "PA"):
        assert result["subgroups"]["view"][view]["n"] == sum(views[p] == view for p in assessed["path"])
    # two films a patient: the intervals count whole patients by the (hashed) PatientID, as pneumo adapt groups them
    # (a review: adapt grouped 46 films into 26 patients, evaluate took each film for a patient)
    from pneumo.evaluate.labelled import patients

    assert result["bootstrap"]["resamples"] == "whole patients (the DICOM PatientID, as a keyed hash)"
    groups = patients(preds[["path", "label"]])
    assert len(set(groups)) == len(preds) // 2 and all((groups == g).sum() == 2 for g in groups)
    assert not any("MRN-" in f.read_text() for f in out.rglob("*") if f.suffix in (".json", ".csv", ".html"))


def test_a_folder_with_a_link_to_one_of_its_files_is_refused_as_a_csv_listing_it_twice(
        hospital: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A link in PNEUMONIA/ to a film in NORMAL/ was scored as two images under two labels (a missed pneumonia that
    is a normal film, a threshold chosen on the pair): a folder is held to the rule a CSV is (a review)."""
    normal = min(p for p in (hospital / "NORMAL").glob("*.jpeg"))
    (hospital / "PNEUMONIA" / "same.jpeg").symlink_to(normal)
    with pytest.raises(DataError, match="1 file.s. listed more than once .e.g. .*same.jpeg; a link to another"):
        find_labelled(hospital)
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(hospital), "--out",
                 str(tmp_path / "o")]) == 2
    assert "listed more than once" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (hospital / "PNEUMONIA" / "same.jpeg").unlink()
    before = len(find_labelled(hospital)[0])
    outside = tmp_path / "elsewhere.jpeg"  # a link to a file outside the folder is one more image, as before
    shutil.copyfile(normal, outside)
    (hospital / "NORMAL" / "linked.jpeg").symlink_to(outside)
    assert len(find_labelled(hospital)[0]) == before + 1


@pytest.mark.parametrize(("header", "row", "twice"), [
    ("path,label,Label", "NORMAL/{name},PNEUMONIA,NORMAL", "label"),
    ("path,Path,label", "NORMAL/{name},NORMAL/{name},NORMAL", "path"),
    ("path,label,patient_id,PatientID", "NORMAL/{name},NORMAL,a,b", "patient_id")])
def test_a_column_under_two_spellings_is_refused_by_every_command_that_reads_it(hospital: Path, header: str, row: str,
                                                                               twice: str) -> None:
    """``label`` and ``Label`` (or ``path``/``Path``, ``patient_id``/``PatientID``): evaluate, operating-point and
    adapt read the last silently and the site check the first (a review): which one is true is not ours to guess."""
    from pneumo.adapt.sources import site_items

    name = min(p.name for p in (hospital / "NORMAL").glob("*.jpeg"))
    csv = _csv(hospital, f"{header}\n{row.format(name=name)}\n")
    with pytest.raises(DataError, match=f"has the {twice} column twice"):
        find_labelled(csv)
    if twice == "path":
        with pytest.raises(DataError, match="has the path column twice"):
            site_items(csv)


def test_by_names_a_padded_header_and_refuses_the_label_itself(hospital: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """`` view `` (a spreadsheet's padding) is ``--by view``, as ``path`` and ``label`` are read padded; ``--by
    label`` said the CSV had no such column."""
    from pneumo.evaluate.labelled import check_columns

    rows = [(f"{label}/{p.name}", label, view) for label, view in (("NORMAL", "AP"), ("PNEUMONIA", "PA"))
            for p in sorted((hospital / label).glob("*.jpeg")) if "broken" not in p.name]
    csv = _csv(hospital, "path,label, view \n" + "".join(f"{p},{lab},{v}\n" for p, lab, v in rows))
    table = check_columns(find_labelled(csv)[0], ("view",), csv)
    assert sorted(set(table["view"])) == ["AP", "PA"]
    assert main(["evaluate", "--data", str(csv), "--by", "label", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "--by label: that is each image's label itself" in err and "no such column" not in err
    # a subgroup of 2 images gets its figures with a word on the console too (the report had one); a value of 10 MB
    # was copied into every output: a subgroup name is short
    assert main(["evaluate", "--data", str(csv), "--by", "view", "--out", str(tmp_path / "v"), "--bootstrap", "0",
                 "--no-analysis"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("view=")]
    assert len(lines) == 2 and all(line.endswith("(small sample: read as rough)") for line in lines)
    long = _csv(hospital, "path,label,view\n" + "".join(f"{p},{lab},{'x' * 101 if lab == 'NORMAL' else v}\n"
                                                      for p, lab, v in rows))
    with pytest.raises(ConfigError, match="--by view: a value of 101 characters"):
        check_columns(find_labelled(long)[0], ("view",), long)


def test_a_class_lost_to_refusals_is_said_for_what_it_is(hospital: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Both pneumonia files unreadable or refused: operating-point said "validation labels hold a single class" of a
    set listing both, and evaluate's report blamed a small sample (a review). Now each names the lost class."""
    for path in (hospital / "PNEUMONIA").glob("*.jpeg"):
        if "broken" not in path.name:
            Image.new("L", (8, 8), 128).save(path, format="JPEG")  # too small: the input gate refuses it
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(hospital), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "all 3 PNEUMONIA image(s) were unreadable, refused by the input gate or withheld" in err, err
    assert "single class" not in err and len(err.splitlines()) == 1
    assert main(["evaluate", "--data", str(hospital), "--out", str(tmp_path / "e"), "--no-analysis",
                 "--bootstrap", "0"]) == 0
    result = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert result["external"]["lost_class"].startswith("all 3 PNEUMONIA image(s) were unreadable")
    assert "All 3 PNEUMONIA image(s) were unreadable" in (tmp_path / "e" / "report.html").read_text()
    assert "PNEUMONIA image(s) were unreadable" in caplog.text and "that class are n/a" in caplog.text


def test_none_readable_names_one_file_and_why(hospital: Path) -> None:
    from pneumo.evaluate.scoring import score_labelled
    from pneumo.infer.predictor import Predictor

    table = find_labelled(hospital)[0]
    for path in table["path"]:
        Image.new("L", (8, 8), 128).save(path, format="PNG")
    with pytest.raises(DataError, match=rf"none of the {len(table)} labelled images could be read or passed the "
                                        r"input gate \(e\.g\. .*: .*\)"):
        score_labelled([Predictor(None)], hospital, table=table)


def test_a_csv_is_read_as_the_bytes_it_holds(hospital: Path) -> None:
    """A 379 KB .csv.gz of 13 M rows was decompressed and read past 4.6 GB; a NUL byte ended its cell silently
    (``n0.jpeg\\0../../etc/passwd`` read as ``n0.jpeg``); ``view`` and ``view `` (or ``view,view``) were read as one
    column or renamed (a review of hostile inputs)."""
    import gzip

    name = min(p.name for p in (hospital / "NORMAL").glob("*.jpeg"))
    packed = hospital / "labels.csv.gz"
    packed.write_bytes(gzip.compress(f"path,label\nNORMAL/{name},NORMAL\n".encode()))
    with pytest.raises(DataError, match="not a text CSV|is not a readable CSV"):
        find_labelled(packed)
    nul = hospital / "nul.csv"
    nul.write_bytes(f"path,label\nNORMAL/{name},NORMAL\nNORMAL/{name}\0../../etc/passwd,PNEUMONIA\n".encode())
    with pytest.raises(DataError, match=r"nul.csv:3: a NUL byte"):
        find_labelled(nul)
    for header in ("path,label,view,view ", "path,label,view,view"):
        with pytest.raises(DataError, match="has the column 'view' twice"):
            find_labelled(_csv(hospital, f"{header}\nNORMAL/{name},NORMAL,AP,PA\n"))


def test_the_evaluation_bar_counts_the_model_calls_not_only_the_decode(
        tiny_model: Path, full_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A volume audit: evaluate's progress bar covered the decode only, then ~90 % of a 2,000-image run was silent."""
    from pneumo.evaluate.scoring import score_labelled
    from pneumo.infer.predictor import Predictor

    manifest = pd.read_csv(full_data / "manifest.csv", dtype=str, keep_default_na=False)
    picks = manifest[manifest["split"] == "test"].groupby("label").head(40)
    for rel, label in zip(picks["path"], picks["label"], strict=True):
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / Path(rel).name).symlink_to(full_data / rel)
    _, _, table, _, images, _ = score_labelled([Predictor(tiny_model)], tmp_path, progress=True)
    assert images.shape == (len(table), 64, 64) and len(table) == 80
    err = capsys.readouterr().err
    assert "decode: 100%" in err and "score: 100%" in err and "3/3" in err  # 80 images: 3 model calls of 32
