"""Checkpoints without pickle: tensors in ``<stem>.safetensors``, everything else in a ``<stem>.json`` sidecar.

* ``save_checkpoint`` / ``load_checkpoint``: a trained ``PneumoNet`` + its sidecar (architecture, classes, input
  size, normalization, threshold, ...). The sidecar carries the SHA-256 of the weights file, checked on load.
* ``save_train_state`` / ``load_train_state``: what ``--resume`` needs (model, optimizer, scheduler, RNG states and
  the loop's own counters). Nested optimizer/scheduler state is flattened: tensors become safetensors entries,
  the structure around them JSON with ``{"__tensor__": key}`` placeholders.

Both files of a pair are written atomically (temp file + ``os.replace``), tensors first: the JSON, written last,
is the commit marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.errors import ModelError
from pneumo.models import PneumoNet, build

FORMAT = "pneumo-checkpoint/1"
STATE_FORMAT = "pneumo-train-state/1"
_EXACT = ("pixel_mean", "pixel_std")  # kept in float32 in half-precision exports


def save_checkpoint(stem: str | os.PathLike, model: PneumoNet, meta: dict, *, half: bool = False) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns the sidecar path.

    Args:
        stem: the path without suffix (a ``.json``/``.safetensors`` suffix is dropped).
        model: the model to save (any device).
        meta: sidecar entries (classes, task, threshold, metrics, ...); they override ``model.meta()``.
        half: store floating tensors as float16 (half the size; loaded back as float32).
    """
    stem = _stem(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu").clone().contiguous()
        if half and value.is_floating_point() and key not in _EXACT:
            value = value.half()
        tensors[key] = value
    weights = stem.with_suffix(".safetensors")
    digest = _write_tensors(weights, tensors, {"format": FORMAT, "arch": model.arch})
    sidecar = {**model.meta(), **meta, "format": FORMAT, "weights_file": weights.name,
               "dtype": "float16" if half else "float32", "sha256": digest}
    sidecar.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    return _write_json(stem.with_suffix(".json"), _finite(json.loads(json.dumps(sidecar, default=_json_default))))


def load_checkpoint(path: str | os.PathLike) -> tuple[PneumoNet, dict]:
    """Rebuild the model a sidecar describes and load its verified weights (eval mode, float32, CPU).

    Args:
        path: ``<stem>.json``, ``<stem>.safetensors`` or the stem itself.
    """
    stem = _stem(path)
    meta = _read_json(stem.with_suffix(".json"), FORMAT)
    for key in ("arch", "num_classes"):
        if key not in meta:
            raise ModelError(f"checkpoint sidecar {stem.with_suffix('.json')} lacks {key!r}")
    weights = stem.with_name(meta.get("weights_file", stem.name + ".safetensors"))
    tensors = _read_tensors(weights, meta.get("sha256"))
    model = build(meta["arch"], num_classes=int(meta["num_classes"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    _load_exact(model, state, str(weights))
    if "input_size" in meta:
        model.input_size = int(meta["input_size"])
    return model.eval(), meta


def save_train_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, extra: dict) -> Path:
    """Write everything a resumed run needs to ``<path>.safetensors`` + ``<path>.json``; returns the JSON path.

    Args:
        path: the stem of the pair.
        model: the model being trained.
        optimizer: its optimizer.
        scheduler: its LR scheduler (anything with ``state_dict``), or None.
        extra: JSON-able counters of the loop (epoch, step, best score, ...).
    """
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    payload = {
        "optimizer": _flatten(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": _flatten(scheduler.state_dict(), "scheduler", tensors) if scheduler is not None else None,
        "rng": _flatten(_rng_state(), "rng", tensors),
        "extra": extra,
    }
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    digest = _write_tensors(stem.with_suffix(".safetensors"), tensors, {"format": STATE_FORMAT})
    return _write_json(stem.with_suffix(".json"), {"format": STATE_FORMAT, "sha256": digest, **payload})


def load_train_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> dict:
    """Restore model, optimizer, scheduler and RNG states in place; returns the ``extra`` dict that was saved."""
    stem = _stem(path)
    payload = _read_json(stem.with_suffix(".json"), STATE_FORMAT)
    tensors = _read_tensors(stem.with_suffix(".safetensors"), payload.get("sha256"))
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    model_state = {k.removeprefix("model."): v.to(device) for k, v in tensors.items() if k.startswith("model.")}
    _load_exact(model, model_state, str(stem.with_suffix(".safetensors")))
    try:
        optimizer.load_state_dict(_unflatten(payload["optimizer"], tensors))
        if scheduler is not None and payload.get("scheduler") is not None:
            scheduler.load_state_dict(_unflatten(payload["scheduler"], tensors))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelError(f"training state {stem} does not fit this optimizer/scheduler: {exc}; start a new run") from None
    _set_rng_state(_unflatten(payload["rng"], tensors))
    return payload.get("extra", {})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stem(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # safetensors writes 0600; checkpoints are meant to be shared and packaged
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def _write_json(path: Path, payload: dict) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=_json_default), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _finite(value: Any) -> Any:
    """NaN/inf -> None, so the sidecar is strict JSON (browsers reject NaN)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _read_json(path: Path, expected_format: str) -> dict:
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path} (expected a .json sidecar next to its .safetensors)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"checkpoint sidecar {path} is not valid JSON ({exc}); it is truncated or corrupted") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != expected_format:
        raise ModelError(f"{path} has format {found!r}, expected {expected_format!r}")
    return payload


def _read_tensors(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
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


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"{source} does not match {getattr(model, 'arch', type(model).__name__)}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ModelError(f"{source}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, model wants {tuple(own[bad[0]].shape)}")
    model.load_state_dict(state)


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by ``{"__tensor__": key}``; keep tuples and non-string dict keys."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": prefix}
    if isinstance(obj, dict):
        items = [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return dict(items)
        return {"__items__": items}
    if isinstance(obj, (list, tuple)):
        values = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": values} if isinstance(obj, tuple) else values
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ModelError(f"cannot store {type(obj).__name__} at {prefix} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
