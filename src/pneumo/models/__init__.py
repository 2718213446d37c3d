"""Model zoo: ``create(name, num_classes=..., weights=...) -> PneumoNet``; see ``registry`` for the naming rule."""

from __future__ import annotations

from pneumo.models import scratch as _scratch  # noqa: F401 - registers scratch_cnn
from pneumo.models.net import PneumoNet
from pneumo.models.registry import build, create, list_models, register_model

__all__ = ["PneumoNet", "build", "create", "list_models", "register_model"]
