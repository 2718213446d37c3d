"""What an explanation explains, and how images enter the model.

The explained score is the **pneumonia-vs-normal log-odds** ``logsumexp(z[1:]) - z[0]`` (see `pneumo.explain.cam`),
signed toward the class a map gives evidence for. The protocols name what explanations need from a predictor and a
prediction (``pneumo.infer.predictor`` provides both): of the inference layer, explanations need these two shapes and
``pneumo.infer.predictor.gate`` (`pneumo.explain.cam.explain_image` applies it to an image explained without a prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pneumo.data.preprocess import to_unit
from pneumo.errors import InputError


class PredictionLike(Protocol):
    """One image's prediction (``pneumo.infer.predictor.Prediction``)."""

    label: str
    p_pneumonia: float
    threshold: float


class PredictorLike(Protocol):
    """What explanations use of ``pneumo.infer.predictor.Predictor``."""

    classes: list[str]
    size: int
    meta: Any  # a ``CheckpointMeta``: ``resize_policy`` and ``crop`` map a map back onto the original image

    @property
    def torch_model(self) -> nn.Module | None: ...

    def preprocess(self, gray: np.ndarray) -> np.ndarray: ...

    def predict_prepared(self, prepared: np.ndarray) -> list[Any]: ...


class MarginTarget:
    """grad-cam target: the pneumonia-vs-normal log-odds of one image, times ``sign`` (+1 pneumonia, -1 normal)."""

    def __init__(self, sign: float) -> None:
        self.sign = float(sign)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.sign * pneumonia_margin(logits)


def pneumonia_margin(logits: torch.Tensor) -> torch.Tensor:
    """``logsumexp(z[1:]) - z[0]`` over the last axis (class 0 is NORMAL); ``sigmoid`` of it is ``p_pneumonia``."""
    if logits.shape[-1] == 1:
        return logits[..., 0]
    return torch.logsumexp(logits[..., 1:], dim=-1) - logits[..., 0]


def as_batch(prepared: np.ndarray) -> np.ndarray:
    """Check a uint8 ``(B, S, S)`` (or one ``S x S``) batch of preprocessed images."""
    prepared = np.asarray(prepared)
    if prepared.ndim == 2:
        prepared = prepared[None]
    if prepared.ndim != 3 or prepared.dtype != np.uint8 or prepared.shape[1] != prepared.shape[2]:
        raise InputError(f"expected preprocessed uint8 images (B, S, S), got {prepared.dtype} {prepared.shape}")
    return prepared


def to_tensor(prepared: np.ndarray, model: nn.Module) -> torch.Tensor:
    """uint8 ``(B, S, S)`` -> float ``(B, 1, S, S)`` in [0, 1] on the model's device (the input contract)."""
    device = next(model.parameters()).device
    return to_unit(torch.from_numpy(np.array(prepared, dtype=np.uint8, copy=True)).to(device))[:, None]


def signs_for(toward_pneumonia: Sequence[bool] | bool | None, n: int) -> np.ndarray:
    """+1 / -1 per image; None means all toward pneumonia."""
    if toward_pneumonia is None:
        return np.ones(n)
    values = np.broadcast_to(np.asarray(toward_pneumonia, dtype=bool), (n,))
    return np.where(values, 1.0, -1.0)
