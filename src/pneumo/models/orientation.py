"""The orientation and photometric check: a small multinomial logistic head on the model's pooled features that tells
an upright chest X-ray from the same image inverted, rotated 90/180/270 degrees or flipped upside down (issue 23,
finding 5). It is learned from the training images with these transforms applied synthetically (`pneumo ood fit`)
and stored next to the checkpoint as ``<stem>.orient.safetensors``, named with its SHA-256 in the sidecar's
``orientation`` entry. An image whose P(upright) is below the threshold gets no verdict: the smallest threshold that
still refuses 99.5 % of each transform of the validation images, at most the 1st percentile of the untransformed ones
(so at most about 1 % false refusals on validation).

Rotating by 90 degrees commutes with the square resize of the preprocessing (``squash``) and inversion with any
resize, so the transforms are applied to the preprocessed S x S image."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.errors import ModelError
from pneumo.models.ood import refuse_orphan
from pneumo.models.scores import softmax
from pneumo.models.tensorfile import write_safetensors

TRANSFORMS = ("upright", "inverted", "rotated 90°", "rotated 180°", "rotated 270°", "upside down")
SUFFIX = ".orient.safetensors"
FALSE_REFUSAL_PERCENTILE = 1.0  # the threshold is never above this percentile of upright val images
CATCH_PERCENTILE = 99.5  # ... and as low as refusing this share of every transform on val allows


def transform(images: np.ndarray, name: str) -> np.ndarray:
    """One of `TRANSFORMS` applied to uint8 images (N, S, S)."""
    if name == "upright":
        return images
    if name == "inverted":
        return 255 - images
    if name == "upside down":
        return np.ascontiguousarray(images[:, ::-1, :])
    turns = {"rotated 90°": 1, "rotated 180°": 2, "rotated 270°": 3}.get(name)
    if turns is None:
        raise ModelError(f"unknown orientation transform {name!r}; known: {', '.join(TRANSFORMS)}")
    return np.ascontiguousarray(np.rot90(images, turns, axes=(1, 2)))


@dataclass
class OrientationHead:
    """``weight`` (K, F), ``bias`` (K,), feature ``mean`` and ``scale`` (F,); refuses below ``threshold``."""

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    threshold: float
    classes: tuple[str, ...] = TRANSFORMS

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.weight.T.astype(np.float64)
                       + self.bias)

    def refusals(self, features: np.ndarray) -> list[str | None]:
        """Per image None (upright) or the reason it is refused."""
        probs = self.probabilities(features)
        upright = probs[:, self.classes.index("upright")]
        out: list[str | None] = []
        for p, row in zip(upright, probs, strict=True):
            if p >= self.threshold:
                out.append(None)
                continue
            order = [i for i in np.argsort(-row) if self.classes[i] != "upright"]
            out.append(f"the image looks {self.classes[order[0]]} (P {row[order[0]]:.2f}; upright {p:.2f}): send it "
                       "as a frontal chest X-ray, upright, not inverted")
        return out


def fit_orientation(features: dict[str, np.ndarray], val: dict[str, np.ndarray], *,
                    seed: int = 0) -> tuple[OrientationHead, dict[str, float]]:
    """Fit on ``{transform: (N, F) features}`` of the same train images; the threshold from ``val``, the same
    (validation) images' features under every transform: the smallest P(upright) threshold that still refuses
    `CATCH_PERCENTILE` % of each transform, never above the `FALSE_REFUSAL_PERCENTILE`-th percentile of the upright
    ones (rule decided on val, BENCHMARKS.md "Orientation threshold decided on validation").

    Returns:
        The head and what the threshold does on ``val`` (refused share of each transform; the upright share is the
        false refusals).
    """
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([features[name] for name in TRANSFORMS]).astype(np.float64)
    y = np.concatenate([np.full(len(features[name]), i) for i, name in enumerate(TRANSFORMS)])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=0.1, max_iter=2000, random_state=seed).fit((x - mean) / scale, y)
    head = OrientationHead(weight=clf.coef_, bias=clf.intercept_, mean=mean, scale=scale, threshold=0.0)
    upright = {name: head.probabilities(val[name])[:, 0] for name in TRANSFORMS}
    cap = float(np.percentile(upright["upright"], FALSE_REFUSAL_PERCENTILE))
    head.threshold = min(cap, max(_refusing(upright[name], CATCH_PERCENTILE / 100) for name in TRANSFORMS[1:]))
    return head, {name: float(np.mean(p < head.threshold)) for name, p in upright.items()}


def _refusing(p_upright: np.ndarray, share: float) -> float:
    """The smallest threshold under which at least ``share`` of ``p_upright`` lie (refused: P(upright) < threshold)."""
    k = math.ceil(share * len(p_upright))  # this many must be refused
    return float(np.nextafter(np.sort(p_upright)[k - 1], np.inf)) if k else 0.0


def save_orientation(sidecar: str | os.PathLike, head: OrientationHead, **record: Any) -> dict:
    """Write ``<stem>.orient.safetensors``; returns the sidecar's ``orientation`` entry (the sidecar is not changed)."""
    from safetensors.numpy import save

    path = Path(sidecar).with_suffix(SUFFIX)
    data = save({k: np.ascontiguousarray(getattr(head, k), np.float32) for k in ("weight", "bias", "mean", "scale")},
                metadata={"format": "pneumo-orientation/1"})
    return {"file": path.name, "sha256": write_safetensors(path, data), "threshold": head.threshold,
            "classes": list(head.classes), "false_refusal_percentile": FALSE_REFUSAL_PERCENTILE,
            "catch_percentile": CATCH_PERCENTILE, **record}


def load_orientation(sidecar: str | os.PathLike, entry: Mapping[str, Any] | None) -> OrientationHead | None:
    """The head a sidecar's ``orientation`` entry names (None for none), verified against its SHA-256."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not entry:
        refuse_orphan(sidecar, SUFFIX, "orientation")
        return None
    name = str(entry.get("file", ""))
    if not name or Path(name).name != name:
        raise ModelError(f"{Path(sidecar).name}: bad orientation file name {name!r}")
    path = Path(sidecar).with_name(name)
    if not path.is_file():
        raise ModelError(f"{Path(sidecar).name} names the orientation check {name} but the file is missing: copy it "
                         "next to the checkpoint, export the model again (an older `pneumo export --out` left it "
                         "behind), or refit it with `pneumo ood fit`")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ModelError(f"checksum mismatch for {path}: the orientation check is corrupted or was replaced")
    try:
        t = load(data)
        head = OrientationHead(weight=t["weight"], bias=t["bias"], mean=t["mean"], scale=t["scale"],
                               threshold=float(entry["threshold"]), classes=tuple(entry.get("classes", TRANSFORMS)))
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot read the orientation check {path}: {exc}") from None
    k, f = head.weight.shape
    if head.bias.shape != (k,) or head.mean.shape != (f,) or head.scale.shape != (f,) or len(head.classes) != k \
            or "upright" not in head.classes or not 0.0 <= head.threshold <= 1.0:
        raise ModelError(f"{path}: the orientation check's shapes, classes or threshold do not fit together")
    return head
