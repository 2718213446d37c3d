"""A real uvicorn server in a thread on 127.0.0.1, for the browser tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest


@contextmanager
def _serving(predictor: object, *, start_timeout_s: float = 30, **config: object) -> Iterator[str]:
    """Serve ``predictor`` with the real app (``config``: more `ServeConfig` fields) until the block ends; yields
    ``http://127.0.0.1:PORT``."""
    import uvicorn

    from pneumo.config import ServeConfig
    from pneumo.serve.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(ServeConfig(port=port, **config), predictor)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def serving() -> Callable[..., AbstractContextManager[str]]:
    return _serving
