"""Uploads decoded in worker processes under a deadline (issue 24): a decode that runs past ``decode_timeout_s`` is
killed with its process (pebble starts a fresh one) and the upload is refused, while other decodes go on.

The header checks, the memory budget and the JPEG scan limit (`pneumo.data.decode`) refuse the known bombs before any
pixel is decoded; the deadline is the backstop for what they do not foresee. Workers are forked from a clean server
process (``forkserver``: the service's threads are never forked) when the first upload arrives.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from pneumo.errors import ConfigError, InputError, PneumoError, one_line

log = logging.getLogger(__name__)
VIEW_MAX_SIDE = 1024  # the image a heat map or preview is drawn on comes back from the decode this size at most


class DecodeTimeout(InputError):
    """The decode ran past its deadline and its worker was killed."""


def decode_upload(data: bytes, *, max_pixels: int, preprocess: dict[str, Any],
                  keep_gray: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """Bytes -> (decoded gray, model input): the input gate and the model's preprocessing, as in `pneumo predict`.
    ``keep_gray=False`` returns None for the gray (not sent back from a worker when no heat map or preview needs it)."""
    from pneumo.data.decode import load_image
    from pneumo.data.gate import check_radiograph
    from pneumo.data.preprocess import prepare

    gray = load_image(data, target=preprocess["size"], max_pixels=max_pixels)
    try:
        check_radiograph(gray)
    except InputError as exc:
        exc.kind = "input gate"  # (the audit line's kind of refusal; a decode error is "unreadable")
        raise
    return viewable(gray) if keep_gray else None, prepare(gray, **preprocess)


def viewable(gray: np.ndarray, max_side: int = VIEW_MAX_SIDE) -> np.ndarray:
    """The decoded image shrunk to the size the page shows (longer side ``max_side``, the aspect kept): a heat map of a
    7000 x 7000 upload was drawn at full size in the server process (~1.9 GB each, outside every budget: a red-team
    review); the model's input is prepared from the full image all the same."""
    if max(gray.shape) <= max_side:
        return gray
    from PIL import Image

    image = Image.fromarray(gray)
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(image)


class DecoderBroken(PneumoError):
    """The decode worker processes cannot be started (``/healthz`` answers 503 so that a probe restarts the service)."""


class DecodeWorkers:
    """``workers`` decode processes; each decode gets ``timeout_s``. A pool whose idle worker died (an OOM kill, a stray
    ``kill``: pebble then refuses every task) is made again once per decode; if that fails too, ``broken`` holds why
    (an operations review: every prediction got a 500 for good while the probes stayed green)."""

    def __init__(self, workers: int, timeout_s: float, fn: Any = decode_upload) -> None:
        self.workers, self.timeout_s, self.fn = workers, timeout_s, fn
        self._pool: Any = None
        self.broken: str | None = None

    def _started(self) -> Any:
        if self._pool is None:
            from pebble import ProcessPool

            self._pool = ProcessPool(max_workers=self.workers, context=multiprocessing.get_context("forkserver"))
        return self._pool

    async def decode(self, data: bytes, **kwargs: Any) -> Any:
        """``fn(data, **kwargs)`` in a worker.

        Raises:
            DecodeTimeout: it ran past the deadline (the worker was killed).
            InputError: what ``fn`` raised for the image, or its worker died while decoding it.
            DecoderBroken: no worker could be started, even in a new pool.
        """
        from pebble import ProcessExpired
        from pebble.common.types import RemoteTraceback

        for attempt in (1, 2):
            pool = self._started()
            try:  # the pool's own failures only: what the image's decode raises is that image's answer
                future = pool.schedule(self.fn, args=(data,), kwargs=kwargs, timeout=self.timeout_s)
                result = await asyncio.wrap_future(future)
                self.broken = None
                return result
            except FutureTimeout:
                raise DecodeTimeout(f"refused: decoding took longer than {self.timeout_s:g} s (an image built to be "
                                    "slow to decode?); its worker was stopped") from None
            except ProcessExpired:  # this decode's own worker died (pebble starts another): refuse, do not retry it
                raise InputError("refused: the decode stopped its worker process (out of memory?)") from None
            except (RuntimeError, BrokenProcessPool, OSError) as exc:
                if isinstance(exc.__cause__, RemoteTraceback):  # raised inside the worker by the decode itself
                    raise
                if self._pool is pool:  # the pool itself: make it again, once (a concurrent call may have already)
                    self._pool = None
                    pool.stop()  # (not joined: this is the serving loop)
                if attempt == 2:
                    self.broken = f"decode workers cannot start: {one_line(str(exc)) or type(exc).__name__}"
                    log.error("%s", self.broken)
                    raise DecoderBroken(self.broken) from None
        raise AssertionError("unreachable")

    def check(self) -> None:
        """Start the pool and run one task in it now (`pneumo serve` does, before it listens: a container without a
        writable temporary directory failed every upload while its health check passed).

        Raises:
            ConfigError: no worker process could run a task, with what to do.
        """
        try:
            self._started().schedule(int, args=("1",), timeout=60).result(timeout=90)
        except Exception as exc:  # noqa: BLE001 - whatever stops the pool, one line and exit 2
            self.close()
            raise ConfigError(f"the decode worker processes cannot start ({one_line(str(exc)) or type(exc).__name__}): "
                              "the service needs a writable temporary directory (docker run --read-only: add "
                              "--tmpfs /tmp) and may not run as a daemon process; or --decode-timeout-s 0 decodes in "
                              "threads, without a deadline") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=5)
            self._pool = None
