"""Where and in which precision a model runs: device choice, bf16 autocast, memory format, batched inference.

Shared by training, evaluation, prediction and the service, so it lives with the models. bf16 autocast and
channels-last are used on CUDA and on CPUs with native bf16 instructions (AVX512-BF16 or AMX): on such a CPU a
Lite0 training step runs ~3x faster than fp32 (`bench/bench_train_speed.py`). Elsewhere everything stays fp32 and
contiguous; ``amp=False`` forces fp32 anywhere.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pneumo.data.preprocess import to_unit


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; any other name as given (``cpu``, ``cuda``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    """True when this CPU executes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast is fast rather than emulated."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool((probe and probe()) or (amx and amx()))
    except RuntimeError:
        return False


def fast_precision(device: torch.device, amp: bool = True) -> bool:
    """Whether bf16 autocast + channels-last are used on ``device`` (``amp=False`` forces fp32)."""
    if not amp:
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where `fast_precision` says so, else a no-op context."""
    if not fast_precision(device, enabled):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def memory_format(device: torch.device, channels_last: bool = True, amp: bool = True) -> torch.memory_format:
    """channels-last on CUDA always (when asked), on the CPU together with bf16 (oneDNN's fast layout for it)."""
    if channels_last and (device.type == "cuda" or fast_precision(device, amp)):
        return torch.channels_last
    return torch.contiguous_format




@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64, device: torch.device | None = None,
                   amp: bool = True, progress: str | None = None) -> np.ndarray:
    """Logits (N, C) as float32 numpy for uint8 images (N, 1, S, S)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    fmt = memory_format(device, True, amp)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=progress, disable=progress is None, unit="batch"):
        x = to_unit(images[start : start + batch_size].to(device, non_blocking=True))
        with autocast(device, amp):
            out.append(model(x.contiguous(memory_format=fmt)).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
