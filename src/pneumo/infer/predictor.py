"""Batched prediction with a checkpoint's own preprocessing, threshold and temperature (PyTorch or ONNX Runtime).

Backends: ``onnx`` runs ONNX Runtime on the run's own export or, for a PyTorch checkpoint, on an export made once and
kept in ``$PNEUMO_CACHE/onnx`` (keyed by the weights' SHA-256); ``torch`` runs a copy of the model with its BatchNorms
folded; ``auto`` (what `pneumo predict` uses) is ``onnx`` where ONNX Runtime is installed and the export can be made, and
``torch`` otherwise (a WARNING says why). Whatever the backend, the eager PyTorch model (for heat maps) is loaded from
the checkpoint on first use.

Integrity: an ONNX file is used only with the record written at export (``<name>.onnx.sha256``) that matches it and
names the weights' SHA-256 the sidecar records (so it is served under the model id of the weights it was made from);
an unrecorded, mismatched or unloadable export is an error, never a fallback to the other backend.

Both backends also return the pooled backbone features, which the checkpoint's out-of-distribution statistics
(`pneumo.models.ood`, when its sidecar names them) turn into ``ood_score`` and the ``ood`` flag.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.data.gate import check_radiograph
from pneumo.data.preprocess import prepare, to_unit
from pneumo.errors import ConfigError, InputError, IntegrityError, ModelError
from pneumo.models.ood import load_ood
from pneumo.models.orientation import load_orientation
from pneumo.models.scores import pneumonia_probability, predict_classes, softmax, threshold_on_calibrated_scale
from pneumo.models.sidecar import read_meta, resolve_model, verify_weights, weights_path

log = logging.getLogger(__name__)
BACKENDS = ("auto", "onnx", "torch")
ONNX_CHUNK = 8  # ONNX Runtime on 2-4 cores runs batches of 8 faster than 32 (cache-sized activations)


NOT_ASSESSED = "not assessed"


@dataclass
class Prediction:
    """One image's result. ``p_pneumonia`` is the raw model score the threshold applies to; ``p_calibrated`` the
    probability after temperature scaling, with ``threshold_calibrated`` the same threshold on that scale (binary
    models; None for 3-class), so either pair gives the verdict. ``label`` applies the checkpoint's validation-chosen
    threshold, unless the image is not assessed: ``ood_score`` is the Mahalanobis distance of the image's features to
    the training features and ``ood`` is True above the validation-chosen limit; such an image gets ``label`` "not
    assessed", ``assessed`` False and the ``reason`` (both OOD fields are None for a model without OOD statistics);
    ``refused`` names the kind, for counting: ``input`` (the input gate), ``non-finite``, ``out-of-distribution`` or
    ``orientation`` (the input gate's replaces the others, as its reason does; else the first check's).
    ``probabilities`` are the temperature-calibrated per-class probabilities (compare P(pneumonia) there with
    ``threshold_calibrated``, not ``threshold``)."""

    p_pneumonia: float
    p_calibrated: float
    label: str
    threshold: float
    probabilities: dict[str, float]
    threshold_calibrated: float | None = None
    ood_score: float | None = None
    ood: bool | None = None
    assessed: bool = True
    reason: str | None = None
    refused: str | None = None

    def withhold(self, reason: str, kind: str) -> None:
        """No verdict for this image (the scores stay, for audit); ``kind``: why, for counting (``refused``)."""
        self.label, self.assessed, self.reason, self.refused = NOT_ASSESSED, False, reason, kind

    def to_dict(self) -> dict:
        return asdict(self)


class _NoExport(ModelError):
    """No ONNX export of a PyTorch checkpoint could be made: ``auto`` falls back to PyTorch (nothing was loaded)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__



def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options of every session: ``threads`` intra-op threads (None: ORT's choice); idle threads sleep
    instead of spinning, because decoding and preprocessing share the cores (issue 24: `pneumo predict` 110 -> 127
    img/s on 2 cores, one image ~0.6 ms slower)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only: its warnings are coloured lines in local time without a zone
    ort.disable_telemetry_events()  # no usage events of a hospital's service for Microsoft's collector (an operations
    options = ort.SessionOptions()  # review: 772 queued, with a device id and the model's file name)
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options

def gate(images: list[np.ndarray], results: list[Prediction]) -> None:
    """Withhold the verdict of each image the input gate refuses (`check_radiograph`: too small, a strip, blank,
    mostly padding), with the gate's reason, as `pneumo predict` and serve give it none."""
    for image, result in zip(images, results, strict=True):
        try:
            check_radiograph(image)
        except InputError as exc:
            result.withhold(str(exc), "input")


class Predictor:
    """Turns uint8 gray images into ``Prediction``s. Thread-safe, without a lock: calls run side by side (ONNX Runtime
    sessions and eval-mode modules without gradients allow concurrent runs; `pneumo predict` scores a batch per core,
    each on one thread); the model is loaded once. ``threads`` (None: the library's default): the intra-op threads of the model
    calls; the ONNX Runtime session's own, but on the torch backend PyTorch's setting for the whole process
    (`torch.set_num_threads`: PyTorch has no per-model one), which stays as set."""

    def __init__(self, model: str | os.PathLike | None = None, *, backend: str = "torch", threads: int | None = None):
        if backend not in BACKENDS:
            raise ModelError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be None or an integer >= 1, got {threads!r}")
        self.sidecar = resolve_model(model)
        self.meta = read_meta(self.sidecar)
        from pneumo.infer.card import card_markdown

        card_markdown(self.sidecar, self.meta)  # a recorded card edited or lost: refused here, as `model-card` does,
        # not served as a 500 by /api/v1/model after /readyz said ready (a review)
        if not self.meta.threshold_policy:
            log.warning("%s has no operating point chosen on validation (a training still running or killed, or "
                        "--no-eval): its threshold %s is a placeholder and it may lack its out-of-distribution check; "
                        "run pneumo evaluate --model on it first", self.sidecar.parent, self.meta.threshold)
        if self.meta.input_size is None:
            raise ModelError(f"{self.sidecar} lacks 'input_size': re-save the checkpoint")
        self.size = self.meta.input_size
        self.classes = list(self.meta.classes)
        self.threshold = self.meta.threshold
        self.temperature = self.meta.temperature
        self._torch_model = None
        self.ood = load_ood(self.sidecar, self.meta.ood)
        self.orientation = load_orientation(self.sidecar, self.meta.extra.get("orientation"))
        missing = [name for name, check in (("out-of-distribution", self.ood), ("orientation", self.orientation))
                   if check is None]
        if missing and self.meta.threshold_policy:  # (a model still training has the warning above)
            log.warning("%s has no %s check (made by an older pneumo?): it gives a verdict on any image, X-ray or "
                        "not; fit them with: pneumo ood fit --model %s", self.sidecar.parent,
                        " and no ".join(missing), self.sidecar)
        if backend == "auto":
            try:
                self._run, self.backend = self._load_onnx(threads), "onnx"
            except (_NoExport, ImportError) as exc:  # nothing was loaded: the verified PyTorch weights serve instead
                log.warning("ONNX Runtime backend unavailable (%s); using PyTorch", _one_line(exc))
                self._run, self.backend = self._load_torch(threads), "torch"
        else:
            self.backend = backend
            self._run = self._load_onnx(threads) if backend == "onnx" else self._load_torch(threads)

    @property
    def model_id(self) -> str:
        return self.meta.model_id

    @property
    def _weights(self) -> Path:
        return weights_path(self.sidecar, self.meta)

    @property
    def torch_model(self):
        """The eager PyTorch model (gradients, hooks), loaded on first use; ``None`` for an ONNX-only model.

        Raises:
            IntegrityError: the folder's weights are no longer the ones this predictor was loaded with."""
        if self._torch_model is None and self._weights.is_file():
            from pneumo.models.checkpoint import load_checkpoint

            model, meta = load_checkpoint(self.sidecar)
            if meta.sha256 != self.meta.sha256:  # retrained or replaced since this predictor loaded: its heat map
                # would explain another model's verdict (a review: a served ONNX model's first heat map)
                raise IntegrityError(f"{self.sidecar.parent} holds other weights than the ones loaded (retrained or "
                                     "replaced since): restart to use the new model")
            self._torch_model = model.eval()
        return self._torch_model

    def _load_torch(self, threads: int | None):
        import torch

        from pneumo.models.fast import scorer

        if threads:
            torch.set_num_threads(threads)
        model = self.torch_model
        if model is None and not self.sidecar.with_suffix(".onnx").is_file():  # neither: a copy lost its weights
            raise ModelError(f"checkpoint weights missing: {self._weights} (the .json sidecar points to it); copy the "
                             "whole model folder again")
        if model is None:
            raise ModelError(f"{self._weights.name} not found: this model has only an ONNX export (pneumo export "
                             "--out), and this needs the PyTorch weights: give the model the export was made from "
                             "(pneumo predict and serve run the export itself with --backend onnx)")
        score = scorer(model, self.size)

        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                logits, features = score(torch.from_numpy(x))
                return logits.float().numpy(), features.float().numpy()

        return run

    def _load_onnx(self, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # `auto` falls back to PyTorch; `onnx` asked for it: one line, a pneumo error
            raise _NoExport(f"ONNX Runtime is not installed ({_one_line(exc)}): pip install onnxruntime") from None

        from pneumo.infer.export import cached_onnx
        from pneumo.models.records import verify_onnx

        onnx_path = self.sidecar.with_suffix(".onnx")
        weights = weights_path(self.sidecar, self.meta)
        if not onnx_path.is_file() and not weights.is_file():  # an export folder that lost its .onnx: say it
            raise ModelError(f"checkpoint weights missing: {weights}, and no {onnx_path.name} export beside it: copy "
                             "the model's folder again")
        if not onnx_path.is_file():
            try:
                onnx_path = cached_onnx(self.sidecar)
            except IntegrityError:
                raise
            except ModelError as exc:  # the export could not be made (an operator ONNX lacks, ...)
                raise _NoExport(str(exc)) from None
        else:  # the run's own export: the weights next to it (if any) and the record `pneumo export` wrote
            if not self.meta.sha256:
                raise IntegrityError(f"{self.sidecar.name} has no weights checksum: refusing {onnx_path.name}")
            if self._weights.is_file():
                verify_weights(self.sidecar, self.meta)
            if not verify_onnx(onnx_path, self.meta.sha256):
                raise IntegrityError(f"{onnx_path.name} has no checksum record ({onnx_path.name}.sha256): refusing "
                                     "an unverified export; export it again with `pneumo export`, or delete it")
        try:
            session = ort.InferenceSession(str(onnx_path), session_options(threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for bad files
            raise ModelError(f"cannot load ONNX model {onnx_path.name}: {str(exc).splitlines()[0]}") from None
        name = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()][:1]
        if "features" in {o.name for o in session.get_outputs()}:
            outputs.append("features")
        elif self.ood is not None or self.orientation is not None:  # its checks could not run: no silent verdicts
            raise ModelError(f"{onnx_path.name} has no features output (an older export), so the model's "
                             "out-of-distribution and orientation checks cannot run on it: export it again with "
                             "`pneumo export`, or delete it")

        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            chunks = [session.run(outputs, {name: x[i : i + ONNX_CHUNK]}) for i in range(0, len(x), ONNX_CHUNK)]
            logits = np.concatenate([c[0] for c in chunks])
            return logits, np.concatenate([c[1] for c in chunks]) if len(outputs) > 1 else None

        return run

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The keyword arguments of `pneumo.data.preprocess.prepare` that reproduce training's input (plain values)."""
        return {"size": self.size, "policy": self.meta.resize_policy, "intensity": self.meta.intensity,
                "markers": self.meta.markers, "crop": self.meta.crop}

    def preprocess(self, gray: np.ndarray) -> np.ndarray:
        """uint8 gray H x W -> uint8 S x S exactly as in training (crop, size, resize policy, markers, intensity)."""
        return prepare(gray, **self.preprocessing)

    def outputs(self, prepared: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and pooled features (None from an ONNX export without them) for a uint8 batch (B, S, S).

        Raises:
            InputError: not a uint8 array of shape (B, S, S) with B >= 1 (`preprocess` makes each S x S image)."""
        if not (isinstance(prepared, np.ndarray) and prepared.dtype == np.uint8 and prepared.ndim == 3
                and prepared.shape[0] >= 1 and prepared.shape[1:] == (self.size, self.size)):
            raise InputError(f"expected a uint8 batch of preprocessed images of shape (B, {self.size}, {self.size}), "
                             f"got {getattr(prepared, 'dtype', type(prepared).__name__)} with shape "
                             f"{getattr(prepared, 'shape', None)}")
        x = to_unit(prepared)[:, None]
        logits, features = self._run(np.ascontiguousarray(x))
        logits = np.asarray(logits, dtype=np.float32)
        if self.meta.tta:  # the run was evaluated with flip averaging: predict the same way
            logits = (logits + np.asarray(self._run(np.ascontiguousarray(x[..., ::-1]))[0], dtype=np.float32)) / 2
        return logits, features

    def logits(self, prepared: np.ndarray) -> np.ndarray:
        """Logits for a uint8 batch (B, S, S) of preprocessed images."""
        return self.outputs(prepared)[0]

    def predict_prepared(self, prepared: np.ndarray) -> list[Prediction]:
        return self.predictions(*self.outputs(prepared))

    def predictions(self, logits: np.ndarray, features: np.ndarray | None) -> list[Prediction]:
        """Predictions from one batch's `outputs`: the threshold's label, withheld where the OOD or orientation check
        refuses the image."""
        results = self._results(logits)
        for result, finite in zip(results, np.isfinite(logits).all(axis=1)):
            if not finite:  # a broken model: NaN would compare as "pneumonia"
                result.withhold("the model's output for this image is not a finite number", "non-finite")
        if self.ood is not None and features is not None:
            for result, score in zip(results, self.ood.scores(features)):
                result.ood_score = float(score) if np.isfinite(score) else None
                result.ood = bool(not np.isfinite(score) or score > self.ood.threshold)
                if result.ood:
                    result.withhold(f"out of distribution: unlike the chest X-rays the model learned from (distance "
                                    f"{score:.1f} > limit {self.ood.threshold:.1f})", "out-of-distribution")
        if self.orientation is not None and features is not None:  # says what to fix: beside the OOD reason
            for result, reason in zip(results, self.orientation.refusals(features)):
                if reason:
                    result.withhold(f"{result.reason}; {reason}" if result.reason else reason,
                                    result.refused or "orientation")  # (the first check's kind, as its reason)
        return results

    def predict(self, images: list[np.ndarray], *, batch_size: int = 32) -> list[Prediction]:
        """uint8 gray images of any size -> predictions, batched. An image the input gate refuses (`check_radiograph`:
        too small, a strip, blank, mostly padding) gets no verdict (``assessed`` False, the gate's reason), as
        `pneumo predict` gives it none.

        Raises:
            ConfigError: ``batch_size`` below 1.
            InputError: an image that is not a 2-D uint8 array (the whole call: a caller's bug, not a site's film).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1 (an integer), got {batch_size!r}")
        images = list(images)
        for i, img in enumerate(images):
            if not (isinstance(img, np.ndarray) and img.ndim == 2 and img.dtype == np.uint8):
                raise InputError(f"image {i}: expected a uint8 gray 2-D numpy array (pneumo.data.decode.load_image "
                                 f"makes one), got {type(img).__name__}"
                                 + (f" {img.dtype} with shape {img.shape}" if isinstance(img, np.ndarray) else ""))
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([self.preprocess(img) for img in images[start : start + batch_size]])
            out.extend(self.predict_prepared(batch))
        gate(images, out)
        return out

    def _results(self, logits: np.ndarray) -> list[Prediction]:
        """One prediction per row of float32 logits, computed in float32 (class 0 is normal in both tasks)."""
        probs, calibrated = softmax(logits), softmax(logits / self.temperature)
        p, p_cal = pneumonia_probability(probs), pneumonia_probability(calibrated)
        called = predict_classes(probs, self.threshold)
        t_cal = threshold_on_calibrated_scale(self.threshold, self.temperature) if len(self.classes) == 2 else None
        return [Prediction(p_pneumonia=float(p[i]), p_calibrated=float(p_cal[i]), label=self.classes[called[i]],
                           threshold=self.threshold, threshold_calibrated=t_cal,
                           probabilities={c: float(v) for c, v in zip(self.classes, calibrated[i])})
                for i in range(len(logits))]
