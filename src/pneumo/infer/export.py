"""ONNX export of a checkpoint (dynamic batch, float input (B, 1, S, S) in [0, 1] -> logits and pooled ``features``
(the input of the out-of-distribution score)).

Integrity: an export is only ever used after the weights file's own SHA-256 (streamed from disk on every load) matched
the one in the sidecar, and the .onnx file's own SHA-256 matched the record written next to it at export
(``<name>.onnx.sha256``). A mismatch raises `IntegrityError`; nothing falls back silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pneumo import atomic
from pneumo.atomic import sha256_file
from pneumo.data.rundir import RunDir
from pneumo.errors import ModelError
from pneumo.models.records import check_crossfit, onnx_record_path, verify_onnx
from pneumo.models.sidecar import (
    ASSETS,
    companion_files,
    model_sidecars,
    read_meta,
    resolve_model,
    verify_weights,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
OPSET = 18
OUTPUTS = ("logits", "features")  # part of the export cache key: an export without features is not reused


def export_onnx(model_path: str | os.PathLike | None, out: str | os.PathLike | None = None) -> Path:
    """Write ``<stem>.onnx`` (and, when ``out`` is elsewhere, a copy of the sidecar ``<stem>.json``, its checks and
    card) into the folder ``out`` (or as the file ``out`` when it ends in .onnx). Returns the .onnx path."""
    if model_path is None and out is None:
        raise ModelError("exporting the shipped default model needs --out DIR (the package folder is read-only)")
    sidecar = resolve_model(model_path)
    meta = read_meta(sidecar)
    if meta.threshold_policy is None:  # its threshold is a placeholder: nothing to deploy yet (an export audit)
        how = (f"pneumo evaluate --model {sidecar.parent}" if RunDir(sidecar.parent).config.is_file() else
               f"pneumo operating-point --model {sidecar} --data LABELLED_IMAGES --out NEW_FOLDER")  # (not a run)
        raise ModelError(f"{sidecar} has no operating point chosen on validation (a --no-eval run?): give it one "
                         f"first ({how}), then export it")
    target = Path(out) if out else sidecar.with_suffix(".onnx")
    folder = target if target.suffix != ".onnx" else target.parent
    if folder.resolve().is_relative_to(ASSETS):  # read-only, and predict would load what was written there (reviews)
        raise ModelError(f"{'--out ' if out else ''}{folder} is pneumo's own model folder (read-only): export "
                         + ("into a folder of yours" if out else "with --out DIR"))
    if target.suffix != ".onnx":
        _check_out(target, sidecar, meta)
        target = target / (sidecar.stem + ".onnx")
    weights_sha256 = verify_weights(sidecar)
    _export(sidecar, target)
    _write_record(target, weights_sha256)
    if target.with_suffix(".json").resolve() != sidecar.resolve():  # (another spelling of its own folder: a review)
        shutil.copyfile(sidecar, target.with_suffix(".json"))
        _copy_companions(sidecar, target.with_suffix(".json"))
    return target


def _check_out(folder: Path, sidecar: Path, meta) -> None:
    """Refuse an export folder that is a file, or that holds another model: a second export into one folder left two
    models there, and the folder then named the other one (an export audit).

    Raises:
        ModelError: naming the folder and what it holds.
    """
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"--out {folder} is a file: give a folder (the export is <folder>/{sidecar.stem}.onnx)")
    if not folder.is_dir() or folder.resolve() == sidecar.resolve().parent:
        return
    others = [j.name for j in model_sidecars(folder) if j.stem != sidecar.stem or read_meta(j).sha256 != meta.sha256]
    if others:
        raise ModelError(f"--out {folder} holds another model ({', '.join(others)}): export each model into a folder "
                         "of its own, empty or holding an earlier export of the same model")


def export_target(root: Path, weights_sha256: str, meta) -> Path:
    """Where the cache keeps the export of these weights: keyed on them, the architecture, the input size, the model
    code and its libraries (`provenance.model_code`), the opset and the outputs."""
    from pneumo.provenance import model_code

    key = f"{weights_sha256}|{meta.arch}|{meta.input_size}|{model_code()}|{OPSET}|{'+'.join(OUTPUTS)}"
    return root / "onnx" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"


def cached_onnx(sidecar: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX export of a PyTorch checkpoint, made once and kept under ``<cache>/onnx`` by the weights file's own
    SHA-256; the weights and the cached file are verified on every call.

    Raises:
        IntegrityError: the weights do not match the sidecar's checksum, or the cached export does not match its record.
        ModelError: the export cannot be written (a read-only cache, as in a container with a read-only root).
    """
    from pneumo.data.cache import default_cache_dir

    meta = read_meta(sidecar)
    weights_sha256 = verify_weights(sidecar, meta)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = export_target(root, weights_sha256, meta)
    if target.is_file() and verify_onnx(target, weights_sha256):
        return target
    log.info("exporting %s to ONNX once (%s)", sidecar.name, target)
    try:
        _export(sidecar, target)
        _write_record(target, weights_sha256)
    except OSError as exc:  # read-only or full: no export to keep (`auto` then scores with PyTorch)
        raise ModelError(f"cannot write the ONNX export into {root / 'onnx'}: {exc.strerror or exc} (set "
                         "PNEUMO_CACHE to a writable folder, or use --backend torch)") from None
    return target


def _write_record(onnx_path: Path, weights_sha256: str) -> None:
    atomic.write_json(onnx_record_path(onnx_path), {"onnx_sha256": sha256_file(onnx_path),
                                                "weights_sha256": weights_sha256})


def _export(sidecar: Path, target: Path) -> None:
    """Trace the checkpoint into ``target`` atomically (temp file + rename)."""
    import torch

    from pneumo.models.checkpoint import load_checkpoint
    from pneumo.models.fast import LogitsAndFeatures, example_input

    model, meta = load_checkpoint(sidecar)
    size = int(meta.input_size or model.input_size)
    _static_same_padding(model.eval(), size)
    example = example_input(size)
    with atomic.writing(target) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but exact and fast
                torch.onnx.export(LogitsAndFeatures(model).eval(), (example,), str(tmp), input_names=["image"],
                                  output_names=list(OUTPUTS),
                                  dynamic_axes={n: {0: "batch"} for n in ("image", *OUTPUTS)}, opset_version=OPSET,
                                  dynamo=False)
        except Exception as exc:  # noqa: BLE001 - exporter errors are long; keep one line
            raise ModelError(f"ONNX export failed for {meta.arch}: {str(exc).splitlines()[0]}") from None


def _copy_companions(sidecar: Path, target_sidecar: Path) -> None:
    """The OOD statistics and orientation check a sidecar names travel with its copy, and its card (the export is the
    same model at the same operating point; `pneumo serve` shows it): the model's ``.md``, or, for a run, which has
    none, the card built from its sidecar (the export folder is what gets deployed)."""
    from pneumo.infer.card import card_markdown, card_of, record_card

    meta = read_meta(sidecar)
    check_crossfit(sidecar, meta)  # the checks are verified by the copy's loaders; the adapted-on list here
    for name in companion_files(meta):
        if (sidecar.parent / name).is_file():
            shutil.copyfile(sidecar.parent / name, target_sidecar.parent / name)
    if card_markdown(sidecar, meta) is not None:  # the model's own card, checked against its record, travels as is
        shutil.copyfile(sidecar.with_suffix(".md"), target_sidecar.with_suffix(".md"))
    else:  # the card built from the sidecar, recorded in the copy's sidecar so that the copy shows it
        atomic.write_text(target_sidecar.with_suffix(".md"), card_of(sidecar, meta))
        record_card(target_sidecar)


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
