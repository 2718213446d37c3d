"""Decoding under a deadline in killable worker processes (issue 24): a decode that hangs is refused with 422 and
its worker replaced, the other uploads keep being answered, and the result is the thread path's, bit for bit."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from serve_helpers import BOOM, SLOW, slow_or_decode

from pneumo.errors import InputError
from pneumo.serve import app as app_module
from pneumo.serve.decoding import DecodeTimeout, DecodeWorkers, decode_upload

PREDICT = "/api/v1/predict"


def test_a_hanging_decode_is_stopped_at_its_deadline_and_the_next_decode_works(predictor, xray: bytes) -> None:
    # the deadline also bounds the next, normal decode in a fresh worker: 1 s failed once on a machine loaded ~3x
    workers = DecodeWorkers(1, timeout_s=5.0, fn=slow_or_decode)
    kwargs = {"max_pixels": 50_000_000, "preprocess": predictor.preprocessing}

    async def both() -> tuple[BaseException | None, tuple[np.ndarray, np.ndarray]]:
        try:
            await workers.decode(SLOW + xray, **kwargs)
            hung = None
        except DecodeTimeout as exc:
            hung = exc
        return hung, await workers.decode(xray, **kwargs)  # the one worker was killed and replaced

    try:
        hung, (gray, prepared) = asyncio.run(both())
    finally:
        workers.close()
    assert hung is not None and "longer than 5 s" in str(hung)
    expected_gray, expected = decode_upload(xray, **kwargs)  # the same as decoding in this process
    np.testing.assert_array_equal(gray, expected_gray)
    np.testing.assert_array_equal(prepared, expected)


def test_without_heat_map_or_preview_the_worker_sends_back_only_the_model_input(predictor, xray: bytes) -> None:
    kwargs = {"max_pixels": 50_000_000, "preprocess": predictor.preprocessing}
    workers = DecodeWorkers(1, timeout_s=30.0)
    try:
        gray, prepared = asyncio.run(workers.decode(xray, keep_gray=False, **kwargs))
    finally:
        workers.close()
    assert gray is None
    np.testing.assert_array_equal(prepared, decode_upload(xray, **kwargs)[1])


def test_an_unreadable_upload_raises_its_input_error_through_the_worker(predictor) -> None:
    workers = DecodeWorkers(1, timeout_s=30.0)
    try:
        with pytest.raises(InputError, match="cannot identify|not a|unsupported|unreadable"):
            asyncio.run(workers.decode(b"definitely not an image" * 10, max_pixels=50_000_000,
                                       preprocess=predictor.preprocessing))
    finally:
        workers.close()


def test_the_service_refuses_a_hanging_decode_with_422_and_keeps_answering(
        make_client, xray: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    class SlowWorkers(DecodeWorkers):
        def __init__(self, workers: int, timeout_s: float) -> None:
            super().__init__(workers, timeout_s, fn=slow_or_decode)

    monkeypatch.setattr(app_module, "DecodeWorkers", SlowWorkers)
    client = make_client(decode_timeout_s=5.0)  # (the later normal decodes, in fresh workers, have as long)
    headers = {"Content-Type": "application/octet-stream"}
    hung = client.post(PREDICT, content=SLOW + xray, headers=headers)
    assert hung.status_code == 422 and "decoding took longer than 5 s" in hung.json()["detail"]
    broken = client.post(PREDICT, content=BOOM + xray, headers=headers)  # an unexpected error inside a worker
    assert broken.status_code == 500 and "secret" not in broken.text and "decoding.py" not in broken.text
    answered = client.post(PREDICT, content=xray, headers=headers)
    assert answered.status_code == 200 and answered.json()["label"] in ("NORMAL", "PNEUMONIA", "not assessed")
    assert client.get("/healthz").status_code == 200


def test_decoding_in_workers_and_in_threads_give_the_same_prediction(make_client, xray: bytes) -> None:
    headers = {"Content-Type": "application/octet-stream"}
    in_workers = make_client(decode_timeout_s=30.0).post(PREDICT, content=xray, headers=headers).json()
    in_threads = make_client(decode_timeout_s=0).post(PREDICT, content=xray, headers=headers).json()
    assert "p_pneumonia" in in_workers
    for key in ("p_pneumonia", "p_calibrated", "label", "probabilities", "ood_score", "assessed"):
        assert in_workers.get(key) == in_threads.get(key), key


def test_a_pool_whose_idle_worker_died_is_made_again() -> None:
    """An OOM kill of an idle decode worker left pebble refusing every task ("Unexpected error within the Pool"): every
    later prediction got a 500 while the probes stayed green (an operations review)."""
    import os
    import signal
    import time

    from serve_helpers import worker_pid

    workers = DecodeWorkers(1, timeout_s=30.0, fn=worker_pid)
    try:
        first = asyncio.run(workers.decode(b""))
        os.kill(first, signal.SIGKILL)
        time.sleep(1)
        second = asyncio.run(workers.decode(b""))
    finally:
        workers.close()
    assert second != first and workers.broken is None


class _DeadPool:
    def schedule(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("Unexpected error within the Pool")

    def stop(self) -> None:
        pass


def test_a_decoder_that_cannot_start_answers_503_and_fails_the_health_probe(
        make_client, xray: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode workers that cannot start (made again once, in vain) were a 500 per upload with /healthz 200, so no
    probe restarted the service (an operations review); an image that fails inside a worker is still its own 500."""
    class DeadWorkers(DecodeWorkers):
        def _started(self) -> _DeadPool:
            return _DeadPool()

    monkeypatch.setattr(app_module, "DecodeWorkers", DeadWorkers)
    client = make_client(decode_timeout_s=5.0)
    assert client.get("/healthz").status_code == 200
    answer = client.post(PREDICT, content=xray, headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 503 and "decode workers cannot start" in answer.json()["detail"]
    health = client.get("/healthz")
    assert health.status_code == 503 and "decode workers cannot start" in health.json()["detail"]


def test_serve_refuses_to_start_when_no_decode_worker_can_run(tmp_path) -> None:
    """`docker run --read-only` without a tmpfs on /tmp: the forkserver found no temporary directory, every upload
    got a 500 and the HEALTHCHECK passed (an operations review). Now one line and exit 2, before the model loads."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("import sys, tempfile; tempfile.tempdir = sys.argv[1]\n"
            "from pneumo.cli import main; sys.exit(main(['serve', '--port', sys.argv[2], '--model', 'no-such']))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "gone"), str(port)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "decode worker processes cannot start" in lines[0] and "--tmpfs /tmp" in lines[0]
