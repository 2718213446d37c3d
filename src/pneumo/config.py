"""Typed configuration: pydantic models, YAML presets and ``section.field=value`` overrides. The models are the
schema: types, bounds (``Field(ge=..)``), choices (``Literal``), field validators for the crop, threshold policy and
device, a model validator for the rules that span fields. Construction validates; a ``ValidationError`` becomes one
``ConfigError`` line naming the dotted key (``--flag`` for ``ServeConfig`` and ``AdaptConfig``)."""

from __future__ import annotations

import logging
import math
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic.functional_validators import AfterValidator, BeforeValidator

from pneumo.errors import ConfigError
from pneumo.policy import parse_policy
from pneumo.schema import NEW_RUN, FlagSchema, Schema

log = logging.getLogger(__name__)
PRESET_DIR = Path(__file__).resolve().parent / "configs"
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 1024  # the model input side S a run or sidecar may ask for (S x S per image)
Task = Literal["binary", "3class"]
ResizePolicy = Literal["squash", "letterbox"]
TransferMode = Literal["probe", "partial", "finetune", "scratch"]
Intensity = Literal["none", "equalize", "clahe", "standardize"]
Markers = Literal["none", "inpaint", "inpaint-text"]
RESIZE_POLICIES, INTENSITIES = typing.get_args(ResizePolicy), typing.get_args(Intensity)
MARKER_METHODS = typing.get_args(Markers)  # the one list of each (data.preprocess, data.markers and the sidecar read them)
# Keys that older configs (and the run folders written with them) still hold; they load with a warning.
REMOVED_KEYS = {"train.num_workers": "never read (data loading runs in the main process)",
                "train.probe_c": "never read (the probe's regularisation is chosen on the val fold)"}
# Study options that left the product, with the value each had by default: the product behaves as that value did. A
# run that set another value trained another configuration (`evaluate.select.config_key` keeps them apart); its row
# stays reproducible from the commit BENCHMARKS.md records.
REMOVED_DEFAULTS: dict[str, Any] = {
    "data.train_sources": "all", "eval.val_view": "all", "train.label_smoothing": 0.0, "train.mixup": 0.0,
    "train.ema": 0.0, "train.teachers": [], "train.distill_weight": 0.5, "train.distill_temperature": 2.0,
    "train.channels_last": True, "train.depthwise_fp32": False, "train.logit_penalty": 0.0}
REMOVED_KEYS.update({key: f"a study option that left the product (which runs as its default {value!r} did); "
                          "BENCHMARKS.md records the commit that ran it" for key, value in REMOVED_DEFAULTS.items()})
_WARNED: set[str] = set()  # removed keys already warned about in this process


# ``--set`` text: ``null``/``none``/``~``/empty -> None for an optional field; ``a,b`` -> a list (YAML lists stay)
Maybe = BeforeValidator(lambda v: None if isinstance(v, str) and v.strip().lower() in ("null", "none", "~", "") else v)
Items = Annotated[list[str], BeforeValidator(lambda v: [x.strip() for x in v.split(",") if x.strip()]
                                             if isinstance(v, str) else v)]
Count = Annotated[int, Field(ge=1)]
MAX_SEED = 2**32 - 1  # NumPy and PyTorch take seeds in 0..2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
def _reuse(check: Any, value: Any) -> Any:
    """``value`` if ``check`` (one of the parsers below) accepts it; its ConfigError as the ValueError pydantic reports."""
    try:
        check(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


# Text fields checked by the parsers below (resolved when a value is validated, so they may be defined later).
Crop = Annotated[str, AfterValidator(lambda value: _reuse(parse_crop, value))]
Device = Annotated[str, AfterValidator(lambda value: _reuse(check_device, value))]
Policy = Annotated[str, AfterValidator(lambda value: _reuse(parse_policy, value))]


class DataConfig(Schema):
    _prefix: ClassVar[str] = "data."
    root: Annotated[str | None, Maybe] = None  # dataset folder or zip; falls back to $PNEUMO_DATA
    task: Task = "binary"
    image_size: int = Field(224, ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)
    resize_policy: ResizePolicy = "squash"
    intensity: Intensity = "none"  # applied when the cache is built
    markers: Markers = "none"  # in-paint markers (and corner text) in train + inference
    crop: Crop = "none"  # none | border:F (cut F of each side, 0 < F < 0.4) | lungs (lung-field box), before resizing
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    split_seed: Seed = 0
    cache_dir: Annotated[str | None, Maybe] = None  # default: $PNEUMO_CACHE or ~/.cache/pneumo
    limit_per_class: Annotated[Count | None, Maybe] = None  # at most N images per split x subtype (tests)


class ModelConfig(Schema):
    _prefix: ClassVar[str] = "model."
    name: str = "efficientnet_lite0"
    weights: str = "imagenet"  # imagenet | none | path to a .safetensors/.pth state dict
    mode: TransferMode = "probe"
    freeze_stages: int = Field(3, ge=0)  # for mode=partial: stages of the backbone kept frozen
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0)


class AugmentConfig(Schema):
    _prefix: ClassVar[str] = "train.augment."
    rotate_deg: float = Field(7.0, ge=0.0)
    scale: float = Field(0.1, ge=0.0, lt=1.0)  # zoom factors 1 +- scale stay positive
    translate: float = Field(0.06, ge=0.0)
    brightness: float = Field(0.15, ge=0.0)
    contrast: float = Field(0.15, ge=0.0, lt=1.0)
    gamma: float = Field(0.15, ge=0.0)
    hflip: bool = False
    erase: float = Field(0.0, ge=0.0, le=1.0)  # probability of random erasing: one 2-33 % rectangle replaced by noise
    blur: float = Field(0.0, ge=0.0, le=10.0)  # Gaussian blur, sigma uniform in [0, blur] pixels per image (0: off)
    noise: float = Field(0.0, ge=0.0, le=0.5)  # additive Gaussian noise, std uniform in [0, noise] per image (0: off)
    # acquisition shift (issue 22 item 4: picked by the second round's rule, BENCHMARKS.md): each with probability 1/2
    resolution: float = Field(0.0, ge=0.0, lt=1.0)  # down- then up-sample by a factor uniform in [1 - resolution, 1]
    jpeg: int = Field(0, ge=0, le=95)  # JPEG re-encode at a quality uniform in [jpeg, 95] (0: off)
    collimation: float = Field(0.0, ge=0.0, le=0.4)  # black borders, each side up to this fraction of the image


class TrainConfig(Schema):
    _prefix: ClassVar[str] = "train."
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: float = Field(0.5, ge=0.0)
    loss: Literal["ce", "focal"] = "ce"
    balance: Literal["weights", "sampler", "none"] = "weights"
    patience: int = Field(4, ge=1)  # early stopping on val ROC-AUC
    seed: Seed = 0
    device: Device = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # bf16 autocast for training on CUDA and on CPUs with native bf16 (false: fp32)
    hold_memory: bool = True  # keep freed memory in the process (glibc): no page faults for every step's activations
    max_steps_per_epoch: Annotated[Count | None, Maybe] = None  # for smoke tests
    checkpoint_every_steps: int = Field(0, ge=0)  # also save the resumable state every N steps (0: after each epoch)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class EvalConfig(Schema):
    _prefix: ClassVar[str] = "eval."
    threshold_policy: Policy = "youden"  # youden | sensitivity:X | triage (= sensitivity:0.90, after the WHO's TB triage profile)
    tta: bool = False  # average logits over the image and its horizontal flip
    n_bootstrap: int = Field(1000, ge=0)
    bootstrap_seed: Seed = 0
    ece_bins: int = Field(15, ge=1)


class AdaptConfig(FlagSchema):
    """The settings of one adaptation (`pneumo adapt`; the defaults are the measured recipe); errors name the flag."""

    model_config = ConfigDict(frozen=True)
    _flags: ClassVar[frozenset[str] | None] = frozenset(  # `pneumo adapt`'s (commands/adapt.py TUNABLE and its own)
        {"folds", "epochs", "rehearsal", "rehearsal_min", "seed", "threshold_policy"})

    epochs: int = Field(6, ge=1, le=100)
    lr: float = Field(3e-4, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0, le=1)
    batch_size: int = Field(32, ge=2, le=512)
    folds: int = Field(4, ge=2, le=20, description="patient-grouped cross-fitting folds")
    # 2 a site image, at least 400 an epoch: the second round's rule on the source val fold (BENCHMARKS.md). 1 and 2
    # alone let the source val AUC fall by > 0.005 at 50 site images; 4 keeps it but takes ~24 min for 300 images on
    # 2 cores; the floor keeps it at 50 and 200 images and adapts 300 images in 831 s
    rehearsal: float = Field(2.0, ge=0, le=10, description="source images per site image in every epoch (0: off)")
    rehearsal_min: int = Field(400, ge=0, le=100_000, description="at least this many source images in every epoch "
                               "(when rehearsal is on): small site samples get enough of the source hospital")
    rehearsal_pool: int = Field(2000, ge=0, le=100_000, description="source training images to draw rehearsal from")
    threshold_policy: Policy = "sensitivity:0.95"
    seed: Seed = 0
    amp: bool = True


UPLOAD_GROWTH_ALLOWANCE = 9 / 8  # an upload read chunk by chunk into a bytearray holds up to 1/8 more (CPython growth)


class ServeConfig(FlagSchema):
    """The service limits, checked at construction (``pneumo serve`` and ``create_app``); errors name the flag."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_mb: float = Field(20.0, gt=0.0)
    max_pixels: int = Field(50_000_000, ge=1)
    api_key: Annotated[str | None, Maybe] = None  # also $PNEUMO_API_KEY
    max_batch: int = Field(4, ge=1)  # per batcher worker (one a core): 4 beat 8 at 16 clients (BENCHMARKS.md)
    batch_window_ms: float = Field(5.0, ge=0.0, le=1000.0)  # a lone request waits this long
    cors_origins: Annotated[Items, AfterValidator(lambda origins: [_reuse(check_origin, o) for o in origins])] = Field(
        default_factory=list)
    header_timeout_s: float = Field(10.0, gt=0.0)  # a request's headers must arrive within this (slow clients closed)
    body_timeout_s: float = Field(60.0, gt=0.0)  # an upload must arrive within this (else 408)
    shutdown_timeout_s: float = Field(8.0, gt=0.0)  # SIGTERM: requests in flight get this long (docker stop: 10 s)
    max_active: int = Field(16, ge=1)  # predictions decoded and run at once
    max_queue: int = Field(64, ge=0)  # predictions waiting for a slot; beyond: 503 + Retry-After
    queue_timeout_s: float = Field(10.0, gt=0.0)  # the longest wait for a slot (then 503 + Retry-After)
    upload_budget_mb: float = Field(512.0, gt=0.0)  # memory of all uploads being read or waiting, summed; beyond: 503
    decode_timeout_s: float = Field(10.0, ge=0.0)  # a decode running longer is killed with its worker (0: in threads)
    audit_log: Annotated[str | None, Maybe] = None  # the audit lines to this file alone (else with the service's log)

    @model_validator(mode="after")
    def _budget_holds_an_upload(self) -> ServeConfig:
        if self.upload_budget_mb < self.max_upload_mb * UPLOAD_GROWTH_ALLOWANCE:
            raise ValueError(f"--upload-budget-mb must be at least 9/8 x --max-upload-mb (the largest upload and its "
                             f"buffer's growth; else it never fits), got {self.upload_budget_mb:g} < "
                             f"{self.max_upload_mb * UPLOAD_GROWTH_ALLOWANCE:g}")
        return self


class RunConfig(Schema):
    name: str = "default"
    out_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    # An ensemble preset: these presets are trained as runs <name>-<member> on one split (the same overrides apply to
    # each) and evaluated as their mean probability in runs/<name>; the fields above are then unused.
    members: Items = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _drop_removed_keys(cls, values: Any) -> Any:
        """A stored config's removed keys: one warning line each (per process), then dropped."""
        if not isinstance(values, dict):
            return values
        sections = {section: keys for section, keys in values.items() if isinstance(keys, dict)}
        for key, value in [(f"{section}.{k}", v) for section, keys in sections.items() for k, v in keys.items()]:
            at_default = key in REMOVED_DEFAULTS and value == REMOVED_DEFAULTS[key]  # the product runs as it did
            if key in REMOVED_KEYS and key not in _WARNED and not at_default:
                _WARNED.add(key)
                log.warning("config key %s is ignored: %s (removed)", key, REMOVED_KEYS[key])
        return {**values, **{section: {k: v for k, v in keys.items() if f"{section}.{k}" not in REMOVED_KEYS}
                             for section, keys in sections.items()}}

    @model_validator(mode="after")
    def _runnable(self, info: ValidationInfo) -> RunConfig:
        """The rules that span fields; what must exist on this machine only for a new run (`validate`)."""
        if self.name.strip() in ("", ".", "..") or any(c in self.name for c in "/\\\0"):  # --force deletes it
            raise ValueError(f"name must be one folder name (not empty, '.' or '..', no '/'), got {self.name!r}")
        m = self.model
        if m.mode in ("probe", "partial") and m.weights == "none":
            raise ValueError(f"mode={m.mode} freezes layers, which needs pretrained weights (model.weights)")
        if (info.context or {}).get("new_run"):  # (a stored config loads as it was trained)
            if m.mode != "probe" and self.train.warmup_epochs >= self.train.epochs:  # it was clamped without a word
                raise ValueError(f"train.warmup_epochs must be below train.epochs ({self.train.epochs}), got "
                                 f"{self.train.warmup_epochs:g}")
            if m.weights not in ("imagenet", "none") and not Path(m.weights).is_file():
                raise ValueError(f"model.weights: file not found: {m.weights!r}")
            for member in self.members:
                _reuse(preset_path, member)
        return self


def check_device(device: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; raises ConfigError otherwise."""
    base, _, index = device.partition(":")
    if device in ("auto", "cpu", "cuda", "mps") or (base == "cuda" and index.isdigit()):
        return device
    raise ConfigError(f"the device (train.device, --device) must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


CORS_ORIGIN = re.compile(r"(?!https://[^/]*:443$)(?!http://[^/]*:80$)https?://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


def check_origin(origin: str) -> str:
    """A CORS origin as a browser sends it (scheme://host[:port], lower case, no path, no default port) or ``*``: any
    other text never matches a request, silently. Raises ConfigError."""
    if origin != "*" and not CORS_ORIGIN.fullmatch(origin):
        raise ConfigError(f"--cors-origin {origin!r} is not an origin as a browser sends it: give scheme://host[:port] "
                          "in lower case, without a path, a trailing slash or the default port (e.g. "
                          "https://pacs.example.org)")
    return origin


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


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Plain values (JSON- and YAML-safe), as a run folder's config.yaml and a model's sidecar store them."""
    return cfg.model_dump(mode="json")


def from_dict(values: dict[str, Any] | None) -> RunConfig:
    """A run config from plain values (a preset, a run folder's config.yaml, a sidecar's ``config``): removed keys
    warn once and are dropped; types, bounds and choices are checked (what must exist on this machine is not)."""
    return RunConfig.checked(values or {})


def model_config(values: dict[str, Any]) -> RunConfig:
    """A model's recorded training config (its sidecar's ``config``), to rebuild its data on this machine: checked as
    `from_dict`; the trainer's cache folder kept only where it is a folder of this user's that it can write, else
    this machine's ``$PNEUMO_CACHE`` (a cache review: a model from another machine failed its evaluation on a recorded
    folder that was not there, or was made there). The caller places ``data.root``."""
    cfg = from_dict(values)
    recorded = cfg.data.cache_dir
    if recorded and not (Path(recorded).is_dir() and os.access(recorded, os.W_OK | os.X_OK)
                         and Path(recorded).stat().st_uid == os.getuid()):  # root may write anyone's
        cfg.data.cache_dir = None
    return cfg


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML scalars) to a nested dict. Asking for a removed study option
    other than its old default is an error (a stored config that holds one loads with a warning instead)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            dotted, value = dotted.strip(), yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: {raw!r} is not a YAML value (quote text: key='...')") from None
        if isinstance(value, dict) or not dotted:  # a mapping replaced the whole section, its other keys reset
            raise ConfigError(f"override {item!r}: set one key at a time, as section.key=value")
        if dotted in REMOVED_DEFAULTS and value != REMOVED_DEFAULTS[dotted]:
            raise ConfigError(f"{dotted} left the product with the study: run it from its row's commit (BENCHMARKS.md)")
        node, *parents, key = [values, *dotted.split(".")]
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[key] = value
    return values


class _UniqueKeys(yaml.SafeLoader):
    """Safe loading that refuses a key twice in one mapping (the last one silently won: a second ``train:`` section
    replaced the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:
            raise yaml.constructor.ConstructorError(None, None, f"key {twice!r} given twice", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping a YAML file holds (safe loading; empty: {}). Raises ConfigError naming the file when it is not
    readable text, not YAML or not a mapping (a tab indent, a ``!!python`` tag, another encoding were tracebacks)."""
    try:
        values = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeys)  # a SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise ConfigError(f"{path}: not a readable YAML file ({' '.join(str(exc).split())[:160]})") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{path}: needs a mapping of keys to values, holds a {type(values).__name__}")
    return values or {}


def preset_path(name_or_path: str) -> Path:
    """A preset's file: a name in ``PRESET_DIR`` (a plain name: ``../x`` is not one) or the path of a .yaml file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or len(p.parts) != 1 or name_or_path.startswith("."):
        raise ConfigError(f"preset {name_or_path!r}: {'no such file' if not p.exists() else 'not a file'}; a preset is "
                          "a shipped preset's name or the path of a .yaml file")
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"unknown preset {name_or_path!r}; known presets: "
                      f"{', '.join(sorted(q.stem for q in PRESET_DIR.glob('*.yaml')))}")


def load_config(preset: str | None = "default", overrides: list[str] | None = None) -> RunConfig:
    """Load a preset (name in configs/ or a YAML path), apply overrides, fill data.root from $PNEUMO_DATA."""
    values = read_yaml(preset_path(preset)) if preset else {}
    values = apply_overrides(values, overrides or [])
    cfg = RunConfig.checked(values, NEW_RUN)
    if cfg.data.root is None and os.environ.get("PNEUMO_DATA"):
        cfg.data.root = os.environ["PNEUMO_DATA"]
    return cfg


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
