"""How many images must a hospital label? Site adaptation on a second site (default: nih_sample), split by patient.

For each draw (seed), the site's patients are split once into a pool (60 %) and held-out patients (40 %). For each
size N, whole patients are drawn from the pool until N images, the model (default: the shipped one) is fine-tuned on
them with the `pneumo adapt` recipe (final model only: no cross-fitting, the held-out patients measure it), and the
held-out patients are scored: ROC-AUC with a bootstrap CI, also on the ``pneumonia_only`` subset (held-out normals vs
held-out pneumonia-only positives) and the radiologist-labelled subset (truth = ``radiologist_airspace_opacity``).
The source hospital's official test split is scored too (reported only). N = 0 is the model as shipped.

``--full N`` instead runs the whole `pneumo adapt` (cross-fitting, operating point, new model folder) on N pool
images of each draw and measures the adapted operating point (sensitivity, specificity with exact CIs) on the
held-out patients: the issue's target row.

Rows are appended to a JSONL file as they finish (re-running skips rows already there: resumable).

    python bench/bench_adapt.py --data ../shared/data/nih_sample --dataset ../shared/data/chest_xray \
        --sizes 25,50,100,200,400 --draws 3 --out bench/results/adapt_curve.jsonl
    python bench/bench_adapt.py --data ../shared/data/nih_sample --full 200 --draws 1 --out bench/results/adapt_full.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import commit, machine

from pneumo.adapt.finetune import AdaptConfig, finetune
from pneumo.adapt.run import adapt, at_threshold, score
from pneumo.adapt.sources import load_source, source_config
from pneumo.allocator import hold_freed_memory
from pneumo.config import AugmentConfig, from_dict
from pneumo.data.decode import load_image_file
from pneumo.evaluate.calibration import p_pneumonia
from pneumo.evaluate.metrics import bootstrap_cis
from pneumo.infer.predictor import Predictor
from pneumo.train.loop import step_seed

log = logging.getLogger("bench_adapt")


def split_patients(manifest: pd.DataFrame, seed: int, held_out: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    patients = np.array(sorted(manifest["patient_id"].unique()))
    rng.shuffle(patients)
    test = set(patients[: round(held_out * len(patients))])
    mask = manifest["patient_id"].isin(test)
    return manifest[~mask], manifest[mask]


def draw_patients(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Whole patients in a seeded order until n images (both classes guaranteed by re-drawing)."""
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        order = rng.permutation(np.array(sorted(pool["patient_id"].unique())))
        sizes = pool.groupby("patient_id").size()
        chosen = order[: int(np.searchsorted(np.cumsum(sizes[order].to_numpy()), n) + 1)]
        picked = pool[pool["patient_id"].isin(set(chosen))]
        if picked["label"].nunique() == 2:
            return picked
    raise RuntimeError("could not draw both classes")


def auc_ci(y: np.ndarray, p: np.ndarray, seed: int) -> dict:
    if len(np.unique(y)) < 2:
        return {"n": len(y), "auc": None, "ci": None}
    from sklearn.metrics import roc_auc_score

    ci = bootstrap_cis(y, p, 0.5, n_resamples=1000, seed=seed)["roc_auc"]
    return {"n": len(y), "n_pos": int(y.sum()), "auc": float(roc_auc_score(y, p)), "ci": [float(c) for c in ci]}


def measure(p: np.ndarray, test: pd.DataFrame, seed: int) -> dict:
    y = (test["label"] == "PNEUMONIA").to_numpy(np.int64)
    only = ((test["label"] == "NORMAL") | (test["pneumonia_only"] == "true")).to_numpy()
    rad = test["radiologist_airspace_opacity"].isin(["YES", "NO"]).to_numpy()
    y_rad = (test["radiologist_airspace_opacity"] == "YES").to_numpy(np.int64)
    return {"held_out": auc_ci(y, p, seed), "pneumonia_only": auc_ci(y[only], p[only], seed),
            "radiologist": auc_ci(y_rad[rad], p[rad], seed)}


def main() -> None:
    hold_freed_memory()  # as `pneumo adapt` runs (cli.HOLD_MEMORY); without it the 300-image adapt took 910 s, not 740
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the second site: a folder with manifest.csv (nih_sample)")
    parser.add_argument("--dataset", help="the source training dataset (default: $PNEUMO_DATA)")
    parser.add_argument("--model", help="model to adapt (default: the shipped one)")
    parser.add_argument("--sizes", default="25,50,100,200,400")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--held-out", type=float, default=0.4)
    parser.add_argument("--full", type=int, default=0, help="run the whole pneumo adapt on N images instead")
    parser.add_argument("--rehearsal", type=float, default=None,
                        help="source images per site image and epoch (default: AdaptConfig's)")
    parser.add_argument("--rehearsal-min", type=int, default=None,
                        help="at least this many source images per epoch (default: AdaptConfig's)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: AdaptConfig's)")
    parser.add_argument("--augment", choices=["model", "defaults"], default="defaults",
                        help="fine-tuning augmentation (+ flips): AugmentConfig's defaults, as `pneumo adapt` does, or "
                             "the model's own training one (what `pneumo adapt` did until the second round)")
    parser.add_argument("--workdir", default="/tmp/bench_adapt")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = AdaptConfig(**{k: v for k, v in (("rehearsal", args.rehearsal), ("rehearsal_min", args.rehearsal_min),
                                           ("lr", args.lr)) if v is not None})
    done = {(r["kind"], r["draw"], r["n"], r.get("rehearsal", 2.0), r.get("rehearsal_min", 0),
             r.get("augment", "defaults"), r.get("lr", 3e-4), r.get("frozen_stages"))
            for r in map(json.loads, out.read_text().splitlines())} if out.exists() else set()
    root = Path(args.data)
    manifest = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    predictor = Predictor(args.model, backend="torch")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_all = np.stack([predictor.preprocess(load_image_file(root / p, target=predictor.size))
                      for p in manifest["path"]])
    y_all = (manifest["label"] == "PNEUMONIA").to_numpy(np.int64)
    source = load_source(predictor.meta, args.dataset, pool=cfg.rehearsal_pool, seed=cfg.seed)
    augment_cfg = from_dict(source_config(predictor.meta)).train.augment if args.augment == "model" else AugmentConfig()
    y_src = (source.test_y != 0).astype(np.int64)
    info = {"commit": commit(), "machine": machine()}
    for draw in range(args.draws):
        pool, test = split_patients(manifest, draw, args.held_out)
        test_rows = test.index.to_numpy()
        sizes = [args.full] if args.full else [0, *map(int, args.sizes.split(","))]
        for n in sizes:
            kind = "full" if args.full else "curve"
            if (kind, draw, n, cfg.rehearsal, cfg.rehearsal_min, args.augment, cfg.lr, None) in done:
                continue
            start = time.perf_counter()
            picked = draw_patients(pool, n, seed=1000 * draw + n) if n else pool.iloc[:0]
            row = {"kind": kind, "draw": draw, "n": n, "rehearsal": cfg.rehearsal, "rehearsal_min": cfg.rehearsal_min,
                   "augment": args.augment, "lr": cfg.lr,
                   "n_images": len(picked),
                   "n_patients": int(picked["patient_id"].nunique()), "n_pos": int((picked["label"] == "PNEUMONIA")
                                                                                   .sum()), **info}
            if kind == "full":
                folder = Path(args.workdir) / f"full-d{draw}-n{n}"
                csv = Path(args.workdir) / f"full-d{draw}-n{n}.csv"
                csv.parent.mkdir(parents=True, exist_ok=True)
                picked.assign(path=[str((root / p).absolute()) for p in picked["path"]])[
                    ["path", "label", "patient_id"]].to_csv(csv, index=False)
                record = adapt(args.model, csv, folder, dataset=args.dataset, cfg=cfg)
                adapted = Predictor(folder, backend="torch")
                p_test = p_pneumonia(np.concatenate([adapted.logits(x_all[test_rows][i:i + 64])
                                                     for i in range(0, len(test_rows), 64)]))
                y_test = y_all[test_rows]
                row["at_operating_point"] = at_threshold(y_test, p_test, adapted.threshold, n_bootstrap=1000,
                                                         seed=draw)
                row["crossfit"] = record["local"]["after"]["metrics"]
                row["ranking"] = record["local"]["ranking"]  # cross-fitted AUC gain over the source model, paired CI
                row["operating_point"] = record["operating_point"]
                row["source_test"] = record["source_site"]
                row["adapt_seconds"] = record["seconds"]
            else:
                model = predictor.torch_model
                if n:
                    rows = picked.index.to_numpy()
                    model = finetune(predictor.torch_model, x_all[rows], y_all[rows], cfg=cfg,
                                     source_x=source.pool_x, source_y=source.pool_y, augment_cfg=augment_cfg,
                                     device=device, seed=step_seed(cfg.seed, 0))
                p_test = p_pneumonia(score(model, x_all[test_rows], device))
                row["source_test"] = auc_ci(y_src, p_pneumonia(score(model, source.test_x, device)), draw)
                if source.val_x is not None:  # the source's val fold: what may decide the rehearsal ratio
                    row["source_val"] = auc_ci((source.val_y != 0).astype(np.int64),
                                               p_pneumonia(score(model, source.val_x, device)), draw)
            row.update(measure(p_test, test, draw))
            row["seconds"] = round(time.perf_counter() - start, 1)
            with out.open("a") as f:
                f.write(json.dumps(row, default=float) + "\n")
            log.info("draw %d n %d: held-out AUC %.3f, source test AUC %s, %.0f s", draw, n,
                     row["held_out"]["auc"], row.get("source_test", {}).get("auc") if kind == "curve" else "-",
                     row["seconds"])


if __name__ == "__main__":
    main()
