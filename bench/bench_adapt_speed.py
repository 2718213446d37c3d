"""Fine-tuning speed of `pneumo.adapt.finetune` with and without the depthwise convolutions in fp32 inside the bf16
step (the shipped model, 192 random 224 px images, one epoch, batch 32, alternating twice in one process).

    python bench/bench_adapt_speed.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import commit, machine

import pneumo.adapt.finetune as F
from pneumo.infer.predictor import Predictor


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__).parse_args()  # --help says what it does instead of starting it
    p = Predictor(None)
    x = np.random.default_rng(0).integers(0, 255, (192, 224, 224), dtype=np.uint8)
    y = np.r_[np.zeros(96, int), np.ones(96, int)]
    real = F.depthwise_in_fp32
    print(f"commit {commit()}, {machine()}")
    for _ in range(2):
        for depthwise_fp32 in (False, True):
            F.depthwise_in_fp32 = real if depthwise_fp32 else (lambda *a: 0)
            start = time.perf_counter()
            F.finetune(p.torch_model, x, y, cfg=F.AdaptConfig(epochs=1), device=torch.device("cpu"))
            rate = len(x) / (time.perf_counter() - start)
            print(f"{'depthwise fp32' if depthwise_fp32 else 'all bf16':>15}: {rate:.1f} img/s", flush=True)
    F.depthwise_in_fp32 = real


if __name__ == "__main__":
    main()
