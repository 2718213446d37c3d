"""Each figure function writes one non-empty PNG atomically and returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo.errors import DataError
from pneumo.evaluate.calibration import apply_temperature, reliability_data
from pneumo.evaluate.metrics import sensitivity_by_subtype
from pneumo.evaluate.plots import (
    plot_confusion,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_subtype_rates,
    plot_training_curves,
    read_metrics_csv,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, expected: Path) -> None:
    assert path == expected
    data = expected.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert not [p for p in expected.parent.iterdir() if p.name.startswith(".")], "temp files left behind"


@pytest.fixture()
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)


def test_roc_plot_writes_a_png(tmp_path: Path, scores: tuple[np.ndarray, np.ndarray]) -> None:
    out = tmp_path / "figs" / "roc.png"
    assert_png(plot_roc(*scores, out, threshold=0.5), out)


def test_pr_plot_writes_a_png(tmp_path: Path, scores: tuple[np.ndarray, np.ndarray]) -> None:
    out = tmp_path / "pr.png"
    assert_png(plot_pr(*scores, out, threshold=0.5, ap=0.8), out)


def test_roc_plot_with_a_single_class_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        plot_roc([1, 1], [0.2, 0.9], tmp_path / "roc.png")


def test_confusion_plot_writes_a_png_for_three_classes(tmp_path: Path) -> None:
    out = tmp_path / "cm.png"
    assert_png(plot_confusion([[50, 3, 2], [4, 60, 9], [0, 7, 40]], ["normal", "bacteria", "virus"], out), out)


def test_confusion_plot_rejects_a_matrix_of_the_wrong_size(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        plot_confusion([[1, 2], [3, 4]], ["normal", "bacteria", "virus"], tmp_path / "cm.png")


def test_reliability_plot_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (300, 3))
    y = rng.integers(0, 3, 300)
    before = reliability_data(apply_temperature(z, 1.0), y)
    after = reliability_data(apply_temperature(z, 3.0), y)
    out = tmp_path / "rel.png"
    assert_png(plot_reliability(before, after, out, temperature=3.0), out)


def test_subtype_plot_writes_a_png(tmp_path: Path) -> None:
    subtypes = ["bacteria", "bacteria", "virus", "virus", "normal", "normal"]
    by_subtype = sensitivity_by_subtype([1, 1, 0, 1, 0, 0], subtypes)
    out = tmp_path / "sub.png"
    assert_png(plot_subtype_rates(by_subtype, out), out)


def test_training_curves_write_a_png(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,val_loss,val_auc,lr,seconds\n1,0.6,0.5,0.80,3e-4,9\n2,0.4,0.45,0.86,2e-4,9\n")
    out = tmp_path / "train.png"
    assert_png(plot_training_curves(csv, out), out)


def test_training_curves_say_when_the_val_auc_is_not_pneumonia_vs_normal(tmp_path: Path, monkeypatch) -> None:
    """A 3-class run's curves showed "val ROC-AUC" 0.73 (macro) beside a report's val AUC 0.89 (pneumonia vs normal)."""
    from pneumo.evaluate import plots

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,val_loss,val_auc,lr\n1,0.6,0.5,0.80,3e-4\n2,0.4,0.45,0.86,2e-4\n")
    titles: list[list[str]] = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: titles.append([ax.get_title() for ax in fig.axes]) or path)
    plot_training_curves(csv, tmp_path / "a.png", auc_of="macro one-vs-rest over the three classes")
    plot_training_curves(csv, tmp_path / "b.png", auc_of="P(pneumonia)")
    assert "val ROC-AUC (macro one-vs-rest over the three classes)" in titles[0] and "val ROC-AUC" in titles[1]


def test_training_curves_tolerate_missing_columns_and_blank_cells(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,val_auc,notes\n1,0.8,warmup\n2,,\n3,0.9,x\n")
    out = tmp_path / "train.png"
    assert_png(plot_training_curves(csv, out), out)
    assert np.isnan(read_metrics_csv(csv)["val_auc"][1])


def test_training_curves_without_a_known_column_raise_data_error(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,seconds\n1,9\n")
    with pytest.raises(DataError):
        plot_training_curves(csv, tmp_path / "train.png")


def test_training_curves_from_a_missing_file_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        plot_training_curves(tmp_path / "absent.csv", tmp_path / "train.png")
