"""Training and feature-extraction speed, fp32 vs the fast path (bf16 autocast + channels-last), in one run.

    python bench/bench_train_speed.py [--modes partial,finetune] [--size 224] [--batch 32] [--steps 6] [--compile]

Each mode builds the real model (`pneumo.train.run.build_model` of the preset, laid out by
`pneumo.train.run.training_layout`) and times the real optimizer step (`pneumo.train.loop.train_step`) on random
uint8 images: the pixel values do not change the arithmetic. Paths per mode (PATHS): fp32 contiguous
(``train.amp=false`` laid out contiguous, the code before the fast path), fp32 channels-last (the default on
a CPU without native bf16), and, on a CPU with native bf16, bf16 everywhere (the default there) and bf16 with the
slow-backward depthwise convolutions in fp32 (`pneumo.models.runtime.depthwise_in_fp32`, what `pneumo adapt` does;
the former ``train.depthwise_fp32`` study option). The first two steps of
each path are warm-up and not timed. Features: the probe's path (`fast_inference`, fp32; the `traced_*` key keeps its old name) vs eager bf16.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record

from pneumo.allocator import hold_freed_memory
from pneumo.config import load_config
from pneumo.data.preprocess import to_unit
from pneumo.models.fast import fast_inference
from pneumo.models.runtime import autocast, cpu_has_bf16, depthwise_in_fp32, memory_format
from pneumo.train.loop import Targets, make_loss, make_optimizer, train_step
from pneumo.train.run import build_model, training_layout

PRESETS = {"partial": "lite0-partial", "finetune": "lite0-finetune", "probe": "lite0-probe"}


# name -> (overrides, needs native bf16, channels-last, depthwise convs in fp32); the first is the baseline the
# speed-ups are relative to
PATHS: dict[str, tuple[list[str], bool, bool, bool]] = {
    "fp32_contiguous": (["train.amp=false"], False, False, False),
    "fp32": (["train.amp=false"], False, True, False),
    "bf16": ([], True, True, False),
    "depthwise_fp32": ([], True, True, True),
}


def time_training(preset: str, overrides: list[str], *, size: int, batch: int, steps: int, channels_last: bool = True,
                  depthwise_fp32: bool = False, compile: bool = False) -> float:
    """Training images/s of the real step; ``compile``: the model through ``torch.compile`` (inductor), its
    compilation inside the two untimed warm-up steps."""
    cfg = load_config(preset, [f"data.image_size={size}", f"train.batch_size={batch}", *overrides])
    device = torch.device("cpu")
    torch.manual_seed(0)
    fmt = memory_format(device, channels_last)
    model = training_layout(build_model(cfg).to(device), cfg, device).to(memory_format=fmt).train()
    if depthwise_fp32:
        depthwise_in_fp32(model, device, cfg.train.amp)
    step_model = torch.compile(model) if compile else model
    y = torch.randint(0, 2, (batch,))
    optimizer, scheduler = make_optimizer(model, cfg.train, steps + 2)
    loss_fn = make_loss(cfg.train, y, 2)
    x = to_unit(torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)).contiguous(memory_format=fmt)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        train_step(step_model, x, Targets(y), optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, device=device,
                   amp=cfg.train.amp)
    return steps * batch / (time.perf_counter() - start)


@torch.no_grad()
def time_features(*, size: int, batch: int, steps: int) -> dict[str, float]:
    cfg = load_config("lite0-probe", [f"data.image_size={size}"])
    model = build_model(cfg).eval()
    device = torch.device("cpu")
    x = to_unit(torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8))
    out = {}
    traced = fast_inference(model, x[:2], features=True)
    eager_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    paths = {"eager_fp32": lambda: model.forward_features(x), "traced_fp32": lambda: traced(x),
             "eager_fp32_channels_last": lambda: eager_cl.forward_features(x_cl)}
    if cpu_has_bf16():
        def eager_bf16():
            with autocast(device, True):
                return eager_cl.forward_features(x_cl)
        paths["eager_bf16_channels_last"] = eager_bf16
    for name, fn in paths.items():
        fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        out[name] = round(steps * batch / (time.perf_counter() - start), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="partial,finetune")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--no-features", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--release-memory", action="store_true",
                        help="leave glibc's defaults (freed memory goes back to the OS), as before train.hold_memory")
    args = parser.parse_args()
    held = False if args.release_memory else hold_freed_memory()
    rows = {}
    for mode in args.modes.split(","):
        timed = {name: time_training(PRESETS[mode], overrides, size=args.size, batch=args.batch, steps=args.steps,
                                     channels_last=layout, depthwise_fp32=depthwise)
                 for name, (overrides, bf16, layout, depthwise) in PATHS.items() if cpu_has_bf16() or not bf16}
        base = next(iter(timed.values()))
        rows[mode] = {**{f"{name}_img_s": round(v, 2) for name, v in timed.items()},
                      **{f"{name}_speedup": round(v / base, 2) for name, v in list(timed.items())[1:]}}
        if args.compile:
            start = time.perf_counter()
            compiled = time_training(PRESETS[mode], [], size=args.size, batch=args.batch, steps=args.steps,
                                     compile=True)
            rows[mode].update(compiled_img_s=round(compiled, 2), compiled_speedup=round(compiled / base, 2),
                              compiled_total_s=round(time.perf_counter() - start, 1))
        print(mode, rows[mode], flush=True)
    payload = {"cpu_bf16": cpu_has_bf16(), "threads": torch.get_num_threads(), "hold_memory": held, "size": args.size,
               "batch": args.batch, "steps": args.steps, "training": rows}
    if not args.no_features:
        payload["features_img_s"] = time_features(size=args.size, batch=64, steps=max(2, args.steps // 2))
    record("train_speed", payload)


if __name__ == "__main__":
    main()
