"""`pneumo serve`: the web page and the JSON API (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os

from pneumo.argparsing import add_schema_flags, schema_values
from pneumo.config import ServeConfig
from pneumo.errors import ConfigError

log = logging.getLogger(__name__)
_DEFAULTS = ServeConfig()
EXAMPLES = """
pneumo serve                                          # the shipped model on http://127.0.0.1:8000
PNEUMO_API_KEY=secret pneumo serve --model runs/default --host 0.0.0.0 --workers 2
"""


# ServeConfig field -> help of its option in `pneumo serve` (type and default from the field)
_LIMITS = {
    "header_timeout_s": "close connections whose request headers take longer",
    "body_timeout_s": "answer 408 to uploads that take longer",
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
    parser.add_argument("--port", type=int, default=_DEFAULTS.port, help="TCP port")
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
    parser.add_argument("--threads", type=int, help="CPU threads for the model: batches run side by side, one thread "
                        "each (default: all cores)")
    parser.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    parser.add_argument("--limit-concurrency", type=int, default=1000,
                        help="last-resort cap on open connections, beyond which uvicorn answers 503 to everything "
                        "(default 1000; the limits below act long before)")
    limits = parser.add_argument_group("slow clients and backpressure")
    add_schema_flags(limits, _DEFAULTS, _LIMITS)
    parser.set_defaults(func=run)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The ``ServeConfig`` the arguments describe, checked as it is built (its schema is the one place for the limits;
    an error names the flag)."""
    if args.workers < 1 or args.limit_concurrency < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--workers, --limit-concurrency and --threads must be at least 1")
    return ServeConfig(host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                       api_key=args.api_key or os.environ.get("PNEUMO_API_KEY") or None, max_batch=args.max_batch,
                       batch_window_ms=args.batch_window_ms, cors_origins=list(args.cors_origin),
                       **schema_values(args, _LIMITS))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from pneumo.infer.predictor import Predictor
    from pneumo.serve.app import create_app
    from pneumo.serve.limits import configure_header_timeout

    config = serve_config(args)
    if not config.api_key and not _is_loopback(config.host):
        log.warning("listening on %s without an API key: anyone who can reach this port can use the service",
                    config.host)
    options = {"host": config.host, "port": config.port, "server_header": False,
               "limit_concurrency": args.limit_concurrency,
               "http": configure_header_timeout(config.header_timeout_s)}  # uvicorn's h11 + a header deadline
    if args.workers > 1:
        # a missing model, a bad sidecar or weights that are not the recorded ones fail here, once: in the workers
        # they left a service up that answered 503 to everything
        Predictor(args.model, backend=args.backend, threads=1)
        if config.api_key:
            os.environ["PNEUMO_API_KEY"] = config.api_key
        settings = {**config.model_dump(), "api_key": None, "model": args.model, "backend": args.backend,
                    "threads": args.threads}
        os.environ["PNEUMO_SERVE_SETTINGS"] = json.dumps(settings)
        options["http"] = "pneumo.serve.limits:HeaderDeadlineH11Protocol"  # each worker imports and configures it
        uvicorn.run("pneumo.serve.app:create_app_from_env", factory=True, workers=args.workers, **options)
        return 0
    predictor = Predictor(args.model, backend=args.backend, threads=1)  # a bad model fails before binding
    log.info("serving model %s on http://%s:%d", predictor.model_id, config.host, config.port)
    uvicorn.run(create_app(config, predictor, threads=args.threads), **options)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
