"""`pneumo site check` on real data: Kermany training images are not a shifted site, the adult NIH sample is; the
fallback without the dataset; the CLI's files and its one-line errors. The shipped model scores each set once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.adapt.check import KERMANY_PREVALENCE, check_site
from pneumo.cli import main

N_SITE = 60
N_NIH = 120  # 60 NIH images had 3 flagged with the current default: too few for the share test without a reference
N_REFERENCE = 100


def _linked(rows: list[Path], folder: Path) -> Path:
    """A site folder of symlinks (the images stay where they are), nested one level like a hospital export."""
    for i, src in enumerate(rows):
        target = folder / f"batch{i % 2}" / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, target)
    return folder


@pytest.fixture(scope="module")
def predictor():
    from pneumo.infer.predictor import Predictor

    return Predictor(None, backend="torch")


@pytest.fixture(scope="module")
def kermany_site(full_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = pd.read_csv(full_data / "manifest.csv", usecols=["path", "split"])
    train = meta.loc[meta["split"] == "train", "path"].to_numpy()
    chosen = np.random.default_rng(7).choice(train, size=N_SITE, replace=False)
    return _linked([full_data / rel for rel in chosen], tmp_path_factory.mktemp("kermany_site"))


@pytest.fixture(scope="module")
def nih_site(full_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    nih = full_data.parent / "nih_sample"
    if not (nih / "manifest.csv").is_file():
        pytest.skip(f"the NIH sample is not at {nih}")
    paths = pd.read_csv(nih / "manifest.csv", usecols=["path"])["path"].to_numpy()
    chosen = np.random.default_rng(7).choice(paths, size=N_NIH, replace=False)
    return _linked([nih / rel for rel in chosen], tmp_path_factory.mktemp("nih_site"))


@pytest.fixture(scope="module")
def kermany_result(kermany_site: Path, full_data: Path, predictor, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return check_site(kermany_site, tmp_path_factory.mktemp("kermany_out"), dataset=full_data, sample=N_REFERENCE,
                      predictor=predictor)


@pytest.fixture(scope="module")
def nih_result(nih_site: Path, full_data: Path, predictor, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return check_site(nih_site, tmp_path_factory.mktemp("nih_out"), dataset=full_data, sample=N_REFERENCE,
                      predictor=predictor)


def test_a_random_sample_of_kermany_training_images_is_not_shifted(kermany_result: dict) -> None:
    assert kermany_result["shifted"] is False, kermany_result["reasons"]
    assert kermany_result["n_scored"] == N_SITE
    reference = kermany_result["reference"]
    assert reference["kind"] == "dataset" and reference["n"] == N_REFERENCE
    assert kermany_result["ood"]["scores"]["effect_a"] < 0.64


def test_the_adult_nih_sample_is_shifted_with_far_more_ood_images_than_the_reference(nih_result: dict) -> None:
    assert nih_result["shifted"] is True
    ood = nih_result["ood"]
    # several times the reference's share (the default flags 17 % of all 986 NIH images, 12.5 % of this sample,
    # against 1 % of the reference) and a far higher score distribution
    assert ood["share"] >= 0.05 and ood["share"] > 4 * ood["reference_share"]
    assert ood["scores"]["effect_a"] >= 0.8 and ood["scores"]["p_value"] < 1e-6
    assert any("out of distribution" in reason for reason in nih_result["reasons"])


def test_without_the_dataset_the_site_is_measured_against_the_models_record(
        nih_site: Path, predictor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    result = check_site(nih_site, tmp_path / "out", predictor=predictor)
    assert result["reference"]["kind"] == "sidecar" and result["reference"]["n"] == 0
    assert result["reference"]["prevalence"] == KERMANY_PREVALENCE
    assert result["ood"]["p0"] == pytest.approx(0.005) and result["ood"]["scores"] is None
    assert result["positive"]["p_pneumonia"] is None
    assert any("not available" in note for note in result["notes"])
    assert result["shifted"] is True
    images = pd.read_csv(tmp_path / "out" / "images.csv")  # a flagged or turned image gets no per-image call
    withheld = images["ood"] | images["turned"]
    assert images["ood"].any() and images.loc[withheld, "positive"].isna().all()
    assert images.loc[~withheld, "positive"].notna().all()


def test_cli_writes_site_json_and_the_report_and_counts_an_unreadable_file(
        kermany_site: Path, full_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    site = _linked(sorted(kermany_site.rglob("*.jpeg"))[:12], tmp_path / "site")
    (site / "batch0" / "truncated.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (site / "batch0" / "notes.txt").write_text("exported 2026-12-01")  # not read: listed, as evaluate lists it
    from corpus import dicom_bytes  # a PACS export's lateral film: refused for what it is, not unreadable
    (site / "batch0" / "IM00009").write_bytes(dicom_bytes(np.full((64, 64), 90, np.uint8), ViewPosition="LL"))
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # the site given relative to the working directory, as a user types it
    code = main(["site", "check", "--data", "site", "--out", str(out), "--dataset", str(full_data),
                 "--sample", "30"])
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    # 12 images: "not shifted" is weak evidence, and the console, site.json and the report say so
    assert first.startswith("site: not shifted (too few images to tell: check 50 or more) (12 of 14 images scored, 1 not, "
                            "1 refused as not frontal films")
    import json

    result = json.loads((out / "site.json").read_text())
    assert result["n_images"] == 14 and result["n_unreadable"] == 1 and result["few_images"] is True
    stages = {Path(f["path"]).name: f for f in result["unreadable"]}
    assert result["n_refused"] == 1 and {k: f["stage"] for k, f in stages.items()} == {"truncated.jpeg": "decode",
                                                                                        "IM00009": "refused"}
    assert "lateral film" in stages["IM00009"]["error"]
    assert not stages["truncated.jpeg"]["error"].startswith("truncated.jpeg")  # the name once, in its own field
    assert result["n_not_read"] == 1 and list(result["not_read"].values()) == ["not an image file name (.txt)"]
    assert result["model"] and result["reference"]["n"] == 30
    # where and by what code, readable from another folder (site.json kept "site" as typed, and no commit)
    from pneumo.provenance import git_commit

    assert result["data"] == str(site) and Path(result["model_sidecar"]).is_absolute()
    assert result["reference"]["dataset"] == str(full_data) and result["provenance"]["commit"] == git_commit()
    html = (out / "report.html").read_text()
    assert "Not enough images to tell" in html
    # what the seven tests at 0.01 allow together (no family-wise statement before)
    assert result["rule"]["family_wise_bound"] == pytest.approx(result["rule"]["n_tests"] * result["rule"]["alpha"])
    assert "by chance with probability at most 0.07 (Bonferroni)" in html
    assert "truncated.jpeg" in html and "notes.txt" in html and "figures/ood_scores.png" in html and (out / "figures" / "p_pneumonia.png").is_file()
    home = tmp_path / "home"  # a re-run replaces an earlier check (site.json), never a folder of other files
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    assert main(["site", "check", "--data", "site", "--out", str(home), "--dataset", str(full_data)]) == 2
    assert "holds other files" in capsys.readouterr().err and [p.name for p in home.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("content", [None, b"not an image"], ids=["empty folder", "only unreadable files"])
def test_a_folder_without_readable_images_exits_2_with_one_line(content: bytes | None, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    site = tmp_path / "site"
    site.mkdir()
    if content is not None:
        for name in ("a.jpeg", "b.png", "c.dcm"):
            (site / name).write_bytes(content)
    code = main(["site", "check", "--data", str(site), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("pneumo site check: error:")
    assert ("no images found" in err) if content is None else ("0 of 3 images" in err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("path,view\na.jpeg,PA\n\n,PA\nb.jpeg,PA\n", "labels.csv:4: no path"),  # line 3 blank, line 4 without path
    ("path,view\na.jpeg,PA\nb.jpeg,PA\n./a.jpeg,AP\n", "1 file(s) listed more than once"),
], ids=["blank path", "listed twice"])
def test_a_site_csv_with_a_blank_path_or_a_file_listed_twice_exits_2_with_one_line(
        text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """As evaluate and adapt read a CSV: a row without its path was dropped without a word, a file listed twice was
    scored twice (both shares counted it twice)."""
    csv = tmp_path / "labels.csv"
    csv.write_text(text)
    code = main(["site", "check", "--data", str(csv), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_site_of_inverted_images_is_shifted_and_gets_no_per_image_calls(
        full_data: Path, predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images `pneumo predict` refuses with the orientation check (inverted grey scale here) are a reason, and get
    no positive call in images.csv (they were "not shifted" with calls, the check never consulted)."""
    from PIL import Image, ImageOps

    site = tmp_path / "inverted"
    site.mkdir()
    for path in sorted((full_data / "test" / "NORMAL").glob("*.jpeg"))[:8] + sorted(
            (full_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:8]:
        with Image.open(path) as image:
            ImageOps.invert(image.convert("L")).save(site / f"{path.stem}.png")
    monkeypatch.delenv("PNEUMO_DATA", raising=False)  # no dataset: against the model's record (1 % expected)
    result = check_site(site, tmp_path / "out", sample=20, predictor=predictor)
    site_props = result["properties"]["site"]
    assert site_props["n_turned"] >= 8, site_props  # the rest are out of distribution
    assert result["shifted"] and any("orientation check refuses" in r for r in result["reasons"])
    images = pd.read_csv(tmp_path / "out" / "images.csv")
    refused = images["turned"] | images.get("ood", False)
    assert images.loc[refused, "positive"].isna().all() and images.loc[~refused, "positive"].notna().all()


def test_the_ood_share_is_compared_with_a_reference_sample_as_a_sample() -> None:
    """The reference sample's share (2 of 300) was used as a known rate: 3 of 12 flagged site images got p = 6e-5;
    two samples are compared by Fisher's exact test (the design share, known by construction, stays a known rate)."""
    from types import SimpleNamespace

    from scipy import stats

    from pneumo.adapt.check import ood_measure

    site = SimpleNamespace(ood_flags=[True] * 3 + [False] * 9, ood_scores=list(range(12)))
    flags = [True] * 2 + [False] * 298
    ref = SimpleNamespace(ood_design_share=0.005, scored=SimpleNamespace(ood_flags=flags, ood_scores=list(range(300))))
    got = ood_measure(site, ref, 1.0)
    assert got["p_value"] == pytest.approx(stats.fisher_exact([[3, 9], [2, 298]], alternative="greater").pvalue)
    assert got["p_value"] > stats.binomtest(3, 12, 2 / 300, alternative="greater").pvalue
    ref.scored.ood_flags = [False] * 300  # below the design share: the known design rate
    assert ood_measure(site, ref, 1.0)["p_value"] == pytest.approx(
        stats.binomtest(3, 12, 0.005, alternative="greater").pvalue)
