"""Out-of-distribution scores of a real (tiny) probe run on a slice of the data: fitted at training time, stored
with the checkpoint, returned by both backends and `pneumo predict`, counted by `pneumo evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pneumo.cli import main
from pneumo.config import load_config
from pneumo.data.decode import load_image_file
from pneumo.infer.predictor import Predictor
from pneumo.train.run import train

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "moon", "page", "text", "brick", "coins", "clock",
          "grass", "gravel", "hubble_deep_field")


def photo_grays() -> list[np.ndarray]:
    """scikit-image's sample photographs and text scans as uint8 gray (none of them is a radiograph)."""
    data = pytest.importorskip("skimage.data")
    from skimage.color import rgb2gray
    from skimage.util import img_as_ubyte

    out = []
    for name in PHOTOS:
        image = getattr(data, name)()
        out.append(img_as_ubyte(rgb2gray(image[..., :3])) if image.ndim == 3 else img_as_ubyte(image))
    return out


@pytest.fixture(scope="module")
def probe_run(data_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ood_run")
    cfg = load_config("lite0-probe", [f"data.root={data_slice}", f"out_dir={out / 'runs'}", f"data.cache_dir={out / 'cache'}",
                                  "data.image_size=64", "data.val_fraction=0.3", "eval.n_bootstrap=50",
                                  "train.batch_size=8", "train.amp=false", "name=probe"])
    return train(cfg)


@pytest.fixture(scope="module")
def held_out_xrays(probe_run: Path, data_slice: Path) -> list[np.ndarray]:
    """The run's test fold: patients it never saw in training or in choosing the threshold."""
    folds = pd.read_csv(probe_run / "folds.csv", keep_default_na=False)
    return [load_image_file(data_slice / p) for p in folds.loc[folds["fold"] == "test", "path"]]


def test_training_records_the_ood_statistics_with_the_checkpoint(probe_run: Path) -> None:
    meta = json.loads((probe_run / "model.json").read_text())
    folds = pd.read_csv(probe_run / "folds.csv")
    ood = meta["ood"]
    assert ood["method"] == "mahalanobis-tied" and ood["layer"] == "forward_features"
    assert ood["n_train"] == int((folds["fold"] == "train").sum()) and ood["n_val"] == int((folds["fold"] == "val").sum())
    assert ood["threshold_fold"] == "val" and ood["percentile"] == 99.5 and ood["threshold"] > 0
    assert (probe_run / ood["file"]).is_file() and ood["file"] == "model.ood.safetensors"


def test_held_out_xrays_are_flagged_far_less_often_than_photos(probe_run: Path,
                                                               held_out_xrays: list[np.ndarray]) -> None:
    predictor = Predictor(probe_run, backend="torch", threads=2)
    xrays, photos = predictor.predict(held_out_xrays), predictor.predict(photo_grays())
    share_xrays = np.mean([r.ood for r in xrays])
    share_photos = np.mean([r.ood for r in photos])
    assert share_photos >= share_xrays + 0.5, (share_xrays, share_photos)
    assert np.median([r.ood_score for r in photos]) > np.median([r.ood_score for r in xrays])


def test_onnx_and_torch_backends_give_the_same_ood_scores(probe_run: Path, held_out_xrays: list[np.ndarray],
                                                          cache_dir: Path, tmp_path: Path) -> None:
    import shutil

    from sidecars import edit_sidecar

    from pneumo.infer.export import export_onnx

    torch_backend = Predictor(probe_run, backend="torch", threads=2)
    onnx_backend = Predictor(probe_run, backend="onnx", threads=2)  # the cached export
    run = shutil.copytree(probe_run, tmp_path / "run")  # a --no-eval run is not exported: given an operating point
    edit_sidecar(run / "model.json", threshold_policy="youden")
    exported = Predictor(export_onnx(run, tmp_path / "export"), backend="onnx", threads=2)  # a copied model
    images = held_out_xrays[:8] + photo_grays()[:4]
    reference = [r.ood_score for r in torch_backend.predict(images)]
    for other in (onnx_backend, exported):
        np.testing.assert_allclose([r.ood_score for r in other.predict(images)], reference, rtol=2e-3)


def test_predict_writes_the_ood_score_and_flag(probe_run: Path, data_slice: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from skimage import data
    from skimage.io import imsave

    photo = tmp_path / "astronaut.png"
    imsave(photo, data.astronaut())
    xray = next((data_slice / "test" / "NORMAL").glob("*.jpeg"))
    assert main(["predict", str(xray), str(photo), "--model", str(probe_run), "--backend", "torch",
                 "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(isinstance(r["ood_score"], float) and isinstance(r["ood"], bool) for r in rows)
    assert rows[1]["ood"] is True and rows[1]["ood_score"] > rows[0]["ood_score"]
    out = tmp_path / "p.csv"
    assert main(["predict", str(photo), "--model", str(probe_run), "--backend", "torch", "--output", str(out)]) == 0
    assert pd.read_csv(out)[["ood_score", "ood"]].iloc[0].tolist() == [pytest.approx(rows[1]["ood_score"], 1e-3), True]


def test_evaluate_counts_the_test_images_the_predictor_flags_from_its_one_scoring_pass(
        probe_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The share flagged is the predictor's; on the CPU it comes from the features of the pass that gave the test
    logits (`models.fast.scorer`): no second extraction, and the same numbers as one."""
    import torch

    import pneumo.evaluate.ood
    from pneumo.data.cache import image_cache
    from pneumo.data.rundir import RunDir
    from pneumo.evaluate.runner import evaluate_run, load_run
    from pneumo.models.checkpoint import load_checkpoint

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the test fold was scored a second time for its OOD features")

    with monkeypatch.context() as m:
        m.setattr(pneumo.evaluate.ood, "extract_features", no_second_pass)
        result = evaluate_run(probe_run, analysis=False)
    cfg, folds = load_run(probe_run)
    test_images = image_cache(cfg, folds).images[np.flatnonzero(folds["fold"].to_numpy() == "test")]
    model, meta = load_checkpoint(RunDir(probe_run).model)
    extracted, _ = pneumo.evaluate.ood.test_ood(RunDir(probe_run).model, meta.ood, model, test_images,
                                                device=torch.device("cpu"))  # its own feature extraction
    assert result["ood"] == extracted
    predictions = Predictor(probe_run, backend="torch", threads=2).predict_prepared(test_images)
    flagged = sum(r.ood for r in predictions)
    assert result["ood"]["n"] == len(test_images) == 36
    rows = pd.read_csv(probe_run / "predictions.csv")  # a flagged image gets no verdict there either (issue 23)
    assert rows["assessed"].tolist() == [int(r.assessed) for r in predictions]  # OOD or turned, as predict decides
    np.testing.assert_allclose(rows["ood_score"], [r.ood_score for r in predictions], rtol=1e-4)
    assert rows.loc[rows["assessed"] == 0, "predicted_pneumonia"].isna().all()
    assert rows.loc[rows["assessed"] == 1, "predicted_pneumonia"].notna().all()
    assert result["ood"]["n_flagged"] == flagged  # same images, same statistics, same answer
    assert json.loads((probe_run / "metrics.json").read_text())["ood"]["n_flagged"] == flagged
    assert "out-of-distribution flags on test" in (probe_run / "report.html").read_text()
    assert "ood" in json.loads((probe_run / "model.json").read_text())  # evaluation keeps the entry


def test_evaluate_withholds_the_test_images_the_orientation_check_refuses(probe_run: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """As `pneumo predict` does: an image the check calls turned gets no verdict in predictions.csv (it once got one
    there, withheld only when out of distribution); the headline still counts every image of the official split."""
    import shutil

    from pneumo.data.cache import image_cache
    from pneumo.evaluate.runner import evaluate_run, load_run
    from pneumo.models.orientation import OrientationHead

    run = tmp_path / "probe"
    shutil.copytree(probe_run, run)
    before = (json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file()
              else evaluate_run(run, analysis=False))["test"]["metrics"]  # whichever test ran first

    def every_other(self, features):  # the real check with every other image called turned
        return [f"turned {i}" if i % 2 else None for i in range(len(features))]

    monkeypatch.setattr(OrientationHead, "refusals", every_other)
    result = evaluate_run(run, analysis=False)
    cfg, folds = load_run(run)
    test_images = image_cache(cfg, folds).images[np.flatnonzero(folds["fold"].to_numpy() == "test")]
    predictions = Predictor(run, backend="torch").predict_prepared(test_images)
    rows = pd.read_csv(run / "predictions.csv")
    assert rows["assessed"].tolist() == [int(r.assessed) for r in predictions]
    assert rows["assessed"].iloc[1::2].eq(0).all() and rows.loc[rows["assessed"] == 0, "predicted_pneumonia"].isna().all()
    assert result["orientation"] == {"n": len(test_images), "n_refused": len(test_images) // 2}
    assert result["test"]["metrics"] == pytest.approx(before)
    # the images with a verdict, measured apart (the README promised `test_assessed`; only the shipped model's
    # evaluation wrote it): the same threshold, on exactly the rows predictions.csv assesses
    kept = rows["assessed"] == 1
    apart = json.loads((run / "metrics.json").read_text())["test_assessed"]
    assert apart["n"] == int(kept.sum()) <= result["test"]["n"] - result["orientation"]["n_refused"]
    y = (rows["subtype"] != "normal").to_numpy()[kept.to_numpy()]
    assert apart["metrics"]["tp"] == int((rows.loc[kept, "predicted_pneumonia"].to_numpy() == 1)[y].sum())
    # said beside the headline, in the console and the report's subtitle (a training audit: metrics.json only, and
    # the report counted the out-of-distribution flags alone)
    from pneumo.evaluate.ood import ood_note
    from pneumo.evaluate.runner import summary_line

    none = int((~kept).sum())
    assert result["not_assessed"] == {"n": none, "of": len(rows)}
    assert f"not assessed: {none} image(s) without a verdict" in summary_line(result)
    if result.get("ood"):
        assert f"{result['orientation']['n_refused']} refused by the orientation check; {none} without a verdict" \
            in ood_note(result)


def test_refitting_an_existing_run_rebuilds_the_same_split_and_statistics(probe_run: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    from pneumo.evaluate.runner import evaluate_run

    if not (probe_run / "metrics.json").is_file():  # (run alone: the module's other tests evaluate it first)
        evaluate_run(probe_run, analysis=False)
    before = json.loads((probe_run / "model.json").read_text())
    capsys.readouterr()
    assert main(["ood", "fit", "--model", str(probe_run)]) == 0
    printed = capsys.readouterr().out
    assert "val percentile 99.5" in printed
    assert f"re-run pneumo evaluate --model {probe_run}" in printed  # its report flags at the old limit
    after = json.loads((probe_run / "model.json").read_text())
    assert after["ood"]["threshold"] == pytest.approx(before["ood"]["threshold"], rel=1e-5)
    assert after["ood"]["n_train"] == before["ood"]["n_train"] and after["sha256"] == before["sha256"]


def test_refitting_refuses_a_dataset_whose_split_differs(probe_run: Path, full_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    assert main(["ood", "fit", "--model", str(probe_run), "--dataset", str(full_data)]) == 2
    assert "differs" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["scratch", "probe"])
def test_the_ood_statistics_are_fitted_on_fp32_features_whatever_training_ran_in(
        mode: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation, predict and serve score fp32 features; on CUDA, training's bf16 autocast fitted the statistics
    (and set their threshold) on bf16 features. Here the bf16 case is what `features_in_bf16` says it is."""
    import shutil
    from types import SimpleNamespace

    import pneumo.train.ood as train_ood
    from pneumo.config import RunConfig

    sidecar = tmp_path / tiny_model.name
    for path in tiny_model.parent.iterdir():
        shutil.copyfile(path, tmp_path / path.name)
    calls = []

    def extractor(model, *, device, amp, batch_size):
        calls.append(amp)
        return lambda images, desc=None: np.random.default_rng(len(images)).normal(size=(len(images), 8))

    monkeypatch.setattr(train_ood, "feature_extractor", extractor)
    monkeypatch.setattr(train_ood, "features_in_bf16", lambda device, amp: amp)  # as on a GPU
    monkeypatch.setattr(train_ood, "cached_features", lambda *a, **k: pytest.fail("bf16 probe features reused"))
    n = 40
    folds = pd.DataFrame({"fold": ["train"] * 30 + ["val"] * 10, "label": ["NORMAL", "PNEUMONIA"] * (n // 2)})
    model = {"mode": "scratch", "name": "scratch_cnn", "weights": "none"} if mode == "scratch" else {"mode": "probe"}
    cfg = RunConfig(model=model, train={"amp": True})
    cache = SimpleNamespace(images=np.zeros((n, 64, 64), np.uint8), key="k")
    entry = train_ood.fit_trained_ood(cfg, sidecar, cache, folds, device=torch.device("cpu"))
    assert calls == [False] and entry["n_train"] == 30


def test_refitting_a_model_without_folds_csv_refuses_a_dataset_whose_val_fold_is_not_its_recorded_one(
        data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A copy of the shipped model has no folds.csv: `pneumo ood fit` rebuilt the split from whatever dataset it was
    given and set the OOD and orientation thresholds on that "val fold", part of it the model's training images (a
    data audit). Its sidecar records the val fold its threshold was chosen on: the rebuilt one must be it."""
    import shutil

    from pneumo.models.sidecar import DEFAULT_MODEL, companion_files, read_meta, weights_path

    model = tmp_path / "model"
    model.mkdir()
    meta = read_meta(DEFAULT_MODEL)
    for name in (weights_path(DEFAULT_MODEL, meta).name, *companion_files(meta)):
        shutil.copyfile(DEFAULT_MODEL.parent / name, model / name)
    shutil.copyfile(DEFAULT_MODEL.with_suffix(".md"), model / "model.md")
    shutil.copyfile(DEFAULT_MODEL, model / "model.json")
    before = {path.name: path.read_bytes() for path in model.iterdir()}
    assert main(["ood", "fit", "--model", str(model), "--dataset", str(data_slice)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the one model.json's threshold was chosen on (517 images)" in err[0], err
    assert {path.name: path.read_bytes() for path in model.iterdir()} == before  # nothing refitted


def test_the_site_check_finds_the_dataset_a_run_records_without_dataset_or_pneumo_data(
        probe_run: Path, data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pneumo adapt` reads the dataset a model's config records where that path exists; the site check compared the
    site with the model's records only unless --dataset or PNEUMO_DATA was given (an audit)."""
    from pneumo.adapt.check import check_site

    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    site = tmp_path / "site"
    site.mkdir()
    folds = pd.read_csv(probe_run / "folds.csv", keep_default_na=False)
    for path in folds.loc[folds["fold"] == "test", "path"]:  # images the run never trained on
        (site / Path(path).name).symlink_to(data_slice / path)
    result = check_site(site, tmp_path / "out", model=probe_run, sample=10)
    assert result["reference"]["kind"] == "dataset" and result["reference"]["dataset"] == str(data_slice.resolve())
