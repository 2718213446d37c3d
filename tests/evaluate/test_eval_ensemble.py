"""`pneumo evaluate RUN RUN --out DIR`: an ensemble of runs of one split, evaluated by the same protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sidecars import signed

from pneumo.cli import main
from pneumo.config import load_config
from pneumo.errors import ConfigError
from pneumo.evaluate.runner import evaluate_ensemble, evaluate_run
from pneumo.train.run import train


def _run(data: Path, root: Path, name: str, *overrides: str) -> Path:
    base = [f"data.root={data}", f"out_dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}",
            "data.image_size=64", "data.val_fraction=0.3", "eval.n_bootstrap=50", "train.batch_size=8",
            "train.amp=false", f"name={name}"]
    return train(load_config("lite0-probe", base + list(overrides)))


@pytest.fixture(scope="module")
def two_runs(data_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ensemble")
    probe = _run(data_slice, root, "probe")
    scratch = _run(data_slice, root, "scratch", "model.name=scratch_cnn", "model.mode=scratch", "model.weights=none",
                   "train.epochs=2", "train.lr=0.003")
    return probe, scratch


def test_the_ensemble_averages_the_members_probabilities(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    members = [pd.read_csv(r / "predictions.csv") for r in two_runs if evaluate_run(r, analysis=False)]
    result = evaluate_ensemble(list(two_runs), tmp_path / "ens")
    got = pd.read_csv(tmp_path / "ens" / "predictions.csv")
    assert got["path"].tolist() == members[0]["path"].tolist() == members[1]["path"].tolist()
    expected = (members[0]["p_pneumonia"] + members[1]["p_pneumonia"]) / 2
    assert np.allclose(got["p_pneumonia"], expected, atol=1e-5)
    assert (got["predicted_pneumonia"] == (got["p_pneumonia"] >= result["threshold"])).all()
    saved = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    assert saved["members"] == [str(r) for r in two_runs] and 0.0 <= saved["test"]["metrics"]["roc_auc"] <= 1.0
    sidecars = [json.loads((r / "model.json").read_text()) for r in two_runs]  # how each member was made
    assert saved["member_commits"] == [m["commit"] for m in sidecars]
    assert saved["member_configs"] == [m["config"] for m in sidecars] and saved["member_configs"][0]["name"]
    assert (tmp_path / "ens" / "report.html").is_file()


def test_runs_of_different_splits_are_refused(two_runs: tuple[Path, Path], data_slice: Path, tmp_path: Path) -> None:
    other = _run(data_slice, tmp_path, "other-split", "data.split_seed=7")
    with pytest.raises(ConfigError, match=r"different val/test folds \(\d+ image\(s\) (added|removed|moved folds)"):
        evaluate_ensemble([two_runs[0], other], tmp_path / "ens")
    with pytest.raises(ConfigError, match="at least two"):
        evaluate_ensemble([two_runs[0]], tmp_path / "ens")


def test_cli_evaluates_an_ensemble_into_out_and_needs_out(two_runs: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    runs = [arg for r in two_runs for arg in ("--model", str(r))]
    assert main(["evaluate", *runs]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["evaluate", *runs, "--out", str(tmp_path / "ens"), "--bootstrap", "20"]) == 0
    assert "ensemble of 2: test accuracy" in capsys.readouterr().out


def test_each_member_of_a_mixed_size_ensemble_is_scored_as_it_is_alone(tiny_model: Path, data_slice: Path,
                                                                     tmp_path: Path) -> None:
    """Members of different input sizes (the lite0/lite1/lite2 probes: 224, 240, 260) each score an image from a
    decode at their own size, as when each is scored alone: decoding once at the largest size fed the smaller
    members other pixels (JPEGs decode at a reduced scale chosen by the size)."""
    from pneumo.evaluate.scoring import score_labelled
    from pneumo.infer.predictor import Predictor
    from pneumo.models.scores import log_mean_probability

    small = tmp_path / "small"
    small.mkdir()
    for path in tiny_model.parent.iterdir():
        (small / path.name).write_bytes(path.read_bytes())
    meta = json.loads((small / tiny_model.name).read_text())
    (small / tiny_model.name).write_text(json.dumps(signed({**meta, "input_size": 40})))  # a scratch CNN takes any size
    members = [Predictor(small / tiny_model.name), Predictor(tiny_model)]
    assert [p.size for p in members] == [40, 64]
    folder = data_slice / "test"
    _, together, table, errors, _, _ = score_labelled(members, folder)
    alone = [score_labelled([p], folder) for p in members]
    assert not errors and all(a[2]["path"].tolist() == table["path"].tolist() for a in alone)
    np.testing.assert_array_equal(together, log_mean_probability([a[1] for a in alone]))  # the same computation


def test_the_ensembles_policy_is_named_not_taken_from_its_first_member(two_runs: tuple[Path, Path],
                                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Members with different policies: the first member's decided, so the same ensemble got another threshold
    (0.642 against 0.171 in review) when its runs were listed in another order."""
    import shutil

    import yaml

    youden = tmp_path / "scratch-youden"
    shutil.copytree(two_runs[1], youden)
    cfg = yaml.safe_load((youden / "config.yaml").read_text())
    cfg.setdefault("eval", {})["threshold_policy"] = "youden"
    (youden / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"different policies \(sensitivity:0.95, youden\)"):
        evaluate_ensemble([two_runs[0], youden], tmp_path / "e0")
    ab = evaluate_ensemble([two_runs[0], youden], tmp_path / "ab", policy="youden", n_bootstrap=0)
    ba = evaluate_ensemble([youden, two_runs[0]], tmp_path / "ba", policy="youden", n_bootstrap=0)
    assert ab["threshold"] == pytest.approx(ba["threshold"]) and ab["threshold_policy"] == "youden"
    args = ["evaluate", "--model", str(youden), "--model", str(two_runs[0]), "--bootstrap", "0"]
    assert main([*args, "--out", str(tmp_path / "c1")]) == 2
    assert "--threshold-policy" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "c2"), "--threshold-policy", "youden", "--no-analysis"]) == 0
    assert json.loads((tmp_path / "c2" / "metrics.json").read_text())["threshold"] == pytest.approx(ab["threshold"])
