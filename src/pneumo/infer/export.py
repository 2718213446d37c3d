"""ONNX export of a checkpoint (dynamic batch, float input (B, 1, S, S) in [0, 1] -> logits), optional int8."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from pneumo.errors import ModelError
from pneumo.infer.predictor import resolve_model

log = logging.getLogger(__name__)
OPSET = 18


def export_onnx(model_path: str | os.PathLike | None, out: str | os.PathLike | None = None, *,
                quantize: bool = False) -> Path:
    """Write ``<stem>.onnx`` (and ``<stem>.json``, a copy of the sidecar, when ``out`` is elsewhere).

    Returns the .onnx path. With ``quantize`` also writes ``<stem>.int8.onnx`` (dynamic int8 weights).
    """
    import torch

    from pneumo.train.checkpoint import load_checkpoint

    if model_path is None and out is None:
        raise ModelError("exporting the shipped default model needs --out FILE_OR_DIR (the package folder is read-only)")
    sidecar = resolve_model(model_path)
    model, meta = load_checkpoint(sidecar)
    model.eval()
    target = Path(out) if out else sidecar.with_suffix(".onnx")
    if target.suffix != ".onnx":
        target = target / (sidecar.stem + ".onnx")
    target.parent.mkdir(parents=True, exist_ok=True)
    size = int(meta["input_size"])
    example = torch.rand(2, 1, size, size)
    tmp = target.with_name(target.name + ".tmp")
    try:
        torch.onnx.export(model, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    except Exception as exc:  # noqa: BLE001 - exporter errors are long; keep one line
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export failed for {meta.get('arch')}: {str(exc).splitlines()[0]}") from None
    os.replace(tmp, target)
    if target.with_suffix(".json") != sidecar:
        shutil.copyfile(sidecar, target.with_suffix(".json"))
    if quantize:
        quantize_int8(target)
    return target


def quantize_int8(onnx_path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
    return out


def onnx_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
