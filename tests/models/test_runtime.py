"""The CPU fast path: bf16 autocast where the CPU has native bf16 (fp32 elsewhere or when forced), channels-last on
every CPU (training has no switch for it; `memory_format(..., channels_last=False)` is the reference layout)."""

from __future__ import annotations

import copy
import platform
import subprocess
import sys
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
    assert _conv_dtype(CPU, amp=False) == torch.float32


def test_cpu_without_bf16_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert not fast_precision(CPU, amp=True)
    assert _conv_dtype(CPU, amp=True) == torch.float32


def test_cpu_with_bf16_uses_autocast(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert fast_precision(CPU, amp=True)
    assert _conv_dtype(CPU, amp=True) == torch.bfloat16  # CPU autocast runs wherever torch supports it


def test_channels_last_on_cuda_and_every_cpu_unless_switched_off():
    for device in (CPU, torch.device("cuda")):
        assert memory_format(device) == torch.channels_last
        assert memory_format(device, channels_last=False) == torch.contiguous_format
    assert memory_format(torch.device("mps")) == torch.contiguous_format


def _lite0_step(layout: str, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One fp32-configured training step (``train.amp=false``) of the real model in ``layout`` (``true``: channels-last,
    as training lays it out; ``false``: the contiguous reference) with its weights and input in ``dtype``: the loss,
    the gradients and bn2's updated running mean, in float64."""
    from pneumo.data.preprocess import to_unit
    from pneumo.train.loop import Targets, make_loss, make_optimizer, train_step
    from pneumo.train.run import training_layout

    torch.manual_seed(0)  # the head's initial weights and the dropout masks
    model, cfg = _lite0("train.amp=false", "data.image_size=96")
    fmt = memory_format(CPU, channels_last=layout == "true")
    model = training_layout(model, cfg, CPU).to(memory_format=fmt).train().to(dtype)
    assert model.backbone.conv_stem.weight.is_contiguous(memory_format=fmt)
    x = to_unit(torch.randint(0, 256, (4, 1, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)))
    y = torch.tensor([0, 1, 1, 0])
    optimizer, scheduler = make_optimizer(model, cfg.train, 4)
    loss = train_step(model, x.to(dtype).contiguous(memory_format=fmt), Targets(y), optimizer=optimizer,
                      scheduler=scheduler, loss_fn=make_loss(cfg.train, y, 2), device=CPU, amp=False)
    grads = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
    return torch.tensor(loss, dtype=torch.float64), grads, model.backbone.bn2.running_mean.double()


def test_fp32_channels_last_trains_lite0_like_the_contiguous_layout():
    """The layout changes the order of the sums, not the precision: one fp32 step of the real model in
    channels-last is as close to the exact step (a float64 reference) as the contiguous fp32 step is.

    The two fp32 layouts are not compared element by element: with a batch of 4, train-mode batch norm amplifies
    fp32 rounding (both layouts land ~200 eps x the largest gradient away from float64), and gradients that cancel
    to ~0 (the bn3 biases, some head weights) have no relative accuracy at all. Which kernels oneDNN picks (AVX2,
    AVX512, AVX512-BF16) moves that noise, so a tolerance fitted on one CPU fails on another. Every summation
    order has the same error bound, so channels-last passes when its error is of the order of the contiguous
    step's on the same CPU (4x: room for two orders' independent noise); a wrong layout is off by the size of the
    gradients themselves, ~10^4 times more."""
    eps = torch.finfo(torch.float32).eps
    (loss_cl, g_cl, bn_cl), (loss_c, g_c, bn_c) = _lite0_step("true", torch.float32), _lite0_step("false", torch.float32)
    loss_64, g_64, bn_64 = _lite0_step("false", torch.float64)  # its loss is taken in fp32: ~1 eps, negligible here
    assert g_c.keys() == g_cl.keys() == g_64.keys() and len(g_c) > 10  # the trainable stages and the head
    assert any(not torch.equal(g_c[n], g_cl[n]) for n in g_c)  # the layouts really differ in their sums

    def bound(fp32_err: float, scale: float) -> float:
        return 4 * max(fp32_err, 4 * eps * scale)

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a - b).abs().max().item()

    assert err(loss_cl, loss_64) <= bound(err(loss_c, loss_64), loss_64.item())
    scale = max(g.abs().max().item() for g in g_64.values())
    fp32_err = max(err(g_c[n], g_64[n]) for n in g_64)  # fp32's own error on this step, on this CPU
    assert fp32_err <= 1e-3 * scale  # the reference is the same computation
    for n in g_64:
        assert err(g_cl[n], g_64[n]) <= bound(fp32_err, scale), (n, err(g_cl[n], g_64[n]) / (eps * scale))
    assert err(bn_cl, bn_64) <= bound(err(bn_c, bn_64), bn_64.abs().max().item())


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


def _lite0(*overrides: str) -> tuple[nn.Module, object]:
    from pneumo.config import load_config
    from pneumo.train.run import build_model

    cfg = load_config("default", list(overrides))
    return build_model(cfg), cfg


def _patched(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if "forward" in vars(m)]


def test_slow_bf16_backward_picks_trainable_wide_or_strided_depthwise_convs():
    assert runtime.slow_bf16_backward(nn.Conv2d(8, 8, 5, padding=2, groups=8))
    assert runtime.slow_bf16_backward(nn.Conv2d(8, 8, 3, stride=2, groups=8))
    assert not runtime.slow_bf16_backward(nn.Conv2d(8, 8, 3, padding=1, groups=8))  # 3x3 stride 1: faster in bf16
    assert not runtime.slow_bf16_backward(nn.Conv2d(8, 16, 5, groups=8))  # grouped, not depthwise
    assert not runtime.slow_bf16_backward(nn.Conv2d(8, 8, 5))  # dense
    frozen = nn.Conv2d(8, 8, 5, groups=8).requires_grad_(False)
    assert not runtime.slow_bf16_backward(frozen)  # forward only: bf16 is faster
    assert not runtime.slow_bf16_backward(nn.Linear(4, 4))


def test_depthwise_in_fp32_changes_only_the_trainable_slow_layers_of_lite0(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    model, _ = _lite0()
    expected = [name for name, m in model.named_modules() if runtime.slow_bf16_backward(m)]
    assert expected and all(name.startswith(("backbone.blocks.4", "backbone.blocks.5", "backbone.blocks.6"))
                            for name in expected)  # the first 4 stages are frozen in the default preset
    keys = list(model.state_dict())
    assert runtime.depthwise_in_fp32(model, CPU, amp=True) == len(expected)
    assert [n for n, m in model.named_modules() if "forward" in vars(m)] == expected
    assert list(model.state_dict()) == keys  # checkpoints and exports are untouched


def test_depthwise_in_fp32_is_a_no_op_off_the_cpu_fast_path(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    model, _ = _lite0()
    assert runtime.depthwise_in_fp32(model, CPU, amp=False) == 0
    assert runtime.depthwise_in_fp32(model, torch.device("cuda"), amp=True) == 0  # CUDA's bf16 kernels are fine
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.depthwise_in_fp32(model, CPU, amp=True) == 0
    assert not _patched(model)


def test_training_lays_the_model_out_channels_last_and_keeps_depthwise_in_the_autocast_precision(monkeypatch):
    from pneumo.train.run import training_layout

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    model, cfg = _lite0()
    assert not model.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    training_layout(model, cfg, CPU)
    assert model.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not _patched(model)  # fp32 depthwise is `pneumo adapt`'s choice (`depthwise_in_fp32`), not training's


def test_fp32_depthwise_layers_compute_in_fp32_under_autocast_and_train_alike(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.Conv2d(8, 2, 1))
    twin = copy.deepcopy(net)
    assert runtime.depthwise_in_fp32(net, CPU) == 1
    x = torch.rand(4, 1, 12, 12)
    seen = {}
    net[1].register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype))
    with autocast(CPU):
        out, ref = net(x), twin(x)
    assert seen["dtype"] == torch.float32 and out.dtype == ref.dtype == torch.bfloat16  # fp32 inside, bf16 after
    out.float().sum().backward()
    ref.float().sum().backward()
    grad, ref_grad = net[1].weight.grad, twin[1].weight.grad
    assert grad is not None and torch.allclose(grad, ref_grad, rtol=0.05, atol=0.05 * ref_grad.abs().max().item())
    ema = copy.deepcopy(net)  # what timm's ModelEmaV3 does: the copy's layer must run on the copy's weights
    assert ema[1].forward.__self__ is ema[1]
    with torch.no_grad():
        before = net(x)
        ema[1].weight.mul_(2)
        assert not torch.allclose(ema(x), before) and torch.equal(net(x), before)


_HELD = "import sys; from pneumo.allocator import hold_freed_memory; print(hold_freed_memory())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_hold_freed_memory_applies_on_linux_with_glibc():
    """It sets glibc's mallopt in a fresh process (mallopt is process-wide: not in this one). The page faults it
    saves depend on the libc and the kernel: `bench/bench_page_faults.py` measures them."""
    out = subprocess.run([sys.executable, "-c", _HELD], capture_output=True, text=True, check=True)
    libc, _ = platform.libc_ver()
    assert out.stdout.strip() == ("True" if libc == "glibc" else "False")


def test_training_layout_says_which_precision_it_trains_in(monkeypatch, caplog):
    from pneumo.train.run import training_layout

    for has_bf16, amp, said in ((False, "true", "training in fp32: this CPU has no native bf16"),
                                (True, "true", "training in bf16 autocast, channels-last"),
                                (True, "false", None)):  # fp32 asked for: nothing to explain
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda has_bf16=has_bf16: has_bf16)
        model, cfg = _lite0(f"train.amp={amp}")
        caplog.clear()
        with caplog.at_level("INFO", logger="pneumo.train.run"):
            training_layout(model, cfg, CPU)
        messages = [r.getMessage() for r in caplog.records]
        assert (any(m.startswith(said) for m in messages) if said else not messages), messages
