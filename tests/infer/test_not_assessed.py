"""Issue 23, findings 1 and 2: an image flagged out of distribution gets no verdict anywhere (predictor, external
evaluation and its predictions.csv), metrics are measured on the assessed images with the rest counted beside them,
and the calibrated probability comes with the threshold on its own scale, so a number and its label never disagree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo.data.decode import load_image_file
from pneumo.evaluate.external import evaluate_external
from pneumo.infer.predictor import NOT_ASSESSED, Predictor
from pneumo.models.scores import p_pneumonia, threshold_on_calibrated_scale


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor(None)


def _photo() -> np.ndarray:
    from skimage import data

    return data.astronaut().mean(axis=2).astype(np.uint8)


def test_a_flagged_image_gets_no_verdict_and_says_why(shipped: Predictor, full_data: Path) -> None:
    xray = load_image_file(full_data / "test" / "NORMAL" / "IM-0003-0001.jpeg")  # (IM-0001: a false refusal)
    photo, rotated = shipped.predict([_photo(), np.rot90(xray).copy()]), shipped.predict([xray])[0]
    for result in photo:
        assert result.ood is True and result.assessed is False and result.label == NOT_ASSESSED
        assert "out of distribution" in result.reason and f"{shipped.ood.threshold:.1f}" in result.reason
        assert 0.0 <= result.p_pneumonia <= 1.0  # the score stays, for audit
        assert result.refused == "out-of-distribution"  # its kind, for counting (an audit-trail review)
    assert rotated.ood is False and rotated.assessed is True and rotated.reason is None and rotated.refused is None
    blank = shipped.predict([np.full((40, 40), 128, np.uint8)])[0]  # the input gate: no verdict, kind "input"
    assert not blank.assessed and blank.refused == "input"
    assert rotated.label in shipped.classes


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.2026757375717345, 3.0])
@pytest.mark.parametrize("threshold", [0.02, 0.5, 0.9930518895644729])
def test_the_calibrated_threshold_gives_the_same_verdict_as_the_raw_one(threshold: float, temperature: float) -> None:
    z = np.random.default_rng(0).normal(0, 6, 20_000)
    z = np.concatenate([z, [np.log(threshold / (1 - threshold))]])  # an image exactly at the threshold
    raw, calibrated = p_pneumonia(z), p_pneumonia(z, temperature)
    t_cal = threshold_on_calibrated_scale(threshold, temperature)
    near = np.abs(raw - threshold) < 1e-9  # float ties at the boundary are not a disagreement
    assert np.array_equal((raw >= threshold)[~near], (calibrated >= t_cal)[~near])
    assert 0.0 < t_cal < 1.0


def test_every_prediction_carries_the_threshold_on_the_calibrated_scale(shipped: Predictor, full_data: Path) -> None:
    paths = sorted((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:4] + sorted(
        (full_data / "test" / "NORMAL").glob("*.jpeg"))[:4]
    for result in shipped.predict([load_image_file(p) for p in paths]):
        assert result.threshold_calibrated == pytest.approx(
            threshold_on_calibrated_scale(shipped.threshold, shipped.temperature))
        if result.assessed:
            called = result.label == "PNEUMONIA"
            assert called == (result.p_pneumonia >= result.threshold)
            assert called == (result.p_calibrated >= result.threshold_calibrated)


def test_external_metrics_leave_flagged_images_out_and_count_them(full_data: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label).mkdir(parents=True)
        for src in sorted((full_data / "test" / label).glob("*.jpeg"))[1:7]:  # (IM-0001: a false refusal)
            (site / label / src.name).symlink_to(src)
    Image.fromarray(_photo()).save(site / "NORMAL" / "astronaut.png")  # a photo labelled normal: was a "true negative"
    result = evaluate_external(None, site, tmp_path / "out", n_bootstrap=20, analysis=False)
    assert result["external"]["n"] == 13
    assert result["not_assessed"]["n"] == 1 and result["not_assessed"]["paths"][0].endswith("astronaut.png")
    assert result["test"]["n"] == 12 and result["test_all"]["n"] == 13  # headline: assessed; all beside it
    assert result["test"]["confusion_matrix"] != result["test_all"]["confusion_matrix"]
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv")
    photo = rows[rows["path"].str.endswith("astronaut.png")].iloc[0]
    assert photo["assessed"] == 0 and pd.isna(photo["predicted_pneumonia"]) and photo["ood_score"] > 0
    assert rows["assessed"].sum() == 12 and rows["predicted_pneumonia"].notna().sum() == 12
    page = (tmp_path / "out" / "report.html").read_text()
    assert "not assessed (out of distribution" in page and "<code>test_all</code>" in page and "test_assessed" not in page
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["not_assessed"]["n"] == 1


def test_the_official_split_keeps_its_headline_on_every_image(full_data: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label).mkdir(parents=True)
        for src in sorted((full_data / "test" / label).glob("*.jpeg"))[1:6]:
            (site / label / src.name).symlink_to(src)
    Image.fromarray(_photo()).save(site / "NORMAL" / "astronaut.png")
    result = evaluate_external(None, site, tmp_path / "out", n_bootstrap=20, analysis=False, official=True)
    assert result["test"]["n"] == 11 and result["test_assessed"]["n"] == 10 and "test_all" not in result
    # the report says where they are: in the headline, the assessed-only set beside it (it named test_all, absent)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "still count them" in page and "<code>test_assessed</code>" in page and "test_all" not in page


def test_an_external_report_is_worded_for_external_data(full_data: Path, tmp_path: Path) -> None:
    """Issue 23, finding 6: no "test" wording, no published official-split table, the card's display name, the
    temperature and ECE explained, no "unknown" subtype row."""
    site = tmp_path / "site"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label).mkdir(parents=True)
        for i, src in enumerate(sorted((full_data / "test" / label).glob("*.jpeg"))[:5]):
            (site / label / f"IMG{i}.jpeg").symlink_to(src)  # hospital names: no bacteria/virus subtype in them
    result = evaluate_external(None, site, tmp_path / "out", n_bootstrap=20, analysis=False)
    page = (tmp_path / "out" / "report.html").read_text()
    assert result["name"] == "pneumo default model" and "pneumo default model" in page and "best-s0" not in page
    assert "Metrics on the external data" in page and "Test metrics" not in page and "test images" not in page
    assert "Published results on the official test split" not in page and ">unknown<" not in page
    assert "expected calibration error" in page and "calibration, fitted on the model" in page
    official = evaluate_external(None, site, tmp_path / "official", n_bootstrap=20, analysis=False, official=True)
    page = (tmp_path / "official" / "report.html").read_text()
    assert official["test"]["n"] == 10 and "Test metrics" in page and "Published results" in page


@pytest.mark.parametrize("name", ["inverted", "rotated 90°", "rotated 180°", "upside down"])
def test_an_inverted_or_turned_xray_is_refused_with_what_to_fix(shipped: Predictor, full_data: Path,
                                                                 name: str) -> None:
    """Issue 23, finding 5: the shipped model's orientation check (bench/bench_orientation.py: every transformed
    test image caught, 0.96 % of untransformed ones refused)."""
    from pneumo.models.orientation import transform

    paths = sorted((full_data / "test" / "NORMAL").glob("*.jpeg"))[:3] + sorted(
        (full_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    originals = [load_image_file(p) for p in paths]
    upright = shipped.predict(originals)
    turned = shipped.predict([transform(g[None], name)[0] for g in originals])
    assert sum(r.assessed for r in upright) >= 5  # about 1 % of upright images are refused by design
    assert all(not r.assessed and r.label == NOT_ASSESSED for r in turned)
    assert all("the image looks" in r.reason or "out of distribution" in r.reason for r in turned)
    assert all(r.refused == ("out-of-distribution" if r.ood else "orientation") for r in turned)  # the kind, to count
    assert all(r.refused is None for r in upright if r.assessed)
    # the reason names what it saw (a half-turn and an upside-down film differ only by a left-right mirror)
    seen = {"rotated 180°": ("rotated 180°", "upside down"), "upside down": ("rotated 180°", "upside down")}
    assert sum(any(t in r.reason for t in seen.get(name, (name,))) for r in turned) >= 4


def test_a_tampered_orientation_check_is_refused(tmp_path: Path) -> None:
    import shutil

    from pneumo.errors import ModelError
    from pneumo.models.sidecar import resolve_model

    sidecar = resolve_model(None)
    for f in sidecar.parent.glob("default-model.*"):
        shutil.copy2(f, tmp_path / f.name)
    head = tmp_path / "default-model.orient.safetensors"
    data = bytearray(head.read_bytes())
    data[-5] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="orientation check is corrupted"):
        Predictor(tmp_path / "default-model.json")
    head.unlink()
    with pytest.raises(ModelError, match="file is missing"):
        Predictor(tmp_path / "default-model.json")


def test_predict_writes_not_assessed_with_its_reason(full_data: Path, tmp_path: Path) -> None:
    """Finding 1 on the CLI: the `label` column of a photo says "not assessed" and `reason` says why."""
    from pneumo.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_photo()).save(folder / "astronaut.png")
    (folder / "xray.jpeg").symlink_to(full_data / "test" / "NORMAL" / "IM-0003-0001.jpeg")
    assert main(["predict", str(folder), "--output", str(tmp_path / "out.csv")]) == 0
    rows = pd.read_csv(tmp_path / "out.csv").set_index(pd.read_csv(tmp_path / "out.csv")["path"].map(
        lambda p: Path(p).name))
    assert rows.loc["astronaut.png", "label"] == "not assessed" and "out of distribution" in rows.loc[
        "astronaut.png", "reason"]
    assert rows.loc["xray.jpeg", "label"] in ("NORMAL", "PNEUMONIA") and pd.isna(rows.loc["xray.jpeg", "reason"])
    # the kind of refusal in a column of its own, to count (an audit-trail review: free text only)
    assert rows.loc["astronaut.png", "refused"] == "out-of-distribution" and pd.isna(rows.loc["xray.jpeg", "refused"])
    assert (rows["p_calibrated"] >= rows["threshold_calibrated"]).equals(rows["p_pneumonia"] >= rows["threshold"])


def test_the_console_counts_the_images_without_a_verdict(full_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """`predict` counted only out-of-distribution images in its summary (a turned image was in no count) and
    `evaluate --data` said nothing on the console about the images its headline leaves out."""
    from pneumo.cli import main
    from pneumo.models.orientation import TRANSFORMS, transform

    site = tmp_path / "site"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label).mkdir(parents=True)
        for src in sorted((full_data / "test" / label).glob("*.jpeg"))[1:6]:
            (site / label / src.name).symlink_to(src)
    gray = np.asarray(Image.open(sorted((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))[7]).convert("L"))
    Image.fromarray(transform(gray[None], TRANSFORMS[1])[0]).save(site / "PNEUMONIA" / "turned.png")
    assert main(["predict", str(site), "--output", str(tmp_path / "p.csv")]) == 0
    rows = pd.read_csv(tmp_path / "p.csv")
    withheld = int((rows["label"] == "not assessed").sum())
    assert withheld >= 1
    assert f"not assessed {withheld}," in capsys.readouterr().err
    assert main(["evaluate", "--data", str(site), "--out", str(tmp_path / "v"), "--no-analysis", "--bootstrap",
                 "20"]) == 0
    assert f"not assessed: {withheld} image(s) without a verdict" in capsys.readouterr().out
