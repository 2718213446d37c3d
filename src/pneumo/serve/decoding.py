"""Uploads decoded in worker processes under a deadline (issue 24): a decode that runs past ``decode_timeout_s`` is
killed with its process (pebble starts a fresh one) and the upload is refused, while other decodes go on.

The header checks, the memory budget and the JPEG scan limit (`pneumo.data.decode`) refuse the known bombs before any
pixel is decoded; the deadline is the backstop for what they do not foresee. Workers are forked from a clean server
process (``forkserver``: the service's threads are never forked) when the first upload arrives.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from pneumo.errors import InputError


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
    check_radiograph(gray)
    return gray if keep_gray else None, prepare(gray, **preprocess)


class DecodeWorkers:
    """``workers`` decode processes; each decode gets ``timeout_s``."""

    def __init__(self, workers: int, timeout_s: float, fn: Any = decode_upload) -> None:
        self.workers, self.timeout_s, self.fn = workers, timeout_s, fn
        self._pool: Any = None

    def _started(self) -> Any:
        if self._pool is None:
            from pebble import ProcessPool

            self._pool = ProcessPool(max_workers=self.workers, context=multiprocessing.get_context("forkserver"))
        return self._pool

    async def decode(self, data: bytes, **kwargs: Any) -> Any:
        """``fn(data, **kwargs)`` in a worker.

        Raises:
            DecodeTimeout: it ran past the deadline (the worker was killed).
            InputError: what ``fn`` raised for the image.
        """
        future = self._started().schedule(self.fn, args=(data,), kwargs=kwargs, timeout=self.timeout_s)
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            raise DecodeTimeout(f"refused: decoding took longer than {self.timeout_s:g} s (an image built to be slow "
                                "to decode?); its worker was stopped") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=5)
            self._pool = None
