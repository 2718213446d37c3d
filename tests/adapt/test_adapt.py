"""`pneumo adapt` on real images of a second site (nih_sample) with rehearsal from a real Kermany slice: the
cross-fitting protocol (no image scored by a model adapted on it, patients never split), the new model folder (the
source untouched, usable by predict/evaluate/model-card), the CLI's one-line errors; and the small pieces (exact
intervals, the policy warning, patient folds) on generated cases."""

from __future__ import annotations

import contextlib
import hashlib
import html
import io
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sidecars import signed

import pneumo.adapt.run as adapt_run
from pneumo.adapt.run import patient_folds
from pneumo.cli import main
from pneumo.config import AdaptConfig
from pneumo.data.decode import load_image_file
from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.intervals import exact_interval
from pneumo.models.scores import threshold_on_calibrated_scale
from pneumo.models.sidecar import DEFAULT_MODEL
from pneumo.policy import policy_warning
from pneumo.templates import fmt_threshold

PER_CLASS = 12
# the module's one adaptation, made with the command line and every recipe flag set to a non-default value
FLAGS = {"--folds": "2", "--epochs": "1", "--rehearsal": "0.5", "--rehearsal-min": "16", "--threshold-policy": "youden",
         "--seed": "1", "--by": "view"}
TINY = AdaptConfig(folds=2, epochs=1, rehearsal=0.5, rehearsal_min=16, threshold_policy="youden", seed=1)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def site_csv(full_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PER_CLASS images of each class from the NIH sample, whole patients, with a patient_id column."""
    nih = full_data.parent / "nih_sample"
    if not (nih / "manifest.csv").is_file():
        pytest.skip(f"the NIH sample is not at {nih}")
    meta = pd.read_csv(nih / "manifest.csv", dtype=str, keep_default_na=False)
    single = meta.groupby("patient_id").filter(lambda g: len(g) == 1)  # one image per patient keeps counts exact
    rows = pd.concat([g.sample(PER_CLASS, random_state=3) for _, g in single.groupby("label")])
    # two images of one patient, to check that a patient never straddles a split
    twice = meta.groupby("patient_id").filter(lambda g: len(g) == 2 and g["label"].nunique() == 1).head(2)
    rows = pd.concat([rows, twice])
    csv = tmp_path_factory.mktemp("site") / "labels.csv"
    rows.assign(path=[str(nih / p) for p in rows["path"]])[["path", "label", "patient_id", "view"]].to_csv(csv,
                                                                                                     index=False)
    return csv


@pytest.fixture(scope="module")
def adapted(site_csv: Path, data_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real adaptation of the shipped model by `pneumo adapt`, with the fine-tunes recorded (which rows each one
    trained on) and what the command printed."""
    calls, augments = [], []
    real = adapt_run.finetune

    def recording(model, x, y, **kwargs):
        calls.append(x.copy())
        augments.append(kwargs.get("augment_cfg"))
        return real(model, x, y, **kwargs)

    before = _digest(DEFAULT_MODEL.parent)
    mp = pytest.MonkeyPatch()
    mp.setattr(adapt_run, "finetune", recording)
    out = tmp_path_factory.mktemp("adapted") / "site-a"
    argv = ["adapt", "--data", str(site_csv), "--out", str(out), "--dataset", str(data_slice), "--device", "cpu"]
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(argv + [item for pair in FLAGS.items() for item in pair])
    finally:
        mp.undo()
    assert code == 0
    return {"record": json.loads((out / "adapt.json").read_text()), "out": out, "calls": calls, "augments": augments,
            "source_before": before, "printed": printed.getvalue()}


def test_fine_tunes_use_the_recipes_mild_augmentation_not_the_models_own(adapted: dict) -> None:
    """The shipped model trained with the acquisition augmentation (JPEG, noise, collimation...); adapting it with that
    lost 0.13 held-out AUC on nih_sample at 200 images, so the recipe fixes its own (BENCHMARKS.md, second round)."""
    from pneumo.adapt.sources import source_config
    from pneumo.config import from_dict
    from pneumo.infer.predictor import Predictor

    own = from_dict(source_config(Predictor(None).meta)).train.augment
    assert own.jpeg > 0 and own.noise > 0  # the shipped model's own augmentation is the strong one
    assert adapted["augments"] and all(a is None for a in adapted["augments"])  # finetune's default: the recipe's


def test_every_image_is_scored_by_a_model_that_did_not_train_on_it(adapted: dict, site_csv: Path) -> None:
    out, calls = adapted["out"], adapted["calls"]
    table = pd.read_csv(out / "crossfit_predictions.csv", dtype=str)
    raw = pd.read_csv(site_csv, dtype=str)
    # the site's own patient IDs stay with the site: the folder numbers the patients (DICOM review), one number each
    assert not set(table["patient"]) & set(raw["patient_id"]) and "patient_id" not in table
    # nor their paths (record and accession numbers): each image is the SHA-256 of its file; no file of the folder
    # names an image, and the labels CSV is named, not placed
    assert "path" not in table
    for written in (f for f in out.rglob("*") if f.suffix in (".csv", ".json", ".md", ".html")):
        text = written.read_text()
        assert not [p for p in raw["path"] if Path(p).stem in text], written.name
        assert str(site_csv.parent) not in text, written.name
    assert adapted["record"]["site"]["data"] == site_csv.name
    raw["file_sha256"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in raw["path"]]
    table = table.merge(raw[["file_sha256", "patient_id"]], on="file_sha256", validate="one_to_one")
    assert table.groupby("patient_id")["patient"].nunique().eq(1).all() and table["patient"].nunique() == \
        raw["patient_id"].nunique()
    n = len(pd.read_csv(site_csv))
    assert len(table) == n and len(calls) == TINY.folds + 1  # k fold models, then the final one
    assert [len(c) for c in calls[:-1]] != [n] * TINY.folds and len(calls[-1]) == n  # the final one sees all
    folds = patient_folds((table["label"] == "PNEUMONIA").to_numpy(int), table["patient_id"].to_numpy(), TINY.folds,
                          TINY.seed)
    for k, ((train, held), seen) in enumerate(zip(folds, calls[:-1], strict=True), start=1):
        assert len(seen) == len(train)
        assert not set(table["patient_id"].iloc[train]) & set(table["patient_id"].iloc[held])
        assert (table["fold"].iloc[held] == str(k)).all()  # the list says which fold's model scored each image
    assert table.groupby("patient")["fold"].nunique().eq(1).all()
    # the operating point is the policy applied to exactly those out-of-fold scores
    y = (table["label"] == "PNEUMONIA").to_numpy(int)
    from pneumo.evaluate.metrics import choose_threshold

    assert adapted["record"]["operating_point"]["threshold"] == pytest.approx(
        choose_threshold(y, table["p_crossfit"].to_numpy(), TINY.threshold_policy), abs=1e-6)


def test_the_other_policies_are_laid_out_on_the_same_cross_fitted_scores(adapted: dict) -> None:
    """So that a site whose labels make one policy costly (nih_sample: sensitivity:0.95 at specificity 0.2-0.5) sees
    what the others give before adapting again or choosing on held-out patients."""
    record, out = adapted["record"], adapted["out"]
    table = pd.read_csv(out / "crossfit_predictions.csv")
    y, p = (table["label"] == "PNEUMONIA").to_numpy(int), table["p_crossfit"].to_numpy()
    points = record["operating_points"]
    assert list(points) == ["youden", "sensitivity:0.95", "triage"]  # the standard ones; the chosen (youden) among them
    assert points["youden"]["threshold"] == pytest.approx(record["operating_point"]["threshold"])
    for policy, point in points.items():
        called = p.astype(np.float32) >= np.float32(point["threshold"])  # the scores are float32; the CSV rounds
        assert point["sensitivity"] == pytest.approx(called[y == 1].mean()), policy
        assert point["specificity"] == pytest.approx((~called[y == 0]).mean()), policy
        lo, hi = point["specificity_exact_ci"]
        assert lo <= point["specificity"] <= hi
    assert points["sensitivity:0.95"]["sensitivity"] >= 0.95 and points["triage"]["sensitivity"] >= 0.90
    # the verdict's threshold on both scales beside the scores (an adapt audit: a call against p_calibrated 0.42)
    own, temperature = record["operating_point"]["threshold"], record["temperature"]
    assert np.allclose(table["threshold"], own) and np.allclose(table["threshold_calibrated"],
                                                                threshold_on_calibrated_scale(own, temperature))
    near = (table["p_crossfit_calibrated"] - table["threshold_calibrated"]).abs() < 1e-6
    assert ((table["p_crossfit_calibrated"] >= table["threshold_calibrated"]) == table["predicted_pneumonia"])[~near].all()
    card = (out / "model.md").read_text()
    assert "## Other operating points (the same cross-fitted scores)" in card and "| youden (this model's) |" in card
    assert "sensitivity:0.95" in (out / "report.html").read_text()


def test_the_new_folder_is_a_model_and_the_source_is_untouched(adapted: dict, data_slice: Path) -> None:
    from pneumo.infer.predictor import Predictor

    out, record = adapted["out"], adapted["record"]
    assert _digest(DEFAULT_MODEL.parent) == adapted["source_before"]
    for name in ("model.json", "model.safetensors", "model.ood.safetensors", "model.orient.safetensors", "model.md",
                 "adapt.json", "report.html", "crossfit_predictions.csv"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "model.json").read_text())
    # every file it loads is recorded in its sidecar: the card too (issue 24), not the shipped model's card record
    assert meta["card_sha256"] == hashlib.sha256((out / "model.md").read_bytes()).hexdigest()
    assert meta["card_sha256"] != json.loads(DEFAULT_MODEL.read_text())["card_sha256"]
    site = meta["adaptation"]["site"]
    assert site["n_images"] == 2 * PER_CLASS + 2 and site["n_patients"] == 2 * PER_CLASS + 1
    assert site["by_label"]["NORMAL"] + site["by_label"]["PNEUMONIA"] == site["n_images"]
    assert site["patients_given"] is True
    assert meta["adaptation"]["source_model"]["model_id"] == Predictor(None).model_id
    assert meta["threshold"] == pytest.approx(record["operating_point"]["threshold"])
    assert meta["threshold_policy"] == TINY.threshold_policy and meta["mode"] == "adapted"
    patients = site["patients_by_class"]  # the policy's warning counts them (an audit: it counted films)
    assert record["operating_point"]["warning"] == policy_warning(TINY.threshold_policy, patients["pneumonia"],
                                                                  patients["normal"], "patients")
    assert "normal patients:" in record["operating_point"]["warning"]
    assert meta["ood"]["n_train"] == record["rehearsal"]["pool"] + site["n_images"]  # rehearsal pool + the site
    # the orientation check is refitted on the adapted model's features (the source's would not fit them)
    assert meta["orientation"]["n_train"] == meta["ood"]["n_train"]
    assert meta["orientation"]["sha256"] != json.loads(DEFAULT_MODEL.read_text())["orientation"]["sha256"]
    predictor = Predictor(out, backend="torch")
    assert predictor.ood is not None and predictor.orientation is not None and predictor.threshold == meta["threshold"]
    lo, hi = record["local"]["after"]["sensitivity_exact_ci"]
    assert 0.0 <= lo <= record["local"]["after"]["metrics"]["sensitivity"] <= hi <= 1.0
    assert record["source_site"]["n"] > 0 and record["rehearsal"]["used"] is True
    # its intervals count whole patients, as `pneumo evaluate` counts them on that split (they counted images)
    from pneumo.adapt.sources import load_source

    source = load_source(Predictor(None).meta, str(data_slice), pool=1, seed=0, n_val=1)
    assert len(source.test_groups) == len(source.test_y) == record["source_site"]["n"]
    assert record["source_site"]["n_patients"] == len(set(source.test_groups)) < record["source_site"]["n"]


def test_a_source_split_other_than_the_models_own_is_said_in_the_record_and_the_card(adapted: dict,
                                                                                      data_slice: Path) -> None:
    """The slice's val fold is not the one the shipped model's threshold was chosen on (its recorded digest): the OOD
    refit's source images and the site's train/val checks follow the slice's split, and the card says so."""
    note = adapted["record"]["rehearsal"]["split_note"]
    assert note.startswith(f"the val fold rebuilt from {data_slice.name} (") and "is not the model's recorded val fold" in note
    assert str(data_slice.parent) not in note  # the folder travels: the dataset's name only
    assert "- Source split: the val fold rebuilt from" in (adapted["out"] / "model.md").read_text()


def test_the_val_fold_check_names_a_rebuilt_fold_other_than_the_recorded_one() -> None:
    from types import SimpleNamespace

    from pneumo.data.splits import RUN_VAL_FOLD, images_digest, paths_digest
    from pneumo.evaluate.scoring import val_fold_bytes_note, val_fold_mismatch

    val = pd.DataFrame({"path": ["val/a.jpeg", "val/b.jpeg"], "sha256": ["a" * 64, "b" * 64]})
    meta = SimpleNamespace(extra={"operating_point": {"chosen_on": {
        "kind": RUN_VAL_FOLD, "n": 2, "paths_sha256": paths_digest(val["path"]), "images_sha256": images_digest(val)}}})
    assert val_fold_mismatch(meta, val[::-1], "data") is None and val_fold_bytes_note(meta, val[::-1], "data") is None
    assert "(1 images) is not the model's recorded val fold" in val_fold_mismatch(meta, val[:1], "data")
    assert val_fold_mismatch(SimpleNamespace(extra={}), val[:1], "data") is None  # nothing recorded
    recoded = val.assign(sha256=["a" * 64, "c" * 64])  # the same names, other bytes: said, not refused
    assert val_fold_mismatch(meta, recoded, "data") is None
    assert "have the recorded names but not the bytes" in val_fold_bytes_note(meta, recoded, "data")


def test_the_loss_weighs_the_classes_as_each_epoch_mixes_them_not_as_the_whole_rehearsal_pool() -> None:
    """Weights from the site and the whole pool counted the pool len(pool) / n_source times over (NORMAL over-weighted
    ~1.3x at 200 site images; an adapt audit)."""
    import torch

    from pneumo.adapt.finetune import epoch_class_weights
    from pneumo.train.loop import balanced_weights

    site_y, pool_y = np.repeat([0, 1], 50), np.repeat([0, 1], [500, 1500])
    weights = epoch_class_weights(site_y, pool_y, 400, 2)
    rng = np.random.default_rng(0)  # an epoch as finetune draws it: the site, then n_source of the pool
    drawn = np.mean([np.bincount(np.r_[site_y, pool_y[rng.choice(len(pool_y), 400, replace=False)]], minlength=2)
                     for _ in range(300)], axis=0)
    assert torch.allclose(weights, balanced_weights(torch.from_numpy(drawn)), rtol=0.01)
    assert torch.allclose(weights, torch.tensor([500 / (2 * 150), 500 / (2 * 350)]))
    whole_pool = balanced_weights(torch.from_numpy(np.bincount(np.r_[site_y, pool_y])))
    assert whole_pool[0] / whole_pool[1] > 1.2 * weights[0] / weights[1]  # what it was
    assert torch.equal(epoch_class_weights(site_y, pool_y, 0, 2), torch.ones(2))  # rehearsal off: the site's mix


def test_finetune_weighs_its_loss_by_each_epochs_mix_of_the_site_and_the_rehearsal_draw(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pneumo.adapt import finetune as ft
    from pneumo.models.registry import build
    from pneumo.models.scratch import scratch_cnn  # noqa: F401 (registers the architecture)

    rng = np.random.default_rng(0)
    site_x, site_y = rng.integers(0, 256, (6, 32, 32), dtype=np.uint8), np.array([0, 1] * 3)
    pool_x, pool_y = rng.integers(0, 256, (20, 32, 32), dtype=np.uint8), np.repeat([0, 1], [5, 15])
    seen, real = [], ft.epoch_class_weights
    monkeypatch.setattr(ft, "epoch_class_weights", lambda *args: seen.append(args) or real(*args))
    cfg = AdaptConfig(epochs=1, batch_size=8, rehearsal=2, rehearsal_min=4, amp=False)
    ft.finetune(build("scratch_cnn", num_classes=2), site_x, site_y, cfg=cfg, source_x=pool_x, source_y=pool_y,
                device=torch.device("cpu"))
    [(site, pool, n_source, classes)] = seen
    assert list(site) == list(site_y) and list(pool) == list(pool_y) and classes == 2
    assert n_source == ft.rehearsal_count(cfg, len(site_y), len(pool_y)) == 12  # the draw, not the pool's 20


def test_the_policy_warning_of_an_adaptation_counts_patients_not_films() -> None:
    from pneumo.adapt.sources import SiteImages

    y = np.r_[np.ones(150, int), np.zeros(150, int)]
    table = pd.DataFrame({"patient_id": np.r_[np.repeat(np.arange(50), 3), 100 + np.arange(150)].astype(str),
                          "label": np.where(y == 1, "PNEUMONIA", "NORMAL")})
    site = SiteImages(table, np.zeros((300, 1, 1), np.uint8), y, {}, True, "site", np.zeros((300, 2)))
    assert site.patients_per_class() == (50, 150)
    assert site.counts()["patients_by_class"] == {"pneumonia": 50, "normal": 150}
    assert policy_warning("sensitivity:0.95", 150, 150) is None  # as films, 150 positives looked enough
    assert "only 50 pneumonia patients" in policy_warning("sensitivity:0.95", *site.patients_per_class(), "patients")


def test_evaluate_and_model_card_use_the_adapted_model(adapted: dict, site_csv: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = adapted["out"]
    assert main(["model-card", "--model", str(out)]) == 0
    card = capsys.readouterr().out
    assert "Adapted from" in card and "cross-fitted" in card and "26 images" in card
    assert "in-sample for the threshold" in card  # the same scores chose its threshold
    assert "rehearsal 0.5 source image(s) per site image per epoch (at least 16; " in card  # the flags, to rerun it
    meta = json.loads((out / "model.json").read_text())
    threshold, on_calibrated = meta["threshold"], threshold_on_calibrated_scale(meta["threshold"], meta["temperature"])
    assert f"threshold {fmt_threshold(threshold)} on the uncalibrated P(pneumonia) ({fmt_threshold(on_calibrated)} on " \
           "the calibrated scale" in card  # an adapt audit: which scale was not said
    assert main(["evaluate", "--model", str(out), "--data", str(site_csv), "--out", str(tmp_path / "v"),
                 "--no-analysis", "--bootstrap", "20"]) == 0
    console = capsys.readouterr().out  # the adaptation's own AUC and its threshold as adapt wrote it (not 3 decimals)
    assert f"cross-fitted site AUC {meta['metrics']['site_crossfit']['roc_auc']:.3f}" in console
    assert f"threshold {fmt_threshold(threshold)} (" in console and "val-fold AUC" not in console
    for policy, point in adapted["record"]["operating_points"].items():  # the policy lines too (0.018 beside 0.0175)
        assert f"{policy}: threshold {fmt_threshold(point['threshold'])}, accuracy" in console
    result = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert result["threshold"] == pytest.approx(threshold)
    assert result["adaptation"]["source_model_id"] == adapted["record"]["source_model"]["model_id"]
    assert f"The model was adapted from {result['adaptation']['source_model_id']} on 26 images" in \
        (tmp_path / "v" / "report.html").read_text()
    rows = pd.read_csv(tmp_path / "v" / "predictions.csv")  # a verdict read against either scale agrees
    assert np.allclose(rows["threshold_calibrated"], on_calibrated, rtol=0, atol=1e-9)
    near = (rows["p_calibrated"] - on_calibrated).abs() < 1e-6
    called = rows[rows["predicted_pneumonia"].notna() & ~near]  # (no verdict: not called either way)
    assert ((called["p_calibrated"] >= on_calibrated) == called["predicted_pneumonia"].astype(bool)).all()
    # the other policies at the thresholds the adaptation chose on its cross-fitted scores (no val fold to choose on)
    chosen = adapted["record"]["operating_points"]
    assert list(result["operating_points"]) == list(chosen) and "operating_points_note" not in result
    from pneumo.evaluate.external import evaluate_external

    asked = evaluate_external(out, site_csv, tmp_path / "v2", policies=("sensitivity:0.98",), n_bootstrap=0)
    assert list(asked["operating_points"]) == list(chosen)  # it was dropped without a word (API review)
    assert asked["operating_points_note"].startswith("sensitivity:0.98: not reported: an adapted model has no val")
    for policy, point in result["operating_points"].items():
        assert point["threshold"] == pytest.approx(chosen[policy]["threshold"])
        assert point["val_sensitivity"] == pytest.approx(chosen[policy]["sensitivity"])
    assert "chosen on the adaptation&#39;s cross-fitted scores" in (tmp_path / "v" / "report.html").read_text()
    # the very images it was adapted on: said, not called external ("nothing was fitted on them")
    assert result["external"]["n_fitted_on"] == result["external"]["n"] == len(pd.read_csv(site_csv))
    assert "are images the model was adapted on: this is not an external validation" in \
        (tmp_path / "v" / "report.html").read_text()
    image = pd.read_csv(site_csv)["path"].iloc[0]
    assert main(["predict", image, "--model", str(out), "--backend", "torch", "--output", str(tmp_path / "p.csv")]) == 0
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    assert row["threshold"] == pytest.approx(threshold, abs=1e-5)
    assert row["label"] == ("PNEUMONIA" if row["p_pneumonia"] >= threshold else "NORMAL")


def test_a_new_operating_point_of_an_adapted_model_says_where_its_threshold_and_temperature_came_from(
        adapted: dict, site_csv: Path, data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`pneumo operating-point --data` on an adapted model: the threshold comes from the images it names, the
    temperature stays the adaptation's (fitted on its cross-fitted scores; the report said "val"). Without --data
    there is no val fold to choose on: one line that says so (it asked for the --dataset it had been given)."""
    derived = tmp_path / "site"
    assert main(["operating-point", "--model", str(adapted["out"]), "--threshold-policy", "youden",
                 "--data", str(site_csv), "--out", str(derived)]) == 0
    chosen = json.loads((derived / "model.json").read_text())["operating_point"]["chosen_on"]
    assert main(["evaluate", "--model", str(derived), "--data", str(site_csv), "--out", str(tmp_path / "v"),
                 "--no-analysis", "--bootstrap", "0"]) == 0
    result = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert result["threshold_chosen_on"] == f"{chosen['n']} images of a labelled CSV (pneumo operating-point)"
    # the cross-fitted AUC is threshold-free: still the derived model's (a review: "cross-fitted site AUC n/a")
    assert result["adaptation"]["crossfit_roc_auc"] == pytest.approx(adapted["record"]["local"]["after"]["metrics"]["roc_auc"])
    assert "on the uncalibrated P(pneumonia) (" in (derived / "model.md").read_text()
    assert result["temperature_fitted_on"] == "the adaptation's cross-fitted scores"
    # measured on the very images its threshold was chosen on and its weights adapted on: said, never "nothing was
    # fitted on them" (a review: the derived folder lacked the adapted-on list, and the chosen-on digest was unread)
    n = len(pd.read_csv(site_csv))
    assert result["external"]["threshold_chosen_on_these"] is True and result["external"]["n_fitted_on"] == n
    report = html.unescape((tmp_path / "v" / "report.html").read_text())
    assert result["external"]["n_threshold_chosen_on"] == result["test"]["n"]
    assert "nothing was fitted" not in report and f"chosen on {result['test']['n']} of the assessed images" in report
    assert "the model's own on the data measured here" in report
    # the same images less one, by other spellings of their paths: still the images its threshold was chosen on (a
    # review: a digest of the whole path list called a one-row-shorter CSV independent)
    fewer = pd.read_csv(site_csv).iloc[1:]
    fewer["path"] = [f"{Path(p).parent}/./{Path(p).name}" for p in fewer["path"]]
    fewer.to_csv(tmp_path / "fewer.csv", index=False)
    assert main(["evaluate", "--model", str(derived), "--data", str(tmp_path / "fewer.csv"), "--out",
                 str(tmp_path / "v2"), "--no-analysis", "--bootstrap", "0"]) == 0
    fewer_result = json.loads((tmp_path / "v2" / "metrics.json").read_text())
    assert fewer_result["external"]["n_threshold_chosen_on"] == fewer_result["test"]["n"] >= result["test"]["n"] - 1
    assert fewer_result["external"]["threshold_chosen_on_these"] is True
    assert len(chosen["files_sha256"]) == chosen["n"] and not any("/" in h for h in chosen["files_sha256"])
    # no val fold: the calibration says where its temperature came from, and no empty val rows
    assert "fitted on the adaptation's cross-fitted scores by NLL" in report
    assert "None" not in report and "fitted on val by NLL" not in report
    # its card is the adapted one under a heading naming the new operating point (a review: it got the generic
    # card, "pediatric frontal chest X-rays like those of the Guangzhou ...", and lost the site, warnings and figures)
    capsys.readouterr()
    assert main(["model-card", "--model", str(derived)]) == 0
    card = capsys.readouterr().out
    assert "a new operating point of an adapted model" in card and "policy `youden`" in card
    assert (adapted["out"] / "model.md").read_text().split("\n", 1)[1] in card  # the adapted card, whole
    # without --data: a policy the adaptation laid out on its cross-fitted scores (the card's table), as recorded
    # (a hospital walk: the report's advice, operating-point without --data, failed, and the only ways left were
    # another 11-min adaptation or spending the held-out patients)
    capsys.readouterr()
    recorded = adapted["record"]["operating_points"]["youden"]
    assert main(["operating-point", "--model", str(adapted["out"]), "--threshold-policy", "youden",
                 "--out", str(tmp_path / "youden")]) == 0
    assert f"on {len(pd.read_csv(site_csv))} images of the adaptation's cross-fitted scores" in capsys.readouterr().out
    meta = json.loads((tmp_path / "youden" / "model.json").read_text())
    assert meta["threshold"] == recorded["threshold"] and meta["threshold_policy"] == "youden"
    assert meta["operating_point"]["chosen_on"]["specificity"] == recorded["specificity"]
    assert main(["evaluate", "--model", str(tmp_path / "youden"), "--data", str(site_csv), "--out",
                 str(tmp_path / "v3"), "--no-analysis", "--bootstrap", "0"]) == 0  # it loads as any model
    # another policy needs labelled images: one line that says which ones it has (it asked for a --dataset)
    assert main(["operating-point", "--model", str(adapted["out"]), "--threshold-policy", "sensitivity:0.8",
                 "--dataset", str(data_slice), "--out", str(tmp_path / "val")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is an adapted model: it has no val fold of its own" in err and "--data" in err
    assert "laid out youden, " in err and "not sensitivity:0.8" in err and not (tmp_path / "val").exists()


def test_the_source_models_row_counts_the_images_evaluate_counts(adapted: dict, site_csv: Path,
                                                                   tmp_path: Path) -> None:
    """The source model's "before" row at its stored threshold leaves out the images it gives no verdict (out of
    distribution or turned), as `pneumo evaluate` of the source model on the same CSV does (it counted them)."""
    assert main(["evaluate", "--data", str(site_csv), "--out", str(tmp_path / "v"), "--no-analysis",
                 "--bootstrap", "20"]) == 0
    result = json.loads((tmp_path / "v" / "metrics.json").read_text())
    page = (tmp_path / "v" / "report.html").read_text()  # NIH labels name no subtype: no normal-only subtype table
    assert "Per subtype" not in page and "label NORMAL (of the images read; not assessed)" in page  # (a reports audit)
    before = adapted["record"]["local"]["before"]
    assert before["n_not_assessed"] == result["not_assessed"]["n"] > 0  # NIH images: some are out
    got = before["stored_threshold"]["metrics"]
    assert {k: got[k] for k in ("tp", "fp", "tn", "fn")} == {k: result["test"]["metrics"][k] for k in ("tp", "fp", "tn", "fn")}
    assert f"({before['n_not_assessed']} images without a verdict left out; the ranking gain and subgroups compare " \
        "all images)" in (adapted["out"] / "model.md").read_text()


def test_without_the_source_dataset_new_images_of_the_site_are_not_refused_wholesale(
        site_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the source dataset the OOD statistics are the site's images alone; their limit was set on the same
    images (in-sample distances), and the adapted model flagged every new image of its own site out of distribution
    (20 of 20 NIH images). The limit now comes from patient-held-out scores. (The statistics, not the weights, set
    the limit: the fine-tunes return their model unchanged.)"""
    import copy

    from pneumo.infer.predictor import Predictor

    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    monkeypatch.setattr(adapt_run, "finetune", lambda model, x, y, **kwargs: copy.deepcopy(model))
    out = tmp_path / "alone"
    record = adapt_run.adapt(None, site_csv, out, dataset=str(tmp_path / "absent"), cfg=TINY, n_bootstrap=0)
    assert "out-of-fold" in record["ood"]["basis"]
    used = set(pd.read_csv(site_csv)["path"])  # absolute paths into the NIH sample
    root = Path(next(iter(used))).parents[1]
    meta = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    others = [root / rel for rel in meta["path"] if str(root / rel) not in used][:24]
    grays = [load_image_file(path) for path in others]
    flagged = [bool(r.ood) for r in Predictor(out / "model.json").predict(grays)]
    assert sum(flagged) <= len(flagged) // 2, flagged


def test_pneumo_predict_logs_the_cards_do_not_deploy_warning_for_the_adaptations_own_point(
        adapted: dict, site_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture) -> None:
    """End to end on real images: a model whose adaptation recorded its own operating point as unusable (here its
    record edited to say so, re-signed) makes `pneumo predict` log the card's warning; the model as adapted does not
    (a hospital walk: predict called 281 of 292 site images pneumonia without a word)."""
    import logging

    first = pd.read_csv(site_csv)["path"].iloc[0]
    caplog.set_level(logging.WARNING, logger="pneumo")
    assert main(["predict", first, "--model", str(adapted["out"]), "--output", str(tmp_path / "a.csv")]) == 0
    assert "not to deploy it" not in caplog.text
    copy = tmp_path / "site-a"
    shutil.copytree(adapted["out"], copy)
    meta = json.loads((copy / "model.json").read_text())
    point = meta["adaptation"]["operating_points"][meta["threshold_policy"]]
    point.update(specificity=0.0, specificity_exact_ci=[0.0, 0.1])
    (copy / "model.json").write_text(json.dumps(signed(meta)))
    assert main(["predict", first, "--model", str(copy), "--output", str(tmp_path / "b.csv")]) == 0
    assert "nearly every normal film would be called pneumonia" in caplog.text and "not to deploy it" in caplog.text
    meta["adaptation"]["operating_points"]["sensitivity:0.95"].update(sensitivity=0.3, sensitivity_exact_ci=[0.1, 0.5])
    (copy / "model.json").write_text(json.dumps(signed(meta)))  # a point of its table that misses most pneumonias:
    assert main(["operating-point", "--model", str(copy), "--threshold-policy", "sensitivity:0.95", "--out",
                 str(tmp_path / "sens")]) == 0  # said when it is set (a hospital walk: only "few patients" was)
    missed = ("about 7 in 10 pneumonias may be missed (sensitivity on the 26 images it was chosen on (the "
              "adaptation's cross-fitted scores) 0.300 [0.100, 0.500])")  # the interval as the source's
    assert missed in capsys.readouterr().err
    caplog.clear()  # ... and each time predict (or serve) loads it (a review: said once, then never again)
    assert main(["predict", first, "--model", str(tmp_path / "sens"), "--output", str(tmp_path / "c.csv")]) == 0
    assert missed in caplog.text
    capsys.readouterr()  # its validation repeats the verdict (an adapt audit: evaluate dropped it)
    assert main(["evaluate", "--model", str(copy), "--data", str(site_csv), "--out", str(tmp_path / "v"),
                 "--no-analysis", "--bootstrap", "0"]) == 0
    console, page = capsys.readouterr().out, html.unescape(" ".join((tmp_path / "v" / "report.html").read_text().split()))
    ranking = adapted["record"]["local"]["ranking"]["warning"]  # travels in the sidecar: said whatever the threshold
    assert meta["adaptation"]["ranking_warning"] == ranking
    low = ("at this operating point nearly every normal film would be called pneumonia (cross-fitted specificity "
           "0.000 [0.000, 0.100])")
    said = "Its records say: " + "; ".join(w for w in (ranking, low) if w)
    assert said in console and said in page


def test_pneumo_serve_logs_the_cards_do_not_deploy_warning_at_start(adapted: dict, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`pneumo serve` with one worker and with several logs the warning before it starts serving the adaptation's
    unusable point, and not for the model as adapted (uvicorn itself is not started)."""
    import logging

    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw.get("workers", 1)))
    monkeypatch.delenv("PNEUMO_API_KEY", raising=False)
    monkeypatch.setenv("PNEUMO_SERVE_SETTINGS", "")  # recorded absent or as it was: the multi-worker start sets it
    monkeypatch.delenv("PNEUMO_SERVE_SETTINGS")
    caplog.set_level(logging.WARNING, logger="pneumo")
    serve = ["serve", "--threads", "1", "--decode-timeout-s", "0"]
    assert main([*serve, "--model", str(adapted["out"])]) == 0
    assert "not to deploy it" not in caplog.text
    copy = tmp_path / "site-a"
    shutil.copytree(adapted["out"], copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["adaptation"]["operating_points"][meta["threshold_policy"]].update(specificity=0.0,
                                                                           specificity_exact_ci=[0.0, 0.1])
    (copy / "model.json").write_text(json.dumps(signed(meta)))
    for workers in ("1", "2"):
        caplog.clear()
        assert main([*serve, "--model", str(copy), "--workers", workers]) == 0
        assert caplog.text.count("not to deploy it") == 1, (workers, caplog.text)
    assert started == [1, 1, 2]
    from fastapi.testclient import TestClient  # ... and its card's answer says it, for a client (a hospital walk)

    from pneumo.config import ServeConfig
    from pneumo.infer.predictor import Predictor
    from pneumo.serve.app import create_app

    for model, said in ((adapted["out"], False), (copy, True)):
        with TestClient(create_app(ServeConfig(decode_timeout_s=0), Predictor(model, threads=1))) as client:
            warning = client.get("/api/v1/model").json()["warning"]
        assert ("not to deploy it" in (warning or "")) is said


def test_re_adapting_on_images_the_source_was_adapted_on_is_refused_in_one_line(
        adapted: dict, site_csv: Path, full_data: Path, data_slice: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """Adapting an adapted model again on images it was adapted on made every fold model start from weights fitted on
    its held-out images, while the card said no image was scored by a model adapted on it (a review)."""
    nih, first = full_data.parent / "nih_sample", pd.read_csv(site_csv, dtype=str)
    meta = pd.read_csv(nih / "manifest.csv", dtype=str, keep_default_na=False)
    new = meta[~meta["patient_id"].isin(set(first["patient_id"]))].groupby("patient_id").filter(lambda g: len(g) == 1)
    new = pd.concat([g.sample(PER_CLASS, random_state=5) for _, g in new.groupby("label")])
    again = pd.concat([new.assign(path=[str(nih / p) for p in new["path"]])[["path", "label", "patient_id"]],
                       first.iloc[:3][["path", "label", "patient_id"]]])  # "label more and adapt again", 3 sent back
    again.to_csv(tmp_path / "more.csv", index=False)
    argv = ["adapt", "--model", str(adapted["out"]), "--data", str(tmp_path / "more.csv"), "--out", str(tmp_path / "b"),
            "--dataset", str(data_slice), "--device", "cpu", "--rehearsal", "0", "--folds", "2", "--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"3 of the {len(again)} site images are images the source model" in err[0], err
    assert "already adapted on" in err[0] and "adapt the shipped model (no --model) on the union" in err[0]
    assert not (tmp_path / "b").exists()
    from pneumo.adapt.report import summary_lines  # the card says how many site images were source val images

    record = json.loads(json.dumps(adapted["record"]))
    assert not [line for line in summary_lines(record) if "images of the source dataset's val fold" in line]
    record["rehearsal"]["site_in_source_val"] = 2
    assert ("- 2 of the site's images are images of the source dataset's val fold: left out of the source images the "
            "OOD and orientation checks were refitted on.") in summary_lines(record)


def test_a_tampered_adaptation_threshold_is_a_one_line_error(adapted: dict, site_csv: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "site-a"
    shutil.copytree(adapted["out"], copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["adaptation"]["operating_points"]["triage"]["threshold"] = 5.0
    (copy / "model.json").write_text(json.dumps(signed(meta)))  # as if recorded anew: the value itself is checked
    assert main(["evaluate", "--model", str(copy), "--data", str(site_csv), "--out", str(tmp_path / "v"),
                 "--no-analysis", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "triage threshold is 5.0, not in [0, 1]" in err[0]


def test_without_patient_ids_each_image_is_its_own_patient_and_the_card_says_so(site_csv: Path, tmp_path: Path) -> None:
    from pneumo.adapt.report import patients_line
    from pneumo.adapt.sources import load_site
    from pneumo.infer.predictor import Predictor

    plain = tmp_path / "plain.csv"
    pd.read_csv(site_csv)[["path", "label"]].to_csv(plain, index=False)
    site = load_site(plain, Predictor(None))
    assert not site.patients_given and site.table["patient_id"].nunique() == len(site.table)
    assert "its own patient" in patients_line(site.counts())
    assert "from the CSV" in patients_line(load_site(site_csv, Predictor(None)).counts())
    mixed = pd.read_csv(site_csv, dtype=str)  # a patient with a normal and a pneumonia film: said, as the counts
    mixed.loc[mixed["label"] == "NORMAL", "patient_id"] = mixed.loc[mixed["label"] == "NORMAL", "patient_id"].iloc[0]
    first_sick = mixed.index[mixed["label"] == "PNEUMONIA"][0]  # (a reporting audit: "27 patients" beside "17
    mixed.loc[first_sick, "patient_id"] = mixed.loc[mixed["label"] == "NORMAL", "patient_id"].iloc[0]  # + 14")
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    counts = load_site(tmp_path / "mixed.csv", Predictor(None)).counts()
    assert sum(counts["patients_by_class"].values()) == counts["n_patients"] + 1
    assert "1 of them with films of both classes" in patients_line(counts)
    pacs = tmp_path / "pacs.csv"  # a PACS export's spelling of the column: the same patients, not one each
    pd.read_csv(site_csv, dtype=str).rename(columns={"patient_id": "PatientID"}).to_csv(pacs, index=False)
    named = load_site(pacs, Predictor(None))
    assert named.patients_given and named.table["patient_id"].nunique() == len(named.table) - 1
    assert "PatientID" not in named.table.columns


def test_without_a_patient_id_column_a_dicoms_patient_id_groups_its_films_kept_as_a_hash(site_csv: Path,
                                                                                         tmp_path: Path) -> None:
    """A DICOM site without a patient_id column: each film was its own patient although the files name their
    patients, so one patient's films could sit on both sides of a cross-fitting split."""
    from corpus import dicom_bytes

    from pneumo.adapt.report import patients_line
    from pneumo.adapt.sources import load_site
    from pneumo.infer.predictor import Predictor

    rows = pd.read_csv(site_csv, dtype=str)
    for i, row in rows.iterrows():
        folder = tmp_path / "site" / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        gray = load_image_file(Path(row["path"]))
        (folder / f"IM{i:05d}").write_bytes(dicom_bytes(gray, PatientID=f"MRN-{row['patient_id']}"))
    site = load_site(tmp_path / "site", Predictor(None))
    assert site.n_patient_tags == len(site.table) and site.table["patient_id"].nunique() == rows["patient_id"].nunique()
    assert not site.table["patient_id"].str.contains("MRN").any()  # grouped by a hash, the number not kept
    plain = {hashlib.sha256(f"MRN-{p}".encode()).hexdigest()[:16] for p in rows["patient_id"]}
    assert not plain & {g.removeprefix("dicom:") for g in site.table["patient_id"]}  # keyed: no trying every MRN
    assert "from the DICOM PatientID of every image" in patients_line(site.counts())
    # a de-identified export: one PatientID on every file would make the site one patient (no cross-fitting)
    for i, path in enumerate(sorted((tmp_path / "site").rglob("IM*"))):
        path.write_bytes(dicom_bytes(load_image_file(path), PatientID="ANON"))
    anonymous = load_site(tmp_path / "site", Predictor(None))
    assert anonymous.n_patient_tags == 0 and anonymous.table["patient_id"].nunique() == len(anonymous.table)


def test_a_patient_id_column_with_gaps_is_a_one_line_error(site_csv: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    gaps = tmp_path / "gaps.csv"
    table = pd.read_csv(site_csv, dtype=str)
    table.loc[3, "patient_id"] = ""  # one forgotten id: grouping the rest and not this one would split nothing safely
    table.to_csv(gaps, index=False)
    assert main(["adapt", "--data", str(gaps), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"1 of {len(table)} rows have no patient_id" in err[0] and table.loc[3, "path"] in err[0]
    assert not (tmp_path / "a").exists()


def test_pixel_identical_copies_share_a_patient_group_and_the_card_says_so(site_csv: Path, tmp_path: Path) -> None:
    from pneumo.adapt.report import patients_line
    from pneumo.adapt.sources import load_site
    from pneumo.infer.predictor import Predictor

    table = pd.read_csv(site_csv, dtype=str).groupby("label").head(3)
    copy = tmp_path / "exported-again.jpeg"  # the same film under another name, as a second PACS export would give
    shutil.copyfile(table["path"].iloc[0], copy)
    plain = tmp_path / "copies.csv"
    pd.concat([table, table.iloc[:1].assign(path=str(copy))])[["path", "label"]].to_csv(plain, index=False)
    site = load_site(plain, Predictor(None))
    groups = dict(zip(site.table["path"], site.groups, strict=True))
    assert groups[str(copy)] == groups[table["path"].iloc[0]] and site.counts()["n_copies"] == 1
    assert site.counts()["n_patients"] == len(table)  # 7 images, 6 groups
    assert "1 image(s) pixel for pixel the same" in patients_line(site.counts())


def test_join_copies_merges_the_patients_a_copy_links() -> None:
    from pneumo.evaluate.labelled import join_copies

    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3))
    # patient p2 has a copy of p1's image and an image of its own; p3 has a copy of that one: all three are one group
    x = np.stack([a, a.copy(), b, b.copy(), c])
    groups, copies = join_copies(x, pd.Series(["p1", "p2", "p2", "p3", "p4"]))
    assert copies == 2 and len(set(groups[:4])) == 1 and groups[4] == "p4"
    unique, none = join_copies(x[[0, 2, 4]], pd.Series(["p1", "p2", "p4"]))
    assert none == 0 and list(unique) == ["p1", "p2", "p4"]


def test_by_an_identifier_column_is_refused_before_it_reaches_the_folder_that_travels(
        site_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--by patient_id`` wrote every patient's ID into the card, adapt.json and report, and the card is served by
    /api/v1/model (a review); a column of IDs under another name does the same."""
    table = pd.read_csv(site_csv, dtype=str)
    table.assign(accession=[f"ACC{i:05d}" for i in range(len(table))]).to_csv(tmp_path / "ids.csv", index=False)
    for column in ("patient_id", "accession"):
        assert main(["adapt", "--data", str(tmp_path / "ids.csv"), "--out", str(tmp_path / "a"), "--by", column]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--by {column}:" in err[0] and "(an identifier?)" in err[0], err
        assert not (tmp_path / "a").exists()


def test_cli_refuses_too_few_images_and_a_used_folder_with_one_line(site_csv: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    few = tmp_path / "few.csv"
    pd.read_csv(site_csv).groupby("label").head(4).to_csv(few, index=False)
    assert main(["adapt", "--data", str(few), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 10 of each" in err[0]
    used = tmp_path / "used"
    used.mkdir()
    (used / "x.txt").write_text("keep me")
    assert main(["adapt", "--data", str(site_csv), "--out", str(used)]) == 2
    assert "not empty" in capsys.readouterr().err and (used / "x.txt").read_text() == "keep me"
    assert main(["adapt", "--data", str(site_csv), "--out", str(tmp_path / "b"), "--threshold-policy", "best"]) == 2
    assert "threshold policy" in capsys.readouterr().err
    assert main(["adapt", "--data", str(site_csv), "--out", str(tmp_path / "c"), "--by", "scanner"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--by scanner" in err[0] and "its other columns: view" in err[0]


@pytest.fixture(scope="module")
def readapted(adapted: dict, site_csv: Path, data_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A second adaptation: the module's adapted model to another site's images (whole patients not in the first),
    by the CLI into an empty folder given as --out, with rehearsal off; the fine-tunes return their model unchanged
    (records only: the module's first adaptation trains)."""
    import copy

    nih = Path(pd.read_csv(site_csv)["path"].iloc[0]).parents[1]
    meta = pd.read_csv(nih / "manifest.csv", dtype=str, keep_default_na=False)
    used = set(pd.read_csv(site_csv, dtype=str)["patient_id"])
    single = meta[~meta["patient_id"].isin(used)].groupby("patient_id").filter(lambda g: len(g) == 1)
    rows = pd.concat([g.sample(PER_CLASS, random_state=4) for _, g in single.groupby("label")])
    second = tmp_path_factory.mktemp("second-site") / "second.csv"
    rows.assign(path=[str(nih / p) for p in rows["path"]])[["path", "label", "patient_id"]].to_csv(second, index=False)
    work = tmp_path_factory.mktemp("readapted")
    out = work / "site-b"
    out.mkdir()  # an empty folder is a valid --out
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adapt_run, "finetune", lambda model, x, y, **kwargs: copy.deepcopy(model))
        assert main(["adapt", "--model", str(adapted["out"]), "--data", str(second), "--out", str(out), "--dataset",
                     str(data_slice), "--device", "cpu", "--rehearsal", "0", "--folds", "2", "--epochs", "1",
                     "--seed", "1"]) == 0
    return {"out": out, "work": work, "second": second}


def test_an_interrupted_adaptation_leaves_no_model_folder(site_csv: Path, data_slice: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder appears whole or not at all: a failure after the weights and OOD statistics were written (here in
    the orientation refit) left a folder that loaded as a model without its checks."""
    import copy

    import pneumo.adapt.write as adapt_write

    monkeypatch.setattr(adapt_run, "finetune", lambda model, x, y, **kwargs: copy.deepcopy(model))  # no training
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adapt_write, "refit_orientation", interrupted)
    out = tmp_path / "site-a"
    with pytest.raises(KeyboardInterrupt):
        adapt_run.adapt(None, site_csv, out, dataset=str(data_slice), cfg=AdaptConfig(folds=2, epochs=1, rehearsal=0,
                                                                                     seed=1), n_bootstrap=0,
                        device="cpu")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half folder, no hidden partial one


def test_rehearsal_off_still_refits_the_ood_statistics_on_source_images(readapted: dict, data_slice: Path) -> None:
    """``--rehearsal 0`` switches off rehearsal only: the OOD statistics are still fitted on source training images (it
    once loaded a pool of 2). The complete run wrote its folder alone, under the name given."""
    import pneumo.adapt.write as adapt_write
    from pneumo.adapt.sources import load_source
    from pneumo.infer.predictor import Predictor

    out = readapted["out"]
    record = json.loads((out / "adapt.json").read_text())
    assert sorted(p.name for p in readapted["work"].iterdir()) == ["site-b"]
    meta = json.loads((out / "model.json").read_text())
    assert record["rehearsal"] == {**record["rehearsal"], "used": False, "pool": 0}
    pool = load_source(Predictor(None).meta, str(data_slice), pool=10**6, seed=0).sizes["pool"]
    assert pool > 2 and meta["ood"]["n_train"] == min(pool, adapt_write.OOD_POOL) + record["site"]["n_images"]
    assert "source train-fold sample" in meta["ood"]["fitted_on"] and "out-of-fold" in meta["ood"]["fitted_on"]
    assert f"--model {out}" in (out / "report.html").read_text()  # the folder's own name, not the partial one's


def test_a_new_model_inside_its_source_models_folder_is_refused_in_one_line(
        adapted: dict, site_csv: Path, capsys: pytest.CaptureFixture) -> None:
    """The source folder is never written to (deployed, read-only, or the package's assets): a review nested both an
    adaptation and a new operating point inside it (exit 0); only the folder itself was refused."""
    before = _digest(adapted["out"])
    for argv in (["adapt", "--model", str(adapted["out"]), "--data", str(site_csv)],
                 ["operating-point", "--model", str(adapted["out"]), "--threshold-policy", "youden",
                  "--data", str(site_csv)]):
        capsys.readouterr()
        assert main([*argv, "--out", str(adapted["out"] / "nested")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "inside the source model's folder" in err
    assert not (adapted["out"] / "nested").exists() and _digest(adapted["out"]) == before


def test_a_copy_that_lost_or_changed_its_adapted_on_list_is_refused_by_evaluate(
        adapted: dict, site_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Without crossfit_predictions.csv (or cut to its header) evaluate called the images the model was adapted on
    external ("nothing was fitted on them"): the list is recorded in the sidecar and a lost or changed copy refused."""
    from pneumo.data.rundir import CROSSFIT_KEY

    listed = adapted["out"] / "crossfit_predictions.csv"
    assert json.loads((adapted["out"] / "model.json").read_text())[CROSSFIT_KEY] == \
        hashlib.sha256(listed.read_bytes()).hexdigest()
    for change, message in (("lost", "is missing"), ("cut", "does not match the SHA-256")):
        copy = tmp_path / change
        shutil.copytree(adapted["out"], copy)
        if change == "lost":
            (copy / "crossfit_predictions.csv").unlink()
        else:
            (copy / "crossfit_predictions.csv").write_text(listed.read_text().splitlines()[0] + "\n")
        capsys.readouterr()
        assert main(["evaluate", "--model", str(copy), "--data", str(site_csv), "--out", str(tmp_path / f"v-{change}"),
                     "--no-analysis", "--bootstrap", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err and not (tmp_path / f"v-{change}").exists()
        # nor is it passed on by a copy that pneumo makes (operating-point and export copied it unchecked)
        for argv in (["operating-point", "--model", str(copy), "--data", str(site_csv), "--threshold-policy",
                      "youden", "--out", str(tmp_path / f"o-{change}")],
                     ["export", "--model", str(copy), "--out", str(tmp_path / f"e-{change}")]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and message in err, (argv[0], err)


def test_a_threshold_chosen_on_the_images_the_model_was_adapted_on_is_warned_about_and_recorded(
        adapted: dict, site_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """evaluate said so; operating-point --data chose a threshold on the adaptation's own images without a word (a
    review)."""
    assert main(["operating-point", "--model", str(adapted["out"]), "--data", str(site_csv), "--threshold-policy",
                 "youden", "--out", str(tmp_path / "o")]) == 0
    n = len(pd.read_csv(site_csv))
    assert f"{n} of these {n} images are ones the model was adapted on" in caplog.text
    assert json.loads((tmp_path / "o" / "model.json").read_text())["operating_point"]["chosen_on"]["n_adapted_on"] == n


def test_an_out_path_that_is_a_file_is_a_one_line_error(site_csv: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    assert main(["adapt", "--data", str(site_csv), "--out", str(taken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and taken.read_text() == "not a folder"


def test_subgroups_of_a_csv_column_are_measured_on_the_written_scores_before_and_after(adapted: dict,
                                                                                       site_csv: Path) -> None:
    from sklearn.metrics import roc_auc_score

    raw = pd.read_csv(site_csv)
    raw["file_sha256"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in raw["path"]]
    table = pd.read_csv(adapted["out"] / "crossfit_predictions.csv").merge(raw[["file_sha256", "view"]],
                                                                           on="file_sha256")
    groups = adapted["record"]["local"]["subgroups"]
    assert set(groups["after"]["view"]) == set(table["view"])
    for view, rows in table.groupby("view"):
        y = (rows["label"] == "PNEUMONIA").to_numpy(int)
        after, before = groups["after"]["view"][view], groups["before"]["view"][view]
        assert after["n"] == before["n"] == len(rows) and after["n_pos"] == y.sum()
        if 0 < y.sum() < len(y):
            assert after["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, rows["p_crossfit"]))
            assert before["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, rows["p_source_model"]))
    assert "Local performance by subgroup" in (adapted["out"] / "model.md").read_text()


def test_the_ranking_gain_is_read_off_the_written_scores_and_warned_about_in_the_card(adapted: dict) -> None:
    from sklearn.metrics import roc_auc_score

    table = pd.read_csv(adapted["out"] / "crossfit_predictions.csv")
    y = (table["label"] == "PNEUMONIA").to_numpy(int)
    ranking = adapted["record"]["local"]["ranking"]
    assert ranking["roc_auc_before"] == pytest.approx(roc_auc_score(y, table["p_source_model"]))
    assert ranking["roc_auc_after"] == pytest.approx(roc_auc_score(y, table["p_crossfit"]))
    lo, hi = ranking["ci"]
    assert lo <= ranking["gain"] <= hi
    assert f"the source model on the same {len(y)} images: AUC {ranking['roc_auc_before']:.3f} (gain {ranking['gain']:+.3f} " \
        f"[{lo:+.3f}, {hi:+.3f}])" in adapted["printed"]
    card = (adapted["out"] / "model.md").read_text()
    # the card and the report show it: their table's source column leaves out the images without a verdict, so it
    # alone could read "no gain" (a review: 0.581 vs 0.581 there, 0.476 -> 0.581 on the same 50 images)
    line = (f"Ranking on the same {len(y)} images (none left out): ROC-AUC {ranking['roc_auc_before']:.3f} (source "
            f"model) -> {ranking['roc_auc_after']:.3f} (adapted, cross-fitted), gain {ranking['gain']:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}]")
    assert line in card and line in html.unescape((adapted["out"] / "report.html").read_text())
    assert "**" not in (adapted["out"] / "report.html").read_text()  # markdown emphasis is the card's, not the page's
    assert (ranking["warning"] is not None) == (lo <= 0)
    if ranking["warning"]:  # a one-epoch, two-fold adaptation on 26 images may well not help
        assert ranking["warning"] in card and f"warning: {ranking['warning']}" in adapted["printed"]


def test_ranking_gain_warns_unless_its_paired_interval_is_above_zero() -> None:
    from pneumo.adapt.run import ranking_gain

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    noise = rng.normal(size=y.size)
    before = 1 / (1 + np.exp(-noise))  # no information
    after = 1 / (1 + np.exp(-(noise + 3 * y)))  # the same noise plus a real signal
    helped = ranking_gain(y, before, after, n_bootstrap=500, seed=0)
    assert helped["gain"] > 0.3 and helped["ci"][0] > 0 and helped["warning"] is None
    same = ranking_gain(y, before, before, n_bootstrap=500, seed=0)
    assert same["gain"] == 0 and same["ci"] == (0.0, 0.0) and "not clearly above" in same["warning"]
    worse = ranking_gain(y, after, before, n_bootstrap=0, seed=0)
    assert worse["ci"] is None and "not computed" in worse["warning"]


def test_exact_interval_is_never_zero_width() -> None:
    lo, hi = exact_interval(8, 8)
    assert hi == 1.0 and lo == pytest.approx(0.6306, abs=1e-4)  # 0.025 ** (1 / 8)
    lo, hi = exact_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3085, abs=1e-4)
    assert all(np.isnan(exact_interval(0, 0)))


def test_policy_warning_holds_until_the_exact_interval_of_the_target_is_within_005() -> None:
    """The rule of three (60 positives for 0.95) is for a result without misses; this policy allows 5 % of misses,
    and at 60 positives 57/60 has an exact interval down to 0.86 (review of 2026-12-06)."""
    from scipy.stats import beta

    def low(k: int, n: int) -> float:
        return beta.ppf(0.025, k, n - k + 1)

    need = {s: next(n for n in range(1, 500) if low(math.ceil(s * n - 1e-9), n) >= s - 0.05) for s in (0.95, 0.9)}
    assert 100 < need[0.95] < 130 and 150 < need[0.9] < 190  # about 114 and 169
    assert policy_warning("sensitivity:0.95", 60, 200) is not None and "0.86" in policy_warning("sensitivity:0.95", 60, 200)
    assert policy_warning("sensitivity:0.95", need[0.95] - 1, 200) is not None
    assert policy_warning("sensitivity:0.95", need[0.95], 200) is None
    assert policy_warning("triage", need[0.9] - 1, 200) is not None and policy_warning("triage", need[0.9], 200) is None
    assert policy_warning("youden", 100, 12) is not None and policy_warning("youden", 40, 40) is None
    with pytest.raises(ConfigError):
        policy_warning("best", 10, 10)


def test_patient_folds_keep_patients_whole_and_both_classes_in_training() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), rng.integers(1, 4, 40))
    y = (groups % 3 == 0).astype(int)
    folds = patient_folds(y, groups, 4, seed=1)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(range(len(y)))  # every image held out exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test]) and set(y[train]) == {0, 1}
    with warnings.catch_warnings():  # the one-line error alone, no library warning before it
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="lacks a class"):
            patient_folds(np.r_[np.zeros(9, int), 1], np.arange(10), 2, seed=0)


def test_cli_adapts_end_to_end_with_every_flag(adapted: dict) -> None:
    printed, record, out = adapted["printed"], adapted["record"], adapted["out"]
    assert "adapted model:" in printed and "(youden)" in printed and "source hospital" in printed
    assert record["recipe"] == TINY.model_dump()  # the flags set, every other field its default
    assert record["local"]["folds"] == 2 and record["rehearsal"]["used"] is True
    meta = json.loads((out / "model.json").read_text())
    assert meta["threshold_policy"] == "youden" and meta["tta"] is False
    assert meta["threshold"] == pytest.approx(record["operating_point"]["threshold"])


def test_each_figure_says_on_which_scores_and_at_which_threshold_it_was_measured(adapted: dict) -> None:
    """A numbers audit: the console gave the specificity without its interval or the caveat that the threshold was
    chosen on the same scores; the source hospital's collapse at the site's threshold showed only as an AUC; the
    subgroup and source tables did not say which threshold; the rehearsal line understated the source share."""
    printed, record, out = adapted["printed"], adapted["record"], adapted["out"]
    line = next(x for x in printed.splitlines() if x.startswith("cross-fitted on the site"))
    assert line.count("[") == 2 and "on the scores the threshold was chosen on" in line
    assert "by construction" not in line  # youden sets no sensitivity (a hospital walk: "meets the policy" at 0.342)
    source = next(x for x in printed.splitlines() if x.startswith("source hospital"))
    after = record["source_site"]["after"]["metrics"]
    assert f"specificity {record['source_site']['before']['metrics']['specificity']:.3f} -> " \
           f"{after['specificity']:.3f}" in source and "this site's" in source
    card, report = (out / "model.md").read_text(), html.unescape((out / "report.html").read_text())
    from pneumo.templates import fmt_threshold

    thresholds = f"the source model at its own threshold {fmt_threshold(record['source_model']['threshold'])}"
    for text in (card, report):
        assert "the policy holds over all the site's images, not within each subgroup" in text
        assert thresholds in text and "chosen on these same scores" in text
    used = record["rehearsal"]["per_epoch_final"]
    assert used == min(record["rehearsal"]["pool"], max(round(0.5 * record["site"]["n_images"]), 16))
    assert f"{used} an epoch in the final fine-tune" in card
    assert record["seconds"]["before_writing"] >= record["seconds"]["crossfit"] > 0  # adapt.json's own time


def test_an_adapted_model_records_the_code_and_the_resamples_that_made_it(adapted: dict) -> None:
    """Its sidecar's commit was null (the source's is not inherited, and none was set) and adapt.json said neither the
    code nor the bootstrap count (the reproducibility review)."""
    from pneumo.provenance import git_commit

    record, out = adapted["record"], adapted["out"]
    assert record["provenance"]["commit"] == git_commit() and record["provenance"]["pneumo"]
    assert {"torch", "numpy", "onnxruntime", "threads", "created"} <= set(record["provenance"])
    assert json.loads((out / "model.json").read_text())["commit"] == git_commit()
    assert record["bootstrap"] == {"n_resamples": 1000, "seed": TINY.seed}


def test_adapting_an_adapted_model_keeps_the_earlier_sites_images_and_says_so(
        adapted: dict, readapted: dict, site_csv: Path, data_slice: Path, tmp_path: Path) -> None:
    """The second adaptation dropped the first one's record and adapted-on list: evaluate then called the first
    site's images external, and the card named only the model id (a review). And no path of the machine it was made
    on travels in the new folder (the source model's and the dataset's were absolute)."""
    used = set(pd.read_csv(site_csv, dtype=str)["patient_id"])
    out = readapted["out"]
    sidecar = json.loads((out / "model.json").read_text())
    first = json.loads((adapted["out"] / "model.json").read_text())
    assert sidecar["adapted_before"]["chain"] == [{"model_id": sidecar["adaptation"]["source_model"]["model_id"],
                                                   "created": first["adaptation"]["created"], "n_images": len(
                                                       pd.read_csv(site_csv)), "n_patients": len(used)}]
    assert main(["evaluate", "--model", str(out), "--data", str(site_csv), "--out", str(tmp_path / "v"),
                 "--no-analysis", "--bootstrap", "0"]) == 0
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["external"]["n_fitted_on"] == len(used) + 1
    card = (out / "model.md").read_text()
    assert f"was itself adapted on {first['adaptation']['created']} to {len(used) + 1} images" in card
    for name in ("model.json", "model.md", "adapt.json"):
        text = (out / name).read_text()
        assert not [place for place in (readapted["work"], readapted["second"].parent, adapted["out"], data_slice)
                    if str(place) in text], name


def test_without_the_dataset_the_site_check_compares_an_adapted_model_with_its_own_sites_call_rate(
        adapted: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the source dataset the site check compared an adapted model's positive-call rate with Kermany's
    training prevalence (74 %), a case mix it was not made for: with a low cross-fitted specificity it calls most of
    its own site's images pneumonia, read as "case mix differs" (a review). Its record gives the rate to expect."""
    from pneumo.adapt.check import build_reference
    from pneumo.infer.predictor import Predictor

    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    predictor = Predictor(adapted["out"] / "model.json")
    ref = build_reference(predictor, dataset=None, sample=10, seed=0)
    site, local = adapted["record"]["site"], predictor.meta.metrics["site_crossfit"]
    prevalence = site["by_label"]["PNEUMONIA"] / site["n_images"]
    expected = local["sensitivity"] * prevalence + (1 - local["specificity"]) * (1 - prevalence)
    assert ref.kind == "sidecar" and ref.prevalence == pytest.approx(expected)
    assert ref.expected == "the call rate at the site it was adapted on"
    assert f"{site['n_images']} images" in ref.prevalence_source and "specificity" in ref.prevalence_source
    shipped = build_reference(Predictor(None), dataset=None, sample=10, seed=0)  # the source model: as before
    assert shipped.expected == "the training prevalence" and 0.7 < shipped.prevalence < 0.8


def test_a_calibration_no_better_than_the_sites_share_is_a_warning_in_the_card(adapted: dict) -> None:
    """A calibration that flattens every probability was shown as any other (a review saw T = 20.0 at cross-fitted AUC
    0.46, and T = 12.7 with probabilities of 0.44-0.55 whose NLL was worse than the site's share's)."""
    from pneumo.adapt.report import summary_lines
    from pneumo.adapt.run import _calibration_nll
    from pneumo.adapt.stats import calibration_warning
    from pneumo.evaluate.calibration import T_MAX, fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    for noise in (rng.normal(0, 5, 200), rng.normal(0, 0.3, 200)):  # logits that say nothing about the labels
        t = fit_temperature(noise, y)
        warning = calibration_warning(t, *_calibration_nll(noise, y, t))
        assert warning and "no better than giving every image the site's share" in warning, t
    assert fit_temperature(rng.normal(0, 5, 200), y) == pytest.approx(T_MAX, rel=1e-3)
    informative = (2 * y - 1) * 2.0 + rng.normal(0, 1, 200)
    t = fit_temperature(informative, y)
    assert calibration_warning(t, *_calibration_nll(informative, y, t)) is None
    lines = summary_lines({**adapted["record"], "calibration_warning": "the calibrated probabilities (x)"})
    assert "- **Warning**: the calibrated probabilities (x)." in lines


def test_an_operating_point_too_unspecific_to_use_is_said_everywhere_with_the_way_out(
        adapted: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A default adaptation on 72 NIH images gave threshold 0.037, cross-fitted specificity 0.000 [0.000, 0.103]; held
    out, 42 of 45 normal films were called pneumonia. Only the card and report said so: the console ended with a
    go-ahead and the report's "Next" said to predict and serve with it (a hospital walk). Now the console, card and
    report say not to deploy it, and name the policy of the table that would do."""
    import copy

    from pneumo.adapt.report import summary_lines, unusable_operating_point

    def point(threshold: float, specificity: float, ci: list[float]) -> dict:
        return {"threshold": threshold, "sensitivity": 0.9, "sensitivity_exact_ci": [0.8, 0.97],
                "specificity": specificity, "specificity_exact_ci": ci}

    record = copy.deepcopy(adapted["record"])  # (adapt.json; the command's record also holds the total time)
    record["seconds"]["total"] = 1.0
    record["operating_point"]["policy"] = "sensitivity:0.95"
    record["local"]["after"]["metrics"]["specificity"] = 0.0
    record["local"]["after"]["specificity_exact_ci"] = [0.0, 0.103]
    record["operating_points"] = {"youden": point(0.35, 0.79, [0.62, 0.91]),
                                  "sensitivity:0.95": point(0.037, 0.0, [0.0, 0.103]),
                                  "triage": point(0.088, 0.26, [0.13, 0.44])}
    said = unusable_operating_point(record)
    assert said.startswith("at this operating point nearly every normal film would be called pneumonia "
                           "(cross-fitted specificity 0.000 [0.000, 0.103]): do not deploy it")
    assert "switch to youden (pneumo operating-point --model THIS --threshold-policy youden" in said
    assert f"- **Warning**: {said}." in summary_lines(record)  # the card
    monkeypatch.setattr(adapt_run, "adapt", lambda *args, **kwargs: record)
    out = tmp_path / "site-a"
    assert main(["adapt", "--data", str(tmp_path / "labels.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"--model {out} --threshold-policy youden" in printed and "do not deploy it as it is;" in printed
    withheld = record["local"]["before"]["n_not_assessed"]  # an adapt audit: only the card said so
    assert (f"; it gives {withheld} of them no verdict" in printed) == (withheld > 0)
    record["local"]["before"]["n_not_assessed"] = 14
    assert main(["adapt", "--data", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "site-b")]) == 0
    assert "; it gives 14 of them no verdict (out of distribution or turned" in capsys.readouterr().out
    record["operating_points"]["youden"]["sensitivity"] = 0.26  # an adapt audit: offered, it gave 0.00 held out
    said = unusable_operating_point(record)
    assert "switch to" not in said and "no other policy calls most pneumonias and most normal films right" in said
    record["operating_points"]["youden"]["sensitivity"] = 0.9
    from pneumo.adapt.report import missed_at_operating_point  # a point that misses most pneumonias: said there too

    record["local"]["after"]["metrics"]["sensitivity"] = 0.9
    assert missed_at_operating_point(record) is None
    record["local"]["after"]["metrics"]["sensitivity"] = 0.3
    said = missed_at_operating_point(record)
    assert said.startswith("at this operating point about 7 in 10 pneumonias")
    assert f"- **Warning**: {said}." in summary_lines(record)
    record["operating_point"]["policy"] = "youden"  # a usable point: nothing of the kind
    record["local"]["after"]["metrics"]["specificity"] = 0.79
    record["local"]["after"]["specificity_exact_ci"] = [0.62, 0.91]
    assert unusable_operating_point(record) is None
    capsys.readouterr()  # specific enough, but missing most pneumonias: still not a go-ahead (a review)
    assert main(["adapt", "--data", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "site-c")]) == 0
    assert "do not deploy it as it is; validate it" in capsys.readouterr().out
    record["local"]["after"]["metrics"]["sensitivity"] = 0.9
    from pneumo.adapt.report import source_site_warning  # the source hospital at the new threshold (an adapt audit)

    record["source_site"]["after"]["metrics"]["specificity"] = 0.0
    record["source_site"]["after"]["specificity_exact_ci"] = [0.0, 0.016]
    said = source_site_warning(record)
    assert said.startswith("at this operating point nearly every normal film would be called pneumonia (specificity "
                           "on the source hospital's test split 0.000 [0.000, 0.016]): use the adapted model only at")
    assert f"- **Warning**: {said}." in summary_lines(record)
    assert main(["adapt", "--data", str(tmp_path / "labels.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "do not deploy" not in printed and "the sensitivity meets the policy by construction" not in printed
