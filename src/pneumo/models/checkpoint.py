"""Checkpoints without pickle: tensors in ``<stem>.safetensors``, a typed ``<stem>.json`` sidecar next to them
(`pneumo.models.sidecar.CheckpointMeta`, which carries the SHA-256 of the weights file, checked on load).

Both files of a pair are written atomically, tensors first: the JSON, written last, is the commit marker. The
low-level helpers (`write_tensors`, `read_tensors`, `load_exact`) are shared with the resumable
training state in `pneumo.train.checkpoint`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumo.errors import ModelError
from pneumo.models import build
from pneumo.models.net import PneumoNet
from pneumo.models.sidecar import FORMAT, WEIGHTS_FORMAT, CheckpointMeta, read_meta, stem_of, weights_path, write_meta
from pneumo.models.tensorfile import write_safetensors
from pneumo.provenance import utc_now

_EXACT = ("pixel_mean", "pixel_std")  # kept in float32 in half-precision exports


def save_checkpoint(stem: str | os.PathLike, model: PneumoNet, meta: Mapping[str, Any] | None = None, *,
                    half: bool = False) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns the sidecar path.

    Args:
        stem: the path without suffix (a ``.json``/``.safetensors`` suffix is dropped).
        model: the model to save (any device).
        meta: sidecar entries (classes, task, threshold, metrics, ...); they override ``model.meta()``.
        half: store floating tensors as float16 (half the size; loaded back as float32).
    """
    stem = stem_of(stem)
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu").clone().contiguous()
        if half and value.is_floating_point() and key not in _EXACT:
            value = value.half()
        tensors[key] = value
    weights = stem.with_suffix(".safetensors")
    digest = write_tensors(weights, tensors, {"format": WEIGHTS_FORMAT, "arch": model.arch})
    sidecar = {**model.meta(), **(meta or {}), "format": FORMAT, "weights_file": weights.name,
               "dtype": "float16" if half else "float32", "sha256": digest}
    sidecar.setdefault("created", utc_now())  # the one time format of every output
    return write_meta(stem.with_suffix(".json"), CheckpointMeta.from_json(sidecar))


def load_checkpoint(path: str | os.PathLike) -> tuple[PneumoNet, CheckpointMeta]:
    """Rebuild the model a sidecar describes and load its verified weights (eval mode, float32, CPU).

    Args:
        path: ``<stem>.json``, ``<stem>.safetensors`` or the stem itself.
    """
    meta = read_meta(path)
    weights = weights_path(path, meta)
    if not meta.sha256:  # unverifiable weights are never loaded (a sidecar whose checksum was deleted)
        raise ModelError(f"{stem_of(path).with_suffix('.json').name} has no weights checksum ('sha256'): refusing to "
                         f"load {weights.name} unverified; re-save the checkpoint")
    tensors = read_tensors(weights, meta.sha256)
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: the caller's generator stays put
        model = build(meta.arch, num_classes=meta.num_classes)
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    load_exact(model, state, str(weights))
    if meta.input_size is not None:
        model.input_size = meta.input_size
    return model.eval(), meta


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write a safetensors file atomically (mode 0644: checkpoints are shared and packaged); returns its SHA-256."""
    from safetensors.torch import save

    return write_safetensors(path, save(tensors, metadata=metadata))


def read_tensors(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, after checking its SHA-256 (when one is given)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise ModelError(f"checkpoint weights missing: {path} (the .json sidecar points to it)")
    data = path.read_bytes()
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ModelError(f"checksum mismatch for {path}: the file is truncated, corrupted or was replaced; "
                         "copy it again or re-save the checkpoint")
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` after checking the keys and shapes match exactly (``ModelError`` if not)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"{source} does not match {getattr(model, 'arch', type(model).__name__)}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ModelError(f"{source}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, model wants {tuple(own[bad[0]].shape)}")
    model.load_state_dict(state)


