"""A run's folds.csv records each image's SHA-256: evaluating the run on a dataset whose val or test images changed
since (same path, size and modification time) must not score the pixels a kept image cache holds (a review)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from pneumo.errors import DataError


@pytest.fixture()
def run_on_a_copy(data_slice: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The shipped model as a run of a copy of the data slice (config, folds.csv, weights, checks); returns (run
    folder, dataset copy)."""
    from pneumo.config import dump_yaml, from_dict, to_dict
    from pneumo.data.rundir import RunDir
    from pneumo.data.splits import folds_for
    from pneumo.models.sidecar import companion_files, read_meta, resolve_model, weights_path, write_meta

    dataset = tmp_path / "dataset"
    shutil.copytree(data_slice, dataset)
    sidecar = resolve_model(None)
    meta = read_meta(sidecar)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    shutil.copyfile(weights_path(sidecar, meta), run.weights)
    for name in companion_files(meta):
        shutil.copyfile(sidecar.parent / name, run.path / name)
    shutil.copyfile(sidecar.with_suffix(".md"), run.model.with_suffix(".md"))  # its recorded card
    extra = {k: v for k, v in meta.extra.items() if k != "operating_point"}  # (chosen on the whole set's val fold)
    cfg = from_dict(meta.config)
    cfg.data.root = str(dataset)
    cfg.data.cache_dir = str(tmp_path / "cache")
    write_meta(run.model, dataclasses.replace(meta, weights_file=run.weights.name, extra=extra, config=to_dict(cfg)))
    run.config.write_text(dump_yaml(cfg))
    folds_for(cfg).to_csv(run.folds, index=False)
    return run.path, dataset


def _replace_keeping_stamp(target: Path, other: Path) -> None:
    """Another image's bytes at ``target``, its modification time put back (as a copy tool that keeps times does)."""
    stat = target.stat()
    shutil.copyfile(other, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_evaluating_a_run_whose_test_image_changed_is_refused_not_scored_from_the_kept_cache(
        run_on_a_copy: tuple[Path, Path], full_data: Path) -> None:
    from pneumo.evaluate.runner import evaluate_run

    run, dataset = run_on_a_copy
    evaluate_run(run, analysis=False)  # keeps the image cache
    (run / "metrics.json").unlink()
    target = min((dataset / "test" / "NORMAL").glob("*.jpeg"))
    other = min((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))
    _replace_keeping_stamp(target, other)
    with pytest.raises(DataError, match=r"1 image\(s\) of the run's val and test folds are missing or changed since "
                                        rf"the run recorded them, e\.g\. test/NORMAL/{target.name}"):
        evaluate_run(run, analysis=False)
    assert not (run / "metrics.json").exists()
    target.unlink()
    with pytest.raises(DataError, match="missing or changed"):
        evaluate_run(run, analysis=False)


def test_operating_point_on_a_run_whose_val_image_changed_is_refused(run_on_a_copy: tuple[Path, Path],
                                                                      full_data: Path, tmp_path: Path) -> None:
    import pandas as pd

    from pneumo.cli import main

    run, dataset = run_on_a_copy
    assert main(["operating-point", "--model", str(run), "--threshold-policy", "youden", "--out",
                 str(tmp_path / "first")]) == 0  # keeps the val fold's image cache and logits
    folds = pd.read_csv(run / "folds.csv")
    val = dataset / folds.loc[folds["fold"] == "val", "path"].iloc[0]
    _replace_keeping_stamp(val, min((full_data / "test" / "NORMAL").glob("*.jpeg")))
    assert main(["operating-point", "--model", str(run), "--threshold-policy", "youden",
                 "--out", str(tmp_path / "new")]) == 2
