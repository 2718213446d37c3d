"""A site's images run through the model once (`pneumo site check`): per scored image its P(pneumonia), positive
call and OOD score, per decoded image its properties, per failed image the stage and error, and the byte-identical
copies, measured once."""

from __future__ import annotations

import hashlib
import math
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pneumo.adapt.site_report import header_properties, pixel_properties
from pneumo.data.decode import load_image
from pneumo.data.gate import check_radiograph
from pneumo.errors import InputError, NotAssessed, PneumoError
from pneumo.infer.predictor import Predictor

BATCH = 32


@dataclass
class Scored:
    """A set of images run through the model: per scored image its path, P(pneumonia), positive call, OOD score;
    per decoded image its properties; per failed image its path, stage (``decode``; ``refused``: `NotAssessed`, a
    lateral or pixel-less DICOM; ``gate``) and error."""

    paths: list[str] = field(default_factory=list)
    p_pneumonia: list[float] = field(default_factory=list)
    positive: list[bool] = field(default_factory=list)
    ood_scores: list[float] = field(default_factory=list)
    ood_flags: list[bool] = field(default_factory=list)
    turned: list[bool] = field(default_factory=list)  # refused by the orientation check (no verdict, as in predict)
    properties: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    copies: dict[str, str] = field(default_factory=dict)  # a byte-identical copy -> the file measured in its place

    @property
    def n(self) -> int:
        return len(self.paths)

    def count(self, stage: str) -> int:
        return sum(f["stage"] == stage for f in self.failed)

    def refused_kinds(self) -> dict[str, int]:
        """The refused images by what they are (`NotAssessed.kind`: "a lateral film", ...; a DICOM audit: 2 laterals,
        a FOR PROCESSING image and 2 reports were "5 refused as not frontal films")."""
        return dict(Counter(f["kind"] for f in self.failed if f["stage"] == "refused").most_common())


def score_images(predictor: Predictor, items: list[tuple[str, Callable[[], bytes]]], desc: str = "images") -> Scored:
    """Decode (at the model's size), describe, gate and score each (name, read bytes) item, in batches; a file with
    the bytes of one before it is listed in ``copies``, not measured again. A progress bar (``desc``) on a terminal
    (a site check of 2,000 images said one line in a minute: a volume audit)."""
    from tqdm import tqdm

    scored, names, batch, seen = Scored(), [], [], {}

    def flush() -> None:
        if not batch:
            return
        logits, features = predictor.outputs(np.stack(batch))
        results = predictor.predictions(logits, features)
        # the orientation check's own refusals, also of images out of distribution (a rotated set, all of them OOD,
        # read "refused by the orientation check: 0": a site-check audit)
        turned = (predictor.orientation.refusals(features) if predictor.orientation is not None and features is not None
                  else [None] * len(results))
        for name, result, why in zip(names, results, turned, strict=True):
            scored.paths.append(name)
            scored.p_pneumonia.append(result.p_pneumonia)
            scored.positive.append(result.p_pneumonia >= result.threshold)  # the decision, assessed or not
            scored.turned.append(why is not None and math.isfinite(result.p_pneumonia))
            if result.ood is not None:  # a non-finite score (None) is as far out as it gets
                scored.ood_scores.append(math.inf if result.ood_score is None else result.ood_score)
                scored.ood_flags.append(result.ood)
        names.clear()
        batch.clear()

    for name, read in tqdm(items, desc=desc, unit="img", disable=not sys.stderr.isatty()):
        try:
            data = read()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:  # measured once (not decoded again): 80 copies of one film are one image (a review)
                scored.copies[name] = seen[digest]
                continue
            gray = load_image(data, target=predictor.size)  # the path is in its own field: no name prefix
        except (PneumoError, OSError) as exc:
            refused = isinstance(exc, NotAssessed)  # a lateral film keeps its view in the site's view counts
            view = header_properties(data).get("ViewPosition") if refused else None
            scored.failed.append({"path": name, "stage": "refused" if refused else "decode",
                                  "error": str(exc).splitlines()[0], **({"view": view} if view else {}),
                                  **({"kind": exc.kind} if refused else {})})
            continue
        seen[digest] = name
        scored.properties.append({"path": name, "sha256": digest, **header_properties(data), **pixel_properties(gray)})
        try:
            check_radiograph(gray)
        except InputError as exc:
            scored.failed.append({"path": name, "stage": "gate", "error": str(exc)})
            continue
        names.append(name)
        batch.append(predictor.preprocess(gray))
        if len(batch) == BATCH:
            flush()
    flush()
    return scored
