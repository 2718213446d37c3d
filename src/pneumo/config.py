"""Typed configuration: dataclasses, YAML presets and ``section.field=value`` overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pneumo.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent / "configs"
TASKS = ("binary", "3class")
RESIZE_POLICIES = ("squash", "letterbox")
TRANSFER_MODES = ("probe", "partial", "finetune", "scratch")


@dataclass
class DataConfig:
    root: str | None = None  # dataset folder or zip; falls back to $PNEUMO_DATA
    task: str = "binary"  # binary | 3class
    image_size: int = 224
    resize_policy: str = "squash"  # squash | letterbox
    intensity: str = "none"  # none | equalize | clahe | standardize (applied when the cache is built)
    markers: str = "none"  # none | inpaint: in-paint burnt-in laterality markers and text (train and inference)
    val_fraction: float = 0.1
    split_seed: int = 0
    cache_dir: str | None = None  # default: $PNEUMO_CACHE or ~/.cache/pneumo
    limit_per_class: int | None = None  # take at most N images per split x subtype (tests, smoke runs)
    train_sources: str = "all"  # all | original: train on original-resolution images only (what the test split holds)


@dataclass
class ModelConfig:
    name: str = "efficientnet_lite0"
    weights: str = "imagenet"  # imagenet | none | path to a .safetensors/.pth state dict
    mode: str = "probe"  # probe | partial | finetune | scratch
    freeze_stages: int = 3  # for mode=partial: stages of the backbone kept frozen
    drop_rate: float = 0.2


@dataclass
class AugmentConfig:
    rotate_deg: float = 7.0
    scale: float = 0.1
    translate: float = 0.06
    brightness: float = 0.15
    contrast: float = 0.15
    gamma: float = 0.15
    hflip: bool = False


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    loss: str = "ce"  # ce | focal
    balance: str = "weights"  # weights | sampler | none
    patience: int = 4  # early stopping on val ROC-AUC
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 0
    amp: bool = True  # bf16 autocast for training on CUDA and on CPUs with native bf16 (false: fp32)
    channels_last: bool = True  # with amp on such a CPU, or on CUDA
    probe_c: float = 1.0  # inverse regularisation of the probe's logistic regression
    max_steps_per_epoch: int | None = None  # for smoke tests
    checkpoint_every_steps: int = 0  # also save the resumable state every N optimizer steps (0: after each epoch)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EvalConfig:
    threshold_policy: str = "youden"  # youden | sensitivity:0.95
    val_view: str = "all"  # all | original: choose threshold/temperature on val images of original resolution only
    tta: bool = False  # average logits over the image and its horizontal flip
    n_bootstrap: int = 1000
    bootstrap_seed: int = 0
    ece_bins: int = 15


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 20.0
    max_pixels: int = 50_000_000
    api_key: str | None = None  # also $PNEUMO_API_KEY
    max_batch: int = 8
    batch_window_ms: float = 5.0
    cors_origins: list[str] = field(default_factory=list)
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (slow clients are closed)
    body_timeout_s: float = 60.0  # an upload must arrive within this (else 408)
    max_active: int = 16  # predictions decoded and run at once
    max_queue: int = 64  # predictions waiting for a slot; beyond: 503 + Retry-After
    queue_timeout_s: float = 10.0  # the longest wait for a slot (then 503 + Retry-After)
    upload_budget_mb: float = 512.0  # bytes of all uploads being read or waiting, summed; beyond: 503


@dataclass
class RunConfig:
    name: str = "default"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # An ensemble preset: these presets are trained as runs <name>-<member> on one split (the same overrides apply to
    # each) and evaluated as their mean probability in runs/<name>; the fields above are then unused.
    members: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Fail with one line before any work starts when the combination cannot run."""
        if self.data.task not in TASKS:
            raise ConfigError(f"unknown task {self.data.task!r}; choose one of {', '.join(TASKS)}")
        if self.data.resize_policy not in RESIZE_POLICIES:
            raise ConfigError(f"unknown resize policy {self.data.resize_policy!r}; choose {', '.join(RESIZE_POLICIES)}")
        if self.data.markers not in ("none", "inpaint"):
            raise ConfigError(f"unknown data.markers {self.data.markers!r}; choose none or inpaint")
        if self.model.mode not in TRANSFER_MODES:
            raise ConfigError(f"unknown mode {self.model.mode!r}; choose one of {', '.join(TRANSFER_MODES)}")
        if not 0.0 < self.data.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in (0, 0.5), got {self.data.val_fraction}")
        if self.data.image_size < 32:
            raise ConfigError(f"data.image_size must be at least 32, got {self.data.image_size}")
        if self.model.mode in ("probe", "partial") and self.model.weights == "none":
            raise ConfigError(f"mode={self.model.mode} freezes layers, which needs pretrained weights (model.weights)")
        w = self.model.weights
        if w not in ("imagenet", "none") and not Path(w).is_file():
            raise ConfigError(f"weights file not found: {w}")
        if self.train.epochs < 1 and self.model.mode != "probe":
            raise ConfigError("train.epochs must be at least 1")
        if self.train.checkpoint_every_steps < 0:
            raise ConfigError("train.checkpoint_every_steps must be >= 0")
        if self.train.balance not in ("weights", "sampler", "none"):
            raise ConfigError(f"train.balance must be weights, sampler or none, got {self.train.balance!r}")
        if self.train.loss not in ("ce", "focal"):
            raise ConfigError(f"train.loss must be ce or focal, got {self.train.loss!r}")
        if self.eval.val_view not in ("all", "original"):
            raise ConfigError(f"eval.val_view must be all or original, got {self.eval.val_view!r}")
        policy = self.eval.threshold_policy
        if policy != "youden" and not policy.startswith("sensitivity:"):
            raise ConfigError(f"eval.threshold_policy must be youden or sensitivity:X, got {policy!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key {where}{unknown[0]}; known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where}{name} must be a mapping")
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, values or {}, "")


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML scalars) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        node = values
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return values


def preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown preset {name_or_path!r}; known presets: {', '.join(known)}")


def load_config(preset: str | None = "default", overrides: list[str] | None = None) -> RunConfig:
    """Load a preset (name in configs/ or a YAML path), apply overrides, fill data.root from $PNEUMO_DATA."""
    values: dict[str, Any] = {}
    if preset:
        with open(preset_path(preset), encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    values = apply_overrides(values, overrides or [])
    cfg = from_dict(values)
    if cfg.data.root is None and os.environ.get("PNEUMO_DATA"):
        cfg.data.root = os.environ["PNEUMO_DATA"]
    return cfg


def member_configs(cfg: RunConfig, overrides: list[str]) -> list[RunConfig]:
    """The member runs of an ensemble preset: each member preset with the same overrides, named <name>-<member>."""
    if len(cfg.members) < 2:
        raise ConfigError(f"an ensemble preset needs at least two members, {cfg.name} lists {len(cfg.members)}")
    out = []
    for member in cfg.members:
        member_cfg = load_config(member, [*overrides, f"name={cfg.name}-{Path(member).stem}", f"out_dir={cfg.out_dir}"])
        if member_cfg.members:
            raise ConfigError(f"ensemble member {member} is itself an ensemble")
        if member_cfg.data.task != cfg.data.task:
            raise ConfigError(f"ensemble member {member} is a {member_cfg.data.task} model, not {cfg.data.task}")
        out.append(member_cfg)
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
