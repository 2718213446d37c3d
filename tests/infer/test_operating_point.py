"""`pneumo operating-point --data FOLDER|CSV`: a threshold chosen on the user's own labelled images, written to a new
model folder; the source model is left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo.cli import main
from pneumo.data.decode import load_image_file
from pneumo.evaluate.intervals import exact_interval
from pneumo.evaluate.metrics import binary_metrics
from pneumo.infer.predictor import Predictor


def _labelled_folder(full_data: Path, root: Path, per_class: int = 3) -> Path:
    """NORMAL/ and PNEUMONIA/ with the first ``per_class`` test images of each (copies, in tmp)."""
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for image in sorted((full_data / "test" / label).glob("*.jpeg"))[:per_class]:
            shutil.copyfile(image, root / label / image.name)
    return root


def test_operating_point_on_a_labelled_folder_writes_a_new_model_and_leaves_the_source_alone(
        tiny_model: Path, full_data: Path, tmp_path: Path) -> None:
    val = _labelled_folder(full_data, tmp_path / "local_val")
    source = {path.name: path.read_bytes() for path in tiny_model.parent.iterdir()}
    out = tmp_path / "tiny-sens90"
    assert main(["operating-point", "--model", str(tiny_model), "--threshold-policy", "sensitivity:0.9", "--data", str(val),
                 "--out", str(out)]) == 0
    assert {path.name: path.read_bytes() for path in tiny_model.parent.iterdir()} == source  # sidecar + weights

    meta = json.loads((out / "model.json").read_text())
    point = meta["operating_point"]
    chosen = point["chosen_on"]
    assert chosen["kind"] == "labelled folder" and chosen["location"] == val.name  # the site's path stays here
    assert chosen["n"] == 6 and chosen["n_pneumonia"] == 3
    assert point["policy"] == meta["threshold_policy"] == "sensitivity:0.90"  # in one spelling
    assert meta["threshold"] == point["threshold"] and point["derived_from"]["model"] == f"{tiny_model.parent.name}/{tiny_model.name}"
    # the threshold is the one these six images give: recomputed from the source model's own predictions
    paths = sorted(str(p) for p in val.rglob("*.jpeg"))
    p = np.array([r.p_pneumonia for r in Predictor(tiny_model).predict([load_image_file(x) for x in paths])])
    y = np.array([Path(path).parent.name == "PNEUMONIA" for path in paths], dtype=np.int64)
    at = binary_metrics(y, p, point["threshold"])
    assert at["sensitivity"] >= 0.9 and at["sensitivity"] == chosen["sensitivity"]
    assert at["specificity"] == chosen["specificity"]



def test_an_operating_point_that_fails_half_way_leaves_no_model_folder(tiny_model: Path, full_data: Path,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The new folder appears whole or not at all: weights copied but no sidecar would load as a broken model."""
    val = _labelled_folder(full_data, tmp_path / "local_val", per_class=2)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pneumo.evaluate.derive.write_meta", disk_full)
    argv = ["operating-point", "--model", str(tiny_model), "--threshold-policy", "youden", "--data", str(val),
            "--out", str(tmp_path / "new")]
    assert main(argv) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local_val"]


def test_operating_point_on_a_csv_records_a_csv_and_the_threshold_the_folder_gives(tiny_model: Path, full_data: Path,
                                                                                   tmp_path: Path) -> None:
    val = _labelled_folder(full_data, tmp_path / "local_val")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(val.rglob("*.jpeg"))))
    for data, out in ((val, tmp_path / "from-folder"), (csv, tmp_path / "from-csv")):
        assert main(["operating-point", "--model", str(tiny_model), "--threshold-policy", "youden", "--data", str(data),
                     "--out", str(out)]) == 0
    folder, table = (json.loads((tmp_path / name / "model.json").read_text())["operating_point"]
                     for name in ("from-folder", "from-csv"))
    assert table["chosen_on"]["kind"] == "labelled CSV" and folder["chosen_on"]["kind"] == "labelled folder"
    assert table["threshold"] == folder["threshold"] and table["chosen_on"]["n"] == 6


def test_the_threshold_is_chosen_on_the_images_the_model_gives_a_verdict(full_data: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """A turned film gets no label from predict (the shipped model's orientation check), so it must not move the
    threshold either: chosen on the assessed images, the others counted."""
    from PIL import Image

    from pneumo.evaluate.metrics import choose_threshold
    from pneumo.models.orientation import transform

    val = _labelled_folder(full_data, tmp_path / "site")
    turned = load_image_file(sorted((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))[5])
    Image.fromarray(transform(turned[None], "rotated 90°")[0]).save(val / "PNEUMONIA" / "turned.png")
    out = tmp_path / "shipped-youden"
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(val), "--out", str(out)]) == 0
    chosen = json.loads((out / "model.json").read_text())["operating_point"]
    printed = capsys.readouterr().out
    assert f"{chosen['chosen_on']['n_not_assessed']} without a verdict left out" in printed and "--data HELD_OUT" in printed
    paths = sorted(str(p) for p in val.rglob("*.*g"))
    results = Predictor(None).predict([load_image_file(p) for p in paths])
    kept = [(int("PNEUMONIA" in p), r.p_pneumonia) for p, r in zip(paths, results, strict=True) if r.assessed]
    assert not results[paths.index(str(val / "PNEUMONIA" / "turned.png"))].assessed
    assert chosen["chosen_on"]["n"] == len(kept) and chosen["chosen_on"]["n_not_assessed"] == 7 - len(kept) >= 1
    y, p = (np.array(column) for column in zip(*kept, strict=True))
    assert chosen["threshold"] == pytest.approx(choose_threshold(y, p, "youden"), abs=1e-6)  # backends agree to ~1e-8


def test_the_images_a_threshold_is_chosen_to_call_positive_are_positive_in_predict(full_data: Path, tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture) -> None:
    """`operating-point` scores with PyTorch, `pneumo predict` with ONNX Runtime by default, ~1e-7 apart. A threshold
    set exactly at the lowest pneumonia image's score (sensitivity:1.0) called that image NORMAL in predict (here
    person100_bacteria_475: 0.99837712 in PyTorch, 0.99837708 in ONNX) while the record said sensitivity 1.0."""
    val = _labelled_folder(full_data, tmp_path / "val", per_class=3)
    out = tmp_path / "sens100"
    assert main(["operating-point", "--threshold-policy", "sensitivity:1.0", "--data", str(val), "--out", str(out)]) == 0
    assert json.loads((out / "model.json").read_text())["operating_point"]["chosen_on"]["sensitivity"] == 1.0
    assert main(["predict", str(val / "PNEUMONIA"), "--model", str(out), "--output", str(tmp_path / "p.csv")]) == 0
    import pandas as pd

    rows = pd.read_csv(tmp_path / "p.csv")
    assert (rows["label"] == "PNEUMONIA").all(), rows[["path", "p_pneumonia", "threshold", "label"]]
    capsys.readouterr()


def test_a_val_fold_rebuilt_from_another_copy_of_the_dataset_is_refused(data_slice: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """The shipped model records the digest of the 517 val images its threshold was chosen on. A pruned copy of the
    dataset rebuilt a "val fold" of a few images, some of them the model's training images, and a new threshold was
    chosen on them (a review): refused in one line, nothing written."""
    out = tmp_path / "from-slice"
    assert main(["operating-point", "--threshold-policy", "youden", "--dataset", str(data_slice), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the model's recorded val fold (517 images)" in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_kept_val_logits_of_a_flip_averaged_model_are_its_own(tiny_model: Path, full_data: Path,
                                                              tmp_path: Path) -> None:
    """The val fold's logits are kept per model: a model evaluated with flip averaging (tta) got the kept logits of
    the same weights without it, and its operating points were chosen on them (a review)."""
    from types import SimpleNamespace

    from sidecars import edit_sidecar

    from pneumo.evaluate.scoring import _val_logits

    folder = tmp_path / "tta"
    shutil.copytree(tiny_model.parent, folder)
    edit_sidecar(folder / tiny_model.name, tta=True)
    plain, flipped = Predictor(tiny_model), Predictor(folder / tiny_model.name)
    assert flipped.meta.tta and flipped.meta.sha256 == plain.meta.sha256  # the same weights
    paths = sorted((full_data / "test" / "NORMAL").glob("*.jpeg"))[:4]
    images = np.stack([plain.preprocess(load_image_file(p)) for p in paths])
    (tmp_path / "cache").mkdir()
    cache = SimpleNamespace(images=images, file=tmp_path / "cache" / "images.npy", key="k")
    assert np.array_equal(_val_logits(plain, cache), plain.logits(images))
    kept = _val_logits(flipped, cache)
    assert np.array_equal(kept, flipped.logits(images)) and not np.allclose(kept, plain.logits(images))


def test_a_val_fold_with_the_recorded_names_but_other_bytes_is_said_and_recorded(
        data_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the dataset with other pixels under the val fold's names passed the paths' digest, and the new
    model's record named the digest of the recorded fold (a cache review). Another encoding of the public dataset
    differs so too, so it is not refused: the console says it and the new record carries the images' own digest.
    The model's recorded cache folder (the trainer's, not on this machine) is not made: this machine's
    $PNEUMO_CACHE holds the fold's images and logits (the same review: it was made, or failed the command)."""
    import dataclasses
    import shutil

    from pneumo.config import model_config, to_dict
    from pneumo.data.splits import MODEL_VAL_FOLD, folds_for, images_digest, paths_digest
    from pneumo.models.sidecar import DEFAULT_MODEL, companion_files, read_meta, weights_path, write_meta

    dataset, model = tmp_path / "dataset", tmp_path / "model"
    shutil.copytree(data_slice, dataset)
    model.mkdir()
    meta = read_meta(DEFAULT_MODEL)
    for name in (weights_path(DEFAULT_MODEL, meta).name, *companion_files(meta)):
        shutil.copyfile(DEFAULT_MODEL.parent / name, model / name)
    shutil.copyfile(DEFAULT_MODEL.with_suffix(".md"), model / "model.md")  # its recorded card
    cfg = model_config(meta.config)
    cfg.data.root = str(dataset)
    val = folds_for(cfg).query("fold == 'val'")
    trainers, mine = tmp_path / "trainers-cache", tmp_path / "my-cache"
    cfg.data.cache_dir = str(trainers)
    monkeypatch.setenv("PNEUMO_CACHE", str(mine))
    chosen = {"kind": MODEL_VAL_FOLD, "n": len(val), "paths_sha256": paths_digest(val["path"].tolist()),
              "images_sha256": images_digest(val)}
    write_meta(model / "model.json", dataclasses.replace(meta, config=to_dict(cfg), extra={
        **meta.extra, "operating_point": {**meta.extra["operating_point"], "chosen_on": chosen}}))
    argv = ["operating-point", "--model", str(model), "--threshold-policy", "youden"]
    from PIL import Image

    film = dataset / val["path"].iloc[0]
    Image.open(film).convert("L").save(film, format="JPEG", quality=60)  # another encoding under the same name
    with caplog.at_level("WARNING"):
        assert main([*argv, "--out", str(tmp_path / "other")]) == 0
    assert f"the {len(val)} val-fold images rebuilt from {dataset} have the recorded names but not the bytes" in caplog.text
    new = json.loads((tmp_path / "other" / "model.json").read_text())["operating_point"]["chosen_on"]
    assert new["images_sha256"] != chosen["images_sha256"] and "not the bytes" in new["note"]
    assert new["paths_sha256"] == chosen["paths_sha256"]
    assert not trainers.exists() and list(mine.glob("val-logits-*.npy"))


def test_a_point_set_on_labelled_images_that_misses_most_pneumonias_is_said_when_set_and_when_used(
        tiny_model: Path, full_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    """`operating-point --data` at a policy that calls one of three pneumonias warned once, and predict and serve
    then used it without a word (a review)."""
    import logging

    val = _labelled_folder(full_data, tmp_path / "local_val")
    out = tmp_path / "tiny-sens30"
    assert main(["operating-point", "--model", str(tiny_model), "--threshold-policy", "sensitivity:0.3", "--data",
                 str(val), "--out", str(out)]) == 0
    chosen = json.loads((out / "model.json").read_text())["operating_point"]["chosen_on"]
    assert chosen["sensitivity"] < 0.5
    low, high = exact_interval(round(3 * chosen["sensitivity"]), 3)  # 3 pneumonias: an exact interval that reaches
    assert chosen["sensitivity_exact_ci"] == pytest.approx([low, high]) and high >= 0.5  # 0.5, so "may"
    said = (f"pneumonias may be missed (sensitivity on the 6 images it was chosen on (labelled folder) "
            f"{chosen['sensitivity']:.3f} [{low:.3f}, {high:.3f}])")
    assert said in capsys.readouterr().err
    caplog.set_level(logging.WARNING, logger="pneumo")
    image = next(val.rglob("*.jpeg"))
    assert main(["predict", str(image), "--model", str(out), "--output", str(tmp_path / "p.csv")]) == 0
    assert said in caplog.text


def test_the_recorded_val_fold_is_found_in_the_mendeley_layout_of_the_same_images(
        data_slice: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pneumo data download` fetches the Mendeley archive, whose train/ holds Kaggle's val/ files: the shipped
    model's val fold, recorded by its Kaggle paths, was refused there as "another copy" (a data audit). The file
    names identify it in either layout; a record without them (an older pneumo's) still refuses."""
    import dataclasses
    import shutil

    from pneumo.config import model_config, to_dict
    from pneumo.data.splits import MODEL_VAL_FOLD, fold_digests, folds_for
    from pneumo.models.sidecar import DEFAULT_MODEL, companion_files, read_meta, weights_path, write_meta

    kaggle, mendeley, model = tmp_path / "kaggle", tmp_path / "mendeley", tmp_path / "model"
    shutil.copytree(data_slice, kaggle)
    shutil.copytree(data_slice, mendeley)
    assert list((mendeley / "val").rglob("*.jpeg"))  # the slice has official val images to move
    for image in (mendeley / "val").rglob("*.jpeg"):
        shutil.move(image, mendeley / "train" / image.parent.name / image.name)
    shutil.rmtree(mendeley / "val")
    (mendeley / "manifest.csv").unlink()  # scanned, as a downloaded archive is
    model.mkdir()
    meta = read_meta(DEFAULT_MODEL)
    for name in (weights_path(DEFAULT_MODEL, meta).name, *companion_files(meta)):
        shutil.copyfile(DEFAULT_MODEL.parent / name, model / name)
    shutil.copyfile(DEFAULT_MODEL.with_suffix(".md"), model / "model.md")
    cfg = model_config(meta.config)
    cfg.data.root, cfg.data.val_fraction = str(kaggle), 0.45  # a val fold of the slice that holds val/ files
    val = folds_for(cfg).query("fold == 'val'")
    assert val["path"].str.startswith("val/").any()  # recorded by Kaggle paths, some under val/
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / "cache"))

    def record(**digests: str) -> None:
        chosen = {"kind": MODEL_VAL_FOLD, "n": len(val), **digests}
        write_meta(model / "model.json", dataclasses.replace(meta, config=to_dict(cfg), extra={
            **meta.extra, "operating_point": {**meta.extra["operating_point"], "chosen_on": chosen}}))

    record(**fold_digests(val))
    argv = ["operating-point", "--model", str(model), "--threshold-policy", "youden"]
    assert main([*argv, "--dataset", str(kaggle), "--out", str(tmp_path / "k")]) == 0
    with caplog.at_level("WARNING"):
        assert main([*argv, "--dataset", str(mendeley), "--out", str(tmp_path / "m")]) == 0
    assert "are the recorded ones in another layout of the dataset" in caplog.text
    thresholds = [json.loads((tmp_path / name / "model.json").read_text())["threshold"] for name in ("k", "m")]
    assert thresholds[0] == thresholds[1]  # the same images, the same threshold
    record(**{k: v for k, v in fold_digests(val).items() if k != "names_sha256"})  # an older record: paths only
    assert main([*argv, "--dataset", str(mendeley), "--out", str(tmp_path / "old")]) == 2


def _nih_csv(full_data: Path, csv: Path, per_class: int, *, patients: bool) -> Path:
    """``per_class`` NIH images of each class (the first patients that have at least two films first: a patient's
    films are not independent), with or without the patient_id column."""
    import pandas as pd

    nih = full_data.parent / "nih_sample"
    if not (nih / "manifest.csv").is_file():
        pytest.skip(f"the NIH sample is not at {nih}")
    meta = pd.read_csv(nih / "manifest.csv", dtype=str, keep_default_na=False)
    meta["films"] = meta.groupby("patient_id")["path"].transform("size")
    meta = meta[meta.groupby("patient_id")["label"].transform("nunique") == 1]  # one label per patient here
    rows = pd.concat([g.sort_values(["films", "patient_id", "path"], ascending=[False, True, True]).head(per_class)
                      for _, g in meta.groupby("label")])
    rows = rows.assign(path=[str(nih / p) for p in rows["path"]])
    rows[["path", "label", *(["patient_id"] if patients else [])]].to_csv(csv, index=False)
    return csv


def test_a_point_set_where_the_model_ranks_at_chance_says_so_with_its_auc_in_the_console_record_and_card(
        full_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """On adult NIH films the shipped model ranks at chance, and operating-point wrote a youden threshold there with
    a warning about missed pneumonias only; serve then served it (a review). The ROC-AUC on the chosen-on images, with
    its interval over whole patients, is recorded and said, and so is that no threshold makes the model usable."""
    from pneumo.evaluate.labelled import patients
    from pneumo.evaluate.metrics import binary_metrics, bootstrap_cis

    csv = _nih_csv(full_data, tmp_path / "nih.csv", 20, patients=True)
    out = tmp_path / "nih-youden"
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(csv), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    meta = json.loads((out / "model.json").read_text())
    point, chosen = meta["operating_point"], meta["operating_point"]["chosen_on"]
    # recomputed from the shipped model's own scores of the images it gives a verdict
    import pandas as pd

    table = pd.read_csv(csv, dtype=str)
    results = Predictor(None).predict([load_image_file(p) for p in table["path"]])
    kept = np.array([r.assessed for r in results])
    y = (table["label"] == "PNEUMONIA").to_numpy(int)[kept]
    p = np.array([r.p_pneumonia for r in results])[kept]
    groups = patients(table)[kept]
    auc = binary_metrics(y, p, point["threshold"])["roc_auc"]
    ci = bootstrap_cis(y, p, point["threshold"], n_resamples=1000, seed=0, groups=groups)
    assert chosen["roc_auc"] == pytest.approx(auc, abs=1e-6) and chosen["roc_auc_ci"] is not None
    assert chosen["roc_auc_ci"][0] <= 0.5, chosen  # these films: the model does not separate the classes
    assert chosen["sensitivity_exact_ci"] == pytest.approx(list(ci["sensitivity"]), abs=1e-9)  # patients' size
    assert chosen["patients_by_class"] == {"pneumonia": len(set(groups[y == 1])), "normal": len(set(groups[y == 0]))}
    assert len(groups) > len(set(groups))  # some patients have two films: counted once
    assert "ranks these images at or below chance" in point["warning"] and "normal patients" in point["warning"]
    assert "ranks these images at or below chance" in printed.err
    assert f"ROC-AUC {chosen['roc_auc']:.3f} [{chosen['roc_auc_ci'][0]:.3f}, " in printed.out
    card = " ".join((out / "model.md").read_text().split()) if (out / "model.md").is_file() else ""
    if not card:
        assert main(["model-card", "--model", str(out)]) == 0
        card = " ".join(capsys.readouterr().out.split())
    assert "ranks these images at or below chance" in card and f"[{chosen['sensitivity_exact_ci'][0]:.3f}," in card


def test_a_policy_is_stored_in_one_spelling_and_the_policy_warning_has_no_gaps(
        tiny_model: Path, full_data: Path, tmp_path: Path) -> None:
    """`sensitivity:.95`, `sensitivity:0.950` and `sensitivity:0.95 ` were stored as typed (one policy, twice in a
    report's table); `sensitivity:1` never warned, nor a sensitivity policy with 2 normal images (a review)."""
    from pneumo.policy import check_policy, policy_warning

    assert {check_policy(p) for p in ("sensitivity:.95", "sensitivity:0.950", "sensitivity:0.95 ")} == {
        "sensitivity:0.95"}
    assert check_policy("sensitivity:0.9") == "sensitivity:0.90" and check_policy("triage") == "triage"
    assert "only 20 pneumonia images" in policy_warning("sensitivity:1", 20, 100)
    assert policy_warning("sensitivity:1", 100, 100) is None
    assert "only 2 normal images" in policy_warning("sensitivity:0.9", 300, 2)
    val = _labelled_folder(full_data, tmp_path / "local_val")
    out = tmp_path / "tiny"
    assert main(["operating-point", "--model", str(tiny_model), "--threshold-policy", "sensitivity:.95", "--data",
                 str(val), "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["threshold_policy"] == meta["operating_point"]["policy"] == "sensitivity:0.95"


def test_evaluating_on_the_images_a_threshold_was_chosen_on_says_so_up_front_and_a_relabelled_copy_is_refused(
        full_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The console line and the report's headline read like an independent validation where the threshold had been
    chosen on the same images (a stderr log line and the fourth section said it); the operating-points section said
    thresholds were chosen on the validation split where none was; one film listed under both labels was
    scored as two (a review)."""
    monkeypatch.delenv("PNEUMO_DATA", raising=False)  # no val fold to rebuild: the derived model's own point only
    val = _labelled_folder(full_data, tmp_path / "site", per_class=6)
    out = tmp_path / "site-youden"
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(val), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(val), "--out", str(tmp_path / "v"), "--no-analysis",
                 "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    said = "Not an independent validation: the model's threshold was chosen on 12 of these images"
    assert said in printed
    import html as html_module

    html = html_module.unescape(" ".join((tmp_path / "v" / "report.html").read_text().split()))
    assert said in html[: html.index("<h2")]  # in the headline, before the first section
    from pneumo.evaluate.operating import operating_points_section

    _, body = operating_points_section({"operating_points_note": "the val fold could not be rebuilt (no dataset)",
                                        "test": {"metrics": {"roc_auc": 0.9}}})
    assert "validation split" not in body and "could not be rebuilt" in body  # where no policy was chosen anywhere
    relabelled = tmp_path / "relabelled.csv"
    first = min((val / "NORMAL").glob("*.jpeg"))
    copy = tmp_path / "copy.jpeg"
    shutil.copyfile(first, copy)
    relabelled.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(val.rglob("*.jpeg")))
                          + f"{copy},PNEUMONIA\n")
    for argv in (["evaluate", "--data", str(relabelled), "--out", str(tmp_path / "r"), "--no-analysis"],
                 ["operating-point", "--threshold-policy", "youden", "--data", str(relabelled), "--out",
                  str(tmp_path / "r2")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "are the same film, pixel for pixel, with two labels" in err and copy.name in err, err


def test_a_film_listed_twice_under_one_label_is_one_patient_and_said(
        full_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    """A copy of a film under another name and the same label was counted as a second patient by evaluate and
    operating-point: one film's evidence twice, narrower intervals (a review). It joins its original's patient, and
    the console, metrics.json and the derived model's record count it."""
    import pandas as pd

    from pneumo.evaluate.labelled import patients_with_copies

    val = _labelled_folder(full_data, tmp_path / "site", per_class=6)
    first = min((val / "PNEUMONIA").glob("*.jpeg"))
    copy = tmp_path / "copy.jpeg"
    shutil.copyfile(first, copy)
    listed = tmp_path / "listed.csv"
    listed.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(val.rglob("*.jpeg")))
                      + f"{copy},PNEUMONIA\n")
    capsys.readouterr()
    assert main(["evaluate", "--data", str(listed), "--out", str(tmp_path / "v"), "--no-analysis", "--bootstrap",
                 "0"]) == 0
    assert "1 of these images are pixel-identical copies of another one listed" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert metrics["external"]["n_copies"] == 1 and metrics["external"]["n"] == 13
    # no patient IDs: the groups are images, the copy counted once, not patients (a reporting audit: "818 images of
    # 817 patients" for a folder of 606 patients' films)
    assert metrics["bootstrap"]["resamples"] == ("images (1 pixel-identical copies counted once with their "
                                                 "originals; patients unknown)")
    assert "patients" not in metrics["test"] and "patient" not in pd.read_csv(tmp_path / "v" / "predictions.csv")
    assert "patients unknown" in (tmp_path / "v" / "report.html").read_text()
    out = tmp_path / "site-youden"
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(listed), "--out", str(out)]) == 0
    said = capsys.readouterr().err
    assert "6 pneumonia and 6 normal images" in said and "patients" not in said  # the copy is not a seventh
    assert "patients_by_class" not in json.loads((out / "model.json").read_text())["operating_point"]["chosen_on"]
    assert "1 of these images are pixel-identical copies" in caplog.text
    assert json.loads((out / "model.json").read_text())["operating_point"]["chosen_on"]["n_copies"] == 1
    table = pd.DataFrame({"path": ["a", "b", "c"], "label": ["PNEUMONIA"] * 3})
    images = np.zeros((3, 4, 4), np.uint8)
    images[2] = 1
    groups, copies, resampled, known = patients_with_copies(table, images)
    assert copies == 1 and groups[0] == groups[1] != groups[2] and resampled.startswith("images (1 pixel")
    assert not known
    assert patients_with_copies(table, np.arange(48, dtype=np.uint8).reshape(3, 4, 4)) == (None, 0, "images", False)
    named = table.assign(patient_id=["P1", "", "P2"])  # a copy listed without an ID joins P1, which names the group
    groups, copies, _, known = patients_with_copies(named, images)
    assert copies == 1 and list(groups) == ["P1", "P1", "P2"] and known
    same = table.assign(patient_id=["P1", "P1", "P2"])  # a copy within one patient joins nothing: nothing to say
    assert patients_with_copies(same, images)[1] == 0
    official = pd.DataFrame({"path": ["test/NORMAL/IM-0001-0001.jpeg", "test/NORMAL/IM-0002-0001.jpeg",
                                      "test/NORMAL/IM-0003-0001.jpeg"], "label": ["NORMAL"] * 3})
    groups, copies, resampled, _ = patients_with_copies(official, images, official=True)  # as a run's evaluation
    assert copies == 0 and len(set(groups)) == 3 and resampled == "whole patients (the Kermany file names)"


def test_a_point_set_on_labelled_images_keeps_the_models_val_fold_and_its_guard(
        full_data: Path, data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A model derived with --data recorded only the labelled images, so a pruned copy of the dataset rebuilt its
    "val fold" unchecked for evaluate's and operating-point's val columns (a review); it keeps its source's record."""
    from pneumo.data.splits import recorded_val_fold
    from pneumo.models.sidecar import DEFAULT_MODEL, read_meta

    val = _labelled_folder(full_data, tmp_path / "site")
    derived = tmp_path / "site-youden"
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(val), "--out", str(derived)]) == 0
    meta = read_meta(derived / "model.json")
    assert meta.extra["operating_point"]["chosen_on"]["kind"] == "labelled folder"
    assert recorded_val_fold(meta.extra) == recorded_val_fold(read_meta(DEFAULT_MODEL).extra) != {}
    capsys.readouterr()
    again = tmp_path / "again"  # and on it, a pruned copy's val fold is refused as for the shipped model
    assert main(["operating-point", "--model", str(derived), "--threshold-policy", "youden", "--dataset",
                 str(data_slice), "--out", str(again)]) == 2
    assert "is not the model's recorded val fold (517 images)" in capsys.readouterr().err
    chain = tmp_path / "chain"  # a point set on labelled images again keeps it too
    assert main(["operating-point", "--model", str(derived), "--threshold-policy", "sensitivity:0.9", "--data",
                 str(val), "--out", str(chain)]) == 0
    assert recorded_val_fold(read_meta(chain / "model.json").extra) == recorded_val_fold(meta.extra)
