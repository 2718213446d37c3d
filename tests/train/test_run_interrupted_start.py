"""A run killed before its first save (``kill -9`` of a probe while it extracts features) leaves a folder with its
config and folds but no state and no model: a plain re-run says how to go on, and ``--resume`` does go on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumo.config import dump_yaml, load_config
from pneumo.errors import ConfigError
from pneumo.train.run import train


def scratch_config(data: Path, tmp_path: Path, name: str):
    return load_config("lite0-probe", [f"data.root={data}", f"out_dir={tmp_path / 'runs'}", f"name={name}",
                                   f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=64",
                                   "data.val_fraction=0.3", "train.batch_size=8", "train.amp=false",
                                   "model.name=scratch_cnn", "model.mode=scratch", "model.weights=none",
                                   "train.epochs=1"])


def killed_before_first_save(cfg) -> Path:
    """What `_train` has written when the process dies before any checkpoint: the folder and its config."""
    run_dir = Path(cfg.out_dir) / cfg.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    return run_dir


def test_a_plain_rerun_of_a_run_killed_before_its_first_save_suggests_resume(data_slice: Path,
                                                                             tmp_path: Path) -> None:
    cfg = scratch_config(data_slice, tmp_path, "killed")
    killed_before_first_save(cfg)
    with pytest.raises(ConfigError, match=r"holds no saved state.*--resume starts it from scratch"):
        train(cfg)


def test_resume_of_a_run_killed_before_its_first_save_trains_it_from_scratch(data_slice: Path, tmp_path: Path,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    cfg = scratch_config(data_slice, tmp_path, "killed")
    run_dir = killed_before_first_save(cfg)
    assert train(cfg, resume=True) == run_dir
    assert json.loads((run_dir / "model.json").read_text())["arch"] == "scratch_cnn"
    assert (run_dir / "last.json").is_file()
    assert "training it from scratch" in caplog.text


def test_resume_of_a_run_that_never_existed_fails_with_one_line(data_slice: Path, tmp_path: Path) -> None:
    cfg = scratch_config(data_slice, tmp_path, "typo")
    with pytest.raises(ConfigError, match="nothing to resume: .* does not exist"):
        train(cfg, resume=True)
    assert not (tmp_path / "runs" / "typo").exists()
