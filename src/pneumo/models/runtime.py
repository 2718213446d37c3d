"""Where and in which precision a model runs: device choice, bf16 autocast, memory format, batched inference.

Shared by training, evaluation, prediction and the service, so it lives with the models. bf16 autocast is used on
CUDA and on CPUs with native bf16 instructions (AVX512-BF16 or AMX): on such a CPU a Lite0 training step runs ~2-3x
faster than fp32 (`bench/bench_train_speed.py`); elsewhere, and with ``amp=False`` anywhere, the model runs in fp32.
Channels-last is used on CUDA and on every CPU (oneDNN's fast layout: in fp32 on an AVX2 CPU without bf16, Lite0
trains 1.2-1.5x faster than contiguous); ``channels_last=False`` keeps the contiguous layout, the
arithmetic of the code before the fast path. An option on the CPU (`depthwise_in_fp32`, used by `pneumo adapt`'s fine-tunes):
oneDNN's bf16 backward of depthwise convolutions with a 5x5 kernel or a stride of 2 is 1.2-7x slower than its fp32
one, so those layers, where they train, can run in fp32 inside the bf16 step.
"""

from __future__ import annotations

import contextlib
import functools
import types

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pneumo.data.preprocess import to_unit


def select_device(name: str, *, here: bool = False) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; any other name as given (``cpu``, ``cuda``, ``cuda:1``).
    ``here``: a trained model's recorded device, used only where this machine has it, else ``auto`` (a run trained on
    a GPU is evaluated on a machine without one)."""
    missing = (name.startswith("cuda") and not torch.cuda.is_available()) or (
        name == "mps" and not torch.backends.mps.is_available())
    if name == "auto" or (here and missing):
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
    """Whether bf16 autocast is used on ``device`` (``amp=False`` forces fp32)."""
    if not amp:
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where `fast_precision` says so, else a no-op context."""
    if not fast_precision(device, enabled):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def memory_format(device: torch.device, channels_last: bool = True) -> torch.memory_format:
    """channels-last on CUDA and on the CPU, in bf16 and in fp32 alike (when asked), else contiguous."""
    if channels_last and device.type in ("cuda", "cpu"):
        return torch.channels_last
    return torch.contiguous_format


def slow_bf16_backward(module: nn.Module) -> bool:
    """A trainable depthwise convolution with a kernel wider than 3 or a stride above 1: the layers whose bf16
    backward oneDNN runs 1.2-7x slower than fp32 channels-last on the CPU (`bench/bench_depthwise.py`;
    3x3 stride-1 ones and every forward are faster in bf16, so they stay there)."""
    return (isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels == module.out_channels
            and module.weight.requires_grad and (max(module.kernel_size) > 3 or max(module.stride) > 1))


def depthwise_in_fp32(model: nn.Module, device: torch.device, amp: bool = True) -> int:
    """On a CPU training in bf16 (`fast_precision`), make every `slow_bf16_backward` layer of ``model`` compute in
    fp32 (autocast off inside it; its output is fp32 and the next layer casts back). Call it after freezing: which
    layers train decides which ones change. Weights, state dict and exports are untouched. Returns the number of
    layers changed (0 on CUDA, without bf16, or with ``amp=False``)."""
    if device.type != "cpu" or not fast_precision(device, amp):
        return 0
    layers = [m for m in model.modules() if slow_bf16_backward(m)]
    for layer in layers:
        layer.forward = types.MethodType(_forward_fp32, layer)
    return len(layers)


def _forward_fp32(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return type(self).forward(self, x.float())


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64, device: torch.device | None = None,
                   amp: bool = True, progress: str | None = None) -> np.ndarray:
    """Logits (N, C) as float32 numpy for uint8 images (N, 1, S, S)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    fmt = memory_format(device)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=progress, disable=progress is None, unit="batch"):
        x = to_unit(images[start : start + batch_size].to(device, non_blocking=True))
        with autocast(device, amp):
            out.append(model(x.contiguous(memory_format=fmt)).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
