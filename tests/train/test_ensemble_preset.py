"""Ensemble presets: `pneumo train --preset ENSEMBLE` trains each member on one split and evaluates the mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pneumo.cli import main
from pneumo.config import load_config
from pneumo.errors import ConfigError
from pneumo.train.run import member_configs

TINY = ["data.image_size=64", "data.val_fraction=0.3", "eval.n_bootstrap=20", "train.batch_size=8",
        "train.amp=false"]


def _preset(folder: Path, name: str, body: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **body}))
    return str(path)


@pytest.fixture()
def presets(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "presets"
    folder.mkdir()
    probe = _preset(folder, "probe", {"model": {"name": "efficientnet_lite0", "mode": "probe"}})
    scratch = _preset(folder, "scratch", {"model": {"name": "scratch_cnn", "mode": "scratch", "weights": "none"},
                                          "train": {"epochs": 1, "lr": 0.003}})
    return {"probe": probe, "scratch": scratch,
            "ens": _preset(folder, "ens", {"members": [probe, scratch]}),
            "lonely": _preset(folder, "lonely", {"members": [probe]}),
            "nested": _preset(folder, "nested", {"members": [probe, str(folder / "ens.yaml")]}),
            "three": _preset(folder, "three", {"members": [probe, _preset(folder, "tri", {"data": {"task": "3class"}})]})}


def test_train_runs_every_member_on_one_split_then_the_ensemble(presets: dict[str, str], data_slice: Path,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    args = ["train", "--preset", presets["ens"], "--dataset", str(data_slice), "--out", str(runs),
            "--set", f"data.cache_dir={tmp_path / 'cache'}", *[a for o in TINY for a in ("--set", o)]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2: test accuracy" in out
    members = [runs / "ens-probe", runs / "ens-scratch"]
    for member in members:
        assert (member / "model.json").is_file() and (member / "metrics.json").is_file()
    folds = [(m / "folds.csv").read_text() for m in members]
    assert folds[0] == folds[1]  # one split
    assert json.loads((runs / "ens" / "metrics.json").read_text())["members"] == [str(m) for m in members]
    assert main(["predict", str(data_slice / "test"), "--model", str(runs / "ens")]) == 2
    assert "use one of its member runs" in capsys.readouterr().err
    # interrupted before its second member: --resume finishes the first and starts the second (it was "nothing to
    # resume: runs/ens-scratch does not exist", and without --resume "run folder exists")
    import shutil

    shutil.rmtree(members[1])
    assert main([*args, "--resume", "--no-eval"]) == 0
    assert (members[1] / "model.json").is_file() and (members[1] / "folds.csv").read_text() == folds[0]


@pytest.mark.parametrize(("name", "message"), [("lonely", "at least two members"), ("nested", "itself an ensemble"),
                                               ("three", "3class model")])
def test_bad_ensemble_presets_fail_before_training(presets: dict[str, str], name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        member_configs(load_config(presets[name]), [])


@pytest.mark.parametrize(("body", "expected"), [({}, None), ({"eval": {"threshold_policy": "triage"}}, "triage")])
def test_the_ensemble_gets_its_presets_own_policy_or_its_members(body: dict, expected: str | None, tmp_path: Path,
                                                                  presets: dict[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A preset without eval.threshold_policy passed the schema's default (youden) over members that all use
    sensitivity:0.95; now only a policy the preset sets is passed, else the members' shared one decides."""
    from pneumo.evaluate import runner
    from pneumo.train import run

    seen = {}
    monkeypatch.setattr(run, "train", lambda cfg, **kwargs: tmp_path / cfg.name)
    monkeypatch.setattr(runner, "evaluate_ensemble", lambda dirs, out, policy=None, **kw: seen.update(policy=policy)
                        or {"name": "ens", "test": {"metrics": {}, "n": 0}})
    monkeypatch.setattr(runner, "summary_line", lambda result: "")
    preset = _preset(tmp_path, "ens2", {"members": [presets["probe"], presets["scratch"]], **body})
    assert main(["train", "--preset", preset, "--dataset", str(tmp_path), "--no-eval"]) == 0 and seen == {}
    monkeypatch.setattr(runner, "evaluate_run", lambda *a, **k: {})
    assert main(["train", "--preset", preset, "--dataset", str(tmp_path)]) == 0
    assert seen == {"policy": expected}
