"""The checkpoint sidecar: a typed record (`CheckpointMeta`) of ``<stem>.json``, read and written without torch.

The sidecar carries what predict, serve and explain need so that they never guess: the architecture, input size,
normalization, classes, preprocessing, the validation-chosen threshold and temperature, the metrics, and the SHA-256
of the weights file. A sidecar written before a field existed still loads (the field's old default). Torch-free: the
ONNX predictor and the service read sidecars without torch. The weights themselves are `pneumo.models.checkpoint`.

Every value is range-checked when a sidecar is read (`check_meta`): a threshold of 5 or NaN, a temperature of 0,
swapped classes, an input size of 100000, a file name with a path in it is one `ModelError` line (exit 2). A sidecar
of this format records its own SHA-256 (``sidecar_sha256``, over its canonical JSON without that key), checked on
every read: any change after pneumo wrote it is an `IntegrityError`; the names and checksums it records cover the
weights, the OOD and orientation statistics and the ONNX export, so every file a model folder loads is covered. The
checksums have no key: they catch corruption and accidental edits, not someone who can write the folder (protect a
deployed folder with file permissions or a signed image). Older sidecars (``pneumo-checkpoint/1``, without the
record) are read, range-checked, with one warning; a command that rewrites one (`pneumo ood fit`) moves it on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo import atomic
from pneumo.config import INTENSITIES, MARKER_METHODS, MAX_INPUT_SIZE, MIN_INPUT_SIZE, RESIZE_POLICIES, parse_crop
from pneumo.data.rundir import CROSSFIT, CROSSFIT_KEY, RunDir
from pneumo.errors import ConfigError, IntegrityError, ModelError
from pneumo.models.ood import check_file_name, check_ood_entry

FORMAT = "pneumo-checkpoint/2"  # sidecars written now: they carry ``sidecar_sha256``
LEGACY_FORMAT = "pneumo-checkpoint/1"  # before 2026-12-06: read, range-checked, not integrity-protected
WEIGHTS_FORMAT = LEGACY_FORMAT  # the ``format`` in a weights file's own metadata: unchanged, so weights stay the bytes
DIGEST_KEY = "sidecar_sha256"
CARD_KEY = "card_sha256"  # the SHA-256 of the card ``<stem>.md`` (`pneumo.infer.card.record_card`)
DTYPES = ("float32", "float16")
SHA256 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)
_WARNED_LEGACY: set[Path] = set()
MAX_CARD_BYTES = 1 << 20  # an older sidecar's card larger than this is not recorded (cards are a few kB)
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
        mean, std: the per-channel normalization applied inside the model.
        task: ``binary`` or ``3class``.
        classes: class names in logit order (class 0 is normal).
        resize_policy, intensity: ``squash`` or ``letterbox``; ``none``, ``equalize``, ``clahe`` or ``standardize``.
        markers: what happens to burnt-in markers and text (``none``, ``inpaint``, ``inpaint-text``).
        crop: the crop before resizing (``none``, ``border:F``, ``lungs``; `pneumo.data.crop`).
        mode: how it was trained (``probe``, ``partial``, ``finetune``, ``scratch``), if known.
        threshold: decision threshold on P(pneumonia), chosen on validation.
        threshold_policy: the policy that chose it (None: not yet evaluated).
        temperature: temperature for calibrated probabilities (fitted on validation).
        tta: predict with horizontal-flip averaging (as it was evaluated).
        metrics, training: headline metrics written by the evaluation; training facts (wall time, best epoch, ...).
        config: the resolved run configuration.
        commit, created: git commit of the code that trained it; ISO time of saving.
        weights_file, dtype: the safetensors file next to the sidecar; ``float32`` or ``float16`` (storage only).
        sha256: SHA-256 of the weights file.
        ood: the out-of-distribution statistics' entry (file, checksum, method, threshold, ...; `pneumo.models.ood`),
            None when the model has none.
        format, extra: the sidecar format tag; unknown keys, kept as they were.
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
        if "classes" not in values and "task" not in values and payload.get("num_classes") == 3:
            values["task"] = "3class"  # a 3-class head saved without its task (the default task is binary)
        if "classes" not in values and "task" in values:
            values["classes"] = _class_names(values["task"])
        try:
            for key, kind in (("num_classes", int), ("input_size", int), ("threshold", float),
                              ("temperature", float)):
                if key in values:
                    if isinstance(values[key], (bool, str)) or kind is int and values[key] != int(values[key]):
                        raise TypeError(f"{key} {_shown(values[key])} is not a number of that kind")
                    values[key] = kind(values[key])
            if not isinstance(values.get("tta", False), bool):
                raise TypeError(f"tta must be true or false, got {_shown(values['tta'])}")
            for key in ("mean", "std"):
                if key in values:
                    values[key] = [float(v) for v in values[key]]
            if "classes" in values:
                values["classes"] = [str(c) for c in values["classes"]]
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source} has a malformed field: {exc}") from None
        if "threshold_policy" in payload:  # null is a value here: not evaluated yet
            values["threshold_policy"] = payload["threshold_policy"]
        extra = {k: v for k, v in payload.items() if k not in known and k != DIGEST_KEY}  # written anew each time
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
    source = f"checkpoint sidecar {sidecar}"
    payload = read_json(sidecar, (FORMAT, LEGACY_FORMAT))
    meta = check_meta(CheckpointMeta.from_json(payload, source=source), source=source)
    _check_digest(sidecar, payload)
    card = meta.extra.get("model_card")
    if isinstance(card, dict) and "threshold" in card and card["threshold"] != meta.threshold:  # another operating point's card: an older
        # pneumo's operating-point copied the source's, whose test figures the service then showed as this model's
        return dataclasses.replace(meta, extra={k: v for k, v in meta.extra.items() if k != "model_card"})
    return meta


def check_meta(meta: CheckpointMeta, *, source: str = "checkpoint sidecar") -> CheckpointMeta:
    """``meta`` if every value is in range; ``ModelError`` (one line naming the field) otherwise.

    Checked: the task's exact class list and a matching ``num_classes``; ``input_size`` within
    ``MIN_INPUT_SIZE``..``MAX_INPUT_SIZE`` (and equal to the recorded config's ``data.image_size``); finite ``mean``
    and positive ``std``; the preprocessing choices; ``threshold`` a finite number in [0, 1]; ``temperature`` finite
    and > 0; ``dtype``; ``sha256`` 64 hex digits; ``weights_file`` and the ``ood`` entry (`check_ood_entry`).
    """
    def bad(name: str, rule: str, value: Any) -> ModelError:
        return ModelError(f"{source}: {name} must be {rule}, got {_shown(value)}")

    if not isinstance(meta.arch, str) or not meta.arch:
        raise bad("arch", "an architecture name", meta.arch)
    from pneumo.data.splits import TASK_CLASSES  # pandas: imported once, on the first sidecar read

    if meta.task not in TASK_CLASSES:
        raise bad("task", f"one of {', '.join(TASK_CLASSES)}", meta.task)
    if meta.classes != TASK_CLASSES[meta.task]:
        raise bad("classes", f"{TASK_CLASSES[meta.task]} for task {meta.task} (in this order)", meta.classes)
    if meta.num_classes != len(meta.classes):
        raise bad("num_classes", f"{len(meta.classes)} (the number of classes)", meta.num_classes)
    if meta.input_size is not None:
        if not MIN_INPUT_SIZE <= meta.input_size <= MAX_INPUT_SIZE:
            raise bad("input_size", f"within {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} pixels", meta.input_size)
        trained = ((meta.config or {}).get("data") or {}).get("image_size")
        if isinstance(trained, int) and trained != meta.input_size:
            raise bad("input_size", f"{trained} (the image size the model was trained at)", meta.input_size)
    for name in ("mean", "std"):
        values = getattr(meta, name)
        if values is not None and (len(values) not in (1, 3) or not all(math.isfinite(v) for v in values)
                                   or name == "std" and min(values) <= 0):
            raise bad(name, "1 or 3 finite numbers" + (", each > 0" if name == "std" else ""), values)
    for name, allowed in (("resize_policy", RESIZE_POLICIES), ("intensity", INTENSITIES), ("markers", MARKER_METHODS),
                          ("dtype", DTYPES)):
        if getattr(meta, name) not in allowed:
            raise bad(name, f"one of {', '.join(allowed)}", getattr(meta, name))
    try:
        parse_crop(meta.crop)
    except ConfigError:
        raise bad("crop", "none, lungs or border:F with 0 < F < 0.4", meta.crop) from None
    if not (math.isfinite(meta.threshold) and 0.0 <= meta.threshold <= 1.0):
        raise bad("threshold", "a finite number in [0, 1]", meta.threshold)
    if not (math.isfinite(meta.temperature) and meta.temperature > 0):
        raise bad("temperature", "a finite number > 0", meta.temperature)
    if meta.sha256 is not None and not (isinstance(meta.sha256, str) and SHA256.fullmatch(meta.sha256)):
        raise bad("sha256", "64 lowercase hex digits", meta.sha256)
    if meta.weights_file is not None:
        check_file_name(meta.weights_file, field="weights_file", suffix=".safetensors", source=source)
    if meta.ood is not None:
        check_ood_entry(meta.ood, source=source)
    return meta


def write_meta(path: str | os.PathLike, meta: CheckpointMeta) -> Path:
    """Write a sidecar atomically in this format, with its own SHA-256 (`sidecar_digest`). An older one being rewritten
    (`pneumo ood fit`) keeps the card beside it: its SHA-256 is recorded now (it was shown unchecked before)."""
    sidecar = stem_of(path).with_suffix(".json")
    card = sidecar.with_suffix(".md")
    if meta.format == LEGACY_FORMAT and CARD_KEY not in meta.extra and _plain_card(card):
        meta = dataclasses.replace(meta, extra={**meta.extra, CARD_KEY: atomic.sha256_file(card)})
    payload = {**meta.to_json(), "format": FORMAT}
    return atomic.write_json(sidecar, {**payload, DIGEST_KEY: sidecar_digest(payload)})


def _plain_card(card: Path) -> bool:
    """An older sidecar's card worth recording: a regular file of the folder (not a link: one pointed at a secret
    file was served as the card, a red-team review) of a card's size."""
    return card.is_file() and not card.is_symlink() and card.stat().st_size <= MAX_CARD_BYTES


def sidecar_digest(payload: Mapping[str, Any]) -> str | None:
    """SHA-256 of a sidecar's canonical JSON (sorted keys, no spaces, ASCII) without its ``sidecar_sha256``, the same
    written and read back; None for a payload holding NaN or infinity (`write_meta` writes null): no valid record."""
    body = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:
        return None
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_digest(sidecar: Path, payload: Mapping[str, Any]) -> None:
    """``IntegrityError`` unless a sidecar of this format holds its own SHA-256; an older one: one warning a path."""
    # this format's records in a sidecar that says it is older: its format was edited (a review forged a card so)
    if payload.get("format") == LEGACY_FORMAT and not {DIGEST_KEY, CARD_KEY, CROSSFIT_KEY} & set(payload):
        if sidecar not in _WARNED_LEGACY:
            _WARNED_LEGACY.add(sidecar)
            log.warning("%s was written by an older pneumo (%s): its values are range-checked but it records no "
                        "checksum of its own; `pneumo ood fit --model` rewrites a trained model's with one (adapted: "
                        "adapt its source again; an export: export again)", sidecar, LEGACY_FORMAT)
        return
    recorded = payload.get(DIGEST_KEY)
    if not (isinstance(recorded, str) and SHA256.fullmatch(recorded) and recorded == sidecar_digest(payload)):
        what = "records no checksum of its own" if recorded is None else "does not match its recorded SHA-256"
        raise IntegrityError(f"{sidecar} {what}: it was changed after pneumo wrote it (corrupted or edited by "
                             "hand); refusing to use the model (copy it again; operating points: pneumo "
                             "operating-point)")


def weights_path(sidecar: str | os.PathLike, meta: CheckpointMeta) -> Path:
    """The safetensors file a sidecar points to."""
    sidecar = stem_of(sidecar).with_suffix(".json")
    return sidecar.with_name(meta.weights_file or sidecar.stem + ".safetensors")


def check_new_folder(out: str | os.PathLike, sidecar: str | os.PathLike) -> None:
    """ConfigError unless ``out`` lies outside the folder of the model at ``sidecar``: a new model never goes into
    its source's folder (it could be deployed, read-only, or the installed package's assets)."""
    source, target = Path(sidecar).parent.resolve(), Path(out).resolve()
    if target == source or source in target.parents:
        raise ConfigError(f"--out {out} is {'' if target == source else 'inside '}the source model's folder "
                          f"({source}): the new model goes to a folder of its own")


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A run folder, a checkpoint (.safetensors / .json / .onnx) or None for the shipped default model -> sidecar path.
    ``"default"`` names the shipped model too where no file or folder of that name is here (as `pneumo evaluate` and
    `pneumo model-card` took it; predict, explain and operating-point said "model not found")."""
    if model is None or (str(model) == "default" and not Path(model).exists()):
        if not DEFAULT_MODEL.is_file():
            raise ModelError("no model given and the shipped default model is missing: pass --model RUN_DIR")
        return DEFAULT_MODEL
    path = Path(model)
    if path.is_dir() and (path / "ensemble.json").is_file():
        try:
            members = [str(m) for m in json.loads((path / "ensemble.json").read_text()).get("members", [])]
        except (ValueError, AttributeError, TypeError, OSError):  # not JSON, not an object: still not one model
            members = ["see its ensemble.json"]
        raise ModelError(f"{model} is an ensemble evaluation, not one model: use one of its member runs "
                         f"({', '.join(members)})")
    if path.is_dir():  # the folder's one checkpoint (a run's model.json, a copy of the shipped model's folder)
        found = model_sidecars(path)
        if len(found) > 1:  # model.json was taken over the other: two exports in one folder (an export audit)
            raise ModelError(f"{model} holds {len(found)} models ({', '.join(j.name for j in found)}): name one .json")
        path = found[0] if found else RunDir(path).model
    elif path.suffix in (".safetensors", ".onnx"):
        path = path.with_suffix(".json")
    if not path.is_file():
        raise ModelError(f"model not found: {model} (give a run folder or a checkpoint file)")
    return path


def model_sidecars(folder: Path) -> list[Path]:
    """The checkpoint sidecars in ``folder``: each ``*.json`` beside its weights or ONNX export, but a training state's
    (``last.json``, of another format); an unreadable one counts (reading it says what is wrong with it)."""
    return [j for j in sorted(folder.glob("*.json")) if (j.with_suffix(".safetensors").is_file() or j.with_suffix(
        ".onnx").is_file()) and _format(j) in (FORMAT, LEGACY_FORMAT, None)]


def _format(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):  # unreadable, or not a JSON object: no format
        return None


def companion_files(meta: CheckpointMeta) -> list[str]:
    """The files a sidecar names besides its weights (OOD statistics, orientation check, an adapted model's list of the
    images it was adapted on): every copy takes them."""
    return [name for name in ((meta.ood or {}).get("file"), (meta.extra.get("orientation") or {}).get("file"),
                              CROSSFIT if meta.extra.get(CROSSFIT_KEY) else None) if name]


def stem_of(path: str | os.PathLike) -> Path:
    """The path without a ``.json`` / ``.safetensors`` suffix."""
    return Path(path).with_suffix("") if Path(path).suffix in (".json", ".safetensors") else Path(path)


def read_json(path: Path, expected_format: str | tuple[str, ...]) -> dict:
    """A sidecar's JSON object, checked for ``format`` (one, or one of several); ``ModelError`` for missing, corrupt
    or foreign files."""
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path} (expected a .json sidecar next to its .safetensors)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"checkpoint sidecar {path} is not valid JSON ({exc}); it is truncated or corrupted") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    formats = (expected_format,) if isinstance(expected_format, str) else expected_format
    if found not in formats:
        raise ModelError(f"{path} has format {found!r}, expected {' or '.join(map(repr, formats))}")
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


def _shown(value: Any) -> str:
    """A value for a one-line message: its repr (control characters escaped), at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _class_names(task: str) -> list[str]:
    from pneumo.data.splits import class_names  # pandas: only when a sidecar lacks its class names

    return class_names(task)


def verify_weights(sidecar: Path, meta: CheckpointMeta | None = None) -> str:
    """The weights file's SHA-256 (streamed), checked against the sidecar's ``sha256``.

    Raises:
        ModelError: no checksum in the sidecar or no weights file.
        IntegrityError: the file does not match (truncated, corrupted or replaced).
    """
    meta = read_meta(sidecar) if meta is None else meta
    expected = meta.sha256
    if not expected:
        raise ModelError(f"{sidecar.name} has no weights checksum; re-save the checkpoint")
    weights = weights_path(sidecar, meta)
    if not weights.is_file():
        raise ModelError(f"checkpoint weights missing: {weights} (the .json sidecar points to it)")
    actual = atomic.sha256_file(weights)
    if actual != expected:
        raise IntegrityError(f"checksum mismatch for {weights}: the weights are corrupted or were replaced; refusing "
                             "to load them or any export made from them (copy the checkpoint again)")
    return actual
