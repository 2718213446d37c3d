"""The CPU fast path: bf16 autocast + channels-last where the CPU has native bf16, fp32 elsewhere or when forced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pneumo.models import runtime
from pneumo.models.runtime import autocast, fast_precision, memory_format, predict_logits

CPU = torch.device("cpu")


def _conv_dtype(device: torch.device, amp: bool) -> torch.dtype:
    conv = nn.Conv2d(1, 4, 3)
    with autocast(device, amp):
        return conv(torch.rand(2, 1, 8, 8)).dtype


def test_amp_false_forces_fp32_everywhere():
    assert not fast_precision(CPU, amp=False)
    assert memory_format(CPU, channels_last=True, amp=False) == torch.contiguous_format
    assert _conv_dtype(CPU, amp=False) == torch.float32


def test_cpu_without_bf16_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert not fast_precision(CPU, amp=True)
    assert memory_format(CPU, channels_last=True, amp=True) == torch.contiguous_format
    assert _conv_dtype(CPU, amp=True) == torch.float32


def test_cpu_with_bf16_uses_autocast_and_channels_last(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert fast_precision(CPU, amp=True)
    assert memory_format(CPU, channels_last=True, amp=True) == torch.channels_last
    assert memory_format(CPU, channels_last=False, amp=True) == torch.contiguous_format
    assert _conv_dtype(CPU, amp=True) == torch.bfloat16  # CPU autocast runs wherever torch supports it


def test_cpu_detection_matches_cpuinfo():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    runtime.cpu_has_bf16.cache_clear()
    assert runtime.cpu_has_bf16() == native


def test_predict_logits_bf16_close_to_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    images = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    fp32 = predict_logits(model, images, device=CPU, amp=False)
    bf16 = predict_logits(model, images, device=CPU, amp=True)
    assert fp32.dtype == bf16.dtype == "float32" and fp32.shape == (5, 2)
    assert abs(fp32 - bf16).max() < 0.05 and abs(fp32 - bf16).max() > 0  # bf16 really ran, and stayed close
