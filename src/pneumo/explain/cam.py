"""Grad-CAM / Grad-CAM++ (the maintained ``grad-cam`` package) and the one entry point for explaining an image.

What is explained: the **pneumonia-vs-normal log-odds** ``logsumexp(z[1:]) - z[0]`` (for a binary model simply
``z_PNEUMONIA - z_NORMAL``). ``p_pneumonia = sigmoid(margin)``, so this margin is exactly the quantity the decision
thresholds. A single class logit (``ClassifierOutputTarget``) is not: its gradient also carries the part shared with
the other logit, which cancels in the softmax, and for a 3-class model "pneumonia" is two logits. By default the
margin is signed toward the predicted label (``target="predicted"``), so a NORMAL prediction shows the evidence
for normal instead of a faint, renormalised map of pneumonia evidence; ``target="pneumonia"`` always explains
"why pneumonia".

Hooks live only inside :func:`cam_session` and are removed on exit, parameters' ``requires_grad`` and
``model.training`` are restored (the service explains every request with the same model).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pneumo.data.crop import Box, crop_box
from pneumo.data.preprocess import letterbox_box
from pneumo.errors import ConfigError, InputError, ModelError
from pneumo.explain import CAM_METHODS, METHODS, TARGETS, occlusion
from pneumo.explain.render import overlay_image, png_bytes
from pneumo.explain.target import MarginTarget, PredictionLike, PredictorLike, as_batch, signs_for, to_tensor
from pneumo.infer.predictor import gate

NOT_TORCH = "explanations need the PyTorch checkpoint (run folder or .json/.safetensors), not an ONNX export"


@dataclass
class ExplainResult:
    """One explained image.

    Attributes:
        map_model: float32 S x S in [0, 1], on the model input.
        map_original: float32 H x W in [0, 1], on the original image (letterbox padding cropped, aspect restored,
            placed into the crop box; 0 outside it).
        prediction: the model's prediction for the image.
        method: the method that made the map.
        layer: the hooked module for CAM methods, else None.
        toward: the class the map gives evidence for (the predicted label, or the pneumonia class).
        box: the crop (top, left, height, width) the model saw, on the original; None: the whole image.
        scale: the unscaled map value drawn as 1, comparable across images for one model, method and layer
            (Grad-CAM: the strongest cell's gradient-weighted activation; occlusion: the largest drop of the
            explained log-odds; integrated gradients: the 99.5th percentile, log-odds per pixel).
    """

    map_model: np.ndarray
    map_original: np.ndarray
    prediction: PredictionLike
    method: str
    layer: str | None
    toward: str
    box: Box | None = None
    scale: float | None = None


def layer_names(model: nn.Module, *, max_depth: int = 2) -> list[str]:
    """Modules worth hooking, abbreviated: the default target, then conv-bearing modules at most ``max_depth`` dots deep.

    Ancestors of the default target (the whole backbone, which outputs pooled vectors) are left out.
    """
    default = default_layer_name(model)
    ancestors = {default.rsplit(".", i)[0] for i in range(1, default.count(".") + 1)}
    names = [default]
    for name, module in model.named_modules():
        if not name or name == default or name in ancestors or name.count(".") > max_depth:
            continue
        if any(isinstance(m, nn.Conv2d) for m in module.modules()):
            names.append(name)
    return names


def default_layer_name(model: nn.Module) -> str:
    """The name of ``model.target_layer()`` (PneumoNet), else of the last ``Conv2d``."""
    if hasattr(model, "target_layer"):
        target = model.target_layer()
        for name, module in model.named_modules():
            if module is target:
                return name
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__} has no conv layer to explain")
    return convs[-1]


def resolve_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``layer`` (a module name, with or without ``backbone.``), default: the model's target."""
    modules = dict(model.named_modules())
    name = default_layer_name(model) if layer is None else layer
    for candidate in (name, f"backbone.{name}"):
        if candidate and candidate in modules:
            return candidate, modules[candidate]
    arch = getattr(model, "arch", type(model).__name__)
    raise ConfigError(f"no layer {layer!r} in {arch}; valid layers include {', '.join(layer_names(model))} "
                      "(or any deeper module name, e.g. from print(model))")


def _cam_class(method: str) -> type:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
    if method not in classes:
        raise ConfigError(f"unknown CAM method {method!r}; choose {', '.join(CAM_METHODS)}")
    return classes[method]


@contextmanager
def cam_session(model: nn.Module, layer: nn.Module, method: str = "gradcam") -> Iterator[object]:
    """A grad-cam object hooked on ``layer``; on exit the hooks are removed and the model is as it was.

    Parameters are set to ``requires_grad=False`` meanwhile (gradients flow from the input instead), so no weight
    gradient is computed or left on the model, and frozen backbones work too.
    """
    cls = _cam_class(method)
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    cam = None
    try:
        for p in params:
            p.requires_grad_(False)
        cam = cls(model=model, target_layers=[layer])  # calls model.eval()
        with torch.enable_grad():
            yield cam
    finally:
        if cam is not None:
            # not ``with cam:``: grad-cam's __exit__ prints and swallows IndexError
            cam.activations_and_grads.release()
            cam.outputs = None
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def cam_maps(model: nn.Module, prepared: np.ndarray, *, method: str = "gradcam", layer: str | None = None,
             toward_pneumonia: Sequence[bool] | bool | None = None, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps of preprocessed images.

    Args:
        model: a PneumoNet (or any module taking ``(B, 1, S, S)`` in [0, 1] and returning logits).
        prepared: uint8 ``(B, S, S)`` as the model is fed.
        method: ``gradcam`` or ``gradcam++``.
        layer: module to hook (default: ``model.target_layer()``).
        toward_pneumonia: per image, explain the pneumonia margin (True) or its negative (False); default all True.
        batch_size: images per forward/backward pass.

    Returns:
        float32 ``(B, S, S)``, each map scaled to [0, 1] (all zero where nothing supports the target).
    """
    return cam_maps_and_peaks(model, prepared, method=method, layer=layer, toward_pneumonia=toward_pneumonia,
                              batch_size=batch_size)[0]


def cam_maps_and_peaks(model: nn.Module, prepared: np.ndarray, *, method: str = "gradcam", layer: str | None = None,
                       toward_pneumonia: Sequence[bool] | bool | None = None,
                       batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``cam_maps`` and, per image, the map's peak before grad-cam scaled it to [0, 1] (the strongest feature-map
    cell's gradient-weighted activation; a film called NORMAL explained toward pneumonia peaked 4-400x below a
    pneumonia film's, drawn in the same red: an explain audit)."""
    prepared = as_batch(prepared)
    name, module = resolve_layer(model, layer)
    signs = signs_for(toward_pneumonia, len(prepared))
    out, peaks = [], []
    with cam_session(model, module, method) as cam:
        unscaled = cam.get_cam_image

        def recorded(*args: object, **kwargs: object) -> np.ndarray:
            maps = unscaled(*args, **kwargs)
            peaks.append(np.maximum(np.asarray(maps, np.float64), 0.0).reshape(len(maps), -1).max(axis=1))
            return maps

        cam.get_cam_image = recorded
        for start in range(0, len(prepared), batch_size):
            x = to_tensor(prepared[start : start + batch_size], model).requires_grad_(True)
            targets = [MarginTarget(s) for s in signs[start : start + batch_size]]
            try:
                maps = cam(input_tensor=x, targets=targets)
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"layer {name!r} gives no 2-D feature map to explain ({exc}); "
                                  f"choose one of {', '.join(layer_names(model))}") from None
            out.append(np.asarray(maps, dtype=np.float32))
    return np.clip(np.concatenate(out), 0.0, 1.0), np.concatenate(peaks)


def to_original_geometry(map_model: np.ndarray, height: int, width: int, *, policy: str = "squash",
                         box: Box | None = None) -> np.ndarray:
    """Map an S x S model-input map back onto the H x W original (``letterbox``: crop the padding first).

    ``box``: the crop (top, left, height, width) the model input was made from (`pneumo.data.crop.crop_box`; None:
    the whole image); the map lands in that box, and the original outside it, which the model never saw, gets 0."""
    import cv2

    top, left, box_h, box_w = box if box is not None else (0, 0, int(height), int(width))
    size = map_model.shape[0]
    if policy == "letterbox":
        pad_top, pad_left, new_h, new_w = letterbox_box(box_h, box_w, size)
        map_model = map_model[pad_top : pad_top + new_h, pad_left : pad_left + new_w]
    resized = cv2.resize(np.ascontiguousarray(map_model, dtype=np.float32), (int(box_w), int(box_h)),
                         interpolation=cv2.INTER_LINEAR)
    out = np.zeros((int(height), int(width)), np.float32)
    out[top : top + box_h, left : left + box_w] = np.clip(resized, 0.0, 1.0)
    return out


def torch_model_of(predictor: PredictorLike) -> nn.Module:
    model = getattr(predictor, "torch_model", None)
    if model is None:
        raise ModelError(NOT_TORCH)
    return model


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> the lock its explanations take
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> AbstractContextManager:
    """One explanation at a time per model: Grad-CAM hooks the model's layer and switches its gradients, so two at
    once (the service's heat-map threads) recorded each other's activations. (It once took a `Predictor` lock that
    no longer exists, i.e. none.) Predictions never wait: they run on a folded copy or ONNX Runtime."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
    return lock


def explain_prepared(model: nn.Module, prepared: np.ndarray, *, method: str = "gradcam", layer: str | None = None,
                     toward_pneumonia: bool = True, window: int = 32, stride: int = 16) -> tuple[np.ndarray, float]:
    """One S x S map in [0, 1] of one preprocessed uint8 S x S image, by any method in ``METHODS``, and the unscaled
    value drawn as 1 (see ``ExplainResult.scale``)."""
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose {', '.join(METHODS)}")
    if method in CAM_METHODS:
        maps, peaks = cam_maps_and_peaks(model, prepared[None], method=method, layer=layer,
                                         toward_pneumonia=toward_pneumonia)
        return maps[0], float(peaks[0])
    if layer is not None:
        raise ConfigError(f"--layer applies to {' and '.join(CAM_METHODS)} only, not {method}")
    if method == "occlusion":
        return occlusion.occlusion_map(model, prepared, window=window, stride=stride,
                                       toward_pneumonia=toward_pneumonia)
    return occlusion.integrated_gradients_map(model, prepared, toward_pneumonia=toward_pneumonia)


def explain_image(predictor: PredictorLike, gray: np.ndarray, *, method: str = "gradcam", layer: str | None = None,
                  target: str = "predicted", prediction: PredictionLike | None = None, window: int = 32,
                  stride: int = 16, prepared: np.ndarray | None = None) -> ExplainResult:
    """Explain one original uint8 gray H x W image with the predictor's model and preprocessing.

    Args:
        predictor: a torch-backend ``Predictor``.
        gray: the original image (as decoded, before resizing).
        method: one of ``METHODS``.
        layer: module to hook for CAM methods (default per architecture).
        target: ``predicted`` (evidence for the predicted label) or ``pneumonia`` (always "why pneumonia").
        prediction: the prediction if already computed (else the image is predicted first).
        window: occlusion patch side in model pixels.
        stride: occlusion step in model pixels.
        prepared: the model input ``prediction`` was scored on (`pneumo.infer.batch.load_input`: a large JPEG is
            decoded at a reduced scale), explained as scored; default: ``gray`` preprocessed. The map is drawn on
            ``gray``'s geometry either way.

    A checkpoint that predicts with flip averaging (sidecar ``tta``) is explained on the unflipped image.
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown explanation target {target!r}; choose {', '.join(TARGETS)}")
    model = torch_model_of(predictor)
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise InputError(f"expected a uint8 gray 2-D image, got {gray.dtype} with shape {gray.shape}")
    prepared = predictor.preprocess(gray) if prepared is None else prepared
    if not (isinstance(prepared, np.ndarray) and prepared.dtype == np.uint8
            and prepared.shape == (predictor.size, predictor.size)):
        raise InputError(f"prepared must be the uint8 {predictor.size} x {predictor.size} model input "
                         f"(`Predictor.preprocess`), got {getattr(prepared, 'dtype', type(prepared).__name__)} with "
                         f"shape {getattr(prepared, 'shape', None)}")
    if prediction is None:  # scored as `Predictor.predict` scores it: the input gate too (a library review)
        prediction = predictor.predict_prepared(prepared[None])[0]
        gate([gray], [prediction])
    classes = list(predictor.classes)
    toward_pneumonia = target == "pneumonia" or prediction.p_pneumonia >= prediction.threshold  # assessed or not
    with _model_lock(model):
        map_model, scale = explain_prepared(model, prepared, method=method, layer=layer,
                                            toward_pneumonia=toward_pneumonia, window=window, stride=stride)
    crop = getattr(predictor.meta, "crop", "none")  # the crop box is found again on the original (deterministic)
    box = crop_box(gray, crop)[0] if crop != "none" else None
    map_original = to_original_geometry(map_model, *gray.shape, policy=predictor.meta.resize_policy, box=box)
    layer_name = resolve_layer(model, layer)[0] if method in CAM_METHODS else None
    toward = ("pneumonia" if len(classes) > 2 else classes[-1]) if toward_pneumonia else classes[0]
    return ExplainResult(map_model=map_model, map_original=map_original, prediction=prediction, method=method,
                         layer=layer_name, toward=toward, box=box, scale=scale)


def heatmap_overlay_png(predictor: PredictorLike, gray: np.ndarray, prediction: PredictionLike | None = None, *,
                        method: str = "gradcam", layer: str | None = None, max_side: int | None = None,
                        caption: bool = True, prepared: np.ndarray | None = None) -> bytes:
    """PNG bytes: the Grad-CAM map over the original image (its own size and aspect), label/probability written on.

    Args:
        predictor: a torch-backend ``Predictor``.
        gray: the original uint8 gray H x W image.
        prediction: its prediction, if already computed.
        method: explanation method (default Grad-CAM, ~0.1-0.3 s on a CPU for Lite0 at 224).
        layer: module to hook (default per architecture).
        max_side: shrink the overlay so its longer side is at most this (None: original size).
        caption: write the verdict on the image; False for a viewer that shows it beside the map (the web page:
            a caption on the film hid the lung apices under the map, a clinical review).
        prepared: the model input ``prediction`` was scored on, when ``gray`` is a shrunk copy of the image it was
            prepared from (the service): the map is of that input, drawn over ``gray``.
    """
    result = explain_image(predictor, gray, method=method, layer=layer, prediction=prediction, prepared=prepared)
    return png_bytes(overlay_image(gray, result.map_original, result.prediction if caption else None, method=method,
                                   toward=result.toward, max_side=max_side))
