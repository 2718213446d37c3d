"""The share of the test fold a model's out-of-distribution statistics flag, and the images its orientation check
refuses: what `pneumo evaluate` reports. (Fitting them is training's: `pneumo.train.ood`.)"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumo.models.ood import load_ood
from pneumo.models.orientation import load_orientation
from pneumo.train.probe import extract_features


def test_ood(sidecar: Path, entry: Mapping[str, Any] | None, model: torch.nn.Module, images: np.ndarray,
             *, device: torch.device, batch_size: int = 64, features: np.ndarray | None = None
             ) -> tuple[dict | None, np.ndarray | None]:
    """(summary, per-image scores) of ``images`` (the test fold, uint8 (N, S, S)) against the statistics the
    sidecar's ``ood`` entry names: how many are flagged (`OodStats.flags`); (None, None) without statistics.
    ``features``: the images' fp32 pooled features when the caller has them already (else they are extracted)."""
    stats = load_ood(sidecar, entry)
    if stats is None or len(images) == 0:
        return None, None
    if features is None:
        features = extract_features(model, images, batch_size=batch_size, device=device, amp=False,
                                    desc="ood test features")
    scores = stats.scores(features)
    flagged = int(stats.flags(scores).sum())
    return ({"n": len(scores), "n_flagged": flagged, "share_flagged": flagged / len(scores),
             "threshold": stats.threshold, "percentile": stats.percentile, "method": stats.method,
             "median_score": float(np.median(scores))}, scores)


def test_orientation(sidecar: Path, entry: Mapping[str, Any] | None, features: np.ndarray | None) -> np.ndarray | None:
    """Per test image, True where the model's orientation check refuses it (as `pneumo predict` withholds it); None
    for a model without the check (or no images)."""
    check = load_orientation(sidecar, entry)
    if check is None or features is None or len(features) == 0:
        return None
    return np.array([reason is not None for reason in check.refusals(features)])


def test_checks(sidecar: Path, meta: Any, model: torch.nn.Module, images: np.ndarray, *, device: torch.device,
                features: np.ndarray | None = None) -> tuple[dict | None, np.ndarray | None, np.ndarray | None]:
    """`test_ood`'s summary and scores and `test_orientation`'s refusals of the test fold, from one fp32 feature pass
    (``features`` when the caller has them already)."""
    orientation = meta.extra.get("orientation")
    if features is None and (meta.ood or orientation) and len(images):
        features = extract_features(model, images, batch_size=64, device=device, amp=False, desc="test features")
    summary, scores = test_ood(sidecar, meta.ood, model, images, device=device, features=features)
    return summary, scores, test_orientation(sidecar, orientation, features)


def ood_note(result: dict) -> str:
    """A short phrase for report subtitles ("" when the run has no OOD statistics)."""
    ood, turned = result.get("ood"), (result.get("orientation") or {}).get("n_refused")
    if not ood:
        return ""
    none = (result.get("not_assessed") or {}).get("n")  # the orientation check's refusals too (a training audit)
    return (f" · out-of-distribution flags on test {ood['n_flagged']}/{ood['n']} ({100 * ood['share_flagged']:.1f} %, "
            f"threshold = val p{ood['percentile']:g})" + (f", {turned} refused by the orientation check; {none} "
                                                          "without a verdict in all" if turned else ""))
