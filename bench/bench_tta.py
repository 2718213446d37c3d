"""Test-time flip averaging for the shipped model (issue 22 item 4): decided on the model's val fold only, reported on
nih_sample (never used to decide).

Logits of each image and of its horizontal mirror are averaged (what `Predictor` does for a model whose sidecar says
``tta: true``). Paired bootstrap over the val images (1,000 resamples) of the change in ROC-AUC and in log-loss.

    python bench/bench_tta.py --dataset ../shared/data/chest_xray --site ../shared/data/nih_sample \
        --out bench/results/tta.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from common import commit, machine
from sklearn.metrics import roc_auc_score

from pneumo.adapt.sources import load_source
from pneumo.data.decode import load_image_file
from pneumo.evaluate.calibration import nll, p_pneumonia
from pneumo.infer.predictor import Predictor


def logits(predictor: Predictor, x: np.ndarray, flip: bool) -> np.ndarray:
    x = np.ascontiguousarray(x[..., ::-1]) if flip else x
    return np.concatenate([predictor.logits(x[i:i + 64]) for i in range(0, len(x), 64)])


def compare(y: np.ndarray, plain: np.ndarray, tta: np.ndarray, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {"n": len(y), "auc": [roc_auc_score(y, p_pneumonia(z)) for z in (plain, tta)],
           "nll": [nll(z, y) for z in (plain, tta)],
           "median_p_normal": [float(np.median(p_pneumonia(z)[y == 0])) for z in (plain, tta)]}
    deltas = []
    for _ in range(1000):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < 2:
            continue
        deltas.append((roc_auc_score(y[i], p_pneumonia(tta[i])) - roc_auc_score(y[i], p_pneumonia(plain[i])),
                       nll(tta[i], y[i]) - nll(plain[i], y[i])))
    d = np.array(deltas)
    out["delta_auc"] = [float(out["auc"][1] - out["auc"][0]), *np.percentile(d[:, 0], [2.5, 97.5]).tolist()]
    out["delta_nll"] = [float(out["nll"][1] - out["nll"][0]), *np.percentile(d[:, 1], [2.5, 97.5]).tolist()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="the Kermany dataset (default: $PNEUMO_DATA)")
    parser.add_argument("--site", required=True, help="nih_sample (reported only)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    predictor = Predictor(None, backend="torch")
    source = load_source(predictor.meta, args.dataset, pool=1, seed=0, n_val=10_000)
    y_val = (source.val_y != 0).astype(np.int64)
    rows = {"val": compare(y_val, logits(predictor, source.val_x, False), logits(predictor, source.val_x, True))}
    manifest = pd.read_csv(Path(args.site) / "manifest.csv", dtype=str, keep_default_na=False)
    x = np.stack([predictor.preprocess(load_image_file(Path(args.site) / p, target=predictor.size))
                  for p in manifest["path"]])
    y = (manifest["label"] == "PNEUMONIA").to_numpy(np.int64)
    rows["nih_sample (report only)"] = compare(y, logits(predictor, x, False), logits(predictor, x, True))
    result = {"commit": commit(), "machine": machine(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
