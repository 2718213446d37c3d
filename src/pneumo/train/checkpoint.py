"""Resumable training state without pickle: what ``--resume`` needs (model, optimizer, scheduler, RNG states and the
loop's own counters) in ``<stem>.safetensors`` + ``<stem>.json``.

Nested optimizer/scheduler state is flattened: tensors become safetensors entries, the structure around them JSON
with ``{"__tensor__": key}`` placeholders. Both files are written atomically, tensors first (the JSON is the commit
marker). The model checkpoint itself (weights + typed sidecar) is `pneumo.models.checkpoint`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo import atomic
from pneumo.errors import ConfigError, ModelError
from pneumo.models.checkpoint import load_exact, read_tensors, write_tensors
from pneumo.models.sidecar import json_default, read_json, stem_of

STATE_FORMAT = "pneumo-train-state/1"
# what a resumed run may change: where it reads and writes, the device and how long it trains, not what it trains (a
# training audit: resumed with another image size and policy, a finished run rewrote its config.yaml, refitted its
# checks and re-evaluated its 64 px model on 96 px images, exit 0)
RESUME_MAY_CHANGE = frozenset({"name", "out_dir", "data.root", "data.cache_dir", "train.epochs", "train.device",
                               "train.hold_memory", "train.checkpoint_every_steps", "eval.n_bootstrap"})


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
    stem = stem_of(path)
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    payload = {
        "optimizer": _flatten(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": _flatten(scheduler.state_dict(), "scheduler", tensors) if scheduler is not None else None,
        "rng": _flatten(_rng_state(), "rng", tensors),
        "extra": extra,
    }
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    digest = write_tensors(stem.with_suffix(".safetensors"), tensors, {"format": STATE_FORMAT})
    return atomic.write_json(stem.with_suffix(".json"), {"format": STATE_FORMAT, "sha256": digest, **payload},
                             default=json_default)


def load_train_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> dict:
    """Restore model, optimizer, scheduler and RNG states in place; returns the ``extra`` dict that was saved."""
    stem = stem_of(path)
    payload = read_json(stem.with_suffix(".json"), STATE_FORMAT)
    tensors = read_tensors(stem.with_suffix(".safetensors"), payload.get("sha256"))
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    model_state = {k.removeprefix("model."): v.to(device) for k, v in tensors.items() if k.startswith("model.")}
    load_exact(model, model_state, str(stem.with_suffix(".safetensors")))
    try:
        optimizer.load_state_dict(_unflatten(payload["optimizer"], tensors))
        if scheduler is not None and payload.get("scheduler") is not None:
            scheduler.load_state_dict(_unflatten(payload["scheduler"], tensors))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelError(f"training state {stem} does not fit this optimizer/scheduler: {exc}; start a new run") from None
    _set_rng_state(_unflatten(payload["rng"], tensors))
    return payload.get("extra", {})


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


def refuse_config_changes(run_dir: Path, cfg: Any) -> None:
    """A resumed run goes on as it was configured (its ``config.yaml``): `RESUME_MAY_CHANGE` only.

    Raises:
        ConfigError: naming the first changes, and what to do instead.
    """
    from pneumo.config import load_config

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old, new = _flat_values(load_config(str(saved), []).model_dump()), _flat_values(cfg.model_dump())
    changed = [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
               if key not in RESUME_MAY_CHANGE and old.get(key) != new.get(key)]
    if changed:
        raise ConfigError(f"--resume continues {run_dir} as it was configured; this would change "
                          f"{'; '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}: train a new run (another "
                          "--name) or replace this one (--force); a resumed run may change only where it reads and "
                          "writes, the device and train.epochs")


def _flat_values(values: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in values.items():
        out.update(_flat_values(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out
