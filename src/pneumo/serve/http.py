"""The HTTP layer around the service's routes: the outermost guard (security headers, unexpected errors -> 500),
error bodies (always ``{"detail": "one line"}``), the API-key check and the offline Swagger UI at ``/docs``."""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import logging
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pneumo.serve import audit
from pneumo.serve.limits import Overloaded
from pneumo.serve.schemas import CSP, content_security_policy

log = logging.getLogger("pneumo.serve.app")  # the service's log lines keep one logger name
DOCS_URL = "/docs"
DOCS_ASSETS = "/docs/assets"  # Swagger UI's files, from fastapi-offline (which only exposes them as package data)
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def mount_docs(app: FastAPI) -> str:
    """Swagger UI at ``/docs`` from local files (no CDN), open like ``/openapi.json``; returns the page's CSP, which
    allows its inline start-up script by hash."""
    assets = DOCS_ASSETS.lstrip("/")  # relative URLs: the page also works behind a proxy's path prefix
    html = get_swagger_ui_html(
        openapi_url=(app.openapi_url or "/openapi.json").lstrip("/"), title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js", swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # else Swagger UI may send the schema URL to swagger.io
    ).body.decode("utf-8")

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(html)

    files = importlib.resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files)), name="docs-assets")
    return content_security_policy(*INLINE_SCRIPT.findall(html))


def api_key_check(expected: str):
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key given to `pneumo serve`")
    expected_bytes = expected.encode("utf-8")

    async def check(request: Request, given: str | None = Security(header)) -> None:
        if given is None or not hmac.compare_digest(given.encode("utf-8"), expected_bytes):
            rid, who = audit.ids(request)  # answered and audited as every request (a docs audit: a 401 had neither)
            if request.url.path.endswith("/predict"):
                audit.log_refusal(rid, who, None, 401)
            raise HTTPException(401, "missing or wrong API key (send it in the X-API-Key header)",
                                headers={"X-Request-ID": rid})

    return check


class OneLineCancelled(logging.Filter):
    """uvicorn's "Exception in ASGI application" for a request cancelled at shutdown (a slow upload still arriving
    after ``--shutdown-timeout-s``) as one line, not a 68-line traceback (an operations review)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            record.msg, record.args = "a request in flight was cancelled at shutdown (--shutdown-timeout-s)", ()
            record.exc_info, record.exc_text = None, None
        return True


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded) -> JSONResponse:  # counted by its ThrottledLog, not per line
        headers = {"Retry-After": str(exc.retry_after_s), "Connection": "close", **exc.headers}  # why: `Overloaded`
        return JSONResponse({"detail": exc.detail, **_request_id(exc.headers)}, status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code >= 400 and exc.status_code != 408:  # 408s are counted by SLOW_BODIES; the access line
            log.debug("request rejected: %d", exc.status_code)  # has the rest (a flood wrote 2 lines each at INFO)
        headers = getattr(exc, "headers", None) or {}
        return JSONResponse({"detail": one_line(exc.detail), **_request_id(headers)}, status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body"))
        return JSONResponse({"detail": one_line(f"invalid {where or 'request'}: {first.get('msg', 'bad value')}")},
                            status_code=422)


class Guard:
    """Outermost app middleware: unexpected exceptions -> 500 ``internal error`` (logged by type only, never
    re-raised, so no traceback reaches a log or a client) and security headers on every response. Its own 500 sits
    outside CORSMiddleware, so it carries the CORS header itself for an allowed origin (else a browser page of that
    origin sees a CORS failure instead of the error)."""

    def __init__(self, app: Any, *, docs_csp: str = CSP, cors_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.csp, self.docs_csp = CSP.encode("ascii"), docs_csp.encode("ascii")
        self.cors_origins = frozenset(cors_origins)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        path = route_path(scope)
        is_api = path.startswith("/api/")
        csp = self.docs_csp if path == DOCS_URL else self.csp

        async def send_with_headers(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY")]
                if is_api:  # results describe a patient's image: keep them out of caches
                    headers.append((b"cache-control", b"no-store"))
                headers.append((b"content-security-policy", csp))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors end
            log.error("internal error while serving %s: %s", path if is_api else "a request", type(exc).__name__)
            if not started:
                response = JSONResponse({"detail": "internal error"}, status_code=500)
                origin = dict(scope.get("headers", [])).get(b"origin", b"").decode("latin-1")
                if origin in self.cors_origins:
                    response.headers["access-control-allow-origin"] = origin
                    response.headers["vary"] = "Origin"
                await response(scope, receive, send_with_headers)


def _request_id(headers: dict) -> dict:
    """A predict answer's request id, for its error body too (a docs audit), or nothing."""
    return {"request_id": headers["X-Request-ID"]} if "X-Request-ID" in headers else {}


def route_path(scope: dict) -> str:
    """The request's path inside the app: uvicorn puts ``--root-path`` in front of ``scope["path"]``, so behind a
    proxy's prefix ``/pneumo/api/...`` lost its no-store header and ``/pneumo/docs`` its script hash (a proxy audit)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


def one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 300 else text[:297] + "..."


class WithoutQuery(logging.Filter):
    """uvicorn's access lines without the query string: a client may put anything there (``?patient=...``), and the
    service's own parameters (heatmap, preview) say nothing an operator needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:  # client, method, path?query, version, status
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True


