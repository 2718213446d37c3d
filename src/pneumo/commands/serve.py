"""`pneumo serve`: the web page and the JSON API (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import socket

from pneumo import LOG_DATEFMT, LOG_TIME, __version__
from pneumo.argparsing import add_schema_flags, schema_values
from pneumo.atomic import sha256_file
from pneumo.config import ServeConfig
from pneumo.errors import ConfigError
from pneumo.templates import fmt_threshold

log = logging.getLogger(__name__)
# as a browser sends it: lower case, no default port (https://x:443 and http://x:80 never match)
_DEFAULTS = ServeConfig()
PORT_ENV = "PNEUMO_PORT"
EXAMPLES = """
pneumo serve                                          # the shipped model on http://127.0.0.1:8000
PNEUMO_API_KEY=secret pneumo serve --model runs/default --host 0.0.0.0 --workers 2
"""


# ServeConfig field -> help of its option in `pneumo serve` (type and default from the field)
_LIMITS = {
    "header_timeout_s": "close connections whose request headers take longer",
    "body_timeout_s": "answer 408 to uploads that take longer",
    "shutdown_timeout_s": "on SIGTERM, let requests in flight finish for at most this long, then exit",
    "max_active": "predictions decoded and run at once",
    "max_queue": "predictions waiting for a slot; more get 503 + Retry-After",
    "queue_timeout_s": "longest wait for a slot before 503 + Retry-After",
    "upload_budget_mb": "memory for all uploads being read or waiting; beyond it 503",
    "decode_timeout_s": "refuse (422) an image whose decode takes longer, killing its worker process; 0: decode in "
                        "threads without a deadline",
}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped default model)")
    parser.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                        help="auto: ONNX Runtime, exported once into the cache; torch if that fails")
    parser.add_argument("--host", default=_DEFAULTS.host, help=f"address to listen on (default {_DEFAULTS.host}; "
                        "use 0.0.0.0 to accept other machines, ideally with an API key)")
    parser.add_argument("--port", type=int, help=f"TCP port (default: ${PORT_ENV}, else {_DEFAULTS.port}; the "
                        "Docker image's health check reads the same variable)")
    parser.add_argument("--api-key", help="require this key in the X-API-Key header of /api requests "
                        "(default: $PNEUMO_API_KEY; the environment keeps it out of the process list)")
    parser.add_argument("--api-key-file", metavar="FILE", help="read the key from this file's first line instead (a "
                        "mounted secret; default: $PNEUMO_API_KEY_FILE)")
    parser.add_argument("--max-upload-mb", type=float, default=_DEFAULTS.max_upload_mb, help="largest upload")
    parser.add_argument("--max-pixels", type=int, default=_DEFAULTS.max_pixels, help="largest image (width x height)")
    parser.add_argument("--max-batch", type=int, default=_DEFAULTS.max_batch,
                        help="most concurrent requests run as one model call")
    parser.add_argument("--batch-window-ms", type=float, default=_DEFAULTS.batch_window_ms,
                        help="how long a request waits for others to share its model call")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser calls from this origin (repeatable; default: none)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model: batches run side by side, one thread "
                        "each (default: all cores)")
    parser.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    parser.add_argument("--audit-log", metavar="FILE", help="write the audit lines (one per prediction request: request "
                        "id, model, operating point, P, verdict or refusal) to this file alone, appended and reopened "
                        "after logrotate moves it (default: with the service's log on stderr)")
    parser.add_argument("--root-path", default="", metavar="PREFIX",
                        help="the path prefix a reverse proxy serves this under and strips (e.g. /pneumo): the API "
                        "documentation's requests carry it (the page's URLs are relative and need nothing)")
    parser.add_argument("--limit-concurrency", type=int, default=1000,
                        help="last-resort cap on open connections, beyond which uvicorn answers 503 to everything "
                        "(default 1000; the limits below act long before)")
    limits = parser.add_argument_group("slow clients and backpressure")
    add_schema_flags(limits, _DEFAULTS, _LIMITS)
    parser.set_defaults(func=run)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The ``ServeConfig`` the arguments describe, checked as it is built (its schema is the one place for the limits;
    an error names the flag)."""
    for flag, value in (("--workers", args.workers), ("--limit-concurrency", args.limit_concurrency),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if args.root_path and not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", args.root_path):
        raise ConfigError(f"--root-path must look like /pneumo (a path of plain segments, no slash at the end), "
                          f"got {args.root_path!r}")
    return ServeConfig(host=args.host, port=_port(args.port), max_upload_mb=args.max_upload_mb,
                       max_pixels=args.max_pixels,
                       api_key=_api_key(args), max_batch=args.max_batch,
                       batch_window_ms=args.batch_window_ms, cors_origins=list(args.cors_origin),
                       audit_log=_audit_log(args.audit_log), **schema_values(args, _LIMITS))


def _api_key(args: argparse.Namespace) -> str | None:
    """``--api-key``, else ``--api-key-file``'s first line, else ``$PNEUMO_API_KEY``, else ``$PNEUMO_API_KEY_FILE``'s
    (a proxy audit: a key could come from the command line or the environment only, not from a mounted secret)."""
    given = getattr(args, "api_key_file", None)
    if args.api_key and given:
        raise ConfigError("give --api-key or --api-key-file, not both")
    if args.api_key:
        return args.api_key
    flag, path = ("--api-key-file", given) if given else ("$PNEUMO_API_KEY_FILE", os.environ.get("PNEUMO_API_KEY_FILE"))
    if not path:
        return os.environ.get("PNEUMO_API_KEY") or None
    try:
        with open(path, encoding="utf-8") as handle:
            key = handle.readline(4097).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag} {path}: cannot read the key ({getattr(exc, 'strerror', None) or exc})") from None
    if not key:
        raise ConfigError(f"{flag} {path}: the file's first line is empty")
    return key


def _audit_log(path: str | None) -> str | None:
    """``--audit-log`` as an absolute path that can be appended to (every worker process opens it), or None."""
    if path is None:
        return None
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ConfigError(f"--audit-log {path}: cannot append to it ({exc.strerror or exc})") from None
    return os.path.abspath(path)


def _port(flag: int | None) -> int:
    """``--port``, else ``$PNEUMO_PORT``, else the default (a container sets the variable once, for the service and its
    health check alike)."""
    if flag is not None:
        return flag
    text = os.environ.get(PORT_ENV, "").strip()
    if not text:
        return _DEFAULTS.port
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"${PORT_ENV} must be a TCP port (1 to 65535), got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from pneumo.evaluate.cautions import operating_point_warning
    from pneumo.infer.predictor import Predictor
    from pneumo.serve.app import create_app
    from pneumo.serve.limits import configure_header_timeout

    config = serve_config(args)
    _check_bind(config.host, config.port)  # a port in use or a bad host: one line, before the model loads
    _timestamped_logs()  # (from the first warning on: a proxy audit found the start's warning without a time)
    if not config.api_key and not _is_loopback(config.host):  # (said before that error, it read as its cause)
        log.warning("listening on %s without an API key: anyone who can reach this port can use the service",
                    config.host)
    if "*" in config.cors_origins:
        log.warning("--cors-origin '*': any web page may call this service from a visitor's browser")
    if config.decode_timeout_s > 0:  # decode workers that cannot start (no writable /tmp): one line, not a 500 each
        from pneumo.serve.decoding import DecodeWorkers

        workers = DecodeWorkers(1, config.decode_timeout_s)
        try:
            workers.check()
        finally:
            workers.close()
    options = {"host": config.host, "port": config.port, "server_header": False, "log_config": _uvicorn_logging(),
               "timeout_graceful_shutdown": config.shutdown_timeout_s,
               "limit_concurrency": args.limit_concurrency, "root_path": args.root_path,
               "http": configure_header_timeout(config.header_timeout_s)}  # uvicorn's h11 + a header deadline
    # a missing model, a bad sidecar or weights that are not the recorded ones fail here, once, before binding: in the
    # workers they left a service up that answered 503 to everything
    predictor = Predictor(args.model, backend=args.backend, threads=1)
    if warning := operating_point_warning(predictor.meta):
        log.warning("%s", warning)
    if args.workers > 1:
        if config.api_key:
            os.environ["PNEUMO_API_KEY"] = config.api_key
        # every worker must serve this sidecar: one restarted after the folder changed would answer at another
        # operating point under the same model_id
        settings = {**config.model_dump(), "api_key": None, "model": args.model, "backend": args.backend,
                    "threads": args.threads, "pinned": sha256_file(predictor.sidecar)}
        log.info("serving model %s (threshold %s, policy %s) on http://%s:%d with %d workers", predictor.model_id,
                 fmt_threshold(predictor.threshold), predictor.meta.threshold_policy, config.host, config.port,
                 args.workers)
        os.environ["PNEUMO_SERVE_SETTINGS"] = json.dumps(settings)
        options["http"] = "pneumo.serve.limits:HeaderDeadlineH11Protocol"  # each worker imports and configures it
        uvicorn.run("pneumo.serve.app:create_app_from_env", factory=True, workers=args.workers, **options)
        return 0
    log.info("serving model %s (threshold %s, policy %s, %s backend, pneumo %s) on http://%s:%d", predictor.model_id,
             fmt_threshold(predictor.threshold), predictor.meta.threshold_policy, predictor.backend, __version__,
             config.host, config.port)
    uvicorn.run(create_app(config, predictor, threads=args.threads), **options)
    return 0


def _timestamped_logs() -> None:
    """A service's log lines carry the time in UTC (an operator reads them later); a command's do not need it."""
    from pneumo.serve.audit import service_log_formatter

    for handler in logging.getLogger().handlers:
        handler.setFormatter(service_log_formatter())


def _uvicorn_logging() -> dict:
    """uvicorn's own log setup with the time in front of its lines (its access and error lines had none)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["fmt"], formatter["datefmt"] = f"{LOG_TIME} " + formatter["fmt"], LOG_DATEFMT
    config.setdefault("filters", {})["without_query"] = {"()": "pneumo.serve.http.WithoutQuery"}
    config["filters"]["one_line_cancelled"] = {"()": "pneumo.serve.http.OneLineCancelled"}
    config["handlers"]["access"]["filters"] = ["without_query"]
    config["handlers"]["default"]["filters"] = ["one_line_cancelled"]
    return config


def _check_bind(host: str, port: int) -> None:
    """ConfigError (one line, exit 2) when ``host:port`` cannot be bound: uvicorn exits 3 after several lines, and
    after loading the model."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror}") from None
    except UnicodeError:  # a malformed name (an empty or overlong label): the IDNA codec refuses it
        raise ConfigError(f"--host {host}: not a valid host name") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        if family == socket.AF_INET6:  # as asyncio binds: "::" must not collide with a taken 127.0.0.1 port
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
