"""Model-agnostic maps: occlusion sensitivity (batched) and integrated gradients (captum).

Both explain the same score as the CAMs: the pneumonia-vs-normal log-odds, signed toward the explained class
(see ``pneumo.explain.cam``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pneumo.errors import ConfigError, InputError
from pneumo.explain.target import pneumonia_margin, to_tensor
from pneumo.models.fast import fast_inference


def _square(prepared: np.ndarray) -> np.ndarray:
    prepared = np.asarray(prepared)
    if prepared.ndim != 2 or prepared.dtype != np.uint8 or prepared.shape[0] != prepared.shape[1]:
        raise InputError(f"expected one preprocessed uint8 S x S image, got {prepared.dtype} {prepared.shape}")
    return prepared


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Top/left offsets of the occluding windows along one axis; the last window always touches the far edge."""
    if not 1 <= window <= size:
        raise ConfigError(f"occlusion window must be 1..{size} pixels (the model input size), got {window}")
    if not 1 <= stride <= window:  # beyond the window, the pixels between windows got no value: NaN maps (an audit)
        raise ConfigError(f"occlusion stride must be 1..{window} pixels (--stride at most --window: every pixel "
                          f"needs a window that covers it), got {stride}")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@torch.inference_mode()
def _scores(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sign: float) -> torch.Tensor:
    return sign * pneumonia_margin(run(x)).float().cpu()


def scaled(heat: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """``(heat / scale`` clipped to [0, 1] as float32, ``scale)``; all zero where ``scale`` is 0 (no support)."""
    if not scale > 0:
        return np.zeros_like(heat, np.float32), 0.0
    return np.clip(heat / scale, 0.0, 1.0).astype(np.float32), float(scale)


def occlusion_map(model: nn.Module, prepared: np.ndarray, *, window: int = 32, stride: int = 16,
                  toward_pneumonia: bool = True, batch_size: int = 32,
                  fast: bool = True) -> tuple[np.ndarray, float]:
    """Occlusion sensitivity: how much the score drops when a window is filled with the image mean.

    Each pixel gets the mean drop over the windows covering it; negative values (occlusion that *raises* the score)
    are clipped, and the map is divided by its maximum, which is returned too (the largest drop, in log-odds: how
    strong the map is, lost in the scaling; an explain audit).

    Args:
        model: takes ``(B, 1, S, S)`` in [0, 1], returns logits.
        prepared: one preprocessed uint8 S x S image.
        window: square window side in model pixels.
        stride: step between windows.
        toward_pneumonia: explain the pneumonia margin (True) or its negative.
        batch_size: occluded copies per forward pass.
        fast: on the CPU, run a copy with its BatchNorms folded into its convolutions (``models.fast.fast_inference``).

    Returns:
        float32 S x S in [0, 1], and the drop in log-odds drawn as 1.
    """
    prepared = _square(prepared)
    size = prepared.shape[0]
    starts = window_starts(size, window, stride)
    boxes = [(top, left) for top in starts for left in starts]
    sign = 1.0 if toward_pneumonia else -1.0
    was_training = model.training
    model.eval()
    try:
        image = to_tensor(prepared[None], model)
        run = fast_inference(model, image.repeat(2, 1, 1, 1)) if fast else model
        fill = float(image.mean())
        base = float(_scores(run, image, sign)[0])
        drops = np.empty(len(boxes), dtype=np.float64)
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            batch = image.repeat(len(chunk), 1, 1, 1)
            for i, (top, left) in enumerate(chunk):
                batch[i, :, top : top + window, left : left + window] = fill
            drops[start : start + len(chunk)] = base - _scores(run, batch, sign).numpy()
    finally:
        model.train(was_training)
    total = np.zeros((size, size), dtype=np.float64)
    count = np.zeros((size, size), dtype=np.float64)
    for (top, left), drop in zip(boxes, drops, strict=True):
        total[top : top + window, left : left + window] += drop
        count[top : top + window, left : left + window] += 1
    heat = np.clip(total / count, 0.0, None)
    return scaled(heat, float(heat.max()))


def integrated_gradients_map(model: nn.Module, prepared: np.ndarray, *, toward_pneumonia: bool = True,
                             steps: int = 32, batch_size: int = 16,
                             smooth_sigma: float | None = None) -> tuple[np.ndarray, float]:
    """Integrated gradients (captum) from a black image, positive part, lightly smoothed, scaled to [0, 1].

    Pixel-level attributions are speckled; a Gaussian blur (default sigma = S / 112, 2 px at 224) makes the map
    comparable with the CAMs. The 99.5th percentile maps to 1 so that a few hot pixels do not flatten the rest; it is
    returned with the map (log-odds per pixel).

    Args:
        model: takes ``(B, 1, S, S)`` in [0, 1], returns logits.
        prepared: one preprocessed uint8 S x S image.
        toward_pneumonia: explain the pneumonia margin (True) or its negative.
        steps: points on the straight path from the baseline to the image.
        batch_size: path points per forward/backward pass.
        smooth_sigma: Gaussian sigma in pixels (0 turns smoothing off).
    """
    import cv2

    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ConfigError("integrated_gradients needs captum: pip install captum") from None
    prepared = _square(prepared)
    sign = 1.0 if toward_pneumonia else -1.0
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        ig = IntegratedGradients(lambda x: sign * pneumonia_margin(model(x)))
        x = to_tensor(prepared[None], model)
        with torch.enable_grad():
            attr = ig.attribute(x, baselines=torch.zeros_like(x), n_steps=steps, internal_batch_size=batch_size)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    heat = np.clip(attr[0, 0].detach().float().cpu().numpy(), 0.0, None)
    sigma = prepared.shape[0] / 112 if smooth_sigma is None else smooth_sigma
    if sigma > 0:
        heat = cv2.GaussianBlur(heat, (0, 0), sigmaX=sigma)
    return scaled(heat, float(np.percentile(heat, 99.5)))
