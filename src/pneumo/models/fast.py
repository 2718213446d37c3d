"""Inference-only fast path: a copy of a model with every BatchNorm folded into the convolution that feeds it
(`torch.nn.utils.fusion.fuse_conv_bn_weights`), channels-last, without gradients: on the CPU the eager model's work
less every normalisation, and bit for bit the logits of the traced, frozen copy this path used to make
(`torch.jit.freeze` folds the same way; `torch.jit` is deprecated and its trace cost 0.6-3 s a model). One mechanism
for probe features, evaluation, prediction, occlusion and embeddings; `scorer` is the one PyTorch path from model
inputs to logits and features (`Predictor`'s torch backend, a run's evaluation).

Which BatchNorm reads which convolution is seen, not assumed: the example runs through the model with hooks and
autograd on, and a pair is folded only where the BatchNorm's input is the very tensor the convolution returned,
unchanged in place, read by nothing else (each module called once). The folded copy must then give the eager model's
outputs on the example; otherwise, or if folding fails, the eager copy runs, with one warning per architecture.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from timm.layers import BatchNormAct2d
from timm.layers.conv2d_same import Conv2dSame
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from pneumo.errors import one_line

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # architectures already warned about (one warning per process, not per batch)
_CONVS = (nn.Conv2d, Conv2dSame)  # exactly these types: a subclass may transform its weight in forward
_NORMS = (nn.BatchNorm2d, BatchNormAct2d)


class ForwardFeatures(nn.Module):
    """``model.forward_features`` as a module's ``forward`` (to fold or export it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class LogitsAndFeatures(nn.Module):
    """``model`` with two outputs from one pass: its logits and the pooled features they come from (for exports that
    feed the out-of-distribution score)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        return self.model.head(self.model.drop(features)), features


def fast_inference(model: nn.Module, example: torch.Tensor, *, features: bool = False
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` (or its ``forward_features``) for many inference-only passes.

    On the CPU: `folded`'s copy, channels-last (the caller's model is untouched; ~0.15 s for Lite0). Elsewhere: the eager
    module in eval mode. No hooks run inside the copy, so explanations that need gradients use the eager model.
    """
    target = ForwardFeatures(model) if features else model
    if example.device.type != "cpu":
        return target.eval()
    run = folded(target, example)
    return lambda x: run(x.contiguous(memory_format=torch.channels_last))


def folded(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """An eval-mode, channels-last copy of ``model`` without gradients, each BatchNorm that reads a convolution's output
    folded into that convolution; the plain eager copy (one warning per architecture) if folding fails or the folded
    copy does not give ``model``'s outputs on ``example``. Works under ``torch.inference_mode()`` and autocast."""
    def eager() -> nn.Module:
        return copy.deepcopy(model).eval().requires_grad_(False).to(memory_format=torch.channels_last)

    try:
        with torch.inference_mode(False), torch.autocast(example.device.type, enabled=False):
            fused = eager()  # (normal tensors even when the caller runs under inference mode)
            x = example.detach().clone().contiguous(memory_format=torch.channels_last)
            pairs, want = _conv_bn_pairs(fused, x)
            with torch.no_grad():
                for conv_name, norm_name in pairs:  # (`fuse_conv_bn_eval` less its copy of each convolution)
                    conv, norm = fused.get_submodule(conv_name), fused.get_submodule(norm_name)
                    conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                                                  norm.running_var, norm.eps, norm.weight, norm.bias)
                    _replace(fused, norm_name, nn.Sequential(norm.drop, norm.act)
                             if isinstance(norm, BatchNormAct2d) else nn.Identity())
                got = _flat(fused(x)) if pairs else want
        if want and len(want) == len(got) and all(_close(w, g) for w, g in zip(want, got, strict=True)):
            return fused
        why = "the folded copy gives other outputs"
    except Exception as exc:  # noqa: BLE001 - as the traced path did: the eager model, only slower
        why = f"{type(exc).__name__}: {one_line(str(exc))}"
    name = getattr(model, "arch", None) or getattr(getattr(model, "model", None), "arch", None) or type(model).__name__
    if name not in _WARNED:  # visible, but once per architecture rather than once per batch
        _WARNED.add(name)
        log.warning("cannot fold the BatchNorms of %s into its convolutions (%s); using the eager model, slower",
                    name, why)
    return eager()


def _close(want: torch.Tensor, got: torch.Tensor) -> bool:
    """Rounding only: the same shape, dtype and non-finite entries, the finite ones within 1e-4 of the largest."""
    if want.shape != got.shape or want.dtype != got.dtype or not torch.equal(want.isfinite(), got.isfinite()):
        return False
    finite = want.isfinite()
    if not torch.equal(want[~finite].nan_to_num(), got[~finite].nan_to_num()):
        return False
    scale = 1.0 + float(want[finite].abs().max()) if finite.any() else 1.0
    return torch.allclose(got[finite], want[finite], rtol=0.0, atol=1e-4 * scale)


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], list[torch.Tensor]]:
    """(convolution, BatchNorm) module names where, running ``example`` with autograd on, the BatchNorm's input is
    the tensor the convolution returned, unchanged in place, and nothing else reads it (its node in the autograd graph
    has one reader); modules called more than once (shared) are left out. And the outputs of that run."""
    outputs: dict[int, tuple[str, torch.Tensor, int]] = {}  # id -> (convolution, its output, kept so that no id is
    # reused, and the output's version: an in-place op between them, a ReLU(inplace=True), hands on the same tensor)
    nodes: dict[str, object] = {}  # convolution -> its output's autograd node
    calls: dict[str, int] = {}
    pairs: dict[str, str] = {}  # BatchNorm -> convolution

    def conv_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            outputs[id(output)] = (name, output, output._version)
            nodes[name] = output.grad_fn
        return hook

    def norm_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            conv = outputs.get(id(args[0])) if args else None
            if conv is not None and conv[2] == args[0]._version:
                pairs[name] = conv[0]
        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if type(module) in _CONVS:
                handles.append(module.register_forward_hook(conv_hook(name)))
            elif type(module) in _NORMS and module.track_running_stats:
                handles.append(module.register_forward_pre_hook(norm_hook(name)))
        with torch.enable_grad():
            output = _flat(model(example.requires_grad_()))
    finally:
        for handle in handles:
            handle.remove()
    readers = _readers([t.grad_fn for t in output if t.grad_fn is not None])
    convs = list(pairs.values())
    return [(conv, norm) for norm, conv in pairs.items() if calls.get(conv) == 1 and calls.get(norm) == 1
            and convs.count(conv) == 1 and readers.get(nodes.get(conv)) == 1], [t.detach() for t in output]


def _readers(roots: list) -> dict[object, int]:
    """How many nodes of the autograd graph below ``roots`` read each node (a root counts one reader: the caller)."""
    readers = {root: 1 for root in roots}
    todo, seen = list(roots), set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                readers[child] = readers.get(child, 0) + 1
                todo.append(child)
    return readers


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _flat(output) -> list[torch.Tensor]:
    """Every tensor of an output: a tensor, or tuples, lists and dicts of them, nested."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [t for item in output if isinstance(item, (torch.Tensor, dict, list, tuple)) for t in _flat(item)]


def scorer(model: nn.Module, size: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``x -> (logits, pooled features)`` for model inputs (float in [0, 1], N x 1 x S x S) in one pass: on the CPU the
    folded copy of `LogitsAndFeatures` (its logits are bit-identical to the whole model's folded copy), elsewhere the
    eager model. Call it under ``torch.no_grad()``."""
    device = next(model.parameters()).device
    return fast_inference(LogitsAndFeatures(model), example_input(size).to(device))


def example_input(size: int) -> torch.Tensor:
    """A fixed 2 x 1 x S x S batch to fold or export a model with, drawn from a generator of its own: making a
    `Predictor` must not move the caller's global random state."""
    return torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
