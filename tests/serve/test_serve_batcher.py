"""Micro-batching: concurrent requests share model calls; failures reach every waiting request."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from pneumo.config import ServeConfig
from pneumo.errors import ModelError
from pneumo.infer.predictor import Predictor
from pneumo.serve.app import create_app
from pneumo.serve.batcher import MicroBatcher


class Recorder:
    """A stand-in model: returns each image's mean pixel and records the batch sizes it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay

    def __call__(self, batch: np.ndarray) -> list[float]:
        self.sizes.append(len(batch))
        time.sleep(self.delay)
        return [float(img.mean()) for img in batch]


async def submit_all(batcher: MicroBatcher, values: list[int]) -> list[object]:
    images = [np.full((4, 4), v, dtype=np.uint8) for v in values]
    return await asyncio.gather(*(batcher.submit(img) for img in images), return_exceptions=True)


def run_batcher(model, values: list[int], **kwargs) -> tuple[list[object], MicroBatcher]:
    batcher = MicroBatcher(model, **kwargs)
    batcher.start()
    try:
        return asyncio.run(submit_all(batcher, values)), batcher
    finally:
        batcher.close()


def test_concurrent_submissions_share_one_model_call() -> None:
    model = Recorder()
    results, batcher = run_batcher(model, list(range(6)), max_batch=8, window_ms=200)
    assert model.sizes == [6] and batcher.batch_sizes == {6: 1}
    assert results == [float(v) for v in range(6)]  # each request gets its own image's result


def test_batches_never_exceed_max_batch() -> None:
    model = Recorder(delay=0.02)
    results, _ = run_batcher(model, list(range(20)), max_batch=4, window_ms=50)
    assert max(model.sizes) <= 4 and sum(model.sizes) == 20
    assert results == [float(v) for v in range(20)]


class SilentQueue:
    """No other request ever arrives; records how long the worker asked to wait for one."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def get(self, timeout: float) -> None:
        self.waits.append(timeout)
        raise queue.Empty

    def get_nowait(self) -> None:
        raise queue.Empty


def test_a_lone_request_runs_alone_and_waits_at_most_the_window() -> None:
    model = Recorder()
    results, _ = run_batcher(model, [7], max_batch=8, window_ms=30)
    assert results == [7.0] and model.sizes == [1]  # not held back until the batch fills
    batcher = MicroBatcher(Recorder(), max_batch=8, window_ms=30)
    batcher._queue = silent = SilentQueue()
    first = object()
    assert batcher._gather(first) == ([first], False)
    assert silent.waits and all(wait <= 0.030 for wait in silent.waits)


def test_a_failing_batch_fails_each_of_its_requests_and_the_worker_survives() -> None:
    calls = []

    def flaky(batch: np.ndarray) -> list[float]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [0.0] * len(batch)

    batcher = MicroBatcher(flaky, max_batch=8, window_ms=100)
    batcher.start()
    try:
        first = asyncio.run(submit_all(batcher, [1, 2, 3]))
        second = asyncio.run(submit_all(batcher, [4]))
    finally:
        batcher.close()
    assert all(isinstance(r, RuntimeError) for r in first)
    assert second == [0.0]


def test_submitting_after_close_raises_model_error() -> None:
    batcher = MicroBatcher(Recorder(), max_batch=2)
    batcher.start()
    batcher.close()
    with pytest.raises(ModelError, match="not running"):
        asyncio.run(submit_all_strict(batcher))


async def submit_all_strict(batcher: MicroBatcher) -> object:
    return await batcher.submit(np.zeros((4, 4), dtype=np.uint8))


def test_close_finishes_the_requests_already_queued() -> None:
    gate = threading.Event()

    def slow(batch: np.ndarray) -> list[float]:
        gate.wait(5)
        return [1.0] * len(batch)

    batcher = MicroBatcher(slow, max_batch=1, window_ms=0)
    batcher.start()

    async def scenario() -> list[object]:
        tasks = [asyncio.ensure_future(submit_all_strict(batcher)) for _ in range(3)]
        await asyncio.sleep(0.2)  # the first is inside the model, two wait in the queue
        closer = threading.Thread(target=batcher.close)
        closer.start()
        await asyncio.sleep(0.1)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        closer.join()
        return results

    assert asyncio.run(scenario()) == [1.0, 1.0, 1.0]


def test_sixteen_concurrent_http_requests_are_micro_batched(predictor: Predictor, xray_paths: list[Path]) -> None:
    seen: list[int] = []
    real = predictor.predict_prepared

    def spy(batch: np.ndarray) -> list:
        seen.append(len(batch))
        return real(batch)

    predictor.predict_prepared = spy  # type: ignore[method-assign]
    app = create_app(ServeConfig(max_batch=16, batch_window_ms=250), predictor)
    images = [path.read_bytes() for path in xray_paths[:16]]

    async def scenario() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(*(client.post("/api/v1/predict",
                                                          files={"file": ("x.jpeg", data, "image/jpeg")})
                                              for data in images))

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 16
    assert sum(seen) == 16 and max(seen) > 1
    expected = [p.p_pneumonia for p in predictor.predict([_gray(predictor, d) for d in images])]
    got = [r.json()["p_pneumonia"] for r in responses]
    np.testing.assert_allclose(got, expected, atol=1e-5)  # batching never mixes up whose result is whose


def _gray(predictor: Predictor, data: bytes) -> np.ndarray:
    from pneumo.data.decode import load_image

    return load_image(data, target=predictor.size)


def test_close_fails_queued_requests_when_the_model_is_stuck() -> None:
    gate = threading.Event()

    def stuck(batch: np.ndarray) -> list[float]:
        gate.wait(5)
        return [1.0] * len(batch)

    batcher = MicroBatcher(stuck, max_batch=1, window_ms=0)
    batcher.start()

    async def scenario() -> list[object]:
        tasks = [asyncio.ensure_future(submit_all_strict(batcher)) for _ in range(3)]
        await asyncio.sleep(0.2)
        await asyncio.get_running_loop().run_in_executor(None, lambda: batcher.close(timeout=0.2))
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())
    assert results[0] == 1.0
    assert all(isinstance(r, ModelError) for r in results[1:])


def test_two_workers_run_two_batches_side_by_side_and_close_stops_both() -> None:
    """`pneumo serve` runs a batch per core (issue 24): each model call waits until the other one is running too, which
    only a second worker makes possible; close() ends both threads."""
    both_running = threading.Barrier(2, timeout=5)

    def model(batch: np.ndarray) -> list[float]:
        both_running.wait()
        return [float(img.mean()) for img in batch]

    results, batcher = run_batcher(model, [3, 5], max_batch=1, window_ms=0, workers=2)
    assert results == [3.0, 5.0] and batcher.batch_sizes == {1: 2}
    assert not [t for t in threading.enumerate() if t.name.startswith("pneumo-batcher")]
    with pytest.raises(ModelError, match="at least 1"):
        MicroBatcher(model, workers=0)
