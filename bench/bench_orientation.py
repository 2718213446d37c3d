"""Issue 23, finding 5: the orientation check on the official test split: the share of images refused per synthetic
transform (caught) and of untransformed images (false refusals; target <= 1 %), for a model with an `orientation`
entry (`pneumo ood fit`). Transforms are applied to the preprocessed image (as in fitting) and, on a subset, to the
original before preprocessing (what a user sends), to check that both agree.

    python bench/bench_orientation.py --dataset ../shared/data/chest_xray [--model DIR_OR_JSON] [--originals 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record

from pneumo.config import from_dict
from pneumo.data.cache import image_cache
from pneumo.data.decode import load_image_file
from pneumo.data.manifest import resolve_root
from pneumo.data.splits import folds_for
from pneumo.infer.predictor import Predictor
from pneumo.models.orientation import TRANSFORMS, transform


def refused(predictor: Predictor, prepared: np.ndarray) -> np.ndarray:
    features = np.concatenate([predictor.outputs(prepared[i:i + 64])[1] for i in range(0, len(prepared), 64)])
    return np.array([r is not None for r in predictor.orientation.refusals(features)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--originals", type=int, default=100, help="test images also transformed before preprocessing")
    args = parser.parse_args()
    start = time.perf_counter()
    predictor = Predictor(args.model, backend="torch")
    if predictor.orientation is None:
        raise SystemExit("the model has no orientation check: run `pneumo ood fit --model ...` first")
    cfg = from_dict(predictor.meta.config)
    cfg.data.root = str(resolve_root(args.dataset))
    folds = folds_for(cfg)
    test = folds[folds["fold"] == "test"].reset_index(drop=True)
    images = np.asarray(image_cache(cfg, test).images)
    rows = {name: float(refused(predictor, transform(images, name)).mean()) for name in TRANSFORMS}
    pick = np.random.default_rng(0).permutation(len(test))[: args.originals]
    originals = [load_image_file(Path(cfg.data.root) / test["path"][i], target=predictor.size) for i in pick]
    on_originals = {}
    for name in TRANSFORMS:
        prepared = np.stack([predictor.preprocess(transform(g[None], name)[0]) for g in originals])
        on_originals[name] = float(refused(predictor, prepared).mean())
    result = {"n_test": len(test), "refused_share": rows, "n_originals": len(pick),
              "refused_share_transformed_before_preprocessing": on_originals,
              "threshold": predictor.orientation.threshold, "seconds": round(time.perf_counter() - start, 1)}
    record("orientation", result)


if __name__ == "__main__":
    main()
