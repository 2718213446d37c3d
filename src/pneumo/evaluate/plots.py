"""Evaluation figures. Each function draws one PNG, writes it atomically and returns its path.

Figures come from `pneumo.templates.figures` (the one figure style: matplotlib's object API on an Agg canvas, no
pyplot, so safe in servers and threads).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc as area_under
from sklearn.metrics import precision_recall_curve, roc_curve

from pneumo.errors import DataError
from pneumo.evaluate.calibration import p_pneumonia
from pneumo.evaluate.metrics import check_binary
from pneumo.templates import fmt_threshold
from pneumo.templates.figures import new_figure, save_png

log = logging.getLogger(__name__)

TRAINING_PANELS = (("loss", ("train_loss", "val_loss")), ("val ROC-AUC", ("val_auc",)), ("learning rate", ("lr",)))


def plot_roc(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, path: str | os.PathLike, *,
             threshold: float | None = None, auc: float | None = None, title: str = "ROC curve (test)") -> Path:
    """ROC curve with its AUC in the legend and the operating point (``p >= threshold``) marked."""
    y, p = _both_classes(y, p, "ROC curve")
    fpr, tpr, _ = roc_curve(y, p)
    if auc is None:
        auc = float(area_under(fpr, tpr))
    fig, ax = _axes()
    ax.plot(fpr, tpr, lw=2, label=f"model (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="chance")
    if threshold is not None:
        pred = p >= threshold
        sens, fpr_op = pred[y == 1].mean(), pred[y == 0].mean()
        ax.plot([fpr_op], [sens], "o", c="C3", ms=8,
                label=f"threshold {fmt_threshold(threshold)}: sens {sens:.3f}, spec {1 - fpr_op:.3f}")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity", title=title, xlim=(-0.01, 1.01),
           ylim=(-0.01, 1.01))
    return _finish(fig, ax, path, legend="lower right")


def plot_pr(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, path: str | os.PathLike, *,
            threshold: float | None = None, ap: float | None = None, title: str = "Precision-recall (test)") -> Path:
    """Precision-recall curve with average precision in the legend, the prevalence line and the operating point."""
    y, p = _both_classes(y, p, "PR curve")
    precision, recall, _ = precision_recall_curve(y, p)
    fig, ax = _axes()
    label = "model" if ap is None else f"model (AP {ap:.3f})"
    ax.step(recall, precision, where="post", lw=2, label=label)
    ax.axhline(y.mean(), ls="--", c="0.6", lw=1, label=f"prevalence {y.mean():.3f}")
    if threshold is not None:
        pred = p >= threshold
        if pred.any():
            ax.plot([pred[y == 1].mean()], [y[pred].mean()], "o", c="C3", ms=8, label=f"threshold {fmt_threshold(threshold)}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=title, xlim=(-0.01, 1.01), ylim=(0, 1.01))
    return _finish(fig, ax, path, legend="lower left")


def _both_classes(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, what: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    y, p = check_binary(y, p)
    if np.unique(y).size < 2:
        raise DataError(f"{what} needs both classes")
    return y, p


def _axes() -> tuple[Figure, Axes]:
    fig = new_figure()
    return fig, fig.add_subplot()


def _finish(fig: Figure, ax: Axes, path: str | os.PathLike, *, legend: str) -> Path:
    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                   *, title: str = "Confusion matrix (test)") -> Path:
    """Counts (left) and row-normalised shares (right); rows are true classes, columns the calls."""
    cm = np.asarray(matrix, dtype=float)
    k = len(class_names)
    if cm.shape != (k, k):
        raise DataError(f"confusion matrix must be {k}x{k}, got {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    shares = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = new_figure(4.0 + 2.4 * k, 1.6 + 1.1 * k)
    panels = zip(fig.subplots(1, 2), (cm, shares), ("{:.0f}", "{:.2f}"), ("counts", "row share"), strict=True)
    for ax, data, fmt, name in panels:
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)  # both panels coloured by row share
        for i in range(k):
            for j in range(k):
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center",
                        color="white" if shares[i, j] > 0.5 else "black")
        ax.set(xticks=range(k), yticks=range(k), xlabel="called", ylabel="true", title=f"{title}: {name}")
        ax.set_xticklabels(class_names)
        ax.set_yticklabels(class_names)
        ax.title.set_fontsize(9)
    return save_png(fig, path)


def plot_reliability(before: dict, after: dict, path: str | os.PathLike, *, temperature: float | None = None,
                     title: str = "Reliability (test)") -> Path:
    """Reliability diagram before and after temperature scaling, from two :func:`reliability_data` dicts."""
    fig = new_figure(5.0, 4.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect calibration")
    t_label = f" (T = {temperature:.3f})" if temperature is not None else ""
    for data, name, marker in ((before, "before", "o-"), (after, f"after{t_label}", "s-")):
        conf = np.array(data["confidence"], dtype=float)
        acc = np.array(data["accuracy"], dtype=float)
        keep = np.isfinite(conf) & np.isfinite(acc)
        ece_text = f", ECE {data['ece']:.3f}" if data.get("ece") is not None and math.isfinite(data["ece"]) else ""
        ax.plot(conf[keep], acc[keep], marker, ms=4, label=f"{name}{ece_text}")
    ax.set(xlabel="confidence (top label)", ylabel="accuracy", title=title, xlim=(0, 1.01), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def read_metrics_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Numeric columns of a training metrics CSV (blank or non-numeric cells become nan)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training metrics not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            columns.setdefault(key, []).append(number)
    return {k: np.array(v) for k, v in columns.items()}


def plot_training_curves(metrics_csv: str | os.PathLike, path: str | os.PathLike, *,
                         title: str = "Training curves", auc_of: str | None = None) -> Path:
    """Loss, val ROC-AUC and learning rate per epoch; panels whose columns are missing are left out. ``auc_of``: what
    the val AUC measured (the sidecar's ``training.val_auc_of``), in its panel's title where it is not P(pneumonia)."""
    cols = read_metrics_csv(metrics_csv)
    n = len(next(iter(cols.values()))) if cols else 0
    epoch = cols.get("epoch", np.arange(1, n + 1, dtype=float))
    named = {"val ROC-AUC": f"val ROC-AUC ({auc_of})"} if auc_of and auc_of != "P(pneumonia)" else {}
    panels = [(named.get(name, name), [c for c in keys if c in cols and np.isfinite(cols[c]).any()])
              for name, keys in TRAINING_PANELS]
    panels = [(name, keys) for name, keys in panels if keys]
    if not panels:
        raise DataError(f"{metrics_csv} has none of the columns train_loss, val_loss, val_auc, lr")
    fig = new_figure(3.6 * len(panels), 3.4)
    for ax, (name, keys) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels, strict=True):
        for key in keys:
            ax.plot(epoch, cols[key], "o-", ms=3, label=key)
        ax.set(xlabel="epoch", title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_png(fig, path)


def plot_subtype_rates(by_subtype: dict, path: str | os.PathLike, *,
                       title: str = "Called pneumonia, per subtype (test)") -> Path:
    """Bars of the share called pneumonia per subtype (sensitivity for bacteria/virus, false-positive rate for
    normal) with exact (Clopper-Pearson) 95 % intervals, from :func:`~pneumo.evaluate.metrics.sensitivity_by_subtype`."""
    if not by_subtype:
        raise DataError("no subtypes to plot")
    names = list(by_subtype)
    rates = np.array([by_subtype[s]["rate"] for s in names], dtype=float)
    ci = np.array([by_subtype[s].get("ci") or [math.nan, math.nan] for s in names], dtype=float)
    err = np.nan_to_num(np.abs(np.stack([rates - ci[:, 0], ci[:, 1] - rates])))
    fig = new_figure(1.6 + 1.2 * len(names), 3.6)
    ax = fig.add_subplot()
    colors = ["0.6" if s.lower() == "normal" else "C0" for s in names]
    ax.bar(names, rates, yerr=err, color=colors, capsize=4)
    for i, s in enumerate(names):
        top = ci[i, 1] if np.isfinite(ci[i, 1]) else rates[i]
        ax.text(i, top + 0.02, f"{rates[i]:.2f} (n={by_subtype[s]['n']})", ha="center", fontsize=8)
    ax.set(ylim=(0, 1.12), ylabel="share called pneumonia", title=title)
    ax.title.set_fontsize(9)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def draw_evaluation_plots(fig_dir: str | os.PathLike, result: dict, *, y_test: Sequence[int] | np.ndarray,
                          test_logits: np.ndarray, metrics_csv: str | os.PathLike | None = None) -> dict[str, Path]:
    """All figures of a run's report from an ``evaluate_predictions`` result and the test arrays.

    Returns:
        ``{name: path}`` for roc, pr, confusion (+ confusion_3class), reliability, subtypes, training (those that
        apply: training only when ``metrics_csv`` exists and has a plottable column).
    """
    fig_dir = Path(fig_dir)
    y_bin = (np.asarray(y_test) != 0).astype(np.int64)
    p = p_pneumonia(test_logits)
    test, out = result["test"], {}
    threshold = result["threshold"]
    ext = result.get("external")
    where = "external data" if ext and not ext.get("official_test_split") else "test"
    if np.unique(y_bin).size == 2:
        out["roc"] = plot_roc(y_bin, p, fig_dir / "roc.png", threshold=threshold, auc=test["metrics"]["roc_auc"])
        out["pr"] = plot_pr(y_bin, p, fig_dir / "pr.png", threshold=threshold, ap=test["metrics"]["pr_auc"])
    binary_names = ["NORMAL", "PNEUMONIA"] if result["task"] == "binary" else ["normal", "pneumonia"]
    out["confusion"] = plot_confusion(test["confusion_matrix"], binary_names, fig_dir / "confusion.png")
    if "multiclass" in test:
        out["confusion_3class"] = plot_confusion(test["multiclass"]["confusion_matrix"], result["classes"],
                                                 fig_dir / "confusion_3class.png", title=f"3-class confusion ({where})")
    out["reliability"] = plot_reliability(_nan_for_none(test["reliability"]["before"]),
                                          _nan_for_none(test["reliability"]["after"]), fig_dir / "reliability.png",
                                          temperature=result["temperature"], title=f"Reliability ({where})")
    if test.get("by_subtype"):
        out["subtypes"] = plot_subtype_rates(test["by_subtype"], fig_dir / "subtypes.png")
    if metrics_csv is not None and Path(metrics_csv).is_file():
        try:
            out["training"] = plot_training_curves(metrics_csv, fig_dir / "training.png",
                                                   auc_of=(result.get("training") or {}).get("val_auc_of"))
        except DataError as exc:
            log.warning("training curves skipped: %s", exc)
    return out


def _nan_for_none(data: dict) -> dict:
    return {k: ([math.nan if v is None else v for v in vals] if isinstance(vals, list) else vals)
            for k, vals in data.items()}
