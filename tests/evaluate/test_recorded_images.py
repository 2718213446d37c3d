"""A run's folds.csv records each image's SHA-256: evaluating the run on a dataset whose val or test images changed
since (same path, size and modification time) must not score the pixels a kept image cache holds (a review)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pneumo.errors import DataError


@pytest.fixture()
def run_on_a_copy(data_slice: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The shipped model as a run of a copy of the data slice (config, folds.csv, weights, checks); returns (run
    folder, dataset copy)."""
    from sidecars import shipped_as_run

    dataset = tmp_path / "dataset"
    shutil.copytree(data_slice, dataset)
    # (its operating point was chosen on the whole set's val fold: left out, as a run of this copy has none yet)
    return shipped_as_run(tmp_path / "run", dataset, operating_point=False, own_config=True), dataset


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

