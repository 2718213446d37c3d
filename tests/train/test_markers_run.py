"""A tiny real run with ``--set data.markers=inpaint-text`` through the CLI: the cache, the sidecar, the predictor and
`pneumo predict` all use the corner-text step (issue 23, finding 11)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumo.cli import main
from pneumo.data.preprocess import prepare
from pneumo.infer.predictor import Predictor

TEXT_IMAGE = "train/PNEUMONIA/person330_virus_683.jpeg"  # "KV59" in the bottom right corner


@pytest.fixture(scope="module")
def text_run(data_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's one run (both tests read it; one evaluates it): the folder holding ``cache`` and ``runs/text``."""
    tmp_path = tmp_path_factory.mktemp("markers")
    _train_with_text_inpainted(data_slice, tmp_path)
    return tmp_path


def _train_with_text_inpainted(data_slice: Path, tmp_path: Path) -> None:
    """A one-epoch scratch run at 224 px with ``data.markers=inpaint-text`` into ``tmp_path/runs/text``."""
    settings = ["data.image_size=224", "data.val_fraction=0.3", "eval.n_bootstrap=0", "train.batch_size=8",
                "train.amp=false", "model.name=scratch_cnn", "model.mode=scratch", "model.weights=none",
                "train.epochs=1", f"data.cache_dir={tmp_path / 'cache'}", "data.markers=inpaint-text"]
    argv = ["train", "--preset", "lite0-probe", "--dataset", str(data_slice), "--out", str(tmp_path / "runs"),
            "--name", "text", "--no-eval"]
    assert main(argv + [arg for item in settings for arg in ("--set", item)]) == 0


def test_a_run_with_corner_text_inpainted_records_it_and_predicts_with_it(text_run: Path, full_data: Path,
                                                                          tmp_path: Path) -> None:
    run_dir = text_run / "runs" / "text"
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["markers"] == "inpaint-text"
    # the command as typed, for the card and a reviewer (the shipped card named a command without this --set)
    assert meta["training"]["command"].startswith("pneumo train --preset lite0-probe --dataset ")
    assert "--set data.markers=inpaint-text" in meta["training"]["command"]
    indexes = [json.loads(p.read_text()) for p in (text_run / "cache").glob("images-*.json")]
    assert indexes and all(index["markers"] == "inpaint-text" for index in indexes)
    gray = np.asarray(Image.open(full_data / TEXT_IMAGE).convert("L"))
    predictor = Predictor(run_dir / "model.json")
    assert np.array_equal(predictor.preprocess(gray), prepare(gray, size=224, markers="inpaint-text"))
    assert not np.array_equal(predictor.preprocess(gray), prepare(gray, size=224, markers="inpaint"))
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(full_data / TEXT_IMAGE), "--model", str(run_dir), "--output", str(out)]) == 0
    assert out.read_text().count("\n") == 2  # header + the image


def test_the_reports_shortcut_check_looks_for_markers_before_they_were_painted_out(
        data_slice: Path, text_run: Path, monkeypatch) -> None:
    """The run report's shortcut check found markers on the model's input, after the in-painting had removed them
    (24 of 80 test images against 76 before it; corner text on none, printed as "nanx"): it now looks on the test
    images preprocessed without the in-painting, as bench/bench_shortcut.py does."""
    from pneumo.evaluate.runner import evaluate_run
    from pneumo.explain import analysis

    seen: dict = {}
    real = analysis.shortcut_stats

    def spy(maps, labels, names, *, images):
        seen["images"] = images
        return real(maps, labels, names, images=images)

    monkeypatch.setattr(analysis, "shortcut_stats", spy)
    run_dir = text_run / "runs" / "text"
    evaluate_run(run_dir, analysis=analysis.analysis_sections)
    folds = pd.read_csv(run_dir / "folds.csv")
    test = folds[folds["fold"] == "test"].reset_index(drop=True)
    raw = [prepare(np.asarray(Image.open(data_slice / p).convert("L")), size=224) for p in test["path"]]
    painted = [prepare(np.asarray(Image.open(data_slice / p).convert("L")), size=224, markers="inpaint-text")
               for p in test["path"]]
    found = [next(i for i, r in enumerate(raw) if np.array_equal(r, image)) for image in seen["images"]]
    assert len(set(found)) == len(found) == len(seen["images"])  # each one a test image as decoded, not in-painted
    assert any(not np.array_equal(raw[i], painted[i]) for i in found)
    assert "nanx" not in (run_dir / "report.html").read_text()
