"""Issue 22 item 4: how saturated are a model's scores, and how well does its ranking survive acquisition shift?
Measured on each model's own val fold (which decides) and on a second site (reported only).

    python bench/bench_robust.py --model RUN_OR_MODEL_DIR [--model ...] [--shipped] \
        --dataset ../shared/data/chest_xray [--site ../shared/data/nih_sample] --out bench/results/robust.jsonl

Per model, one JSON line: on the val fold (the split the model's config defines) the clean ROC-AUC, log-loss of the
raw P(pneumonia) and share of saturated scores (P < 0.01 or > 0.99), then the same under each corruption of
`CORRUPTIONS` applied at one fixed severity to the preprocessed 224 px image (markers already in-painted), and their
mean ("shifted AUC"); on the site, ROC-AUC, the median P(pneumonia) of its normal images, the saturated share and the
OOD share. Resumable: a model already in the output file is skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.metrics import log_loss, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, machine

from pneumo.config import from_dict
from pneumo.data.cache import image_cache
from pneumo.data.manifest import resolve_root
from pneumo.data.splits import folds_for, labels
from pneumo.evaluate.scoring import score_labelled
from pneumo.infer.predictor import Predictor
from pneumo.models.scores import p_pneumonia


def _pil(fn):
    return lambda img: np.asarray(fn(Image.fromarray(img)))


def _jpeg(img: Image.Image, quality: int = 10) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def _noise(img: np.ndarray, std: float = 0.08) -> np.ndarray:
    rng = np.random.default_rng(int(img[::16, ::16].sum()))  # fixed per image, the same for every model
    return np.clip(img / 255 + rng.normal(0, std, img.shape), 0, 1).__mul__(255).round().astype(np.uint8)


def _gamma(img: np.ndarray, g: float) -> np.ndarray:
    return np.clip(255 * (img / 255) ** g, 0, 255).round().astype(np.uint8)


def _contrast(img: np.ndarray, c: float = 0.5) -> np.ndarray:
    m = img.mean()
    return np.clip((img - m) * c + m, 0, 255).round().astype(np.uint8)


def _collimate(img: np.ndarray, f: float = 0.15) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    a, b = round(h * f), round(w * f)
    out[a:h - a, b:w - b] = img[a:h - a, b:w - b]
    return out


# one fixed severity each, at or beyond the strongest training augmentation of the study's rows
CORRUPTIONS = {
    "lowres72": _pil(lambda im: im.resize((72, 72), Image.BOX).resize(im.size, Image.BILINEAR)),
    "jpeg10": _pil(_jpeg),
    "blur2": _pil(lambda im: im.filter(ImageFilter.GaussianBlur(2))),
    "noise0.08": _noise,
    "gamma0.5": lambda img: _gamma(img, 0.5),
    "gamma2": lambda img: _gamma(img, 2.0),
    "contrast0.5": _contrast,
    "rotate20": _pil(lambda im: im.rotate(20, resample=Image.BILINEAR)),
    "collimate0.15": _collimate,
}


def summary(y: np.ndarray, p: np.ndarray) -> dict:
    return {"auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))),
            "saturated": float(np.mean((p < 0.01) | (p > 0.99)))}


def logits_of(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    return np.concatenate([predictor.logits(images[i:i + 64]) for i in range(0, len(images), 64)])


_val_cache: dict = {}
_site_cache: dict = {}


def val_fold(predictor: Predictor, dataset: str) -> tuple[np.ndarray, np.ndarray, int]:
    cfg = from_dict(predictor.meta.config)
    cfg.data.root = str(resolve_root(dataset))
    key = (cfg.data.split_seed, cfg.data.val_fraction)
    if key not in _val_cache:
        folds = folds_for(cfg)
        val = folds[folds["fold"] == "val"].reset_index(drop=True)
        _val_cache[key] = (np.asarray(image_cache(cfg, val).images), labels(val, "binary"))
    return (*_val_cache[key], cfg.data.split_seed)


def measure(model: str | None, dataset: str, site: str | None) -> dict:
    predictor = Predictor(model)
    images, y, split_seed = val_fold(predictor, dataset)
    row: dict = {"model": model or "shipped", "model_id": predictor.model_id, "split_seed": split_seed,
                 "val_n": len(y), "val": summary(y, p_pneumonia(logits_of(predictor, images)))}
    for name, fn in CORRUPTIONS.items():
        shifted = np.stack([fn(img) for img in images])
        row[name] = summary(y, p_pneumonia(logits_of(predictor, shifted)))
    row["shifted_auc"] = float(np.mean([row[name]["auc"] for name in CORRUPTIONS]))
    row["shifted_log_loss"] = float(np.mean([row[name]["log_loss"] for name in CORRUPTIONS]))
    if site:
        if site not in _site_cache:
            ys, _, _, _, prepared, _ = score_labelled([predictor], site)
            _site_cache[site] = (ys, prepared)
        ys, prepared = _site_cache[site]
        logits, features = [], []
        for i in range(0, len(prepared), 64):
            lg, ft = predictor.outputs(prepared[i:i + 64])
            logits.append(lg)
            features.append(ft)
        p = p_pneumonia(np.concatenate(logits))
        row["site"] = {**summary(ys, p), "n": len(ys), "median_p_normal": float(np.median(p[ys == 0]))}
        if predictor.ood is not None and features[0] is not None:
            scores = predictor.ood.scores(np.concatenate(features))
            row["site"]["ood_share"] = float(np.mean(scores > predictor.ood.threshold))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="a run or model folder (repeatable)")
    parser.add_argument("--shipped", action="store_true", help="also the shipped default model")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--site", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    done = {json.loads(line)["model"] for line in out.read_text().splitlines()} if out.is_file() else set()
    models = ([None] if args.shipped else []) + args.model
    for model in models:
        if (model or "shipped") in done:
            continue
        start = time.perf_counter()
        row = measure(model, args.dataset, args.site)
        row.update(wall_s=round(time.perf_counter() - start, 1), commit=commit(), machine=machine())
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("model", "shifted_auc")} | {"val_auc": row["val"]["auc"]}), flush=True)


if __name__ == "__main__":
    main()
