"""Model zoo: ``create(name, num_classes=..., weights=...) -> PneumoNet``; see ``registry`` for the naming rule.

The names below load on first use, so that ``pneumo.models.sidecar`` (read by the ONNX predictor and the service)
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pneumo.models.net import PneumoNet
    from pneumo.models.registry import build, create, list_models, register_model

__all__ = ["PneumoNet", "build", "create", "list_models", "register_model"]


def __getattr__(name: str) -> Any:
    if name == "PneumoNet":
        from pneumo.models.net import PneumoNet

        return PneumoNet
    if name in __all__:
        from pneumo.models import registry, scratch  # noqa: F401 - scratch registers scratch_cnn

        return getattr(registry, name)
    raise AttributeError(f"module 'pneumo.models' has no attribute {name!r}")
