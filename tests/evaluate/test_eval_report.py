"""The protocol in one function (val selects, test only measures) and the self-contained run report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.calibration import fit_temperature
from pneumo.evaluate.metrics import binary_metrics, choose_threshold
from pneumo.evaluate.report import (
    evaluate_predictions,
    fmt_ci,
    metrics_table_html,
    write_evaluation_report,
    write_run_report,
)

BINARY = ["NORMAL", "PNEUMONIA"]
THREE = ["normal", "bacteria", "virus"]


def logits_for(n: int, k: int, seed: int, *, scale: float = 1.7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y] += 1.5
    return y, z * scale


def subtypes_for(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k == 3:
        return np.array(THREE)[y]
    return np.where(y == 0, "normal", np.random.default_rng(seed).choice(["bacteria", "virus"], y.size))


def run_protocol(task: str, *, y_test: np.ndarray | None = None, n_bootstrap: int = 200, policy: str = "youden",
                 val_seed: int = 0) -> tuple[dict, tuple]:
    k = 2 if task == "binary" else 3
    y_val, z_val = logits_for(300, k, seed=val_seed)
    y_t, z_test = logits_for(250, k, seed=1)
    y_t = y_t if y_test is None else y_test
    result = evaluate_predictions(y_val, z_val, y_t, z_test, subtypes_for(y_t, k, 2), task=task,
                                  class_names=BINARY if k == 2 else THREE, policy=policy, n_bootstrap=n_bootstrap,
                                  seed=0, ece_bins=15)
    return result, (y_val, z_val, y_t, z_test)


@pytest.mark.parametrize("task", ["binary", "3class"])
def test_threshold_and_temperature_ignore_the_test_labels(task: str) -> None:
    base, (_, _, y_test, _) = run_protocol(task, n_bootstrap=0)
    permuted, _ = run_protocol(task, y_test=np.random.default_rng(5).permutation(y_test), n_bootstrap=0)
    assert permuted["threshold"] == base["threshold"]
    assert permuted["temperature"] == base["temperature"]
    assert permuted["test"]["metrics"] != base["test"]["metrics"]  # the test labels do matter for the measurement


def test_threshold_and_temperature_come_from_the_validation_split() -> None:
    result, (y_val, z_val, _, _) = run_protocol("binary", n_bootstrap=0, policy="sensitivity:0.9")
    p_val = np.exp(z_val[:, 1]) / np.exp(z_val).sum(axis=1)
    assert result["threshold"] == pytest.approx(choose_threshold(y_val, p_val, "sensitivity:0.9"))
    assert result["temperature"] == pytest.approx(fit_temperature(z_val, y_val))
    other, _ = run_protocol("binary", n_bootstrap=0, policy="sensitivity:0.9", val_seed=7)
    assert other["threshold"] != result["threshold"]


def test_test_metrics_apply_the_validation_threshold_to_softmax_probabilities() -> None:
    result, (_, _, y_test, z_test) = run_protocol("binary", n_bootstrap=0)
    p_test = np.exp(z_test[:, 1]) / np.exp(z_test).sum(axis=1)
    assert result["test"]["metrics"] == pytest.approx(binary_metrics(y_test, p_test, result["threshold"]))


def test_a_single_logit_column_gives_the_same_result_as_two_logits() -> None:
    y_val, z_val = logits_for(200, 2, seed=3)
    y_test, z_test = logits_for(150, 2, seed=4)
    args = {"task": "binary", "class_names": BINARY, "policy": "youden", "n_bootstrap": 50, "seed": 0, "ece_bins": 15}
    two = evaluate_predictions(y_val, z_val, y_test, z_test, None, **args)
    one = evaluate_predictions(y_val, (z_val[:, 1] - z_val[:, 0])[:, None], y_test, z_test[:, 1] - z_test[:, 0],
                               None, **args)
    assert one["threshold"] == pytest.approx(two["threshold"])
    assert one["temperature"] == pytest.approx(two["temperature"], rel=1e-5)
    assert one["test"]["metrics"] == pytest.approx(two["test"]["metrics"])


def test_result_is_strict_json_with_cis_for_the_protocol_metrics() -> None:
    result, _ = run_protocol("binary")
    text = json.dumps(result, allow_nan=False)
    again = json.loads(text)
    # the metrics have intervals; the confusion cells are counts of these images (a resample of whole patients
    # redraws the class mix: its "true positives" ran past the pneumonia images there were; a review)
    assert set(again["test"]["ci"]) == {"accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc",
                                        "pr_auc"}
    assert again["threshold_policy"] == "youden" and again["bootstrap"]["n_resamples"] == 200
    assert set(again["test"]["by_subtype"]) == {"normal", "bacteria", "virus"}
    assert again["test"]["ece_before"] is not None and again["test"]["ece_after"] is not None


def test_three_class_result_carries_multiclass_and_derived_binary_metrics() -> None:
    result, _ = run_protocol("3class")
    mc = result["test"]["multiclass"]
    assert np.array(mc["confusion_matrix"]).shape == (3, 3) and sum(map(sum, mc["confusion_matrix"])) == 250
    assert mc["binary"]["accuracy"] == pytest.approx(result["test"]["metrics"]["accuracy"])
    assert {"accuracy", "macro_f1", "bacteria_vs_virus_accuracy"} <= set(mc["ci"])


def test_a_three_class_models_calibrated_p_pneumonia_has_its_own_ece_in_the_result_and_the_report(
        tmp_path: Path) -> None:
    """The calibration section measured only the top-class confidence of a 3-class model; the calibrated P(pneumonia)
    that predict and serve give (1 - P(normal)) had no measure (3-class audit: ECE 0.084 against the top class's
    0.045 on a real probe)."""
    from pneumo.evaluate.calibration import apply_temperature, ece
    from pneumo.models.scores import pneumonia_probability

    result, (_, _, y_test, z_test) = run_protocol("3class")
    p = pneumonia_probability(apply_temperature(z_test, result["temperature"]))
    expected = ece(np.stack([1 - p, p], 1), (y_test != 0).astype(int), 15)
    assert result["test"]["ece_pneumonia"]["after"] == pytest.approx(expected, abs=1e-12)
    assert result["test"]["ece_pneumonia"]["after"] != pytest.approx(result["test"]["ece_after"], abs=1e-6)
    assert "ece_pneumonia" not in run_protocol("binary")[0]["test"]  # a binary model's ECE is that one already
    html = write_evaluation_report(tmp_path, result, y_test=y_test, test_logits=z_test, title="three").read_text()
    assert "test: P(pneumonia) vs normal" in html


def test_logits_that_do_not_match_the_classes_raise_data_error() -> None:
    y, z = logits_for(50, 3, seed=0)
    with pytest.raises(DataError):
        evaluate_predictions(y, z, y, z, None, task="binary", class_names=BINARY, policy="youden", n_bootstrap=0,
                             seed=0, ece_bins=15)


def test_an_unknown_task_raises_config_error() -> None:
    y, z = logits_for(50, 2, seed=0)
    with pytest.raises(ConfigError):
        evaluate_predictions(y, z, y, z, None, task="4class", class_names=BINARY, policy="youden", n_bootstrap=0,
                             seed=0, ece_bins=15)


# ---------------------------------------------------------------- HTML

def test_values_are_formatted_with_their_confidence_interval() -> None:
    assert fmt_ci(0.91234, (0.8891, 0.9344)) == "0.912 [0.889, 0.934]"
    assert fmt_ci(123, (110.2, 135.0)) == "123 [110, 135]"
    assert fmt_ci(None, None) == "n/a"


def test_metrics_table_shows_each_metric_with_its_interval() -> None:
    table = metrics_table_html({"accuracy": 0.912, "roc_auc": 0.97}, {"accuracy": (0.889, 0.934)})
    assert "0.912 [0.889, 0.934]" in table and "ROC-AUC" in table and "0.970" in table


def test_run_report_is_one_self_contained_page_with_the_sections(tmp_path: Path) -> None:
    result, _ = run_protocol("binary")
    path = write_run_report(tmp_path, title="run <1>", sections=[("Grad-CAM", "<p>maps</p>"), ("Data", "<p>x</p>")],
                            result=result, subtitle="commit abc")
    html = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    assert "run &lt;1&gt;" in html and "<h2>Grad-CAM</h2>" in html and "<p>maps</p>" in html
    assert "<script" not in html and not re.search(r"(src|href)=['\"]?(https?:)?//", html)
    accuracy, (lo, hi) = result["test"]["metrics"]["accuracy"], result["test"]["ci"]["accuracy"]
    assert f"{accuracy:.3f}" in html and f"[{lo:.3f}, {hi:.3f}]" in html


@pytest.mark.parametrize("task", ["binary", "3class"])
def test_evaluation_report_links_figures_that_exist(tmp_path: Path, task: str) -> None:
    result, (_, _, y_test, z_test) = run_protocol(task)
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,val_auc\n1,0.5,0.8\n2,0.4,0.85\n")
    path = write_evaluation_report(tmp_path, result, y_test=y_test, test_logits=z_test, title="r",
                                   extra_sections=[("Explanations", "<p>cam</p>")],
                                   metrics_csv=tmp_path / "metrics.csv")
    html = path.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', html)
    expected = {"roc", "pr", "confusion", "reliability", "subtypes", "training"} | (
        {"confusion_3class"} if task == "3class" else set())
    assert {Path(s).stem for s in sources} == expected
    assert all((tmp_path / s).is_file() for s in sources)
    assert html.index("Explanations") > html.index("Calibration")


def test_a_recorded_operating_point_is_measured_whole_threshold_and_temperature(
        caplog: pytest.LogCaptureFixture) -> None:
    """A later evaluation reports at the model's recorded threshold AND temperature (the calibration figures once
    came from a temperature refitted on a changed val fold beside the stored threshold)."""
    from pneumo.evaluate.calibration import nll

    chosen, (y_val, z_val, y_t, z_test) = run_protocol("binary", n_bootstrap=0)
    args = {"task": "binary", "class_names": BINARY, "policy": "youden", "n_bootstrap": 0, "seed": 0, "ece_bins": 15}
    same = evaluate_predictions(y_val, z_val, y_t, z_test, None, **args,
                                stored=(chosen["threshold"], chosen["temperature"]))
    assert same["test"] == {**chosen["test"], "by_subtype": {}} and not caplog.records
    stored = (0.8, 2.5)  # another val fold's choice
    moved = evaluate_predictions(y_val, z_val, y_t, z_test, None, **args, stored=stored)
    assert (moved["threshold"], moved["temperature"]) == stored
    p_test = 1 / (1 + np.exp(-(z_test[:, 1] - z_test[:, 0])))
    assert moved["test"]["metrics"] == pytest.approx(binary_metrics((y_t != 0).astype(int), p_test, 0.8), nan_ok=True)
    assert moved["test"]["nll_after"] == pytest.approx(nll(z_test, y_t, 2.5))
    assert "val data changed" in caplog.text


def test_a_threshold_of_the_rule_before_the_score_margin_is_named_as_such(caplog: pytest.LogCaptureFixture) -> None:
    """Re-evaluating a run of an older pneumo warned "val data changed?" for a threshold the rule change moved by 1e-5
    (upgrade review)."""
    from pneumo.evaluate.report import evaluate_predictions

    rng = np.random.default_rng(0)
    y = (rng.random(120) < 0.6).astype(int)
    z = np.c_[np.zeros(120), rng.normal(2.0 * y - 1.0, 1.0)]
    kw = {"task": "binary", "class_names": ["NORMAL", "PNEUMONIA"], "policy": "sensitivity:0.95", "n_bootstrap": 0}
    now = evaluate_predictions(y, z, y, z, None, **kw)
    with caplog.at_level("WARNING"):
        evaluate_predictions(y, z, y, z, None, **kw, stored=(now["threshold"] + 1e-5, now["temperature"]))
    assert "chosen by the rule before 2026-12-06" in caplog.text and "val data changed" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate_predictions(y, z, y, z, None, **kw, stored=(now["threshold"] + 0.01, now["temperature"]))
    assert "val data changed" in caplog.text
