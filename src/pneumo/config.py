"""Typed configuration: dataclasses, YAML presets and ``section.field=value`` overrides."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import yaml

from pneumo.errors import ConfigError

log = logging.getLogger(__name__)
PRESET_DIR = Path(__file__).resolve().parent / "configs"
TASKS = ("binary", "3class")
RESIZE_POLICIES = ("squash", "letterbox")
TRANSFER_MODES = ("probe", "partial", "finetune", "scratch")
INTENSITIES = ("none", "equalize", "clahe", "standardize")
# Keys that older configs (and the run folders written with them) still hold; they load with a warning.
REMOVED_KEYS = {"train.num_workers": "never read (data loading runs in the main process)",
                "train.probe_c": "never read (the probe's regularisation is chosen on the val fold)"}
# Study options that left the product, with the value each had by default: the product behaves as that value did. A
# run that set another value trained another configuration (`evaluate.select.config_key` keeps them apart); its row
# stays reproducible from the commit BENCHMARKS.md records.
REMOVED_DEFAULTS: dict[str, Any] = {
    "data.train_sources": "all", "eval.val_view": "all", "train.label_smoothing": 0.0, "train.mixup": 0.0,
    "train.ema": 0.0, "train.teachers": [], "train.distill_weight": 0.5, "train.distill_temperature": 2.0,
    "train.channels_last": True, "train.depthwise_fp32": False}
REMOVED_KEYS.update({key: f"a study option that left the product (which runs as its default {value!r} did); "
                          "BENCHMARKS.md records the commit that ran it" for key, value in REMOVED_DEFAULTS.items()})


@dataclass
class DataConfig:
    root: str | None = None  # dataset folder or zip; falls back to $PNEUMO_DATA
    task: str = "binary"  # binary | 3class
    image_size: int = 224
    resize_policy: str = "squash"  # squash | letterbox
    intensity: str = "none"  # none | equalize | clahe | standardize (applied when the cache is built)
    markers: str = "none"  # none | inpaint: in-paint burnt-in laterality markers and text (train and inference)
    crop: str = "none"  # none | border:F (cut F of each side, 0 < F < 0.4) | lungs (lung-field box), before resizing
    val_fraction: float = 0.1
    split_seed: int = 0
    cache_dir: str | None = None  # default: $PNEUMO_CACHE or ~/.cache/pneumo
    limit_per_class: int | None = None  # take at most N images per split x subtype (tests, smoke runs)


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
    erase: float = 0.0  # probability of random erasing: one rectangle (2-33 % of the image) replaced by noise
    blur: float = 0.0  # Gaussian blur, sigma uniform in [0, blur] pixels per image (0: off)
    noise: float = 0.0  # additive Gaussian noise, standard deviation uniform in [0, noise] per image (0: off)


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    loss: str = "ce"  # ce | focal
    balance: str = "weights"  # weights | sampler | none
    patience: int = 4  # early stopping on val ROC-AUC
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # bf16 autocast for training on CUDA and on CPUs with native bf16 (false: fp32)
    hold_memory: bool = True  # keep freed memory in the process (glibc): no page faults for every step's activations
    max_steps_per_epoch: int | None = None  # for smoke tests
    checkpoint_every_steps: int = 0  # also save the resumable state every N optimizer steps (0: after each epoch)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EvalConfig:
    threshold_policy: str = "youden"  # youden | sensitivity:X | triage (= sensitivity:0.90, the WHO triage profile)
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

    def validate(self) -> ServeConfig:
        """The service limits checked in one place (``pneumo serve`` and ``create_app``); returns self."""
        _range("--port", self.port, low=1, high=65535)
        _range("--max-upload-mb", self.max_upload_mb, low=0.0, low_open=True)
        _range("--max-pixels", self.max_pixels, low=1)
        _range("--max-batch", self.max_batch, low=1)
        _range("--batch-window-ms", self.batch_window_ms, low=0.0)
        for name in ("header_timeout_s", "body_timeout_s", "queue_timeout_s"):
            _range(f"--{name.replace('_', '-')}", getattr(self, name), low=0.0, low_open=True)
        _range("--max-active", self.max_active, low=1)
        _range("--max-queue", self.max_queue, low=0)
        if self.upload_budget_mb < self.max_upload_mb:
            raise ConfigError("--upload-budget-mb must be at least --max-upload-mb (else the largest upload never fits)")
        return self


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
        """Fail with one line before any work starts when a value is out of range or the combination cannot run.

        The one place where choices and ranges are checked: `load_config` calls it, so does `train`."""
        d, m, t, e = self.data, self.model, self.train, self.eval
        _choice("data.task", d.task, TASKS)
        _choice("data.resize_policy", d.resize_policy, RESIZE_POLICIES)
        _choice("data.intensity", d.intensity, INTENSITIES)
        _choice("data.markers", d.markers, ("none", "inpaint"))
        check_crop(d.crop, "data.crop")
        _choice("model.mode", m.mode, TRANSFER_MODES)
        _choice("train.balance", t.balance, ("weights", "sampler", "none"))
        _choice("train.loss", t.loss, ("ce", "focal"))
        check_device(t.device)
        _range("data.val_fraction", d.val_fraction, low=0.0, high=0.5, low_open=True, high_open=True)
        _range("data.image_size", d.image_size, low=32)
        if d.limit_per_class is not None:
            _range("data.limit_per_class", d.limit_per_class, low=1)
        _range("model.freeze_stages", m.freeze_stages, low=0)
        _range("model.drop_rate", m.drop_rate, low=0.0, high=1.0, high_open=True)
        _range("train.epochs", t.epochs, low=1)
        _range("train.batch_size", t.batch_size, low=1)
        _range("train.lr", t.lr, low=0.0, low_open=True)
        _range("train.weight_decay", t.weight_decay, low=0.0)
        _range("train.warmup_epochs", t.warmup_epochs, low=0.0)
        _range("train.patience", t.patience, low=1)
        _range("train.checkpoint_every_steps", t.checkpoint_every_steps, low=0)
        if t.max_steps_per_epoch is not None:
            _range("train.max_steps_per_epoch", t.max_steps_per_epoch, low=1)
        for name in ("rotate_deg", "scale", "translate", "brightness", "contrast", "gamma"):
            _range(f"train.augment.{name}", getattr(t.augment, name), low=0.0)
        _range("train.augment.erase", t.augment.erase, low=0.0, high=1.0)
        _range("train.augment.blur", t.augment.blur, low=0.0, high=10.0)
        _range("train.augment.noise", t.augment.noise, low=0.0, high=0.5)
        _range("eval.n_bootstrap", e.n_bootstrap, low=0)
        _range("eval.ece_bins", e.ece_bins, low=1)
        check_policy(e.threshold_policy, "eval.threshold_policy")
        if m.mode in ("probe", "partial") and m.weights == "none":
            raise ConfigError(f"mode={m.mode} freezes layers, which needs pretrained weights (model.weights)")
        if m.weights not in ("imagenet", "none") and not Path(m.weights).is_file():
            raise ConfigError(f"weights file not found: {m.weights}")
        for member in self.members:
            preset_path(member)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _range(name: str, value: float, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise ConfigError(f"{name} must be {' and '.join(x for x in (lo, hi) if x)}, got {value!r}")


def check_device(device: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; raises ConfigError otherwise."""
    base, _, index = device.partition(":")
    if device in ("auto", "cpu", "cuda", "mps") or (base == "cuda" and index.isdigit()):
        return device
    raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


def parse_crop(crop: str) -> tuple[str, float | None]:
    """``"none"`` -> ("none", None); ``"border:0.1"`` -> ("border", 0.1) (0 < F < 0.4); ``"lungs"`` -> ("lungs",
    None). ConfigError otherwise (`pneumo.data.crop` applies it)."""
    if crop in ("none", "lungs"):
        return crop, None
    if isinstance(crop, str) and crop.startswith("border:"):
        try:
            fraction = float(crop.split(":", 1)[1])
        except ValueError:
            fraction = math.nan
        if 0.0 < fraction < 0.4:
            return "border", fraction
    raise ConfigError(f"crop must be 'none', 'lungs' or 'border:F' with 0 < F < 0.4, got {crop!r}")


def check_crop(crop: str, name: str = "crop") -> str:
    """A crop (``none``, ``border:F``, ``lungs``), checked before any work; returned as given."""
    return _checked(parse_crop, crop, name)


def _checked(parse: Any, value: str, name: str) -> str:
    """``value`` if ``parse`` accepts it, else its ConfigError prefixed with the option's ``name``."""
    try:
        parse(value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return value


# Threshold policies. ``triage`` is the WHO triage profile: the highest specificity whose val sensitivity is >= 0.90
# (= ``sensitivity:0.90``: the highest threshold that keeps 90 % of val pneumonia images positive).
POLICY_ALIASES = {"triage": "sensitivity:0.90"}
# Every evaluation reports these operating points side by side (each chosen on val); the model's own stays the headline.
STANDARD_POLICIES = ("youden", "sensitivity:0.95", "triage")


def parse_policy(policy: str) -> tuple[str, float | None]:
    """``"youden"`` -> ("youden", None); ``"sensitivity:0.95"`` -> ("sensitivity", 0.95); ``"triage"`` ->
    ("sensitivity", 0.90). ConfigError otherwise."""
    if policy == "youden":
        return "youden", None
    policy = POLICY_ALIASES.get(policy, policy) if isinstance(policy, str) else policy
    if isinstance(policy, str) and policy.startswith("sensitivity:"):
        try:
            target = float(policy.split(":", 1)[1])
        except ValueError:
            target = math.nan
        if 0.0 < target <= 1.0:
            return "sensitivity", target
    raise ConfigError(f"threshold policy must be 'youden', 'triage' or 'sensitivity:X' with 0 < X <= 1, got {policy!r}")


def check_policy(policy: str, name: str = "threshold policy") -> str:
    """A threshold policy (``youden``, ``sensitivity:X``, ``triage``), checked before any work; returned as given."""
    return _checked(parse_policy, policy, name)


def to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in sorted(set(values) - set(known)):
        if f"{where}{name}" in REMOVED_KEYS and f"{where}{name}" not in _WARNED:
            _WARNED.add(f"{where}{name}")
            log.warning("config key %s%s is ignored: %s (removed)", where, name, REMOVED_KEYS[f"{where}{name}"])
    values = {k: v for k, v in values.items() if f"{where}{k}" not in REMOVED_KEYS}
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
            kwargs[name] = coerce(value, hints[name], f"{where}{name}")
    return cls(**kwargs)


_WARNED: set[str] = set()
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce(value: Any, kind: Any, name: str) -> Any:
    """``value`` (from YAML or a ``--set`` string) as the field's type: int, float (``1e-3`` too), bool, str,
    ``X | None`` (``null``/``none``) and ``list[X]`` (a YAML list or comma-separated); one-line ConfigError if not."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        empty = value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~", ""))
        if empty and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], name)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [coerce(v, args[0] if args else str, name) for v in value]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return "null" if value is None else str(value) if not isinstance(value, bool) else str(value).lower()
    except (TypeError, ValueError):
        label = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
        raise ConfigError(f"{name} must be {label}, got {value!r}") from None
    return value


def from_dict(values: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, values or {}, "")


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML scalars) to a nested dict. Asking for a removed study option
    other than its old default is an error (a stored config that holds one loads with a warning instead)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        if dotted.strip() in REMOVED_DEFAULTS and _parse_value(raw) != REMOVED_DEFAULTS[dotted.strip()]:
            raise ConfigError(f"{dotted.strip()} left the product with the study: run it from the commit BENCHMARKS.md "
                              "records for its row")
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
    cfg.validate()
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
