"""One way to make a model: ``create(name, num_classes=..., weights=...)`` over a registry of builders.

Names: a registered name (``list_models()``: ``scratch_cnn``, ``efficientnet_lite0/1/2`` ...) wins; any other
timm architecture (``timm.list_models()``: ``resnet18``, ``densenet121``, ``efficientnet_b0`` ...) is built through
timm; ``timm/<name>`` always means timm's own architecture, bypassing the registry (``timm/efficientnet_lite0`` is
timm's PyTorch-padded variant, not our offline-weights one). The name given is the one stored in checkpoints.

Weights: ``"imagenet"`` (offline for the EfficientNet-Lites, downloaded by timm otherwise), ``"none"`` (random
init, logged as a warning) or the path of a local state dict.

Builders take ``num_classes``, ``weights`` and ``drop_rate`` keywords. Besides the three values above they accept
``weights=None``: the architecture only, random init, silently, for rebuilding a saved checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from torch import nn

from pneumo.errors import ModelError
from pneumo.models import weights as W
from pneumo.models.net import PneumoNet

log = logging.getLogger(__name__)
Weights = str | Path | None  # "imagenet" | "none" | Path | None (silent random init)
Builder = Callable[..., PneumoNet]
TIMM_PREFIX = "timm/"
_REGISTRY: dict[str, Builder] = {}


def register_model(builder: Builder) -> Builder:
    """Decorator: register ``builder`` under its function name."""
    name = builder.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = builder
    return builder


def list_models() -> list[str]:
    """The registered names (any timm architecture works too, see the module docstring)."""
    return sorted(_REGISTRY)


def create(name: str, *, num_classes: int, weights: str | os.PathLike = "imagenet", drop_rate: float = 0.2) -> PneumoNet:
    """Build model ``name`` with a ``num_classes`` linear head.

    Args:
        name: a registered name, a timm architecture, or ``timm/<architecture>``.
        num_classes: output classes; 1000 keeps an ImageNet classifier as the head.
        weights: ``"imagenet"``, ``"none"`` or a local ``.safetensors``/``.pth`` state dict.
        drop_rate: dropout before the head, in [0, 1).

    Raises:
        ModelError: an unknown name, a bad class count or dropout rate, weights that do not fit.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ModelError(f"drop_rate must be in [0, 1), got {drop_rate}")
    return _builder(name)(num_classes=_check_classes(num_classes), weights=parse_weights(weights),
                          drop_rate=drop_rate)


def build(name: str, *, num_classes: int) -> PneumoNet:
    """The architecture only, randomly initialised, without warnings or downloads (to load a checkpoint into)."""
    return _builder(name)(num_classes=_check_classes(num_classes), weights=None, drop_rate=0.0)


def parse_weights(weights: str | os.PathLike) -> Weights:
    if isinstance(weights, str) and weights in ("imagenet", "none"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights must be 'imagenet', 'none' or an existing file; {weights} not found")
    return path


def _check_classes(num_classes: int) -> int:
    if int(num_classes) < 1:
        raise ModelError(f"num_classes must be at least 1, got {num_classes}")
    return int(num_classes)


def _builder(name: str) -> Builder:
    import timm

    if name in _REGISTRY:
        return _REGISTRY[name]
    timm_name = name.removeprefix(TIMM_PREFIX)
    if timm.is_model(timm_name):
        return lambda **kw: timm_net(timm_name, arch=name, **kw)
    raise ModelError(f"unknown model {name!r}; registered: {', '.join(list_models())}; "
                     f"or any timm architecture (timm.list_models(), e.g. resnet18, densenet121, timm/<name>)")


def timm_net(timm_name: str, *, arch: str, num_classes: int, weights: Weights, drop_rate: float,
             imagenet: Callable[[nn.Module], None] | None = None) -> PneumoNet:
    """A timm architecture as a ``PneumoNet``.

    Args:
        timm_name: the timm architecture.
        arch: the name stored in checkpoints.
        num_classes: output classes.
        weights: see the module docstring.
        drop_rate: dropout before the head.
        imagenet: loads ImageNet weights into a 1000-class model in place; default: timm's own (downloaded).
    """
    import timm

    if weights == "imagenet" and imagenet is None:
        model = W.timm_pretrained(timm_name, num_classes=num_classes)
    else:
        pretrained_classes = 1000 if weights == "imagenet" else num_classes
        model = timm.create_model(timm_name, pretrained=False, num_classes=pretrained_classes)
        if weights == "imagenet":
            imagenet(model)
            if num_classes != pretrained_classes:
                model.reset_classifier(num_classes)
        elif isinstance(weights, Path):
            state = W.from_pneumo_checkpoint(W.read_state_file(weights), _classifier_names(model)[0])
            W.load_into(model, state, classifier=_classifier_names(model), source=str(weights))
        elif weights == "none":
            log.warning("%s: random initialisation (weights=none); expect a long training", arch)
    return wrap_timm(model, arch=arch, drop_rate=drop_rate)


def wrap_timm(model: nn.Module, *, arch: str, drop_rate: float) -> PneumoNet:
    """Move a timm model's linear classifier into ``PneumoNet.head`` and keep the rest as the pooled backbone."""
    from timm.models import group_parameters

    classifier = model.get_classifier()
    num_classes = model.num_classes
    model.reset_classifier(0)
    features = getattr(model, "head_hidden_size", None) or model.num_features
    head = classifier if isinstance(classifier, nn.Linear) else nn.Linear(features, num_classes)
    if head.in_features != features:
        raise ModelError(f"{arch}: classifier takes {head.in_features} features but the backbone gives {features}")
    cfg = model.pretrained_cfg
    sentinel = "\0unmatched"  # lands in timm's group of unmatched parameters: the neck, never a stage
    names = [n for n, _ in model.named_parameters()]
    listed = SimpleNamespace(named_parameters=lambda: [(n, None) for n in [*names, sentinel]])
    groups = group_parameters(listed, model.group_matcher(coarse=True))  # timm's public API; reads named_parameters()
    ordered = [groups[k] for k in sorted(groups) if sentinel not in groups[k]]
    stem, stages = (ordered[0], ordered[1:]) if ordered else ([], [])
    return PneumoNet(model, head, arch=arch, in_chans=3, input_size=cfg["input_size"][-1], mean=cfg["mean"],
                     std=cfg["std"], stem=stem, stages=stages, target=_target_name(model), drop_rate=drop_rate)


def _classifier_names(model: nn.Module) -> list[str]:
    names = model.pretrained_cfg.get("classifier") or "classifier"
    return [names] if isinstance(names, str) else list(names)


def _target_name(model: nn.Module) -> str:
    """EfficientNets: ``bn2`` (conv_head + BN + activation, the map that is pooled); else timm's last feature module."""
    if hasattr(model, "conv_head") and hasattr(model, "bn2"):
        return "bn2"
    info = getattr(model, "feature_info", None)
    if info:
        return info[-1]["module"]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__} has no conv layer for Grad-CAM")
    return convs[-1]


def _lite(variant: int, *, num_classes: int, weights: Weights, drop_rate: float) -> PneumoNet:
    arch = f"efficientnet_lite{variant}"

    def offline_imagenet(model: nn.Module) -> None:
        model.load_state_dict(W.map_by_order(W.offline_lite_state(variant), model.state_dict(), what=arch))

    if isinstance(weights, Path):
        state = W.read_state_file(weights)
        if any(k.startswith("_conv_stem") for k in state):  # lukemelas-style file: map by order like the offline one
            if weights.suffix == ".safetensors":
                raise ModelError(f"{weights.name}: lukemelas-style keys map by order, which safetensors does not "
                                 "keep; pass the original .pth file")

            def from_file(model: nn.Module) -> None:
                model.load_state_dict(W.map_by_order(state, model.state_dict(), what=str(weights)))

            return timm_net(f"tf_efficientnet_lite{variant}", arch=arch, num_classes=num_classes,
                            weights="imagenet", drop_rate=drop_rate, imagenet=from_file)
    return timm_net(f"tf_efficientnet_lite{variant}", arch=arch, num_classes=num_classes, weights=weights,
                    drop_rate=drop_rate, imagenet=offline_imagenet)


@register_model
def efficientnet_lite0(*, num_classes: int, weights: Weights, drop_rate: float) -> PneumoNet:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``), 224 px, offline ImageNet weights, 3.4 M parameters."""
    return _lite(0, num_classes=num_classes, weights=weights, drop_rate=drop_rate)


@register_model
def efficientnet_lite1(*, num_classes: int, weights: Weights, drop_rate: float) -> PneumoNet:
    """EfficientNet-Lite1 (timm ``tf_efficientnet_lite1``), 240 px, offline ImageNet weights."""
    return _lite(1, num_classes=num_classes, weights=weights, drop_rate=drop_rate)


@register_model
def efficientnet_lite2(*, num_classes: int, weights: Weights, drop_rate: float) -> PneumoNet:
    """EfficientNet-Lite2 (timm ``tf_efficientnet_lite2``), 260 px, offline ImageNet weights."""
    return _lite(2, num_classes=num_classes, weights=weights, drop_rate=drop_rate)
