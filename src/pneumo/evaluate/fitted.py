"""What an evaluated model's own records say was fitted on the images it is measured on: the images an adapted model
was fine-tuned on (its folder's crossfit_predictions.csv, by the SHA-256 of each file) and the images a new operating
point's threshold was chosen on (the digest `pneumo operating-point` records). Its records only: a run's own training
images handed in as a CSV are not recognised."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from pneumo import atomic
from pneumo.data.rundir import CROSSFIT, EARLIER_KEY
from pneumo.data.splits import paths_digest
from pneumo.evaluate.scoring import ModelSpec
from pneumo.models.records import check_crossfit


def threshold_chosen_on(spec: ModelSpec, assessed_paths: pd.Series) -> int:
    """How many of the assessed images (at ``assessed_paths``) a single model's stored threshold was chosen on: by the
    SHA-256 of each file where `pneumo operating-point --data` recorded them (so another spelling of a path, a copy,
    or a subset still counts: a review found a one-row-shorter CSV called independent), else all or none by the
    record's digest of the whole list (a run's val fold, older records)."""
    chosen = (spec.predictors[0].meta.extra.get("operating_point") or {}).get("chosen_on") or {}
    if len(spec.predictors) != 1 or not chosen:
        return 0
    if chosen.get("files_sha256"):
        listed = set(chosen["files_sha256"])
        return sum(os.path.isfile(p) and atomic.sha256_file(p) in listed for p in assessed_paths)
    return len(assessed_paths) if chosen.get("paths_sha256") == paths_digest(assessed_paths.tolist()) else 0


def adapted_on_sha256(predictor) -> set[str] | None:
    """The SHA-256 of every image an adapted model was adapted on: its crossfit_predictions.csv (checked against the
    sidecar's record) and the images of the adaptations before it (`EARLIER_KEY`); None for an older list that names
    paths instead."""
    listed = check_crossfit(predictor.sidecar, predictor.meta) or predictor.sidecar.parent / CROSSFIT
    earlier = set((predictor.meta.extra.get(EARLIER_KEY) or {}).get("files_sha256", []))
    if not listed.is_file():
        return earlier
    table = pd.read_csv(listed, dtype=str, keep_default_na=False)
    return set(table["file_sha256"]) | earlier if "file_sha256" in table else None


def fitted_on_these(predictors: list, paths: Sequence[str]) -> int:
    """How many of the files at ``paths`` an adapted model was fine-tuned on (`adapted_on_sha256`; by path in a list
    from before 2026-12-06); a new operating point carries the list."""
    predictor = predictors[0]
    if len(predictors) != 1 or not predictor.meta.extra.get("adaptation"):
        return 0
    hashes = adapted_on_sha256(predictor)
    if hashes is not None:
        return sum(os.path.isfile(p) and atomic.sha256_file(p) in hashes for p in paths)
    table = pd.read_csv(predictor.sidecar.parent / CROSSFIT, dtype=str, keep_default_na=False)
    adapted_on = {os.path.realpath(atomic.from_csv_cell(p)) for p in table.get("path", [])}
    return sum(os.path.realpath(p) in adapted_on for p in paths)


def fitted_sentence(ext: dict) -> str:
    """What the model's records say was fitted on these images (its records only: a run's own training images given
    here as a CSV are not recognised)."""
    said = []
    if ext.get("n_fitted_on"):
        said.append(f"<strong>{ext['n_fitted_on']} of them are images the model was adapted on: this is not an "
                    "external validation of those.</strong>")
    if ext.get("threshold_chosen_on_these"):
        said.append(f"<strong>the model's threshold was chosen on {ext.get('n_threshold_chosen_on', 'all')} of the "
                    "assessed images here (pneumo operating-point): its sensitivity and specificity here are not an "
                    "independent measure.</strong>")
    return " ".join(said) or "none of them is among the images the model's records name as fitted on (adapted on, " \
        "or its threshold chosen on)."
