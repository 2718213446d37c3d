"""What a site's images share with what the source model has already seen, by the SHA-256 of each file: images it was
adapted on (an adapted model's records) and images of its training dataset's splits (the dataset's manifest). An
image the source model was fitted on would be scored in-sample by every fold model fine-tuned from it."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from pneumo.data.rundir import EARLIER_KEY
from pneumo.errors import DataError
from pneumo.evaluate.fitted import adapted_on_sha256, fitted_on_these
from pneumo.models.sidecar import DEFAULT_MODEL

SHIPPED = f"{DEFAULT_MODEL.parent.name}/{DEFAULT_MODEL.name}"  # as an adaptation records the shipped model's place
# the source dataset's folds a site image may not come from, and why
REFUSED_FOLDS = {"test": "the source dataset's official test split, which the adapted model would then be trained on "
                         "while the card reports it as the source hospital's",
                 "train": "the source dataset's train fold, which the source model was trained on: every fold model "
                          "would score them in-sample"}


def refuse_adapted_on(predictor, site_sha256: Mapping[str, str]) -> None:
    """Refuse site images the source model was already adapted on (``site_sha256``: path -> SHA-256 of the file): the
    fold models start from weights fine-tuned on them, so their cross-fitted scores, the threshold and the temperature
    would be in-sample while the card says no image was scored by a model adapted on it (a review).

    Raises:
        DataError: how many, and what to adapt instead.
    """
    meta = predictor.meta
    if not meta.extra.get("adaptation"):
        return
    hashes = adapted_on_sha256(predictor)
    n = (sum(sha in hashes for sha in site_sha256.values()) if hashes is not None
         else fitted_on_these([predictor], list(site_sha256)))  # an older list names paths
    if n:
        raise DataError(f"{n} of the {len(site_sha256)} site images are images the source model {predictor.model_id} "
                        f"was already adapted on: its fold models would score them in-sample; adapt {_origin(meta)} "
                        "on the union of the images it was adapted on and these instead")


def _origin(meta) -> str:
    """The model an adapted model's adaptations started from, in words."""
    if (meta.extra.get(EARLIER_KEY) or {}).get("chain"):
        return "the model its first adaptation started from"
    source = meta.extra["adaptation"].get("source_model") or {}
    if not source.get("location") or source["location"] == SHIPPED:
        return "the shipped model (no --model)"
    return f"the model it was adapted from ({source.get('model_id')}, {source['location']})"


def leave_out_site(folds: pd.DataFrame, site_sha256: Mapping[str, str]) -> tuple[pd.DataFrame, int]:
    """The source dataset's folds (with each image's ``sha256``, as the manifest has it) without the site's images, and
    how many site images were in its val fold (left out of the source images the OOD and orientation checks are
    refitted on).

    Raises:
        DataError: site images in the official test split or the train fold (`REFUSED_FOLDS`): how many, one of them.
    """
    shared = folds[folds["sha256"].isin(set(site_sha256.values()))]
    for fold, what in REFUSED_FOLDS.items():
        hashes = set(shared.loc[shared["fold"] == fold, "sha256"])
        paths = [path for path, sha in site_sha256.items() if sha in hashes]
        if paths:
            raise DataError(f"{len(paths)} site images are images of {what} (e.g. {paths[0]}): leave them out of "
                            "--data")
    hashes = set(shared["sha256"])
    return folds[~folds["sha256"].isin(hashes)], sum(sha in hashes for sha in site_sha256.values())
