"""The lung-field crop heuristic (`pneumo.data.crop`, ``data.crop=lungs``) over the images of one split: how often it
falls back to the central crop, per class (a fallback rate that differs by class makes the crop's geometry itself a class cue), how much of the
image its box keeps, and how long it takes.

    python bench/bench_lung_crop.py --data ../shared/data/chest_xray [--split val] [--n 200] [--sheet 24]

Images: the first ``--n`` images of the split (sorted by path, so NORMAL first; ``--split train`` takes original-resolution images
only, the 224 px copies have lost their aspect). Time is the `crop_box` call per decoded image (decoding excluded).
Writes ``bench/out/lung-crop-<split>.json`` and a contact sheet ``bench/out/lung-crop-<split>.png`` of the first
``--sheet`` images with their box (green: found, red: fallback).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, record

from pneumo.data.crop import crop_box
from pneumo.data.decode import load_image_file

TILE = 192


def tile(gray: np.ndarray, box: tuple[int, int, int, int], fallback: bool) -> np.ndarray:
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    top, left, h, w = box
    thick = max(2, max(gray.shape) // 150)
    cv2.rectangle(rgb, (left, top), (left + w - 1, top + h - 1), (0, 0, 255) if fallback else (0, 200, 0), thick)
    scale = TILE / max(gray.shape)
    small = cv2.resize(rgb, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((TILE, TILE, 3), np.uint8)
    y, x = (TILE - small.shape[0]) // 2, (TILE - small.shape[1]) // 2
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas


def sheet(tiles: list[np.ndarray], columns: int = 6) -> np.ndarray:
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    blank = np.zeros_like(tiles[0])
    return np.vstack([np.hstack(row + [blank] * (columns - len(row))) for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--sheet", type=int, default=24)
    args = parser.parse_args()
    meta = pd.read_csv(args.data / "manifest.csv", usecols=["path", "split", "source_kind"])
    rows = meta[(meta["split"] == args.split) & (meta["source_kind"] == "original")].sort_values("path")
    paths = rows["path"].tolist()[: args.n]
    fallbacks, areas, seconds, tiles = [], [], [], []
    for rel in paths:
        gray = load_image_file(args.data / rel)
        start = time.perf_counter()
        box, fallback = crop_box(gray, "lungs")
        seconds.append(time.perf_counter() - start)
        fallbacks.append(fallback)
        areas.append(box[2] * box[3] / gray.size)
        if len(tiles) < args.sheet:
            tiles.append(tile(gray, box, fallback))
    OUT.mkdir(parents=True, exist_ok=True)
    png = OUT / f"lung-crop-{args.split}.png"
    cv2.imwrite(str(png), sheet(tiles))
    labels = np.array([Path(p).parent.name for p in paths])
    per_class = {str(c): float(np.mean(np.array(fallbacks)[labels == c])) for c in sorted(set(labels))}
    print(f"{len(paths)} {args.split} images: fallback {np.mean(fallbacks):.1%} ({sum(fallbacks)}; "
          + ", ".join(f"{c} {r:.1%}" for c, r in per_class.items()) + f"), mean box area {np.mean(areas):.1%} of the "
          f"image, {1000 * np.mean(seconds):.2f} ms/image; sheet {png}", flush=True)
    record(f"lung-crop-{args.split}", {"images": len(paths), "fallback_rate": float(np.mean(fallbacks)),
                                       "fallbacks": int(sum(fallbacks)), "fallback_rate_per_class": per_class,
                                       "mean_box_area": float(np.mean(areas)),
                                       "ms_per_image": 1000 * float(np.mean(seconds)), "sheet": png.name,
                                       "fallback_paths": [p for p, f in zip(paths, fallbacks) if f]})


if __name__ == "__main__":
    main()
