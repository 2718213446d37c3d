"""A tiny real run with ``data.crop``: the cache, the sidecar and the predictor all use the same crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pneumo.config import load_config
from pneumo.data.decode import load_image
from pneumo.data.preprocess import prepare
from pneumo.infer.predictor import Predictor
from pneumo.train.run import train


def test_a_run_with_a_crop_records_it_and_predicts_with_it(data_slice: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = load_config("lite0-probe", [
        f"data.root={data_slice}", f"out_dir={tmp_path / 'runs'}", f"data.cache_dir={cache}", "data.image_size=48",
        "data.val_fraction=0.3", "eval.n_bootstrap=20", "train.batch_size=8", "train.amp=false", "name=crop",
        "model.name=scratch_cnn", "model.mode=scratch", "model.weights=none", "train.epochs=1",
        "data.crop=border:0.15"])
    run_dir = train(cfg)
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["crop"] == "border:0.15" and meta["config"]["data"]["crop"] == "border:0.15"
    indexes = [json.loads(p.read_text()) for p in cache.glob("images-*.json")]
    assert indexes and all(index["crop"] == "border:0.15" for index in indexes)
    predictor = Predictor(run_dir / "model.json")
    gray = load_image(next(data_slice.glob("test/*/*.jpeg")).read_bytes())
    assert np.array_equal(predictor.preprocess(gray), prepare(gray, size=48, crop="border:0.15"))
    assert not np.array_equal(predictor.preprocess(gray), prepare(gray, size=48))
