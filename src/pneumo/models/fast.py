"""Inference-only fast path: on the CPU a traced, frozen, channels-last copy of a model (conv + BN folded by oneDNN,
2-3x faster than eager). One mechanism for probe features, evaluation, prediction, occlusion and embeddings; `scorer`
is the one PyTorch path from model inputs to logits and features (`Predictor`'s torch backend, a run's evaluation).

Tracing walks the model in Python (~0.6 s for EfficientNet-Lite0); freezing bakes the weights in (~0.1 s). A process
that scores many models of one structure (adapt's fold models, an evaluation's Predictors, the tests) traces each
structure once and gives every later model of it a copy of that traced graph with its own weights loaded, then
freezes it: bit for bit what a trace of its own gives (tests/models/test_fast.py).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # architectures already warned about (one warning per process, not per batch)
_TRACED: OrderedDict[str, torch.jit.ScriptModule] = OrderedDict()  # structure key -> traced, unfrozen graph
_TRACED_MAX = 4  # structures kept (an ensemble of several architectures); each holds one copy of its weights
_TRACED_LOCK = threading.Lock()


class ForwardFeatures(nn.Module):
    """``model.forward_features`` as a module's ``forward`` (to trace it)."""

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

    On the CPU: a traced, frozen, channels-last copy; the caller's model is untouched; the first model of a structure
    costs a trace (~0.6-3 s), later ones ~0.1 s (`_traced`), so it is only worth it for many images. Elsewhere, or if tracing fails: the eager module in eval mode. No hooks run inside
    a traced copy, so explanations that need gradients use the eager model.
    """
    target = ForwardFeatures(model) if features else model
    if example.device.type != "cpu":
        return target.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the fastest CPU path
            run = torch.jit.freeze(_traced(target, example))
    except Exception as exc:  # noqa: BLE001 - fall back to eager, only slower
        name = getattr(model, "arch", type(model).__name__)
        if name not in _WARNED:  # visible, but once per architecture rather than once per batch
            _WARNED.add(name)
            log.warning("cannot trace %s for fast CPU inference (%s: %s); using the eager model, about 2x slower",
                        name, type(exc).__name__, str(exc).split("\n", 1)[0])
        run = copy.deepcopy(target).eval().to(memory_format=torch.channels_last)
    return lambda x: run(x.contiguous(memory_format=torch.channels_last))


def _structure_key(target: nn.Module, example: torch.Tensor) -> str:
    """What a traced graph depends on: the module types and settings (``repr``), every state entry's name, shape and
    dtype, and the example's shape and dtype."""
    state = [(k, tuple(v.shape), str(v.dtype)) for k, v in target.state_dict().items()]
    text = repr((type(target).__qualname__, repr(target), state, tuple(example.shape), str(example.dtype)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _traced(target: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """An unfrozen traced copy of ``target`` (eval mode, channels-last) holding ``target``'s weights: a copy of the
    graph traced for an earlier module of the same structure, or a new trace (kept for the next one)."""
    key = _structure_key(target, example)
    with _TRACED_LOCK:
        template = _TRACED.get(key)
        if template is not None:
            _TRACED.move_to_end(key)
    if template is None:
        clone = copy.deepcopy(target).eval().to(memory_format=torch.channels_last)
        template = torch.jit.trace(clone, example.contiguous(memory_format=torch.channels_last), check_trace=False)
        with _TRACED_LOCK:
            _TRACED[key] = template
            while len(_TRACED) > _TRACED_MAX:
                _TRACED.popitem(last=False)
    traced = copy.deepcopy(template)  # the template stays untouched: a frozen module shares its tensors
    traced.load_state_dict(target.state_dict())
    return traced


def scorer(model: nn.Module, size: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``x -> (logits, pooled features)`` for model inputs (float in [0, 1], N x 1 x S x S) in one pass: on the CPU a
    traced, frozen copy of `LogitsAndFeatures` (its logits are bit-identical to the whole model's traced copy),
    elsewhere the eager model. Call it under ``torch.no_grad()``."""
    device = next(model.parameters()).device
    return fast_inference(LogitsAndFeatures(model), example_input(size).to(device))


def example_input(size: int) -> torch.Tensor:
    """A fixed 2 x 1 x S x S batch to trace or export a model with, drawn from a generator of its own: making a
    `Predictor` must not move the caller's global random state."""
    return torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
