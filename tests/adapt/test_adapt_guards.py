"""What `pneumo adapt` refuses or sets aside before it fine-tunes: site images the source model was already adapted
on, images of the source dataset's official test split and train fold (and its val fold, left out of the source
images the checks are refitted on), one film under two labels; and the DICOM PatientID groups that must give the same
folds in every run. Real NIH and Kermany-slice images; the fine-tunes return their model unchanged (what is checked
happens before or beside them)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pneumo.adapt.run as adapt_run
from pneumo.cli import main
from pneumo.config import AdaptConfig
from pneumo.errors import DataError

PER_CLASS = 12
QUICK = AdaptConfig(folds=2, epochs=1, rehearsal=0, seed=1)


def _nih_rows(full_data: Path, n: int, seed: int, avoid: set[str] = frozenset()) -> pd.DataFrame:
    """``n`` images of each class of the NIH sample, one image per patient, absolute paths."""
    nih = full_data.parent / "nih_sample"
    if not (nih / "manifest.csv").is_file():
        pytest.skip(f"the NIH sample is not at {nih}")
    meta = pd.read_csv(nih / "manifest.csv", dtype=str, keep_default_na=False)
    single = meta[~meta["patient_id"].isin(avoid)].groupby("patient_id").filter(lambda g: len(g) == 1)
    rows = pd.concat([g.sample(n, random_state=seed) for _, g in single.groupby("label")])
    return rows.assign(path=[str(nih / p) for p in rows["path"]])[["path", "label", "patient_id"]]


def _slice_rows(data_slice: Path, fold: str, n: int) -> pd.DataFrame:
    """The first ``n`` images (by path) of one fold of the shipped model's split of the Kermany slice, one patient each
    (its patient key, so that they never share a group with an NIH patient)."""
    from pneumo.adapt.sources import model_folds
    from pneumo.infer.predictor import Predictor

    folds = model_folds(Predictor(None).meta, str(data_slice))[1]
    rows = folds[folds["fold"] == fold].sort_values("path").drop_duplicates("patient_key").head(n)
    return pd.DataFrame({"path": [str(data_slice / p) for p in rows["path"]], "label": rows["label"].tolist(),
                         "patient_id": [f"kermany-{k}" for k in rows["patient_key"]]})


@pytest.fixture(scope="module")
def site_rows(full_data: Path) -> pd.DataFrame:
    return _nih_rows(full_data, PER_CLASS, seed=3)


def test_site_images_of_the_source_datasets_official_test_split_are_refused(
        site_rows: pd.DataFrame, data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """36 official-test images adapted on exited 0 and were then reported as "source hospital (36 test images)": the
    split the card calls reported-only had been trained on (a review)."""
    monkeypatch.setattr(adapt_run, "finetune", lambda model, x, y, **kwargs: copy.deepcopy(model))
    test = _slice_rows(data_slice, "test", 2)
    csv = tmp_path / "site.csv"
    pd.concat([site_rows, test]).to_csv(csv, index=False)
    with pytest.raises(DataError, match="^2 site images are images of the source dataset's official test split") as e:
        adapt_run.adapt(None, csv, tmp_path / "a", dataset=str(data_slice), cfg=QUICK, n_bootstrap=0)
    assert "\n" not in str(e.value) and min(test["path"]) in str(e.value) and "leave them out" in str(e.value)
    assert not (tmp_path / "a").exists()


def test_site_images_the_source_model_was_trained_on_are_refused(site_rows: pd.DataFrame, data_slice: Path,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source model's own training images: every fold model would score them from weights fitted on them."""
    monkeypatch.setattr(adapt_run, "finetune", lambda model, x, y, **kwargs: copy.deepcopy(model))
    csv = tmp_path / "site.csv"
    pd.concat([site_rows, _slice_rows(data_slice, "train", 3)]).to_csv(csv, index=False)
    with pytest.raises(DataError, match="^3 site images are images of the source dataset's train fold, which the "
                                        "source model was trained on"):
        adapt_run.adapt(None, csv, tmp_path / "a", dataset=str(data_slice), cfg=QUICK, n_bootstrap=0)
    assert not (tmp_path / "a").exists()


def test_site_images_of_the_source_val_fold_are_left_out_of_the_refits(data_slice: Path) -> None:
    """The val-fold images the site also holds were measured twice in the refitted OOD limit (as source val and as site
    images); now they are left out of the source's, and counted (the record and card say how many: test_adapt)."""
    from pneumo.adapt.sources import load_source
    from pneumo.atomic import sha256_file
    from pneumo.infer.predictor import Predictor

    meta = Predictor(None).meta
    val = _slice_rows(data_slice, "val", 2)
    every = load_source(meta, str(data_slice), pool=50, seed=1)
    some = load_source(meta, str(data_slice), pool=50, seed=1,
                       site_sha256={path: sha256_file(path) for path in val["path"]})
    assert (every.site_in_val, some.site_in_val) == (0, 2)
    assert len(some.val_x) == len(every.val_x) - 2 and len(some.test_x) == len(every.test_x)
    kept = {image.tobytes() for image in some.val_x}
    assert sum(image.tobytes() in kept for image in every.val_x) == len(every.val_x) - 2


def test_the_same_film_under_two_labels_is_a_one_line_error_naming_both_files(
        site_rows: pd.DataFrame, data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """A film exported twice, NORMAL in one row and PNEUMONIA in the other, was trained on with both labels and counted
    once for each in the cross-fitted scores (a review)."""
    monkeypatch.setattr(adapt_run, "finetune", lambda model, x, y, **kwargs: copy.deepcopy(model))
    normal = site_rows[site_rows["label"] == "NORMAL"].iloc[0]
    copy_path = tmp_path / "exported-again.jpeg"
    shutil.copyfile(normal["path"], copy_path)
    csv = tmp_path / "site.csv"
    pd.concat([site_rows, pd.DataFrame([{"path": str(copy_path), "label": "PNEUMONIA", "patient_id": "other"}])]
              ).to_csv(csv, index=False)
    assert main(["adapt", "--data", str(csv), "--out", str(tmp_path / "a"), "--dataset", str(data_slice), "--device",
                 "cpu", "--rehearsal", "0", "--folds", "2", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same film, pixel for pixel, with two labels" in err[0], err
    assert f"{normal['path']} (NORMAL)" in err[0] and f"{copy_path} (PNEUMONIA)" in err[0]
    assert not (tmp_path / "a").exists()


def test_a_dicom_sites_patients_give_the_same_folds_and_resamples_whatever_the_processs_hash_key(
        site_rows: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PatientID's keyed hash is new in each process and the folds and bootstrap ordered patients by it: the same
    images and --seed gave other folds, thresholds and intervals on every run (a review)."""
    from corpus import dicom_bytes

    from pneumo.adapt.sources import load_site
    from pneumo.adapt.stats import patient_folds
    from pneumo.data import dicom_header
    from pneumo.data.decode import load_image_file
    from pneumo.evaluate.intervals import resample_weights
    from pneumo.infer.predictor import Predictor

    for i, row in enumerate(site_rows.itertuples()):
        folder = tmp_path / "site" / row.label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IM{i:05d}").write_bytes(dicom_bytes(load_image_file(Path(row.path)), PatientID=f"MRN-{row.patient_id}"))
    predictor = Predictor(None)
    runs = []
    for key in (b"\x01" * 32, b"\x02" * 32):  # two processes' keys
        monkeypatch.setattr(dicom_header, "_GROUP_KEY", key)
        site = load_site(tmp_path / "site", predictor)
        assert site.n_patient_tags == len(site.table) and site.table["patient_id"].nunique() == len(site_rows)
        runs.append((site.groups, patient_folds(site.y, site.groups, 2, 0),
                     resample_weights(len(site.y), 20, 0, site.groups)))
    (groups_a, folds_a, draws_a), (groups_b, folds_b, draws_b) = runs
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds_a, folds_b, strict=True))
    assert np.array_equal(draws_a, draws_b) and list(groups_a) == list(groups_b)
