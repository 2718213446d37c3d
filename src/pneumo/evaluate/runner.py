"""`evaluate_run(run_dir)`: a finished run's best checkpoint -> logits on val and test -> the protocol -> metrics.json,
predictions.csv, figures, report.html, with the standard operating points side by side.

Evaluating never changes a model: the run's first evaluation (right after training) records the operating point
chosen on val (threshold, policy, temperature) in the checkpoint sidecar; later evaluations report at that stored
point and leave model.json byte-identical. A new operating point is a new model folder (`pneumo operating-point`,
`pneumo.evaluate.derive.derive_model`)."""

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

from pneumo import atomic
from pneumo.config import model_config, read_yaml
from pneumo.data.cache import image_cache
from pneumo.data.preprocess import to_unit
from pneumo.data.rundir import TRAINING_METRICS, RunDir, read_folds, run_lock
from pneumo.data.splits import RUN_VAL_FOLD, check_recorded_images, class_names, fold_digests, labels, split_changes
from pneumo.errors import ConfigError, DataError, ModelError
from pneumo.evaluate.calibration import apply_temperature, reliability_data
from pneumo.evaluate.external import measure
from pneumo.evaluate.ood import ood_note, test_checks
from pneumo.evaluate.operating import operating_points, operating_points_section, policies_to_report
from pneumo.evaluate.report import (
    EVALUATION_FILES,
    check_output_folder,
    evaluate_predictions,
    write_evaluation_report,
    write_predictions,
)
from pneumo.models.checkpoint import load_checkpoint
from pneumo.models.fast import scorer
from pneumo.models.runtime import autocast, select_device
from pneumo.models.scores import log_mean_probability, p_pneumonia
from pneumo.models.sidecar import CheckpointMeta, read_meta, resolve_model, write_meta
from pneumo.provenance import record as provenance_record
from pneumo.provenance import utc_now
from pneumo.templates import fmt_threshold

log = logging.getLogger(__name__)
Analysis = Callable[..., list[tuple[str, str]]]  # (run_dir, model, meta, images, y, subtypes, probs, threshold, names)


def load_run(run_dir: Path, data: str | None = None):
    run = _run_folder(run_dir)
    cfg = model_config(read_yaml(run.config))  # a broken config.yaml is one line, not a traceback
    if data:
        cfg.data.root = data
    folds = read_folds(run.folds)
    check_recorded_images(folds, cfg.data.root, cache_dir=cfg.data.cache_dir)  # a kept cache holds the old pixels
    return cfg, folds


def _run_folder(run_dir: Path) -> RunDir:
    run = RunDir(run_dir)
    if not run.is_run():
        raise DataError(f"{run_dir} is not a run folder (no {run.config.name} / {run.folds.name})")
    return run


def fold_logits(run_dir: Path, cfg, folds: pd.DataFrame, net: torch.nn.Module, *, progress: bool = False
                ) -> dict[str, np.ndarray]:
    """Logits of the val and test folds (val first: it is what selects the threshold and temperature), through
    `models.fast.scorer`, the scoring path of `Predictor`'s torch backend; ``progress``: bars on stderr."""
    from tqdm import tqdm

    cache = image_cache(cfg, folds)
    device = select_device(cfg.train.device, here=True)
    net.to(device).eval()
    score = scorer(net, cfg.data.image_size)
    amp = cfg.train.amp and device.type == "cuda"  # fp32 on the CPU: the numbers `pneumo predict` (ONNX) gives

    def scores_of(images: torch.Tensor, desc: str | None) -> tuple[np.ndarray, np.ndarray]:
        logits, features = [], []
        for start in tqdm(range(0, len(images), 64), desc=desc, disable=desc is None, unit="batch"):
            with torch.no_grad(), autocast(device, amp):
                z, f = score(to_unit(images[start : start + 64].to(device)))
            logits.append(z.float().cpu())
            features.append(f.float().cpu())
        return torch.cat(logits).numpy(), torch.cat(features).numpy()

    out = {}
    for fold in ("val", "test"):
        rows = np.flatnonzero(folds["fold"].to_numpy() == fold)
        images = torch.from_numpy(np.ascontiguousarray(cache.images[rows]))[:, None]
        out[fold], features = scores_of(images, f"predict {fold}" if progress else None)
        if fold == "test" and not amp:  # fp32: the features the OOD statistics were fitted on, from the same pass
            out["test_features"] = features
        if cfg.eval.tta:
            out[fold] = (out[fold] + scores_of(images.flip(-1), None)[0]) / 2
    out["test_images"] = cache.images[np.flatnonzero(folds["fold"].to_numpy() == "test")]
    return out


def evaluate_run(run_dir: str | os.PathLike, *, policy: str | None = None, n_bootstrap: int | None = None,
                 data: str | None = None, analysis: Analysis | None = None, policies: tuple[str, ...] = (),
                 progress: bool = False) -> dict:
    """The protocol for one run (see ../shared/docs/PROTOCOL.md). Returns the metrics dict also written to disk.

    The headline is the model's stored operating point (for a run never evaluated: the config's policy, chosen on
    val now and recorded in model.json, once). ``policy`` and ``policies`` add policies to the side-by-side
    operating points (``youden``, ``sensitivity:0.95`` and ``triage`` are always there); they never change the model.
    ``analysis`` adds sections to the report (e.g. ``pneumo.explain.analysis.analysis_sections``: Grad-CAM shortcut
    indicator, confident errors, embeddings); the evaluation layer does not import explanations, the caller passes
    them in. ``progress``: progress bars on stderr (the command line's; a library call draws none).

    The run's lock (`pneumo.data.rundir.run_lock`, the one training holds) is held throughout: a `pneumo train
    --force` or ``--resume`` of the run, or a `pneumo ood fit` of it, is refused meanwhile, so the evaluation never
    scores one model and writes beside another (or over a sidecar rewritten since it was read).

    Raises:
        ConfigError: another process trains or evaluates the run.
        ModelError: its model.json describes other weights than those evaluated (replaced meanwhile): nothing recorded.
    """
    run_dir = Path(run_dir)
    extra = tuple(p for p in (policy, *policies) if p)
    policies_to_report(None, extra)  # a bad policy fails here, before any predicting
    _run_folder(run_dir)
    with run_lock(run_dir):
        return _evaluate_locked(run_dir, extra=extra, n_bootstrap=n_bootstrap, data=data, analysis=analysis,
                                progress=progress)


def _evaluate_locked(run_dir: Path, *, extra: tuple[str, ...], n_bootstrap: int | None, data: str | None,
                     analysis: Analysis | None, progress: bool = False) -> dict:
    start = time.perf_counter()
    cfg, folds = load_run(run_dir, data)
    model, meta = load_checkpoint(RunDir(run_dir).model)
    names = class_names(cfg.data.task)
    logits = fold_logits(run_dir, cfg, folds, model, progress=progress)
    test = folds[folds["fold"] == "test"]
    y_test = labels(test, cfg.data.task)
    first = not meta.threshold_policy  # training leaves a placeholder threshold without a policy
    headline = cfg.eval.threshold_policy if first else meta.threshold_policy
    result = _protocol(cfg, folds, logits["val"], logits["test"], policy=headline, n_bootstrap=n_bootstrap,
                       stored=None if first else (meta.threshold, meta.temperature))
    _add_operating_points(result, cfg, folds, logits, extra)
    training = meta.training
    result["tta"] = cfg.eval.tta
    result["ood"], ood_scores, turned = test_checks(RunDir(run_dir).model, meta, model, logits["test_images"],
                                                    device=select_device(cfg.train.device, here=True),
                                                    features=logits.get("test_features"))
    if turned is not None:
        result["orientation"] = {"n": len(turned), "n_refused": int(turned.sum())}
    assessed = _assessed(result, ood_scores, turned)
    if assessed is not None and not assessed.all():  # the headline counts every image; the set apart: those with
        # (said on the console too: a training audit found it in metrics.json only)
        result["not_assessed"] = {"n": int((~assessed).sum()), "of": int(assessed.size)}
        result["test_assessed"] = measure(  # a verdict, as `evaluate --dataset` of the shipped model writes it
            y_test[assessed], logits["test"][assessed], threshold=result["threshold"],
            temperature=result["temperature"], classes=names, subtypes=test["subtype"][assessed].tolist(),
            n_bootstrap=result["bootstrap"]["n_resamples"], seed=cfg.eval.bootstrap_seed, ece_bins=cfg.eval.ece_bins,
            groups=None if patients_of(test) is None else patients_of(test)[assessed])
    result.update(name=cfg.name, config=meta.config, arch=meta.arch, mode=cfg.model.mode,
                  training=training, wall_time_s=training.get("wall_time_s"), device=training.get("device"),
                  commit=meta.commit, weights_sha256=meta.sha256, model_id=meta.model_id,
                  provenance=provenance_record(),  # the code that evaluated it (``commit``: the one that trained it)
                  eval_seconds=round(time.perf_counter() - start, 1))
    current = _still_evaluated(RunDir(run_dir).model, meta)  # before anything is written
    if first:
        _record_operating_point(RunDir(run_dir).model, current, result, folds)
    for summary in (RunDir(run_dir).metrics, Path(run_dir, "report.html")):  # removed first, metrics.json written
        summary.unlink(missing_ok=True)  # last: a kill in between leaves no evaluation, never an old one beside new files
    _write_predictions(run_dir, test, logits["test"], result, ood_scores, assessed)
    sections = [operating_points_section(result)]
    if analysis:
        sections += _analysis(analysis, run_dir, model, meta, logits["test_images"], y_test, test, result, names,
                              cfg=cfg)
    write_evaluation_report(run_dir, result, y_test=y_test, test_logits=logits["test"],
                            title=f"pneumo run: {cfg.name}", subtitle=_subtitle(result),
                            extra_sections=sections, metrics_csv=run_dir / TRAINING_METRICS)
    atomic.write_json(RunDir(run_dir).metrics, result)
    return result


def _add_operating_points(result: dict, cfg, folds: pd.DataFrame, logits: dict, extra: tuple[str, ...]) -> None:
    """The standard policies (+ extra ones) side by side, each chosen on val; and the val ECE after scaling."""
    y_val, z_val = labels(folds[folds["fold"] == "val"], cfg.data.task), logits["val"]
    result["val"]["ece_after"] = reliability_data(apply_temperature(z_val, result["temperature"]), y_val,
                                                  result.get("ece_bins", 15))["ece"]
    test = folds[folds["fold"] == "test"]
    yb_test = (labels(test, cfg.data.task) != 0).astype(np.int64)
    p_val, p_test = p_pneumonia(z_val), p_pneumonia(logits["test"])
    boot = result["bootstrap"]
    result["operating_points"] = operating_points(
        (y_val != 0).astype(np.int64), p_val, yb_test, p_test, policies_to_report(result["threshold_policy"], extra),
        n_bootstrap=boot["n_resamples"], seed=boot["seed"], fixed={result["threshold_policy"]: result["threshold"]},
        groups=patients_of(test))


def _protocol(cfg, folds: pd.DataFrame, val_logits: np.ndarray, test_logits: np.ndarray, *, policy: str | None,
              n_bootstrap: int | None, stored: tuple[float, float] | None = None) -> dict:
    """`evaluate_predictions` with the run's settings."""
    names = class_names(cfg.data.task)
    val, test = folds[folds["fold"] == "val"], folds[folds["fold"] == "test"]
    y_val = labels(val, cfg.data.task)
    return evaluate_predictions(
        y_val, val_logits, labels(test, cfg.data.task), test_logits, test["subtype"].tolist(), task=cfg.data.task,
        class_names=names, policy=policy or cfg.eval.threshold_policy,
        n_bootstrap=cfg.eval.n_bootstrap if n_bootstrap is None else n_bootstrap, seed=cfg.eval.bootstrap_seed,
        ece_bins=cfg.eval.ece_bins, stored=stored, groups_test=patients_of(test),
    )


def patients_of(test: pd.DataFrame) -> np.ndarray | None:
    """The patient of each test image (folds.csv's ``patient_key``), for intervals that count whole patients."""
    return test["patient_key"].astype(str).to_numpy() if "patient_key" in test.columns else None


def evaluate_ensemble(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike, *, policy: str | None = None,
                      n_bootstrap: int | None = None, data: str | None = None,
                      policies: tuple[str, ...] = (), replace: bool = False, progress: bool = False) -> dict:
    """The protocol for the average of several runs' probabilities (architectures or seeds on one split).

    The members must share their val and test folds (same data and split seed) and their task; the threshold and
    temperature are chosen on the ensemble's val probabilities, as for one run, by ``policy`` (default: the members'
    policy; members that disagree need it named: the first member's decided, so the order of the runs changed the
    ensemble's operating point). Writes metrics.json, predictions.csv, ensemble.json (the members) and report.html
    into ``out_dir``, whole or not at all (`atomic.folder`; ``replace``: an earlier ensemble's folder is replaced).
    """
    if len(run_dirs) < 2:
        raise ConfigError("an ensemble needs at least two runs")
    check_output_folder(out_dir, replace)  # before the long part
    policies_to_report(policy, policies)  # a bad policy fails before any predicting
    start = time.perf_counter()
    out = Path(out_dir)
    members = [Path(r) for r in run_dirs]
    loaded = [load_run(run_dir, data) for run_dir in members]
    cfg, folds = loaded[0]
    if policy is None:
        chosen = sorted({member_cfg.eval.threshold_policy for member_cfg, _ in loaded})
        if len(chosen) > 1:
            raise ConfigError(f"the members choose their thresholds by different policies ({', '.join(chosen)}): "
                              "name the ensemble's with --threshold-policy")
        policy = chosen[0]
    member_logits: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    metas: list[CheckpointMeta] = []
    for run_dir, (member_cfg, member_folds) in zip(members, loaded):
        _check_same_folds(members[0], folds, cfg, run_dir, member_folds, member_cfg)
        model, meta = load_checkpoint(RunDir(run_dir).model)
        metas.append(meta)
        logits = fold_logits(run_dir, member_cfg, member_folds, model, progress=progress)
        for fold, per_member in member_logits.items():
            per_member.append(logits[fold])
    ensemble = {fold: log_mean_probability(z) for fold, z in member_logits.items()}
    test = folds[folds["fold"] == "test"]
    y_test = labels(test, cfg.data.task)
    result = _protocol(cfg, folds, ensemble["val"], ensemble["test"], policy=policy, n_bootstrap=n_bootstrap)
    _add_operating_points(result, cfg, folds, ensemble, (policy, *policies) if policy else tuple(policies))
    # how each member was made, as a single run's metrics.json records it (reproducible without the members' folders)
    result.update(name=f"ensemble of {len(members)}", members=[str(m) for m in members],
                  member_commits=[m.commit for m in metas], member_configs=[m.config for m in metas],
                  member_weights_sha256=[m.sha256 for m in metas], provenance=provenance_record(),
                  eval_seconds=round(time.perf_counter() - start, 1))
    # the ensemble's operating point, chosen on its val probabilities: what external validation uses
    record = {"members": [os.path.relpath(Path(m).resolve(), out.resolve()) for m in members],
              "weights_sha256": [read_meta(resolve_model(m)).sha256 for m in members],
              "combine": "mean probability", "threshold": result["threshold"],
              "threshold_policy": result["threshold_policy"], "temperature": result["temperature"]}
    with atomic.folder(out, owned=EVALUATION_FILES, replace=replace) as work:  # whole or not at all
        _write_predictions(work, test, ensemble["test"], result)
        write_evaluation_report(work, result, y_test=y_test, test_logits=ensemble["test"],
                                title=f"pneumo ensemble of {len(members)} runs",
                                subtitle=" + ".join(m.name for m in members),
                                extra_sections=[operating_points_section(result)])
        atomic.write_json(work / "ensemble.json", record)
        atomic.write_json(RunDir(work).metrics, result)
    return result


def _check_same_folds(first: Path, folds: pd.DataFrame, cfg, other: Path, other_folds: pd.DataFrame,
                      other_cfg) -> None:
    if other_cfg.data.task != cfg.data.task:
        raise ConfigError(f"{other} is a {other_cfg.data.task} run, {first} a {cfg.data.task} run")
    changes = split_changes(other_folds, folds, ("val", "test"))
    if changes is not None:
        raise ConfigError(f"{other} and {first} have different val/test folds ({changes}; another split seed or "
                          "data): ensemble runs of one split")


def _analysis(analysis: Analysis, run_dir: Path, model, meta: CheckpointMeta, images: np.ndarray, y_test: np.ndarray,
              test: pd.DataFrame, result: dict, names: list[str], *, cfg) -> list:
    probs = np.asarray([r for r in pd.read_csv(RunDir(run_dir).predictions)["p_pneumonia"]])
    try:
        before = None  # the shortcut check looks for burnt-in markers where they were, before the in-painting
        if cfg.data.markers != "none":
            before = image_cache(cfg.model_copy(update={"data": cfg.data.model_copy(update={"markers": "none"})}),
                                 test).images
        return analysis(run_dir, model.cpu(), meta, np.asarray(images), y_test, test["subtype"].tolist(),
                        probs, result["threshold"], names, before_inpainting=before)
    except Exception as exc:  # noqa: BLE001 - the analysis figures must never cost the evaluation
        log.warning("analysis figures skipped: %s: %s", type(exc).__name__, exc)
        return []


def _assessed(result: dict, ood_scores: np.ndarray | None, turned: np.ndarray | None) -> np.ndarray | None:
    """The test images that get a verdict (not flagged out of distribution, not refused by the orientation check), as
    `pneumo predict` decides; None when the model has neither check."""
    assessed = None
    if ood_scores is not None:
        assessed = ~(ood_scores > result["ood"]["threshold"])  # OodStats.flags; a non-finite feature scores inf
    if turned is not None:
        assessed = ~turned if assessed is None else assessed & ~turned
    return assessed


def _write_predictions(run_dir: Path, test: pd.DataFrame, logits: np.ndarray, result: dict,
                       ood_scores: np.ndarray | None = None, assessed: np.ndarray | None = None) -> None:
    """The test fold's predictions; an image flagged out of distribution or refused by the orientation check gets no
    verdict (``assessed`` 0, an empty ``predicted_pneumonia``), as in `pneumo predict` (the headline metrics still
    count every image of the official split, with the flagged count beside them)."""
    rows = {"path": test["path"].to_numpy(), "subtype": test["subtype"].to_numpy()}
    if ood_scores is not None:
        rows["ood_score"] = ood_scores
    if assessed is not None:
        rows["assessed"] = assessed.astype(int)
    write_predictions(run_dir, rows, logits, temperature=result["temperature"], threshold=result["threshold"],
                      class_columns=result["classes"], assessed=assessed)


def _still_evaluated(path: Path, evaluated: CheckpointMeta) -> CheckpointMeta:
    """The sidecar at ``path`` read again, as it is now; refused unless it still records the weights evaluated.

    Raises:
        ModelError: another process put other weights there while they were scored.
    """
    meta = read_meta(path)
    if meta.sha256 != evaluated.sha256:
        raise ModelError(f"{path} now records other weights (sha256 {meta.sha256[:12]}) than the ones evaluated "
                         f"({evaluated.sha256[:12]}): replaced meanwhile, nothing recorded; evaluate it again")
    return meta


def _record_operating_point(path: Path, meta: CheckpointMeta, result: dict, folds: pd.DataFrame) -> None:
    """The run's first evaluation completes its model: the operating point chosen on val, recorded (version 1) on top
    of ``meta``, the sidecar as `_still_evaluated` read it just before (not as loaded when the scoring began: what
    was written in between stays)."""
    metrics, mc = result["test"]["metrics"], result["test"].get("multiclass")
    three = {"test_3class": {"accuracy": mc["accuracy"], "macro_f1": mc["macro_f1"],  # a 3-class run's own figures
                             "bacteria_vs_virus_roc_auc": mc["bacteria_vs_virus"]["roc_auc"]},
             "test_3class_ci": mc.get("ci", {})} if mc else {}
    val = folds[folds["fold"] == "val"]
    record = {"version": 1, "policy": result["threshold_policy"], "threshold": result["threshold"],
              "temperature": result["temperature"],
              "chosen_on": {"kind": RUN_VAL_FOLD, "n": result["val"]["n"], **fold_digests(val)},
              "created": utc_now()}
    meta = dataclasses.replace(
        meta, tta=bool(result.get("tta")), threshold=result["threshold"], threshold_policy=result["threshold_policy"],
        temperature=result["temperature"], extra={**meta.extra, "operating_point": record},
        metrics={"test": {k: metrics.get(k) for k in ("accuracy", "sensitivity", "specificity", "precision",
                                                       "f1", "roc_auc", "pr_auc", "tp", "fn", "tn", "fp")},
                 "test_ci": result["test"]["ci"], "test_n": result["test"]["n"], "val_roc_auc": result["val"]["roc_auc"],
                 "ece_before": result["test"]["ece_before"], "ece_after": result["test"]["ece_after"], **three})
    write_meta(path, meta)


def _subtitle(result: dict) -> str:
    return (f"{result.get('arch')} · mode {result.get('mode')} · task {result['task']} · threshold "
            f"{fmt_threshold(result['threshold'])} ({result['threshold_policy']}) · T={result['temperature']:.3f} · "
            f"commit {result.get('commit')} · {result.get('device')}{ood_note(result)}")


def summary_line(result: dict) -> str:
    """One line with the headline test numbers and their 95 % CIs; a second, the small-sample warning, if any."""
    from pneumo.evaluate.report import fmt_ci

    m, ci = result["test"]["metrics"], result["test"].get("ci") or {}
    parts = ", ".join(f"{k} {fmt_ci(m.get(k), ci.get(k))}" for k in ("accuracy", "sensitivity", "specificity",
                                                                      "roc_auc"))
    val_auc = result["val"].get("roc_auc")
    where = "external data" if (ext := result.get("external")) and not ext.get("official_test_split") else "test"
    from pneumo.evaluate.cautions import evaluation_warnings

    warning = " ".join(evaluation_warnings(m, ci, result.get("adaptation"), result.get("external")))
    multi = result["test"].get("multiclass")  # a 3-class model: its own numbers first, then pneumonia vs normal
    three = (f"3-class accuracy {fmt_ci(multi.get('accuracy'), (multi.get('ci') or {}).get('accuracy'))}, macro-F1 "
             f"{fmt_ci(multi.get('macro_f1'), (multi.get('ci') or {}).get('macro_f1'))}; pneumonia vs normal: "
             if multi else "")
    withheld = (result.get("not_assessed") or {}).get("n") or 0
    counted = ("counted in the numbers above at the threshold, as published results count them (metrics.json: "
               "test_assessed leaves them out)" if where == "test" else "outside the numbers above (metrics.json: "
               "not_assessed)")  # the n, the val fold and where they are: the console said less than the report
    adapted = result.get("adaptation")  # an adapted model has no val fold: the AUC its adaptation measured
    fold_auc = (f"cross-fitted site AUC {fmt_ci(adapted.get('crossfit_roc_auc'), None)}" if adapted
                else f"val-fold AUC {fmt_ci(val_auc, None)}")
    subset = (f" (a subset: data.limit_per_class = {limit})"  # a run's smaller test split (a docs audit)
              if not ext and (limit := ((result.get("config") or {}).get("data") or {}).get("limit_per_class")) else "")
    return (f"{result.get('name')}: {where} {three}{parts}; {result['test'].get('n')} images{subset}; {fold_auc}; threshold {fmt_threshold(result['threshold'])} ({result['threshold_policy']})"
            + (f"\nnot assessed: {withheld} image(s) without a verdict (out of distribution or turned), {counted}"
               if withheld else "")
            + (f"\nwarning: {warning}" if warning else ""))
