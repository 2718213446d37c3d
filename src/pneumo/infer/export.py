"""ONNX export of a checkpoint (dynamic batch, float input (B, 1, S, S) in [0, 1] -> logits and pooled ``features``
(the input of the out-of-distribution score)), optional int8."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pneumo.errors import ModelError
from pneumo.models.sidecar import read_meta, resolve_model

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
OPSET = 18
OUTPUTS = ("logits", "features")  # part of the export cache key: an export without features is not reused


def export_onnx(model_path: str | os.PathLike | None, out: str | os.PathLike | None = None, *,
                quantize: bool = False) -> Path:
    """Write ``<stem>.onnx`` (and ``<stem>.json``, a copy of the sidecar, when ``out`` is elsewhere).

    Returns the .onnx path. With ``quantize`` also writes ``<stem>.int8.onnx`` (dynamic int8 weights).
    """
    if model_path is None and out is None:
        raise ModelError("exporting the shipped default model needs --out FILE_OR_DIR (the package folder is read-only)")
    sidecar = resolve_model(model_path)
    target = Path(out) if out else sidecar.with_suffix(".onnx")
    if target.suffix != ".onnx":
        target = target / (sidecar.stem + ".onnx")
    _export(sidecar, target)
    if target.with_suffix(".json") != sidecar:
        shutil.copyfile(sidecar, target.with_suffix(".json"))
        _copy_ood_stats(sidecar, target.with_suffix(".json"))
    if quantize:
        quantize_int8(target)
    return target


def cached_onnx(sidecar: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX export of a PyTorch checkpoint, made once and kept under ``<cache>/onnx`` by the weights' SHA-256."""
    from pneumo import __version__
    from pneumo.data.cache import default_cache_dir

    meta = read_meta(sidecar)
    if not meta.sha256:
        raise ModelError(f"{sidecar.name} has no weights checksum; export it with `pneumo export`")
    key = f"{meta.sha256}|{meta.arch}|{meta.input_size}|{__version__}|{OPSET}|{'+'.join(OUTPUTS)}"
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / "onnx" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"
    if not target.is_file():
        log.info("exporting %s to ONNX once (%s)", sidecar.name, target)
        _export(sidecar, target)
    return target


def _export(sidecar: Path, target: Path) -> None:
    """Trace the checkpoint into ``target`` atomically (temp file + rename)."""
    import torch

    from pneumo.models.checkpoint import load_checkpoint
    from pneumo.models.fast import LogitsAndFeatures

    model, meta = load_checkpoint(sidecar)
    target.parent.mkdir(parents=True, exist_ok=True)
    size = int(meta.input_size or model.input_size)
    _static_same_padding(model.eval(), size)
    example = torch.rand(2, 1, size, size)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but exact and fast
            torch.onnx.export(LogitsAndFeatures(model).eval(), (example,), str(tmp), input_names=["image"],
                              output_names=list(OUTPUTS), dynamic_axes={n: {0: "batch"} for n in ("image", *OUTPUTS)},
                              opset_version=OPSET, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - exporter errors are long; keep one line
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export failed for {meta.arch}: {str(exc).splitlines()[0]}") from None
    os.replace(tmp, target)


def _copy_ood_stats(sidecar: Path, target_sidecar: Path) -> None:
    """The OOD statistics file a sidecar names travels with its copy."""
    name = (read_meta(sidecar).ood or {}).get("file")
    if name and (sidecar.parent / name).is_file():
        shutil.copyfile(sidecar.parent / name, target_sidecar.parent / name)


def _static_same_padding(model: torch.nn.Module, size: int) -> None:
    """timm's TF-"same" convolutions (EfficientNet-Lite) work out their padding from the input shape at run time, which
    exports as Shape/Gather/Ceil/Pad nodes around every strided conv. The input size of a checkpoint is fixed, so swap
    them for timm's export twin (same weights, a constant pad that ONNX Runtime folds into the Conv)."""
    import torch
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport

    for module in model.modules():
        if type(module) is Conv2dSame:
            module.__class__ = Conv2dSameExport
            module.pad, module.pad_input_size = None, (0, 0)
    with torch.no_grad():  # one eager pass fixes each pad as plain ints (under tracing they would become tensors)
        model(torch.zeros(1, 1, size, size))


def quantize_int8(onnx_path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
    return out


