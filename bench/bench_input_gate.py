"""The input gate (`pneumo.data.gate.check_radiograph`) over every image of the dataset: how many it refuses (must be
0) and how close the real radiographs come to each threshold.

    python bench/bench_input_gate.py --data ../shared/data/chest_xray [--target 224]

Each image is decoded as `pneumo predict` decodes it (``load_image(..., target)``; ``--target 0`` = full resolution)
and gated. The margins (smallest short side, largest aspect ratio, smallest percentile spread, smallest content
share) say how much room the thresholds leave.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import pandas as pd
from common import record

from pneumo.data import gate
from pneumo.data.decode import load_image
from pneumo.data.gate import check_radiograph
from pneumo.errors import InputError


def margins(gray: np.ndarray) -> dict[str, float]:
    """The quantities the gate compares with its thresholds, for one image."""
    height, width = gray.shape
    step = max(1, math.ceil(max(height, width) / gate._GATE_SIDE))
    view = gray[::step, ::step]
    low, high = np.percentile(view, [1, 99])
    return {"short_side": min(height, width), "aspect": max(height, width) / min(height, width),
            "spread": float(high - low), "content": gate._content_share(view)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--target", type=int, default=224, help="decode target (0: full resolution)")
    args = parser.parse_args()
    root = Path(args.data)
    meta = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    rows, refused = [], []
    start = time.perf_counter()
    for rel, split in zip(meta["path"], meta["split"]):
        gray = load_image((root / rel).read_bytes(), target=args.target or None)
        try:
            check_radiograph(gray)
        except InputError as exc:
            refused.append(f"{rel}: {exc}")
        rows.append({"split": split, **margins(gray)})
    seconds = time.perf_counter() - start
    table = pd.DataFrame(rows)
    per_split = {split: {"images": len(part), "refused": sum(r.startswith(f"{split}/") for r in refused)}
                 for split, part in table.groupby("split")}
    record("input_gate", {
        "target": args.target, "images": len(meta), "refused": len(refused), "refused_examples": refused[:20],
        "per_split": per_split, "seconds": round(seconds, 1),
        "thresholds": {"MIN_SIDE": gate.MIN_SIDE, "MAX_ASPECT": gate.MAX_ASPECT, "MIN_SPREAD": gate.MIN_SPREAD,
                       "MIN_CONTENT": gate.MIN_CONTENT, "UNIFORM_RANGE": gate.UNIFORM_RANGE},
        "closest": {"short_side_min": int(table["short_side"].min()), "aspect_max": round(table["aspect"].max(), 2),
                    "spread_min": table["spread"].min(), "content_min": round(table["content"].min(), 3),
                    "content_p1": round(float(table["content"].quantile(0.01)), 3)},
    })


if __name__ == "__main__":
    main()
