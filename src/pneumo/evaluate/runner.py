"""`evaluate_run(run_dir)`: a finished run's best checkpoint -> logits on val and test -> the protocol -> metrics.json,
predictions.csv, figures, report.html; the validation-chosen threshold and temperature go into the checkpoint sidecar."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from pneumo import atomic
from pneumo.config import from_dict
from pneumo.data.cache import image_cache
from pneumo.data.splits import class_names, labels
from pneumo.errors import ConfigError, DataError
from pneumo.evaluate.ood import ood_note, summarize_test_ood
from pneumo.evaluate.report import evaluate_predictions, write_evaluation_report
from pneumo.models.checkpoint import load_checkpoint
from pneumo.models.fast import fast_inference
from pneumo.models.runtime import predict_logits, select_device
from pneumo.models.sidecar import CheckpointMeta, write_meta
from pneumo.train.run import BEST

log = logging.getLogger(__name__)
Analysis = Callable[..., list[tuple[str, str]]]  # (run_dir, model, meta, images, y, subtypes, probs, threshold, names)


def load_run(run_dir: Path, data: str | None = None):
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "folds.csv").is_file():
        raise DataError(f"{run_dir} is not a run folder (no config.yaml / folds.csv)")
    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if data:
        cfg.data.root = data
    folds = pd.read_csv(run_dir / "folds.csv", keep_default_na=False, dtype={"dup_group": str})
    return cfg, folds


def fold_logits(run_dir: Path, cfg, folds: pd.DataFrame, net: torch.nn.Module) -> dict[str, np.ndarray]:
    """Logits of the val and test folds (val first: it is what selects the threshold and temperature)."""
    cache = image_cache(cfg, folds)
    device = select_device(cfg.train.device)
    net.to(device)
    model = _FastCpu(net, cfg.data.image_size) if device.type == "cpu" else net
    amp = cfg.train.amp and device.type == "cuda"  # fp32 on the CPU: the numbers `pneumo predict` (ONNX) gives
    out = {}
    for fold in ("val", "test"):
        rows = np.flatnonzero(folds["fold"].to_numpy() == fold)
        images = torch.from_numpy(np.ascontiguousarray(cache.images[rows]))[:, None]
        out[fold] = predict_logits(model, images, batch_size=64, device=device, amp=amp,
                                   progress=f"predict {fold}")
        if cfg.eval.tta:
            flipped = predict_logits(model, images.flip(-1), batch_size=64, device=device, amp=amp)
            out[fold] = (out[fold] + flipped) / 2
    out["test_images"] = cache.images[np.flatnonzero(folds["fold"].to_numpy() == "test")]
    return out


class _FastCpu(torch.nn.Module):
    """Evaluation-only wrapper: a traced, frozen, channels-last copy of the model for CPU inference."""

    def __init__(self, model: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.param = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # so .parameters() finds a device
        self.run = fast_inference(model, torch.rand(2, 1, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def evaluate_run(run_dir: str | os.PathLike, *, policy: str | None = None, n_bootstrap: int | None = None,
                 data: str | None = None, analysis: Analysis | None = None) -> dict:
    """The protocol for one run (see ../shared/docs/PROTOCOL.md). Returns the metrics dict also written to disk.

    ``analysis`` adds sections to the report (e.g. ``pneumo.explain.analysis.analysis_sections``: Grad-CAM shortcut
    indicator, confident errors, embeddings); the evaluation layer does not import explanations, the caller passes
    them in.
    """
    run_dir = Path(run_dir)
    start = time.perf_counter()
    cfg, folds = load_run(run_dir, data)
    model, meta = load_checkpoint(run_dir / f"{BEST}.json")
    names = class_names(cfg.data.task)
    logits = fold_logits(run_dir, cfg, folds, model)
    test = folds[folds["fold"] == "test"]
    y_test = labels(test, cfg.data.task)
    result = _protocol(cfg, folds, logits["val"], logits["test"], policy=policy, n_bootstrap=n_bootstrap)
    training = meta.training
    result["val_view"] = cfg.eval.val_view
    result["tta"] = cfg.eval.tta
    result["ood"] = summarize_test_ood(run_dir / f"{BEST}.json", meta.ood, model, logits["test_images"],
                                       device=select_device(cfg.train.device))
    result.update(name=cfg.name, config=meta.config, arch=meta.arch, mode=cfg.model.mode,
                  training=training, wall_time_s=training.get("wall_time_s"), device=training.get("device"),
                  commit=meta.commit, eval_seconds=round(time.perf_counter() - start, 1))
    _write_predictions(run_dir, test, logits["test"], result)
    _update_sidecar(run_dir / f"{BEST}.json", meta, result)
    extra = []
    if analysis:
        extra = _analysis(analysis, run_dir, model, meta, logits["test_images"], y_test, test, result, names)
    write_evaluation_report(run_dir, result, y_test=y_test, test_logits=logits["test"],
                            title=f"pneumo run: {cfg.name}", subtitle=_subtitle(result),
                            extra_sections=extra, metrics_csv=run_dir / "metrics.csv")
    atomic.write_json(run_dir / "metrics.json", result)
    return result


def _protocol(cfg, folds: pd.DataFrame, val_logits: np.ndarray, test_logits: np.ndarray, *, policy: str | None,
              n_bootstrap: int | None) -> dict:
    """`evaluate_predictions` with the run's settings; ``eval.val_view=original`` keeps the original-resolution val
    images only for choosing the threshold and temperature."""
    names = class_names(cfg.data.task)
    val, test = folds[folds["fold"] == "val"], folds[folds["fold"] == "test"]
    y_val = labels(val, cfg.data.task)
    if cfg.eval.val_view == "original":
        keep = (val["source_kind"] == "original").to_numpy()
        if keep.sum() == 0 or len(np.unique(y_val[keep])) < len(names):
            raise DataError("eval.val_view=original: the val fold has too few original-resolution images")
        y_val, val_logits = y_val[keep], val_logits[keep]
    return evaluate_predictions(
        y_val, val_logits, labels(test, cfg.data.task), test_logits, test["subtype"].tolist(), task=cfg.data.task,
        class_names=names, policy=policy or cfg.eval.threshold_policy,
        n_bootstrap=cfg.eval.n_bootstrap if n_bootstrap is None else n_bootstrap, seed=cfg.eval.bootstrap_seed,
        ece_bins=cfg.eval.ece_bins,
    )


def evaluate_ensemble(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike, *, policy: str | None = None,
                      n_bootstrap: int | None = None, data: str | None = None) -> dict:
    """The protocol for the average of several runs' probabilities (architectures or seeds on one split).

    The members must share their val and test folds (same data and split seed) and their task; the threshold and
    temperature are chosen on the ensemble's val probabilities, as for one run. Writes metrics.json,
    predictions.csv, ensemble.json (the members) and report.html into ``out_dir``.
    """
    if len(run_dirs) < 2:
        raise ConfigError("an ensemble needs at least two runs")
    start = time.perf_counter()
    out = Path(out_dir)
    members = [Path(r) for r in run_dirs]
    loaded = [load_run(run_dir, data) for run_dir in members]
    cfg, folds = loaded[0]
    probs: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    for run_dir, (member_cfg, member_folds) in zip(members, loaded):
        _check_same_folds(members[0], folds, cfg, run_dir, member_folds, member_cfg)
        model, _ = load_checkpoint(run_dir / f"{BEST}.json")
        logits = fold_logits(run_dir, member_cfg, member_folds, model)
        for fold, fold_probs in probs.items():
            fold_probs.append(torch.softmax(torch.from_numpy(logits[fold]).float(), 1).numpy())
    # log of the mean probability: the logits whose softmax is the averaged probability
    ensemble = {fold: np.log(np.clip(np.mean(p, axis=0), 1e-12, 1.0)) for fold, p in probs.items()}
    test = folds[folds["fold"] == "test"]
    y_test = labels(test, cfg.data.task)
    result = _protocol(cfg, folds, ensemble["val"], ensemble["test"], policy=policy, n_bootstrap=n_bootstrap)
    result.update(name=f"ensemble of {len(members)}", members=[str(m) for m in members], val_view=cfg.eval.val_view,
                  eval_seconds=round(time.perf_counter() - start, 1))
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out, test, ensemble["test"], result)
    write_evaluation_report(out, result, y_test=y_test, test_logits=ensemble["test"],
                            title=f"pneumo ensemble of {len(members)} runs",
                            subtitle=" + ".join(m.name for m in members))
    atomic.write_json(out / "ensemble.json", {"members": [str(m) for m in members], "combine": "mean probability"})
    atomic.write_json(out / "metrics.json", result)
    return result


def _check_same_folds(first: Path, folds: pd.DataFrame, cfg, other: Path, other_folds: pd.DataFrame,
                      other_cfg) -> None:
    if other_cfg.data.task != cfg.data.task:
        raise ConfigError(f"{other} is a {other_cfg.data.task} run, {first} a {cfg.data.task} run")
    for fold in ("val", "test"):
        a = sorted(folds.loc[folds["fold"] == fold, "path"])
        b = sorted(other_folds.loc[other_folds["fold"] == fold, "path"])
        if a != b:
            raise ConfigError(f"{other} and {first} have different {fold} folds (another split seed or data): "
                              "ensemble runs of one split")


def _analysis(analysis: Analysis, run_dir: Path, model, meta: CheckpointMeta, images: np.ndarray, y_test: np.ndarray,
              test: pd.DataFrame, result: dict, names: list[str]) -> list:
    probs = np.asarray([r for r in pd.read_csv(run_dir / "predictions.csv")["p_pneumonia"]])
    try:
        return analysis(run_dir, model.cpu(), meta, np.asarray(images), y_test, test["subtype"].tolist(),
                                 probs, result["threshold"], names)
    except Exception as exc:  # noqa: BLE001 - the analysis figures must never cost the evaluation
        log.warning("analysis figures skipped: %s: %s", type(exc).__name__, exc)
        return []


def _write_predictions(run_dir: Path, test: pd.DataFrame, logits: np.ndarray, result: dict) -> None:
    z = torch.from_numpy(logits)
    probs = torch.softmax(z, 1).numpy()
    calibrated = torch.softmax(z / result["temperature"], 1).numpy()
    out = pd.DataFrame({"path": test["path"].to_numpy(), "subtype": test["subtype"].to_numpy(),
                        "p_pneumonia": 1 - probs[:, 0], "p_calibrated": 1 - calibrated[:, 0]})
    out["predicted_pneumonia"] = (out["p_pneumonia"] >= result["threshold"]).astype(int)
    for i, name in enumerate(result["classes"]):
        out[f"p_{name}"] = calibrated[:, i]
    atomic.write_text(run_dir / "predictions.csv", out.to_csv(index=False))


def _update_sidecar(path: Path, meta: CheckpointMeta, result: dict) -> None:
    metrics = result["test"]["metrics"]
    meta = dataclasses.replace(
        meta, tta=bool(result.get("tta")), threshold=result["threshold"], threshold_policy=result["threshold_policy"],
        temperature=result["temperature"],
        metrics={"test": {k: metrics.get(k) for k in ("accuracy", "sensitivity", "specificity", "precision",
                                                       "f1", "roc_auc", "pr_auc")},
                 "test_ci": result["test"]["ci"], "val_roc_auc": result["val"]["roc_auc"],
                 "ece_before": result["test"]["ece_before"], "ece_after": result["test"]["ece_after"]})
    write_meta(path, meta)


def _subtitle(result: dict) -> str:
    return (f"{result.get('arch')} · mode {result.get('mode')} · task {result['task']} · threshold "
            f"{result['threshold']:.3f} ({result['threshold_policy']}) · T={result['temperature']:.2f} · "
            f"commit {result.get('commit')} · {result.get('device')}{ood_note(result)}")


def summary_line(result: dict) -> str:
    """One line with the headline test numbers and their 95 % CIs."""
    from pneumo.evaluate.report import fmt_ci

    m, ci = result["test"]["metrics"], result["test"].get("ci") or {}
    parts = ", ".join(f"{k} {fmt_ci(m.get(k), ci.get(k))}" for k in ("accuracy", "sensitivity", "specificity",
                                                                      "roc_auc"))
    val_auc = result["val"].get("roc_auc")
    return (f"{result.get('name')}: test {parts}; val AUC {fmt_ci(val_auc, None)}; threshold "
            f"{result['threshold']:.3f} ({result['threshold_policy']})")
