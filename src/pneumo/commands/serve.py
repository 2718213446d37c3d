"""`pneumo serve`: the web page and the JSON API (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
from dataclasses import asdict

from pneumo.config import ServeConfig
from pneumo.errors import ConfigError

log = logging.getLogger(__name__)
_DEFAULTS = ServeConfig()


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="run folder or checkpoint (default: the shipped default model)")
    parser.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                        help="auto (default): ONNX Runtime, exported once into the cache; torch if that fails")
    parser.add_argument("--host", default=_DEFAULTS.host, help=f"address to listen on (default {_DEFAULTS.host}; "
                        "use 0.0.0.0 to accept other machines, ideally with an API key)")
    parser.add_argument("--port", type=int, default=_DEFAULTS.port)
    parser.add_argument("--api-key", help="require this key in the X-API-Key header of /api requests "
                        "(default: $PNEUMO_API_KEY; the environment keeps it out of the process list)")
    parser.add_argument("--max-upload-mb", type=float, default=_DEFAULTS.max_upload_mb, help="largest upload")
    parser.add_argument("--max-pixels", type=int, default=_DEFAULTS.max_pixels, help="largest image (width x height)")
    parser.add_argument("--max-batch", type=int, default=_DEFAULTS.max_batch,
                        help="most concurrent requests run as one model call")
    parser.add_argument("--batch-window-ms", type=float, default=_DEFAULTS.batch_window_ms,
                        help="how long a request waits for others to share its model call")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser calls from this origin (repeatable; default: none)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores)")
    parser.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    parser.add_argument("--limit-concurrency", type=int, default=64,
                        help="connections served at once before answering 503 (bounds memory: each may hold an upload)")
    parser.set_defaults(func=run)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The ``ServeConfig`` the arguments describe, checked."""
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise ConfigError("--max-upload-mb and --max-pixels must be positive")
    if args.max_batch < 1 or args.batch_window_ms < 0 or args.workers < 1:
        raise ConfigError("--max-batch and --workers must be at least 1, --batch-window-ms at least 0")
    return ServeConfig(host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                       api_key=args.api_key or os.environ.get("PNEUMO_API_KEY") or None, max_batch=args.max_batch,
                       batch_window_ms=args.batch_window_ms, cors_origins=list(args.cors_origin))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from pneumo.infer.predictor import Predictor, resolve_model
    from pneumo.serve.app import create_app

    config = serve_config(args)
    if not config.api_key and not _is_loopback(config.host):
        log.warning("listening on %s without an API key: anyone who can reach this port can use the service",
                    config.host)
    options = {"host": config.host, "port": config.port, "server_header": False,
               "limit_concurrency": args.limit_concurrency}
    if args.workers > 1:
        resolve_model(args.model)  # fail here, not in every worker
        if config.api_key:
            os.environ["PNEUMO_API_KEY"] = config.api_key
        settings = {**asdict(config), "api_key": None, "model": args.model, "backend": args.backend,
                    "threads": args.threads}
        os.environ["PNEUMO_SERVE_SETTINGS"] = json.dumps(settings)
        uvicorn.run("pneumo.serve.app:create_app_from_env", factory=True, workers=args.workers, **options)
        return 0
    predictor = Predictor(args.model, backend=args.backend, threads=args.threads)  # a bad model fails before binding
    log.info("serving model %s on http://%s:%d", predictor.model_id, config.host, config.port)
    uvicorn.run(create_app(config, predictor), **options)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
