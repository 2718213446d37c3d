"""Evaluated run folders for the leaderboard and selection tests: val and test logits of two Gaussian classes
``separation`` apart, through the real metrics (`evaluate_predictions`), written as ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pneumo.evaluate.report import evaluate_predictions


def make_run(root: Path, name: str, *, seed: int, separation: float = 1.5, test_separation: float | None = None,
             config: dict | None = None, training: dict | None = None) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    data = []
    for n, sep in ((200, separation), (150, separation if test_separation is None else test_separation)):
        y = rng.integers(0, 2, n)
        z = rng.normal(0, 1, (n, 2))
        z[np.arange(n), y] += sep
        data += [y, z]
    result = evaluate_predictions(*data, None, task="binary", class_names=["NORMAL", "PNEUMONIA"],
                                  policy="sensitivity:0.95", n_bootstrap=100, seed=0, ece_bins=15)
    result.update(name=name, wall_time_s=754.2, config=config or {"train": {"seed": seed}})
    if training:
        result["training"] = training
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(result))
    return run_dir, result
