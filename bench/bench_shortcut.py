"""The shortcut indicator of one or more models on the same images: Grad-CAM share on detected markers/text and
outside the lung field, and the verdict (`pneumo.explain.shortcut`).

    python bench/bench_shortcut.py --data ../shared/data/chest_xray --model default --model runs/x [--split test] [--n 96]

Images: a seeded, class-stratified subsample of ``--n`` images of the official ``test`` split, or of the Kaggle ``val``
folder (16 images). Markers are detected on each image as it comes (no in-painting), so a model trained on in-painted
inputs is measured on where the markers were; every model sees its own preprocessing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record

from pneumo.data.decode import load_image_file
from pneumo.data.preprocess import prepare
from pneumo.explain.cam import cam_maps
from pneumo.explain.shortcut import shortcut_stats
from pneumo.infer.predictor import Predictor


def pick(data: Path, split: str, n: int, seed: int) -> pd.DataFrame:
    files = sorted((data / split).glob("*/*.jpeg"))
    df = pd.DataFrame({"path": files, "y": [int(f.parent.name == "PNEUMONIA") for f in files]})
    per_class = max(1, n // 2)
    parts = [g.sample(min(len(g), per_class), random_state=seed) for _, g in df.groupby("y")]
    return pd.concat(parts).reset_index(drop=True)


def measure(model: str, df: pd.DataFrame, grays: list[np.ndarray]) -> dict:
    predictor = Predictor(model, backend="torch")
    net = predictor.torch_model
    size, policy = predictor.size, predictor.meta.resize_policy
    prepared = np.stack([predictor.preprocess(g) for g in grays])
    raw = np.stack([prepare(g, size=size, policy=policy, crop=predictor.meta.crop) for g in grays])  # markers
    toward = np.array([p.label != predictor.classes[0] for p in predictor.predict_prepared(prepared)])
    maps = cam_maps(net, prepared, toward_pneumonia=toward)  # evidence for the predicted label
    stats = shortcut_stats(maps, df["y"].to_numpy(), predictor.classes, images=raw)
    return {"model": model, "markers": predictor.meta.markers, "verdict": stats["verdict"],
            "all": stats["all"], "per_class": stats["per_class"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--model", action="append", required=True, help="run folder, checkpoint or 'default'")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    df = pick(args.data, args.split, args.n, args.seed)
    grays = [load_image_file(p) for p in df["path"]]
    results = []
    for model in args.model:
        results.append(measure(None if model == "default" else model, df, grays))
        results[-1]["model"] = model
        v = results[-1]["verdict"]
        print(f"{model}: flagged={v['flagged']} markers {v['markers_vs_area']:.2f}x "
              f"(on {v['markers_images']} images), peak on markers {v['peak_on_markers']:.2f} = "
              f"{v['peak_on_markers_vs_chance']:.1f}x chance, outside lungs {v['outside_lungs_vs_area']:.2f}x", flush=True)
    record(f"shortcut-{args.split}", {"images": len(df), "results": json.loads(json.dumps(results, default=float))})


if __name__ == "__main__":
    main()
