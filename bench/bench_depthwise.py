"""Depthwise convolution forward + backward on the CPU, bf16 vs fp32 (channels-last), layer by layer: the measurement
behind `pneumo.models.runtime.depthwise_in_fp32`.

    python bench/bench_depthwise.py [--steps 5]

The shapes are EfficientNet-Lite0's depthwise layers at 224 px, batch 32 (the stride-2 ones as timm's "same" padding
feeds them: padded input, no padding in the convolution). Each row: milliseconds per forward + backward (gradients of
input and weight), and whether `slow_bf16_backward` sends the layer to fp32 when it trains.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record

from pneumo.models.runtime import slow_bf16_backward

# (channels, input side as the conv sees it, kernel, stride, padding)
LAYERS = [(32, 112, 3, 1, 1), (96, 113, 3, 2, 0), (144, 56, 3, 1, 1), (144, 59, 5, 2, 0), (240, 28, 5, 1, 2),
          (240, 29, 3, 2, 0), (480, 14, 3, 1, 1), (480, 14, 5, 1, 2), (672, 14, 5, 1, 2), (672, 17, 5, 2, 0),
          (1152, 7, 5, 1, 2), (1152, 7, 3, 1, 1)]


def time_layer(channels: int, side: int, kernel: int, stride: int, padding: int, dtype: torch.dtype,
               steps: int) -> float:
    """Milliseconds per forward + backward of one depthwise conv on a channels-last batch of 32."""
    x = torch.randn(32, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(channels, 1, kernel, kernel, dtype=dtype, requires_grad=True)

    def step() -> None:
        y = F.conv2d(x, w, stride=stride, padding=padding, groups=channels)
        torch.autograd.grad(y, (x, w), torch.ones_like(y))

    step()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for channels, side, kernel, stride, padding in LAYERS:
        fp32 = time_layer(channels, side, kernel, stride, padding, torch.float32, args.steps)
        bf16 = time_layer(channels, side, kernel, stride, padding, torch.bfloat16, args.steps)
        conv = nn.Conv2d(channels, channels, kernel, stride, padding, groups=channels)
        rows.append({"layer": f"{channels}ch {side}px k{kernel} s{stride}", "fp32_ms": round(fp32, 1),
                     "bf16_ms": round(bf16, 1), "bf16_over_fp32": round(bf16 / fp32, 2),
                     "fp32_when_training": slow_bf16_backward(conv)})
        print(rows[-1], flush=True)
    record("depthwise", {"threads": torch.get_num_threads(), "steps": args.steps, "layers": rows})


if __name__ == "__main__":
    main()
