from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.data.manifest import scan_dataset
from pneumo.data.splits import assign_folds, check_leakage, class_names, labels, split_changes
from pneumo.errors import LeakageError


@pytest.fixture(scope="module")
def full_manifest(full_data: Path) -> pd.DataFrame:
    return scan_dataset(full_data)


def test_split_never_puts_one_patient_in_two_folds(full_manifest: pd.DataFrame) -> None:
    folds = assign_folds(full_manifest, val_fraction=0.1, seed=3)
    assert (folds.groupby("patient_key")["fold"].nunique() == 1).all()
    assert (folds.groupby("sha256")["fold"].nunique() == 1).all()


def test_split_keeps_the_official_test_split_untouched(full_manifest: pd.DataFrame) -> None:
    folds = assign_folds(full_manifest)
    assert ((folds["fold"] == "test") == (folds["split"] == "test")).all()
    assert (folds["fold"] == "test").sum() == 624


def test_split_takes_about_a_tenth_of_each_subtypes_patients(full_manifest: pd.DataFrame) -> None:
    folds = assign_folds(full_manifest, val_fraction=0.1, seed=0)
    pool = folds[folds["fold"] != "test"]
    val_patients = pool[pool["fold"] == "val"].groupby("subtype")["patient_key"].nunique()
    share = val_patients / pool.groupby("subtype")["patient_key"].nunique()
    assert np.allclose(share.to_numpy(), 0.1, atol=0.01)


def test_split_is_seeded(full_manifest: pd.DataFrame) -> None:
    a = assign_folds(full_manifest, seed=1)["fold"]
    b = assign_folds(full_manifest, seed=1)["fold"]
    c = assign_folds(full_manifest, seed=2)["fold"]
    assert (a == b).all() and not (a == c).all()


def test_leakage_check_fails_loudly_on_a_patient_in_two_folds(full_manifest: pd.DataFrame) -> None:
    folds = assign_folds(full_manifest)
    key = folds.loc[folds["fold"] == "val", "patient_key"].iloc[0]
    rows = folds.index[folds["patient_key"] == key]
    if len(rows) < 2:
        rows = folds.index[folds["fold"] == "val"][:1]
        folds.loc[rows, "patient_key"] = folds.loc[folds["fold"] == "train", "patient_key"].iloc[0]
    else:
        folds.loc[rows[0], "fold"] = "train"
    with pytest.raises(LeakageError, match="patient"):
        check_leakage(folds)


def test_leakage_check_catches_an_exact_duplicate_across_folds(full_manifest: pd.DataFrame) -> None:
    folds = assign_folds(full_manifest)
    dup = folds[folds["dup_group"] != ""].iloc[0]
    mates = folds.index[(folds["sha256"] == dup["sha256"])]
    folds.loc[mates[0], "fold"] = "val" if dup["fold"] != "val" else "train"
    folds.loc[mates[0], "patient_key"] = "unique-key-for-this-test"
    with pytest.raises(LeakageError, match="duplicate"):
        check_leakage(folds)


def test_label_views_for_both_tasks(full_manifest: pd.DataFrame) -> None:
    assert class_names("binary") == ["NORMAL", "PNEUMONIA"]
    y2, y3 = labels(full_manifest, "binary"), labels(full_manifest, "3class")
    assert set(np.unique(y3)) == {0, 1, 2}
    assert ((y3 > 0) == (y2 == 1)).all()
    assert (y3 == 2).sum() == (full_manifest["subtype"] == "virus").sum()


def test_the_leakage_message_names_a_file_of_each_split_the_patient_sits_in() -> None:
    """The example listed the first three files by path: all of the test side, never the train file that leaked."""
    df = pd.DataFrame({"path": [f"test/PNEUMONIA/person1_bacteria_{i}.jpeg" for i in range(3)]
                       + ["train/PNEUMONIA/person1_bacteria_9.jpeg"],
                       "fold": ["test"] * 3 + ["train"], "patient_key": ["bacteria-1"] * 4,
                       "sha256": ["a", "b", "c", "d"]})
    with pytest.raises(LeakageError) as err:
        check_leakage(df)
    assert "train/PNEUMONIA/person1_bacteria_9.jpeg" in str(err.value) and "'test'" in str(err.value)


def test_split_changes_counts_what_moved_was_added_removed_or_changed_content() -> None:
    recorded = pd.DataFrame({"path": ["a", "b", "c", "d"], "fold": ["train", "train", "val", "test"],
                             "sha256": ["1", "2", "3", "4"]})
    assert split_changes(recorded.copy(), recorded, ("train", "val", "test")) is None
    rebuilt = pd.DataFrame({"path": ["a", "b", "d", "e"], "fold": ["val", "train", "test", "train"],
                            "sha256": ["1", "9", "4", "5"]})
    assert split_changes(rebuilt, recorded, ("train", "val", "test")) == (
        "1 image(s) added, 1 image(s) removed, 1 image(s) moved folds, 1 image(s) changed content (e.g. e)")
    assert split_changes(rebuilt[rebuilt["path"] != "e"], recorded, ("test",)) is None  # only the folds named
