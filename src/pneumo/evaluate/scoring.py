"""Scoring labelled data through `pneumo.infer.predictor.Predictor`: a model (run, shipped model or ensemble folder) and
its stored operating point (`load_spec`), the images of a labelled folder or CSV (`score_labelled`, the input gate
applied as predict applies it) and the model's own val fold (`val_scores`, its logits kept next to the image cache).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.data.cache import image_cache, kept_array
from pneumo.data.rundir import RunDir, read_folds
from pneumo.data.splits import (
    MODEL_VAL_FOLD,
    images_digest,
    other_val_fold,
    paths_digest,
    recorded_val_fold,
)
from pneumo.errors import ConfigError, DataError, IntegrityError, PneumoError, one_line
from pneumo.evaluate.labelled import labelled_images, refuse_relabelled_copies
from pneumo.models.scores import log_mean_probability
from pneumo.models.sidecar import read_meta, resolve_model, weights_path
from pneumo.provenance import model_code

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
    """The predictor(s) of a run folder / checkpoint / None (shipped model) / ensemble folder: PyTorch where the
    weights are there, ONNX Runtime on the verified export of a folder that holds only that (`pneumo export --out`)."""
    from pneumo.infer.predictor import Predictor

    return [Predictor(m, backend="torch" if _has_weights(m) else "onnx") for m in _member_paths(model)]


def _has_weights(model: str | os.PathLike | None) -> bool:
    """Whether the model's PyTorch weights file is there (not only an ONNX export)."""
    sidecar = resolve_model(model)
    return weights_path(sidecar, read_meta(sidecar)).is_file()


def _member_paths(model: str | os.PathLike | None) -> list[str | None]:
    """An ensemble folder's members (relative to the folder, checked against the weights' SHA-256s it recorded), or
    the one model.

    Raises:
        ConfigError: fewer than two members, or a member not beside the folder (a moved ensemble: its members
            were once looked up from the working directory too, and other models there were evaluated silently).
        IntegrityError: a member whose weights are not the ones the ensemble was made of.
    """
    if model is not None and Path(model).is_dir() and (Path(model) / "ensemble.json").is_file():
        stored = json.loads((Path(model) / "ensemble.json").read_text())
        members = stored.get("members", [])
        if len(members) < 2:
            raise ConfigError(f"{model}/ensemble.json lists fewer than two members")
        again = "evaluate the ensemble again (pneumo evaluate --model RUN_A --model RUN_B --out DIR)"
        digests = stored.get("weights_sha256")
        if not digests or len(digests) != len(members):  # an older pneumo's: its members cannot be checked
            raise ConfigError(f"{model}/ensemble.json records no weights checksums of its members (written by an "
                              f"older pneumo): {again}")
        paths = [(Path(model) / m).resolve() for m in members]
        missing = [m for m, path in zip(members, paths, strict=True) if not path.exists()]
        if missing:
            raise ConfigError(f"{model}: member {missing[0]} is not there (members are relative to the ensemble "
                              f"folder: move or copy the ensemble together with its runs, or {again})")
        for path, digest in zip(paths, digests, strict=True):
            if read_meta(resolve_model(path)).sha256 != digest:
                raise IntegrityError(f"{model}: member {path.name} is not the model the ensemble was made of "
                                     "(its weights changed): evaluate the ensemble again")
        return [str(path) for path in paths]
    return [None if model in (None, "default") else str(model)]


def load_spec(model: str | os.PathLike | None) -> ModelSpec:
    """The model and its stored operating point (an ensemble's from its ensemble.json / metrics.json)."""
    predictors = load_models(model)
    if len(predictors) == 1:
        p = predictors[0]
        if not p.meta.threshold_policy:  # training leaves a placeholder threshold without a policy
            raise ConfigError(f"{p.sidecar} has no operating point yet: evaluate the run first (pneumo evaluate "
                              f"--model {p.sidecar.parent})")
        card = p.meta.extra.get("model_card") or {}  # the display name: the card's, else the run's, else the file's
        stem = p.sidecar.parent.name if RunDir.holds(p.sidecar) else p.sidecar.stem  # models/site-a, not "model"
        return ModelSpec(predictors, p.threshold, p.temperature, p.meta.threshold_policy, str(p.sidecar),
                         card.get("name") or (p.meta.config or {}).get("name") or stem)
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
                     members=_member_paths(folder))


def score_labelled(predictors: list, data: str | os.PathLike, *, progress: bool = False,
                   table: pd.DataFrame | None = None, binary: bool = False):
    """Decode and score every labelled image (of ``table`` when given: `find_labelled` of ``data``). Returns ``(y,
    logits, table, errors, images, predictions)``: class indices for the model's task, the (ensemble) logits, the
    readable rows, ``{path: error}`` for the unreadable or refused ones, the first member's preprocessed uint8 images
    (for Grad-CAM) and its `Prediction`s from the same model call (its OOD and orientation verdicts: `withheld`).
    ``binary``: normal/pneumonia indices whatever the model's task (an operating point needs no subtypes)."""
    from tqdm import tqdm

    from pneumo.data.decode import load_image_file
    from pneumo.data.gate import check_radiograph

    table = labelled_images(data) if table is None else table
    sizes = list(dict.fromkeys(p.size for p in predictors))  # the first member's first: its decode is gated
    # one array per member, filled in place (a list, then its stack, then a copy held ~3 images per image: 2.4 GB
    # at 5,216 images, a volume audit)
    stacks = [np.empty((len(table), p.size, p.size), np.uint8) for p in predictors]
    kept, errors = [], {}
    for i, path in enumerate(tqdm(table["path"], desc="decode", unit="img", disable=not progress)):
        try:  # each member from a decode at its own size (JPEGs at a reduced scale), as it is scored alone
            grays = {size: load_image_file(path, target=size) for size in sizes}
            check_radiograph(grays[sizes[0]])  # the input gate predict and serve apply: refused images are listed
        except PneumoError as exc:
            errors[path] = str(exc)
            continue
        for stack, p in zip(stacks, predictors, strict=True):
            stack[len(kept)] = p.preprocess(grays[p.size])
        kept.append(i)
    if not kept:
        first_path, why = next(iter(errors.items()))
        raise DataError(f"none of the {len(table)} labelled images could be read or passed the input gate (e.g. "
                        f"{one_line(first_path)}: {one_line(why)})")
    table = table.iloc[kept].reset_index(drop=True)
    stacks = [stack[:len(kept)] for stack in stacks]
    refuse_relabelled_copies(stacks[0], table)  # one film under two labels: counted as both (a review)
    # the model's calls, counted (the bar covered the decode only, then most of the run was silent: a volume audit)
    starts = tqdm(range(0, len(kept), BATCH), desc="score", unit="batch", disable=not progress)
    first = [predictors[0].outputs(stacks[0][i:i + BATCH]) for i in starts]
    predictions = [r for batch in first for r in predictors[0].predictions(*batch)]
    logits = log_mean_probability([np.concatenate([z for z, _ in first])] + [
        np.concatenate([p.logits(s[i:i + BATCH]) for i in range(0, len(s), BATCH)])
        for p, s in zip(predictors[1:], stacks[1:], strict=True)])
    y = (table["label"] == "PNEUMONIA").to_numpy(np.int64) if binary else _class_indices(table, predictors[0].classes)
    return y, logits, table, errors, stacks[0], predictions


def _class_indices(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    if len(classes) == 2:
        return (table["label"] == "PNEUMONIA").to_numpy(np.int64)
    unknown = table.loc[~table["subtype"].isin(classes), "path"].tolist()
    if unknown:
        raise DataError(f"a 3-class model needs normal/bacteria/virus labels; {len(unknown)} image(s) have none, "
                        f"e.g. {unknown[0]} (name them *bacteria*/*virus* or give a CSV 'subtype' column)")
    return table["subtype"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)


def withheld(p, results: list) -> tuple[np.ndarray | None, dict | None]:
    """The out-of-distribution scores and the images the model ``p`` gives no verdict (``flags``: out of distribution
    or turned), read from its `Prediction`s (`score_labelled`'s), decided exactly as `pneumo predict` decides them;
    ``(None, None)`` for a model without checks."""
    if p.ood is None and p.orientation is None:
        return None, None
    flags, ood = np.array([not r.assessed for r in results]), np.array([bool(r.ood) for r in results])
    scores = np.array([np.inf if r.ood_score is None else r.ood_score for r in results]) if p.ood else None
    summary = {"n": len(results), "n_flagged": int(flags.sum()), "share_flagged": float(flags.mean()),
               "n_out_of_distribution": int(ood.sum()), "n_orientation": int((flags & ~ood).sum()), "flags": flags}
    if scores is not None:
        summary.update(threshold=float(p.ood.threshold), percentile=p.meta.ood.get("percentile"),
                       method=p.meta.ood.get("method"), median_score=float(np.median(scores)))
    return scores, summary


def val_scores(predictors: list, *, data: str | None = None, strict: bool = False):
    """The model's own val fold, scored: ``(y, logits, paths, where)``, or None when it cannot be rebuilt (a model
    without a config, or no dataset, or a dataset whose rebuilt val fold is not the one the model's threshold was
    chosen on: a pruned or extended copy; logged). A run's folds.csv is used as is; otherwise the split is rebuilt
    from the config saved in the checkpoint (same data, seed and fraction). ``strict``: raise why instead (a
    `PneumoError`), for a command that needs the fold."""
    from pneumo.config import model_config
    from pneumo.data.manifest import resolve_root
    from pneumo.data.splits import check_recorded_images, folds_for, labels

    per_member, first = [], None
    for p in predictors:
        if not p.meta.config:
            return None
        cfg = model_config(p.meta.config)
        try:
            root = data or (cfg.data.root if cfg.data.root and Path(cfg.data.root).exists() else None)
            cfg.data.root = str(resolve_root(root))
            if RunDir.holds(p.sidecar) and RunDir(p.sidecar.parent).folds.is_file():
                folds = read_folds(RunDir(p.sidecar.parent).folds)
                check_recorded_images(folds, cfg.data.root, cache_dir=cfg.data.cache_dir, used=("val",))
            else:
                folds = folds_for(cfg)
            val = folds[folds["fold"] == "val"].reset_index(drop=True)
            _check_val_fold(p.meta, val, cfg.data.root)
            if note := val_fold_bytes_note(p.meta, val, cfg.data.root):
                log.warning("%s", note)
            cache = image_cache(cfg, val)
        except PneumoError as exc:
            if strict:
                raise
            log.warning("operating points: the val fold of %s cannot be rebuilt (%s)", p.sidecar, exc)
            return None
        per_member.append(_val_logits(p, cache))
        if first is None:
            first = (labels(val, cfg.data.task), val["path"].tolist(),
                     {"kind": MODEL_VAL_FOLD, "location": cfg.data.root, "images_sha256": images_digest(val),
                      **({"note": note} if note else {}),
                      "split_seed": cfg.data.split_seed, "val_fraction": cfg.data.val_fraction})
    y, paths, where = first
    return y, log_mean_probability(per_member), paths, where




def val_fold_mismatch(meta, val: pd.DataFrame, root: str) -> str | None:
    """Why a val fold rebuilt from ``root`` (its rows: ``path``, ``sha256``) is not the one the model's stored
    threshold was chosen on (its recorded digest of the paths), or None (the same, or nothing recorded)."""
    chosen = recorded_val_fold(meta.extra)
    if other_val_fold(chosen, val["path"].tolist()):  # (the same names in the other layout are the same fold)
        return (f"the val fold rebuilt from {root} ({len(val)} images) is not the model's recorded val fold "
                f"({chosen.get('n')} images): a pruned, extended or other copy of the dataset")
    return None


def val_fold_bytes_note(meta, val: pd.DataFrame, root: str) -> str | None:
    """Why the images of a val fold rebuilt from ``root`` under the recorded names are not the bytes the model's
    threshold was chosen on (its recorded digest of the images), or None. Not refused: another encoding of the same
    public dataset (the Mendeley original against a re-encoded copy) differs so; a cache review showed a copy with
    other pixels under the same names passing unnoticed, so it is said and the new digest recorded."""
    chosen = recorded_val_fold(meta.extra)
    recorded = chosen.get("images_sha256")
    if recorded and chosen.get("paths_sha256") not in (None, paths_digest(val["path"].tolist())):  # by names only
        return (f"the {len(val)} val-fold images rebuilt from {root} are the recorded ones in another layout of the "
                "dataset (Kaggle's val/ files under train/, as in the Mendeley archive): their bytes were not compared")
    if recorded and images_digest(val) != recorded:
        return (f"the {len(val)} val-fold images rebuilt from {root} have the recorded names but not the bytes the model's "
                "threshold was chosen on (another encoding or copy of the dataset, or changed files)")
    return None


def _check_val_fold(meta, val: pd.DataFrame, root: str) -> None:
    """Refuse a rebuilt val fold other than the one the model's stored threshold was chosen on (a review: a pruned
    copy of the dataset put training images in the "val fold" a new threshold was chosen on)."""
    if why := val_fold_mismatch(meta, val, root):
        raise DataError(f"{why}; give the dataset it was trained on (--dataset DIR)")


def _val_logits(p, cache) -> np.ndarray:
    """One member's logits of its val-fold images, kept next to the image cache under (weights SHA-256, backend, image
    cache key): evaluating a model again (other data, other policies) does not score its val fold again. A model
    without a weights checksum is scored every time."""
    images = np.asarray(cache.images)

    def score() -> np.ndarray:
        return np.concatenate([p.logits(images[i:i + 64]) for i in range(0, len(images), 64)])

    if not p.meta.sha256:
        return score()
    tta = "-tta" if p.meta.tta else ""  # flip averaging changes the logits (a review: one file served both)
    name = f"val-logits-{p.meta.sha256}-{p.backend}{tta}-{model_code()}-{cache.key}.npy"
    return kept_array(cache.file.parent / name, score, (len(images), p.meta.num_classes))
