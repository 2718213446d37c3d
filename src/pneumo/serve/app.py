"""The web service: ``create_app(config, predictor) -> FastAPI``.

Endpoints: ``POST /api/v1/predict`` (an image -> the prediction, optionally a Grad-CAM overlay and a gray preview),
``GET /api/v1/model`` (the card), ``GET /healthz`` (alive), ``GET /readyz`` (the model is loaded), the page at ``/``
and the OpenAPI docs at ``/docs`` (Swagger UI 5 from the ``fastapi-offline`` wheel: offline, under a strict CSP).

Safety rules: uploads stay in memory and are never logged (no file names, no bytes; errors are logged by type);
the size limit is enforced while reading; every bad request gets a 4xx ``{"detail": "one line"}``; anything unexpected
becomes ``500 {"detail": "internal error"}`` without a stack trace. Decoding, preprocessing and the heat map run in
worker processes or a thread pool, inference on the micro-batcher's thread: the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from pneumo import __version__
from pneumo.atomic import sha256_file, to_jsonable
from pneumo.config import ServeConfig
from pneumo.errors import InputError, ModelError, PneumoError
from pneumo.evaluate.cautions import operating_point_warning
from pneumo.infer.card import model_card_text
from pneumo.infer.predictor import Prediction, Predictor
from pneumo.serve import audit
from pneumo.serve.batcher import MicroBatcher
from pneumo.serve.decoding import VIEW_MAX_SIDE, DecoderBroken, DecodeWorkers, decode_upload
from pneumo.serve.http import (
    Guard,
    api_key_check,
    install_error_handlers,
    mount_docs,
    one_line,
)
from pneumo.serve.limits import Overloaded, ThrottledLog, UploadBudget, WorkQueue, configure_header_timeout
from pneumo.serve.schemas import (
    DESCRIPTION,
    ERRORS,
    UPLOAD_BODY,
    ModelCard,
    PredictResponse,
    Ready,
)
from pneumo.serve.upload import UploadError, read_upload
from pneumo.templates import fmt_threshold

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
CARD_INTERNALS = ("config", "training", "weights_file", "format")  # sidecar keys not shown in the model card
API_KEY_ENV = "PNEUMO_API_KEY"
HEATMAP_MISSING = "heat maps need the explanation module (pneumo.explain.cam)"
SLOW_BODIES = ThrottledLog("answered %d upload(s) with 408: the body did not arrive in time (last %gs)")


class Service:
    """What the endpoints share: the predictor (loaded at startup unless given), the batcher and the thread pool."""

    def __init__(self, config: ServeConfig, predictor: Predictor | None, *, model: str | None, backend: str,
                 threads: int | None, pinned: str | None = None) -> None:
        self.config = config
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.decoder: DecodeWorkers | None = None
        self.load_error: str | None = None
        self.card: dict[str, Any] | None = None  # /api/v1/model's answer
        self._given = predictor
        self._model, self._backend, self._threads = model, backend, threads
        self._pinned = pinned  # the sidecar's SHA-256 the parent of a multi-worker service loaded
        self._lock, self._running = threading.Lock(), False
        self.work = self._work_queue()
        self.budget = UploadBudget(int(config.upload_budget_mb * 1_000_000))

    def _work_queue(self) -> WorkQueue:
        return WorkQueue(max_active=self.config.max_active, max_queue=self.config.max_queue,
                         queue_timeout_s=self.config.queue_timeout_s)

    def start(self) -> None:
        self._running = True
        self.work = self._work_queue()  # a fresh queue for each run: its semaphore belongs to the serving loop
        workers = min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pneumo-decode")
        if self.config.decode_timeout_s > 0:  # decodes in killable processes, started with the first upload
            self.decoder = DecodeWorkers(workers, self.config.decode_timeout_s)
        if self.config.audit_log:  # the audit lines to a file of their own (else with the service's log)
            audit.to_file(self.config.audit_log)
        if self._given is not None:
            self._ready(self._given)
        elif self.predictor is not None:
            self._ready(self.predictor)
        else:
            threading.Thread(target=self._load, name="pneumo-load-model", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            batcher, self.batcher = self.batcher, None
        if batcher is not None:
            batcher.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None
        audit.detach_files()
        ThrottledLog.flush_all()  # overload, slow bodies and headers, idle connections, malformed requests

    def _load(self) -> None:
        try:
            predictor = Predictor(self._model, backend=self._backend, threads=1)  # a call per batcher worker
            if self._pinned is not None and sha256_file(predictor.sidecar) != self._pinned:
                # a worker restarted after the model folder changed would answer at another operating point
                raise ModelError("its sidecar changed on disk since the service started (restart the service to "
                                 "serve the new model)")
            self.card = model_card_of(predictor)  # the card of the files just loaded and checked
        except PneumoError as exc:  # the full text in the server's log; clients see file names, not folders
            log.error("model failed to load: %s", exc)
            self.load_error = f"model failed to load: {without_folders(str(exc))}"
            return
        except Exception as exc:  # noqa: BLE001 - reported by /readyz, the process keeps answering
            self.load_error = f"model failed to load ({type(exc).__name__})"
            log.error("%s", self.load_error)
            return
        self._ready(predictor)
        log.info("model %s ready (%s backend, threshold %s, policy %s)", predictor.model_id, predictor.backend,
                 fmt_threshold(predictor.threshold), predictor.meta.threshold_policy)

    def _ready(self, predictor: Predictor) -> None:
        with self._lock:
            if not self._running:
                return
            batcher = MicroBatcher(predictor.predict_prepared, max_batch=self.config.max_batch,
                                   window_ms=self.config.batch_window_ms, workers=self._threads or os.cpu_count() or 1)
            batcher.start()
            self.predictor, self.batcher = predictor, batcher

    async def in_pool(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))


def create_app(config: ServeConfig | None = None, predictor: Predictor | None = None, *, model: str | None = None,
               backend: str = "auto", threads: int | None = None, pinned: str | None = None) -> FastAPI:
    """Build the service.

    Args:
        config: limits, batching, API key, CORS (``ServeConfig``); the API key falls back to ``$PNEUMO_API_KEY``.
        predictor: a loaded predictor; when None, ``model`` (None: the shipped default) is loaded in the background
            at startup and ``/readyz`` answers 503 until it is ready.
        model: run folder or checkpoint to load when no predictor is given.
        backend: ``auto`` (ONNX Runtime, PyTorch if the export fails), ``onnx`` or ``torch`` for the loaded model.
        threads: model calls run side by side (default: one per core); the loaded model runs each on one thread,
            so a given ``predictor`` is best made with ``threads=1`` (as `pneumo serve` does).
        pinned: the SHA-256 the loaded model's sidecar must have (the one every worker of `pneumo serve --workers`
            serves); another is a load error.
    """
    config = config or ServeConfig()
    service = Service(config, predictor, model=model, backend=backend, threads=threads, pinned=pinned)
    api_key = config.api_key or os.environ.get(API_KEY_ENV) or None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="pneumo", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Content-Type", "X-Request-ID"], expose_headers=["X-Request-ID"])
    # the outermost (added last): CORS preflights get its headers, its own 500s the CORS header
    app.add_middleware(Guard, docs_csp=mount_docs(app), cors_origins=tuple(config.cors_origins))
    auth = [Depends(api_key_check(api_key))] if api_key else []

    @app.get("/healthz", tags=["health"], responses={503: ERRORS[503]})
    async def healthz() -> Any:
        """The process is alive and its model has not failed to load (a process that can never serve is not
        healthy: a health probe restarts it); loading still counts as healthy (see /readyz)."""
        broken = service.load_error or (service.decoder.broken if service.decoder else None)  # (no decode worker
        if broken:  # starts: it cannot serve a prediction either, an operations review)
            return JSONResponse({"detail": broken}, status_code=503)
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=Ready, responses={503: ERRORS[503]})
    async def readyz() -> JSONResponse:
        """The model is loaded and requests can be served (else 503)."""
        if service.predictor is None or service.batcher is None or audit.broken():  # (no verdict without its line)
            return JSONResponse({"detail": service.load_error or audit.broken() or "model loading"}, status_code=503)
        p = service.predictor
        return JSONResponse({"status": "ready", "model_id": p.model_id, "backend": p.backend, "threshold": p.threshold,
                             "threshold_policy": p.meta.threshold_policy, "pneumo_version": __version__})

    @app.get("/api/v1/model", tags=["api"], dependencies=auth, response_model=ModelCard,
             responses={k: ERRORS[k] for k in (401, 503)})
    async def model_card() -> dict[str, Any]:
        """The model card: the checkpoint's sidecar (classes, input size, threshold, metrics ...) and its markdown
        card when there is a ``<stem>.md`` next to it."""
        predictor = _ready_predictor(service)
        try:  # built once, from the files as the model was loaded (a later edit is not served: 503, with why)
            service.card = service.card or await service.in_pool(model_card_of, predictor)
        except PneumoError as exc:
            raise HTTPException(503, f"model card unavailable: {without_folders(one_line(exc))}") from None
        return service.card

    @app.post("/api/v1/predict", tags=["api"], dependencies=auth, response_model=PredictResponse,
              response_model_exclude_none=True, openapi_extra=UPLOAD_BODY,
              responses={k: ERRORS[k] for k in (400, 401, 408, 413, 415, 422, 500, 501, 503)})
    async def predict(request: Request, response: Response,
                      heatmap: bool = Query(False, description="add a Grad-CAM overlay PNG (base64)"),
                      preview: bool = Query(False, description="add the decoded gray image as PNG (base64)"),
                      ) -> dict[str, Any]:
        """Predict one chest X-ray (JPEG, PNG or DICOM; also BMP, GIF, TIFF, WebP) sent as the multipart field ``file``.

        Busy: 503 with ``Retry-After`` (seconds) when the work queue is full; 408 when the upload is too slow. Every
        answer carries ``X-Request-ID`` (the caller's, if a plain token, else a new one), as does the audit log line."""
        start, (rid, who) = time.perf_counter(), audit.ids(request)
        try:
            _ready_predictor(service)
            async with service.budget.charge(request.stream()) as stream:  # uploads read or waiting: bounded bytes
                data = await _receive(service, request, stream)  # no slot held while a slow client sends
                async with service.work.slot():  # bounded work, bounded queue: 503 + Retry-After beyond
                    body = await _predict(service, data, start, heatmap=heatmap, preview=preview)
            audit.log_prediction(rid, who, body)
        except (HTTPException, Overloaded) as exc:
            audit.log_refusal(rid, who, service.predictor and service.predictor.model_id, exc.status_code,
                              getattr(exc, "kind", None))
            exc.headers = {**(exc.headers or {}), "X-Request-ID": rid}
            raise
        except BaseException:  # (the Guard answers 500 and logs its type; a cancellation at shutdown too)
            audit.log_refusal(rid, who, service.predictor and service.predictor.model_id, 500)
            raise
        response.headers["X-Request-ID"] = rid
        return {**body, "request_id": rid}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker runs: settings from ``$PNEUMO_SERVE_SETTINGS`` (JSON)."""
    settings = json.loads(os.environ.get("PNEUMO_SERVE_SETTINGS", "{}"))
    options = {key: settings.pop(key) for key in ("model", "backend", "threads", "pinned") if key in settings}
    if not logging.getLogger().handlers:  # a worker process: the command's log setup ran in its parent only
        handler = logging.StreamHandler()
        handler.setFormatter(audit.service_log_formatter())  # (UTC, as the command's own process)
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    config = ServeConfig(**settings)
    configure_header_timeout(config.header_timeout_s)  # this worker's uvicorn protocol (see pneumo.serve.limits)
    return create_app(config, **options)


async def _receive(service: Service, request: Request, stream: Any) -> bytes:
    """The uploaded file, read within ``body_timeout_s`` (else 408) and ``max_upload_mb``."""
    max_bytes = int(service.config.max_upload_mb * 1_000_000)
    try:
        async with asyncio.timeout(service.config.body_timeout_s):
            data = await read_upload(dict(request.headers), stream, max_bytes=max_bytes)
    except TimeoutError:
        SLOW_BODIES.count()
        raise HTTPException(408, f"the upload did not arrive within {service.config.body_timeout_s:g} s",
                            headers={"Connection": "close"}) from None
    except UploadError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    except ClientDisconnect:
        raise HTTPException(400, "the upload was interrupted") from None
    if not data:
        raise HTTPException(422, "the uploaded file is empty")
    return data


async def _predict(service: Service, data: bytes, start: float, *, heatmap: bool, preview: bool) -> dict[str, Any]:
    predictor = _ready_predictor(service)
    t0 = time.perf_counter()
    gray, prepared = await _decode(service, predictor, data, keep_gray=heatmap or preview)
    del data
    t1 = time.perf_counter()
    batcher = service.batcher
    if batcher is None:
        raise HTTPException(503, "model not loaded")
    prediction: Prediction = await batcher.submit(prepared)
    t2 = time.perf_counter()
    if not math.isfinite(prediction.p_pneumonia):  # withheld by the predictor; JSON cannot carry the NaN
        raise HTTPException(500, "the model's output for this image is not a finite number: no verdict")
    body: dict[str, Any] = {**prediction.to_dict(), "threshold_policy": predictor.meta.threshold_policy,
                            "model_id": predictor.model_id}
    timings = {"decode": _ms(t1 - t0), "inference": _ms(t2 - t1)}
    if heatmap:
        body["heatmap_png_base64"] = await service.in_pool(_heatmap_base64, predictor, gray, prepared, prediction)
        timings["heatmap"] = _ms(time.perf_counter() - t2)
    if preview:
        body["preview_png_base64"] = await service.in_pool(_gray_png_base64, gray)
    body["timings_ms"] = {**timings, "total": _ms(time.perf_counter() - start)}
    return body


def _ready_predictor(service: Service) -> Predictor:
    if service.predictor is None or audit.broken():
        raise HTTPException(503, service.load_error or audit.broken() or "model loading, try again shortly")
    return service.predictor


async def _decode(service: Service, predictor: Predictor, data: bytes, *,
                  keep_gray: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """(decoded gray or None, model input): in a worker process under the decode deadline, else in the thread pool."""
    kwargs = {"max_pixels": service.config.max_pixels, "preprocess": predictor.preprocessing, "keep_gray": keep_gray}
    try:
        if service.decoder is not None:
            return await service.decoder.decode(data, **kwargs)
        return await service.in_pool(decode_upload, data, **kwargs)
    except (InputError, DecoderBroken) as exc:  # (a broken decoder is logged where it is found)
        refused = HTTPException(422 if isinstance(exc, InputError) else 503, one_line(exc))
        refused.kind = getattr(exc, "kind", "unreadable" if isinstance(exc, InputError) else None)  # for the audit
        raise refused from None


def _heatmap_base64(predictor: Predictor, gray: np.ndarray, prepared: np.ndarray, prediction: Prediction) -> str:
    """The Grad-CAM of the scored input, over the decoded image as shrunk for the page (`decoding.viewable`)."""
    try:
        from pneumo.explain.cam import heatmap_overlay_png
    except ImportError:
        raise HTTPException(501, HEATMAP_MISSING) from None
    try:
        model = predictor.torch_model  # loaded on the first heat map
    except PneumoError as exc:  # the folder changed under the running service (retrained, replaced, mid-copy)
        log.error("heat map: %s", exc)
        raise HTTPException(503, f"heat map unavailable: {without_folders(one_line(exc))}") from None
    if model is None:
        raise HTTPException(501, "heat maps need the PyTorch checkpoint; this service runs an ONNX-only model")
    png = heatmap_overlay_png(predictor, gray, prediction, max_side=VIEW_MAX_SIDE, caption=False,  # (verdict beside)
                              prepared=prepared)
    return base64.b64encode(png).decode("ascii")


def _gray_png_base64(gray: np.ndarray) -> str:
    from PIL import Image

    image = Image.fromarray(gray)  # shrunk to the page's size by the decode (`decoding.viewable`)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def model_card_of(predictor: Predictor) -> dict[str, Any]:
    """The sidecar less training internals (config, paths), ``<stem>.md`` and `operating_point_warning` (a walk)."""
    card = {k: v for k, v in predictor.meta.to_json().items() if k not in CARD_INTERNALS and not k.startswith("_")}
    card.update(model_id=predictor.model_id, backend=predictor.backend, classes=predictor.classes,
                input_size=predictor.size, threshold=predictor.threshold, warning=operating_point_warning(predictor.meta))
    card["card_markdown"] = model_card_text(predictor.sidecar)  # as `pneumo model-card` prints it (or builds it)
    return to_jsonable(_without_paths(card))  # NaN/inf (a metric undefined on a one-class split) -> None


ABSOLUTE_PATH = re.compile(r"(?<![^\s`'\"(=])(?:[A-Za-z]:[\\/]|/)[^\s`'\"<>|,;()\[\]]+")  # /a/b.jpeg, C:\\x\\y.csv


def without_folders(text: str) -> str:
    """``text`` with every absolute path in it cut to its last part (a folder path in a sentence, a card's markdown)."""
    return ABSOLUTE_PATH.sub(lambda m: Path(m.group(0).replace("\\", "/").rstrip("/.")).name or m.group(0), text)


def _without_paths(value: Any) -> Any:
    """The card with every absolute path (threshold's data, source model, files left out, data in its markdown) cut to
    its last part, in keys and values: the service does not tell clients its folders."""
    if isinstance(value, dict):
        return {without_folders(str(k)): _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str):
        return without_folders(value)
    return value


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)
