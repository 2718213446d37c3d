"""The checkpoint sidecar: a typed record (`CheckpointMeta`) of ``<stem>.json``, read and written without torch.

The sidecar carries what predict, serve and explain need so that they never guess: the architecture, input size,
normalization, classes, preprocessing, the validation-chosen threshold and temperature, the metrics, and the SHA-256
of the weights file. Sidecars written before a field existed still load: a missing field takes the default it always
had. Torch-free on purpose: the ONNX predictor and the service read sidecars without importing torch. The weights
themselves are `pneumo.models.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo import atomic
from pneumo.data.rundir import RunDir
from pneumo.errors import ModelError

FORMAT = "pneumo-checkpoint/1"



ASSETS = Path(__file__).resolve().parents[1] / "assets"  # the shipped default model


DEFAULT_MODEL = ASSETS / "default-model.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """The sidecar of a checkpoint. ``extra`` keeps keys this version does not know (a model card, ...) so that a
    read-modify-write round trip loses nothing.

    Attributes:
        arch: registry name of the architecture.
        num_classes: outputs of the head.
        input_size: side S of the square model input (None: the architecture's default).
        mean: per-channel normalization mean applied inside the model.
        std: per-channel normalization std applied inside the model.
        task: ``binary`` or ``3class``.
        classes: class names in logit order (class 0 is normal).
        resize_policy: ``squash`` or ``letterbox``.
        intensity: the intensity step (``none``, ``equalize``, ``clahe``, ``standardize``).
        markers: what happens to burnt-in markers and text (``none``, ``inpaint``).
        crop: the crop before resizing (``none``, ``border:F``, ``lungs``; `pneumo.data.crop`).
        mode: how it was trained (``probe``, ``partial``, ``full``, ``scratch``), if known.
        threshold: decision threshold on P(pneumonia), chosen on validation.
        threshold_policy: the policy that chose it (None: not yet evaluated).
        temperature: temperature for calibrated probabilities (fitted on validation).
        tta: predict with horizontal-flip averaging (as it was evaluated).
        metrics: headline metrics written by the evaluation.
        training: training facts (wall time, device, best epoch, ...).
        config: the resolved run configuration.
        commit: git commit of the code that trained it.
        created: ISO time of saving.
        weights_file: name of the safetensors file next to the sidecar.
        dtype: ``float32`` or ``float16`` (storage; always loaded as float32).
        sha256: SHA-256 of the weights file.
        ood: the out-of-distribution statistics' entry (file, checksum, method, threshold, ...; `pneumo.models.ood`),
            None when the model has none.
        format: the sidecar format tag.
        extra: unknown keys, kept as they were.
    """

    arch: str
    num_classes: int
    input_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    task: str = "binary"
    classes: list[str] = field(default_factory=lambda: _class_names("binary"))
    resize_policy: str = "squash"
    intensity: str = "none"
    markers: str = "none"
    crop: str = "none"
    mode: str | None = None
    threshold: float = 0.5
    threshold_policy: str | None = None
    temperature: float = 1.0
    tta: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    commit: str | None = None
    created: str | None = None
    weights_file: str | None = None
    dtype: str = "float32"
    sha256: str | None = None
    ood: dict[str, Any] | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], *, source: str = "checkpoint sidecar") -> CheckpointMeta:
        """A sidecar dict (any version of this format) -> the record; ``ModelError`` if ``arch``/``num_classes``
        are missing or a field has the wrong type."""
        if not isinstance(payload, Mapping):
            raise ModelError(f"{source} is not a JSON object")
        for key in ("arch", "num_classes"):
            if key not in payload:
                raise ModelError(f"{source} lacks {key!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in payload.items() if k in known and v is not None}
        if "classes" not in values and "task" in values:
            values["classes"] = _class_names(values["task"])
        try:
            for key, kind in (("num_classes", int), ("input_size", int), ("threshold", float),
                              ("temperature", float), ("tta", bool)):
                if key in values:
                    values[key] = kind(values[key])
            for key in ("mean", "std"):
                if key in values:
                    values[key] = [float(v) for v in values[key]]
            if "classes" in values:
                values["classes"] = [str(c) for c in values["classes"]]
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source} has a malformed field: {exc}") from None
        if "threshold_policy" in payload:  # null is a value here: not evaluated yet
            values["threshold_policy"] = payload["threshold_policy"]
        extra = {k: v for k, v in payload.items() if k not in known}
        return cls(**values, extra=extra)

    def to_json(self) -> dict[str, Any]:
        """The sidecar dict (strict JSON: NaN/inf become null)."""
        payload = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return atomic.to_jsonable(json.loads(json.dumps({**payload, **self.extra}, default=json_default)))

    @property
    def model_id(self) -> str:
        """``<arch>-<first 12 hex digits of the weights' SHA-256>``."""
        return f"{self.arch}-{(self.sha256 or '')[:12]}"


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """The typed sidecar of ``<stem>.json`` (also given as the weights file or the stem), without loading weights."""
    sidecar = stem_of(path).with_suffix(".json")
    return CheckpointMeta.from_json(read_json(sidecar, FORMAT), source=f"checkpoint sidecar {sidecar}")


def write_meta(path: str | os.PathLike, meta: CheckpointMeta) -> Path:
    """Write a sidecar atomically (e.g. after the evaluation chose the threshold and temperature)."""
    return atomic.write_json(stem_of(path).with_suffix(".json"), meta.to_json())


def weights_path(sidecar: str | os.PathLike, meta: CheckpointMeta) -> Path:
    """The safetensors file a sidecar points to."""
    sidecar = stem_of(sidecar).with_suffix(".json")
    return sidecar.with_name(meta.weights_file or sidecar.stem + ".safetensors")


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A run folder, a checkpoint (.safetensors / .json / .onnx) or None for the shipped default model -> sidecar path."""
    if model is None:
        if not DEFAULT_MODEL.is_file():
            raise ModelError("no model given and the shipped default model is missing: pass --model RUN_DIR")
        return DEFAULT_MODEL
    path = Path(model)
    if path.is_dir() and (path / "ensemble.json").is_file():
        members = json.loads((path / "ensemble.json").read_text()).get("members", [])
        raise ModelError(f"{model} is an ensemble evaluation, not one model: predict with a member run "
                         f"({', '.join(members)})")
    if path.is_dir():
        path = RunDir(path).model
    elif path.suffix in (".safetensors", ".onnx"):
        path = path.with_suffix(".json")
    if not path.is_file():
        raise ModelError(f"model not found: {model} (give a run folder or a checkpoint file)")
    return path


def card_markdown(sidecar: str | os.PathLike) -> str | None:
    """The model's card, ``<stem>.md`` next to its sidecar (the shipped and adapted models have one), or None."""
    markdown = Path(sidecar).with_suffix(".md")
    return markdown.read_text(encoding="utf-8", errors="replace") if markdown.is_file() else None


def stem_of(path: str | os.PathLike) -> Path:
    """The path without a ``.json`` / ``.safetensors`` suffix."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def read_json(path: Path, expected_format: str) -> dict:
    """A sidecar's JSON object, checked for ``format``; ``ModelError`` for missing, corrupt or foreign files."""
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


def json_default(value: Any) -> Any:
    """JSON for numpy/torch scalars and arrays, paths and sets."""
    numel = getattr(value, "numel", None)  # torch tensors (numpy's ``size`` is an int)
    if callable(numel) and numel() == 1 or getattr(value, "ndim", None) == 0:
        return value.item()  # numpy / torch scalars
    if hasattr(value, "tolist"):
        return value.tolist()  # numpy arrays, torch tensors
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _class_names(task: str) -> list[str]:
    from pneumo.data.splits import class_names  # pandas: only when a sidecar lacks its class names

    return class_names(task)
