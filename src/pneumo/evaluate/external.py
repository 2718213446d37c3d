"""External validation: a model (run, shipped model or ensemble) measured on any labelled folder or CSV, at its
STORED operating point (threshold and temperature as chosen on its own val fold; nothing is refitted on the data
measured). Writes metrics.json, predictions.csv, figures and report.html into an output folder; the model is
only read.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo import atomic
from pneumo.data.rundir import RunDir, read_folds
from pneumo.errors import ConfigError, DataError, PneumoError
from pneumo.evaluate.calibration import apply_temperature, nll, reliability_data
from pneumo.evaluate.labelled import find_labelled, labelled_images
from pneumo.evaluate.metrics import (
    CI_METHOD,
    binary_metrics,
    bootstrap_cis,
    multiclass_metrics,
    sensitivity_by_subtype,
)
from pneumo.evaluate.operating import operating_points, operating_points_section, policies_to_report
from pneumo.models.scores import log_mean_probability, p_pneumonia, pneumonia_probability

log = logging.getLogger(__name__)
BATCH = 32


@dataclass
class ModelSpec:
    """What is evaluated: one predictor, or the members of an ensemble (mean probability), and the stored
    operating point."""

    predictors: list
    threshold: float
    temperature: float
    policy: str
    location: str
    name: str
    members: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.predictors[0].classes)

    @property
    def task(self) -> str:
        return "binary" if len(self.classes) == 2 else "3class"


def load_models(model: str | os.PathLike | None) -> list:
    """The torch-backend predictor(s) of a run folder / checkpoint / None (shipped model) / ensemble folder."""
    from pneumo.infer.predictor import Predictor

    return [Predictor(m, backend="torch") for m in _member_paths(model)]


def _member_paths(model: str | os.PathLike | None) -> list[str | None]:
    if model is not None and Path(model).is_dir() and (Path(model) / "ensemble.json").is_file():
        members = json.loads((Path(model) / "ensemble.json").read_text()).get("members", [])
        if len(members) < 2:
            raise ConfigError(f"{model}/ensemble.json lists fewer than two members")
        return members
    return [None if model in (None, "default") else str(model)]


def load_spec(model: str | os.PathLike | None) -> ModelSpec:
    """The model and its stored operating point (an ensemble's from its ensemble.json / metrics.json)."""
    predictors = load_models(model)
    if len(predictors) == 1:
        p = predictors[0]
        if not p.meta.threshold_policy:  # training leaves a placeholder threshold without a policy
            raise ConfigError(f"{p.sidecar} has no operating point yet: evaluate the run first (pneumo evaluate "
                              f"--model {p.sidecar.parent})")
        card = p.meta.extra.get("model_card") or {}  # the display name: the card's, else the run's
        return ModelSpec(predictors, p.threshold, p.temperature, p.meta.threshold_policy, str(p.sidecar),
                         card.get("name") or (p.meta.config or {}).get("name") or p.sidecar.stem)
    folder = Path(model)  # an ensemble
    stored = json.loads((folder / "ensemble.json").read_text())
    if "threshold" not in stored and RunDir(folder).metrics.is_file():
        stored = {**json.loads(RunDir(folder).metrics.read_text()), **stored}
    if "threshold" not in stored:
        raise ConfigError(f"{folder} has no operating point: evaluate the ensemble first")
    if len({tuple(p.classes) for p in predictors}) != 1:
        raise ConfigError(f"the members of {folder} predict different classes")
    return ModelSpec(predictors, float(stored["threshold"]), float(stored.get("temperature", 1.0)),
                     stored.get("threshold_policy", "youden"), str(folder), f"ensemble {folder.name}",
                     members=[str(m) for m in stored["members"]])


def score_labelled(predictors: list, data: str | os.PathLike, *, progress: bool = False,
                   table: pd.DataFrame | None = None):
    """Decode and score every labelled image (of ``table`` when given: `find_labelled` of ``data``). Returns ``(y,
    logits, table, errors, images)``: class indices for the model's task, the (ensemble) logits, the readable rows,
    ``{path: error}`` for the unreadable or refused ones and the first member's preprocessed uint8 images (for
    Grad-CAM)."""
    from tqdm import tqdm

    from pneumo.data.decode import check_radiograph, load_image_file

    table = labelled_images(data) if table is None else table
    size = max(p.size for p in predictors)
    kept, errors, prepared = [], {}, [[] for _ in predictors]
    for i, path in enumerate(tqdm(table["path"], desc="predict", unit="img", disable=not progress)):
        try:
            gray = load_image_file(path, target=size)
            check_radiograph(gray)  # the input gate predict and serve apply: refused images are left out, listed
        except PneumoError as exc:
            errors[path] = str(exc)
            continue
        kept.append(i)
        for k, p in enumerate(predictors):
            prepared[k].append(p.preprocess(gray))
    if not kept:
        raise DataError(f"none of the {len(table)} labelled images could be read")
    table = table.iloc[kept].reset_index(drop=True)
    stacks = [np.stack(images) for images in prepared]
    logits = log_mean_probability([np.concatenate([p.logits(s[i:i + BATCH]) for i in range(0, len(s), BATCH)])
                          for p, s in zip(predictors, stacks, strict=True)])
    return _class_indices(table, predictors[0].classes), logits, table, errors, stacks[0]


def _class_indices(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    if len(classes) == 2:
        return (table["label"] == "PNEUMONIA").to_numpy(np.int64)
    unknown = table.loc[~table["subtype"].isin(classes), "path"].tolist()
    if unknown:
        raise DataError(f"a 3-class model needs normal/bacteria/virus labels; {len(unknown)} image(s) have none, "
                        f"e.g. {unknown[0]} (name them *bacteria*/*virus* or give the subtype in the CSV label)")
    return table["subtype"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)


def val_scores(predictors: list, *, data: str | None = None):
    """The model's own val fold, scored: ``(y, logits, paths, where)``, or None when it cannot be rebuilt (a model
    without a config, or no dataset). A run's folds.csv is used as is; otherwise the split is rebuilt from the
    config saved in the checkpoint (same data, seed and fraction)."""
    from pneumo.config import from_dict
    from pneumo.data.cache import image_cache
    from pneumo.data.manifest import resolve_root
    from pneumo.data.splits import folds_for, labels

    per_member, first = [], None
    for p in predictors:
        if not p.meta.config:
            return None
        cfg = from_dict(p.meta.config)
        try:
            root = data or (cfg.data.root if cfg.data.root and Path(cfg.data.root).exists() else None)
            cfg.data.root = str(resolve_root(root))
            if RunDir.holds(p.sidecar) and RunDir(p.sidecar.parent).folds.is_file():
                folds = read_folds(RunDir(p.sidecar.parent).folds)
            else:
                folds = folds_for(cfg)
            val = folds[folds["fold"] == "val"].reset_index(drop=True)
            cache = image_cache(cfg, val)
        except PneumoError as exc:
            log.warning("operating points: the val fold of %s cannot be rebuilt (%s)", p.sidecar, exc)
            return None
        per_member.append(_val_logits(p, cache))
        if first is None:
            first = (labels(val, cfg.data.task), val["path"].tolist(),
                     {"kind": "the model's val fold", "location": cfg.data.root,
                      "split_seed": cfg.data.split_seed, "val_fraction": cfg.data.val_fraction})
    y, paths, where = first
    return y, log_mean_probability(per_member), paths, where


def _val_logits(p, cache) -> np.ndarray:
    """One member's logits of its val-fold images, kept next to the image cache under (weights SHA-256, backend, image
    cache key): evaluating a model again (other data, other policies) does not score its val fold again. A model
    without a weights checksum is scored every time."""
    images = np.asarray(cache.images)

    def score() -> np.ndarray:
        return np.concatenate([p.logits(images[i:i + 64]) for i in range(0, len(images), 64)])

    if not p.meta.sha256:
        return score()
    file = cache.file.parent / f"val-logits-{p.meta.sha256}-{p.backend}-{cache.key}.npy"
    try:
        logits = np.load(file, allow_pickle=False)
        if logits.shape[0] == len(images):
            return logits
    except (OSError, ValueError, EOFError):  # absent, or damaged: score again
        pass
    logits = score()
    with atomic.writing(file) as tmp, open(tmp, "wb") as fh:
        np.save(fh, logits, allow_pickle=False)
    return logits


def measure(y: np.ndarray, logits: np.ndarray, *, threshold: float, temperature: float, classes: list[str],
            subtypes: list[str] | None, n_bootstrap: int, seed: int, ece_bins: int) -> dict:
    """The protocol's measurements on one labelled set at a FIXED threshold and temperature (no fitting)."""
    probs = apply_temperature(logits, 1.0)
    calibrated = apply_temperature(logits, temperature)
    p = pneumonia_probability(probs)
    yb = (y != 0).astype(np.int64)
    metrics = binary_metrics(yb, p, threshold)
    before, after = reliability_data(probs, y, ece_bins), reliability_data(calibrated, y, ece_bins)
    out = {"n": int(y.size), "metrics": metrics,
           "ci": bootstrap_cis(yb, p, threshold, n_resamples=n_bootstrap, seed=seed) if n_bootstrap else {},
           "confusion_matrix": [[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]],
           "ece_before": before["ece"], "ece_after": after["ece"], "nll_before": nll(logits, y),
           "nll_after": nll(logits, y, temperature), "reliability": {"before": before, "after": after},
           "by_subtype": sensitivity_by_subtype(p >= threshold, subtypes) if subtypes is not None else {}}
    if len(classes) > 2:
        out["multiclass"] = multiclass_metrics(y, probs, classes, threshold=threshold, n_resamples=n_bootstrap,
                                               seed=seed)
    return out


def evaluate_external(model: str | os.PathLike | None, data: str | os.PathLike, out_dir: str | os.PathLike, *,
                      n_bootstrap: int = 1000, seed: int = 0, ece_bins: int = 15, policies: tuple[str, ...] = (),
                      val_data: str | None = None, analysis: bool = True, progress: bool = False,
                      official: bool = False) -> dict:
    """The protocol on a labelled folder / CSV with the model's stored operating point; see the module doc.

    Args:
        model: run folder, checkpoint, ``None``/``"default"`` (shipped model) or an ensemble folder.
        data: a Kaggle-layout folder (NORMAL/ and PNEUMONIA/ at any depth) or a ``path,label`` CSV.
        out_dir: where metrics.json, predictions.csv, figures/ and report.html go (never the model's folder).
        n_bootstrap: bootstrap resamples for the CIs (0: none).
        seed: bootstrap seed.
        ece_bins: calibration bins.
        policies: extra threshold policies for the side-by-side table (chosen on the model's val fold).
        val_data: the dataset holding the model's val fold (default: the one it was trained on, or $PNEUMO_DATA).
        analysis: draw the Grad-CAM gallery of the most confident errors.
        progress: a progress bar on stderr.
        official: ``data`` is the official test split (labels the report and summary so; e.g. the shipped model).

    Returns:
        The metrics dict also written to ``out_dir/metrics.json``.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    spec = load_spec(model)
    if Path(spec.location).resolve() == out.resolve() or (Path(spec.location).parent.resolve() == out.resolve()
                                                          and Path(spec.location).is_file()):
        raise ConfigError(f"--out {out} is the model's own folder: external results go to a folder of their own")
    report_policies = policies_to_report(spec.policy, policies)
    labelled, not_read = find_labelled(data)
    y_all, logits_all, table_all, errors, images_all = score_labelled(spec.predictors, data, progress=progress,
                                                                      table=labelled)
    ood_scores, ood = _ood(spec, images_all)
    assessed = ~ood["flags"] if ood else np.ones(len(y_all), dtype=bool)
    # External data: the headline is measured on the assessed images (flagged ones get no verdict), all beside it. The
    # official test split keeps its headline on every image (comparable with evaluate_run and published results).
    headline = np.ones(len(y_all), dtype=bool) if official else assessed
    if not headline.any():
        raise DataError(f"all {len(y_all)} readable images are out of distribution for this model: none could be "
                        "assessed (see pneumo site check)")
    y, logits, images = y_all[headline], logits_all[headline], images_all[headline]
    table = table_all[headline].reset_index(drop=True)
    classes = spec.classes
    measured = {"threshold": spec.threshold, "temperature": spec.temperature, "classes": classes,
                "n_bootstrap": n_bootstrap, "seed": seed, "ece_bins": ece_bins}
    test = measure(y, logits, subtypes=table["subtype"].tolist(), **measured)
    p = p_pneumonia(logits)
    yb = (y != 0).astype(np.int64)
    result: dict = {"task": spec.task, "classes": classes, "threshold": spec.threshold,
                    "threshold_policy": spec.policy, "temperature": spec.temperature, "test": test,
                    "bootstrap": {"n_resamples": int(n_bootstrap), "seed": int(seed), "level": 0.95,
                                  "method": CI_METHOD}, "ece_bins": int(ece_bins)}
    val = val_scores(spec.predictors, data=val_data)
    if val is not None:
        y_val, z_val, _, where = val
        pv = p_pneumonia(z_val)
        yb_val = (y_val != 0).astype(np.int64)
        result["val"] = {"n": int(y_val.size), "roc_auc": binary_metrics(yb_val, pv, spec.threshold)["roc_auc"],
                         "ece_before": reliability_data(apply_temperature(z_val, 1.0), y_val, ece_bins)["ece"],
                         "ece_after": reliability_data(apply_temperature(z_val, spec.temperature), y_val,
                                                       ece_bins)["ece"],
                         "nll_before": nll(z_val, y_val), "nll_after": nll(z_val, y_val, spec.temperature),
                         "source": where}
        result["operating_points"] = operating_points(yb_val, pv, yb, p, report_policies, n_bootstrap=n_bootstrap,
                                                      seed=seed, fixed={spec.policy: spec.threshold})
    else:
        result["val"] = {"n": 0}
        result["operating_points"] = operating_points(np.zeros(0, np.int64), np.zeros(0), yb, p, [spec.policy],
                                                      n_bootstrap=n_bootstrap, seed=seed,
                                                      fixed={spec.policy: spec.threshold})
        result["operating_points_note"] = ("the other policies need the model's val fold, which could not be "
                                           "rebuilt here (pass --dataset DIR)")
        log.warning("only the stored operating point is reported: %s", result["operating_points_note"])
    result["external"] = {"data": str(Path(data).absolute()), "n": len(table_all), "n_unreadable": len(errors),
                          "unreadable": errors, "n_not_read": len(not_read), "not_read": not_read,
                          "by_label": table_all["label"].value_counts().to_dict(), "official_test_split": official}
    result["ood"] = {k: v for k, v in ood.items() if k != "flags"} if ood else None
    result["not_assessed"] = {"n": int((~assessed).sum()), "reason": "out of distribution or refused by the "
                              "orientation check", **({k: ood[k] for k in ("n_out_of_distribution", "n_orientation")}
                                                     if ood else {}),
                              "paths": table_all["path"][~assessed].tolist()[:50]}
    if (~assessed).any():  # the same measures on the other set: every readable image, or only the assessed ones
        other = assessed if official else np.ones(len(y_all), dtype=bool)
        result["test_assessed" if official else "test_all"] = measure(
            y_all[other], logits_all[other], subtypes=table_all["subtype"][other].tolist(), **measured)
    result.update(name=spec.name, model=spec.location, members=spec.members or None,
                  eval_seconds=round(time.perf_counter() - start, 1))
    from pneumo.evaluate.report import to_jsonable, write_evaluation_report, write_predictions

    result = to_jsonable(result)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out, {"path": table_all["path"], "label": table_all["label"], "subtype": table_all["subtype"],
                            **({"ood_score": ood_scores} if ood_scores is not None else {}),
                            "assessed": assessed.astype(int)}, logits_all,
                      temperature=result["temperature"], threshold=result["threshold"], assessed=assessed)
    extra = [_data_section(result), operating_points_section(result), _errors_section(out, table, y, p, result)]
    if analysis:
        extra.append(_gallery(out, spec, images, y, p, table))
    write_evaluation_report(out, result, y_test=y, test_logits=logits, title=f"pneumo external validation: "
                            f"{spec.name}", subtitle=f"{result['external']['data']} · model {spec.location} · "
                            f"threshold {spec.threshold:.3f} ({spec.policy}, stored) · temperature {spec.temperature:.2f} "
                            "(calibration, fitted on the model's val fold)",
                            extra_sections=extra)
    atomic.write_json(RunDir(out).metrics, result)
    return result


def _ood(spec: ModelSpec, images: np.ndarray) -> tuple[np.ndarray | None, dict | None]:
    """The out-of-distribution scores and the images without a verdict (``flags``), decided by the model's (first
    member's) `Predictor` exactly as `pneumo predict` decides them; ``(None, None)`` for a model without checks."""
    p = spec.predictors[0]
    if p.ood is None and p.orientation is None:
        return None, None
    results = [r for i in range(0, len(images), BATCH) for r in p.predict_prepared(images[i:i + BATCH])]
    flags, ood = np.array([not r.assessed for r in results]), np.array([bool(r.ood) for r in results])
    scores = np.array([np.inf if r.ood_score is None else r.ood_score for r in results]) if p.ood else None
    summary = {"n": len(images), "n_flagged": int(flags.sum()), "share_flagged": float(flags.mean()),
               "n_out_of_distribution": int(ood.sum()), "n_orientation": int((flags & ~ood).sum()), "flags": flags}
    if scores is not None:
        summary.update(threshold=float(p.ood.threshold), percentile=p.meta.ood.get("percentile"),
                       method=p.meta.ood.get("method"), median_score=float(np.median(scores)))
    return scores, summary


def _data_section(result: dict) -> tuple[str, str]:
    from pneumo.templates import escape
    from pneumo.templates import table as table_html

    ext = result["external"]
    na = result.get("not_assessed") or {"n": 0}
    where = "in the metrics" if ext.get("official_test_split") else "not in the metrics"
    rows = [["images read", ext["n"]], [f"not assessed (out of distribution, orientation): no verdict, {where}",
                                         na["n"]],
            ["assessed", ext["n"] - na["n"]],
            ["unreadable or refused by the input gate (left out)", ext["n_unreadable"]],
            ["other files not read (not an image name, hidden, no label folder, not a file)", ext.get("n_not_read", 0)],
            *[[f"label {k}", v] for k, v in sorted(ext["by_label"].items())]]
    ood = result.get("ood")
    ood_line = (f"<p>Not assessed: {ood['n_flagged']} of {ood['n']} images ({100 * ood['share_flagged']:.1f} %): "
                f"{ood['n_out_of_distribution']} out of distribution"
                + (f" (limit = the {ood['percentile']:g}th percentile of the validation images' distances)"
                   if ood.get("percentile") is not None else "")
                + f", {ood['n_orientation']} (only) by the orientation check (inverted, rotated or upside down). "
                "They get no pneumonia/normal verdict; the metrics on every readable image, assessed or not, are in "
                "metrics.json under <code>test_all</code>.</p>" if ood
                else "<p>Out-of-distribution check: not available for this model.</p>")
    bad = "".join(f"<li><code>{escape(k)}</code>: {escape(v)}</li>"
                  for k, v in {**ext["unreadable"], **ext.get("not_read", {})}.items())
    return ("External data", f"<p>Images from <code>{escape(ext['data'])}</code>, measured at the model's stored "
            f"operating point (threshold {result['threshold']:.3f}, policy <code>{escape(result['threshold_policy'])}"
            f"</code>; temperature {result['temperature']:.3f}); nothing was fitted on them.</p>"
            + table_html(["", "count"], rows) + ood_line + (f"<p>Every file left out, by name:</p><ul>{bad}</ul>" if bad
                                                             else "<p>No file was left out.</p>"))


def _errors_section(out: Path, table: pd.DataFrame, y: np.ndarray, p: np.ndarray, result: dict) -> tuple[str, str]:
    from pneumo.templates import escape
    from pneumo.templates import table as table_html

    called = p >= result["threshold"]
    truth = y != 0
    rows = []
    for name, mask, wrong in (("NORMAL", ~truth, called), ("PNEUMONIA", truth, ~called)):
        n, k = int(mask.sum()), int((mask & wrong).sum())
        rows.append([name, n, k, k / n if n else float("nan")])
    errors = np.flatnonzero(called != truth)
    worst = errors[np.argsort(-np.abs(p[errors] - result["threshold"]))][:20]
    listing = "".join(f"<tr><td><code>{escape(Path(table['path'][i]).name)}</code></td><td>{escape(table['label'][i])}"
                      f"</td><td>{escape(table['subtype'][i])}</td><td class='num'>{p[i]:.3f}</td></tr>" for i in worst)
    return ("Errors per class", table_html(["true class", "n", "errors", "error rate"], rows)
            + ("<table><caption>Most confident errors (all in predictions.csv)</caption><thead><tr><th>file</th>"
               f"<th>label</th><th>subtype</th><th>P(pneumonia)</th></tr></thead><tbody>{listing}</tbody></table>"
               if listing else "<p>No errors at this threshold.</p>"))


def _gallery(out: Path, spec: ModelSpec, images: np.ndarray, y: np.ndarray, p: np.ndarray,
             table: pd.DataFrame) -> tuple[str, str]:
    from pneumo.templates import escape
    from pneumo.templates import figure as image_html

    title = "Most confident errors (Grad-CAM)"
    model = spec.predictors[0].torch_model
    if model is None:
        return title, "<p>Not available: the model has no PyTorch weights.</p>"
    try:
        from pneumo.explain.filters import confident_errors_gallery

        path, n_fp, n_fn = confident_errors_gallery(model, images, y, p, spec.threshold,
                                                    out / "figures" / "confident_errors.png",
                                                    subtypes=table["subtype"].tolist())
    except Exception as exc:  # noqa: BLE001 - a figure must not cost the evaluation
        log.warning("error gallery skipped: %s: %s", type(exc).__name__, exc)
        return title, f"<p>Not available: {escape(type(exc).__name__)}: {escape(exc)}</p>"
    if path is None:
        return title, "<p>No errors at this threshold.</p>"
    member = " (Grad-CAM of the first member)" if len(spec.predictors) > 1 else ""
    return title, image_html(path, f"The {n_fp} most confident false positives (top) and {n_fn} false negatives "
                                   f"(bottom) at threshold {spec.threshold:.3f}{member}", relative_to=out)
