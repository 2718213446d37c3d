"""Micro-batching: requests that arrive together share one model call.

Each request hands its preprocessed image to :meth:`MicroBatcher.submit` and awaits an asyncio future. A worker
thread takes the first waiting image, gathers more for at most ``window_ms`` (never more than ``max_batch``), calls
the model once on the stacked batch and resolves every future on the loop it came from. Under load the queue fills
while the model runs, so batches grow by themselves; alone, a request waits at most ``window_ms``. With ``workers``
> 1 that many batches run side by side (`pneumo serve`: one per core, each model call on one thread, batches of
at most 4: at 16 clients on 2 cores 97.5 -> 107.4 req/s, p99 214 -> 229 ms, medians of back-to-back runs,
BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pneumo.errors import ModelError

log = logging.getLogger(__name__)
PredictBatch = Callable[[np.ndarray], Sequence[object]]


@dataclass
class _Item:
    prepared: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class MicroBatcher:
    """Worker threads that run ``predict_batch`` on batches of concurrently submitted images.

    Args:
        predict_batch: uint8 (B, S, S) -> one result per image (``Predictor.predict_prepared``); called from
            ``workers`` threads at once when ``workers`` > 1.
        max_batch: the largest batch handed to the model.
        window_ms: how long the first image of a batch waits for company.
        workers: batches run side by side.
    """

    def __init__(self, predict_batch: PredictBatch, *, max_batch: int = 8, window_ms: float = 5.0,
                 workers: int = 1) -> None:
        if max_batch < 1 or workers < 1:
            raise ModelError(f"max_batch and workers must be at least 1, got {max_batch} and {workers}")
        self.workers = int(workers)
        self._predict_batch = predict_batch
        self.max_batch = int(max_batch)
        self.window_s = max(0.0, float(window_ms)) / 1000.0
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._state = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()  # batch size -> how many batches of that size ran

    def start(self) -> None:
        if self._threads:
            return
        self._threads = [threading.Thread(target=self._work, name=f"pneumo-batcher-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new images, finish the ones already queued, stop the thread; whatever is still queued after
        ``timeout`` seconds (a stuck model) fails with ``ModelError``."""
        with self._state:  # every image queued before the stop markers is either run or failed below
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)  # one stop marker for each worker
        threads, self._threads = self._threads, []
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stranded = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                stranded.append(item)
        for thread in threads:
            if thread.is_alive():
                self._queue.put(None)  # a stuck worker still stops once the model returns
        for item in stranded:
            _resolve(item, error=ModelError("the service is shutting down"))

    async def submit(self, prepared: np.ndarray) -> object:
        """Queue one preprocessed uint8 S x S image and wait for its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._state:
            if self._closed or not self._threads:
                raise ModelError("the batcher is not running")
            self._queue.put(_Item(prepared, loop, future))
        return await future

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._run(batch)
            if stop:
                return

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """The first item plus whatever arrives within the window; True when the stop marker was seen."""
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # skip requests whose client went away
        if not live:
            return
        try:
            results = list(self._predict_batch(np.stack([item.prepared for item in live])))
            if len(results) != len(live):
                raise ModelError(f"the model returned {len(results)} results for {len(live)} images")
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, the worker keeps running
            log.error("batch of %d failed: %s", len(live), type(exc).__name__)
            for item in live:
                _resolve(item, error=exc)
            return
        with self._state:
            self.batch_sizes[len(live)] += 1
        for item, result in zip(live, results, strict=True):
            _resolve(item, result=result)


def _resolve(item: _Item, *, result: object = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if item.future.done():  # cancelled meanwhile
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)

    try:
        item.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the request's event loop is closed: nobody is waiting any more
        pass
