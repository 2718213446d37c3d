"""Uploads never reach the logs: no file names, no file content, no exception messages."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from pneumo.infer.predictor import Predictor

PREDICT = "/api/v1/predict"
SECRET_NAME = "Doe_Jane_1987-03-02_MRN4711.jpeg"
SECRET_TEXT = "SECRET-PATIENT-NOTE-0xC0FFEE"


def test_logs_carry_no_file_names_or_bytes(client: TestClient, xray: bytes, fake_heatmap: list,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    html = f"<html><body>{SECRET_TEXT}</body></html>".encode()
    responses = [
        client.post(PREDICT, params={"heatmap": "true", "preview": "true"},
                    files={"file": (SECRET_NAME, xray, "image/jpeg")}),
        client.post(PREDICT, files={"file": (SECRET_NAME, html, "image/jpeg")}),
        client.post(PREDICT, files={"file": (SECRET_NAME, SECRET_TEXT.encode() * 50, "text/plain")}),
        client.post(PREDICT, files={"file": (SECRET_NAME, xray[:700], "image/jpeg")}),
    ]
    assert [r.status_code for r in responses] == [200, 422, 422, 422]
    assert caplog.records, "the service logged nothing at all: the test would prove nothing"
    logged = caplog.text + " ".join(repr(r.args) for r in caplog.records)
    for secret in (SECRET_NAME, "Doe_Jane", "MRN4711", SECRET_TEXT, xray[:64].hex(), repr(xray[:32])[2:-1]):
        assert secret not in logged


def test_internal_errors_are_logged_by_type_only(make_client: Callable[..., TestClient], predictor: Predictor,
                                                 xray: bytes, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    def broken(batch):
        raise RuntimeError(f"{SECRET_TEXT} at /srv/models/x")

    monkeypatch.setattr(predictor, "predict_prepared", broken)
    client = make_client(predictor)
    caplog.set_level(logging.DEBUG)
    response = client.post(PREDICT, files={"file": (SECRET_NAME, xray, "image/jpeg")})
    assert response.status_code == 500
    assert "RuntimeError" in caplog.text
    assert SECRET_TEXT not in caplog.text and "/srv/models" not in caplog.text and "Traceback" not in caplog.text
    assert not any(record.exc_info for record in caplog.records)


def test_each_request_leaves_one_audit_line_with_its_id_model_and_outcome(client: TestClient, predictor: Predictor,
                                                                          xray: bytes,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """An audit-trail review: a verdict and a refusal both logged as 200 in the access log, and nothing tied a stored
    result to a log line. Every answer now carries a request id (the caller's, if a plain token), and the audit
    logger says which model and threshold gave which outcome, without the file's name."""
    caplog.set_level(logging.INFO, logger="pneumo.serve.audit")
    given = client.post(PREDICT, files={"file": (SECRET_NAME, xray, "image/jpeg")},
                        headers={"X-Request-ID": "ward7-000123"})
    made = client.post(PREDICT, files={"file": (SECRET_NAME, xray, "image/jpeg")},
                       headers={"X-Request-ID": "forged\nline"})
    refused = client.post(PREDICT, files={"file": (SECRET_NAME, SECRET_TEXT.encode() * 50, "text/plain")})
    assert given.status_code == made.status_code == 200 and refused.status_code == 422
    assert given.headers["X-Request-ID"] == given.json()["request_id"] == "ward7-000123"
    rid = made.headers["X-Request-ID"]
    assert made.json()["request_id"] == rid and len(rid) == 32 and "\n" not in rid  # not the caller's: a new id
    lines = [r.getMessage() for r in caplog.records if r.name == "pneumo.serve.audit"]
    assert len(lines) == 3
    body = given.json()
    # the client too, so that the audit line and the access line (which names only the client) can be joined (an
    # operations review); TestClient's address is "testclient"
    assert lines[0] == (f"prediction request=ward7-000123 client=testclient model={predictor.model_id} "
                        f"policy={body['threshold_policy']} "
                        f"threshold={body['threshold']:.6g} p={body['p_pneumonia']:.6g} label=\"{body['label']}\" "
                        f"outcome={'verdict' if body['assessed'] else 'refused:out-of-distribution'}")
    assert lines[1].startswith(f"prediction request={rid} ")
    assert lines[2] == (f"no prediction request={refused.headers['X-Request-ID']} client=testclient "
                        f"model={predictor.model_id} status=422 refused=\"unreadable\"")
    assert SECRET_NAME not in " ".join(lines) and SECRET_TEXT not in " ".join(lines)


def test_the_audit_lines_can_go_to_a_file_of_their_own(make_client, xray: bytes, tmp_path, caplog,
                                                        capsys) -> None:
    """The audit trail, meant to answer questions weeks later, rotated with the noisy application log (an operations
    review): --audit-log FILE writes its lines there alone; a file that cannot be appended to is one line, exit 2."""
    from pneumo.cli import main

    path = tmp_path / "audit.log"
    client = make_client(audit_log=str(path))
    caplog.set_level(logging.INFO)
    answer = client.post("/api/v1/predict", content=xray, headers={"Content-Type": "application/octet-stream",
                                                                      "X-Request-ID": "case-0042"})
    assert answer.status_code == 200
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and "prediction request=case-0042" in lines[0] and lines[0][:4].isdigit()  # UTC time first
    assert not any(r.name == "pneumo.serve.audit" for r in caplog.records)  # not in the service's log as well
    client.__exit__(None, None, None)  # the service stops: the audit lines go with its log again
    assert logging.getLogger("pneumo.serve.audit").propagate and not logging.getLogger("pneumo.serve.audit").handlers
    assert main(["serve", "--audit-log", str(tmp_path / "missing" / "audit.log")]) == 2
    assert "--audit-log" in capsys.readouterr().err


def test_no_verdict_is_given_while_its_audit_line_cannot_be_written(make_client, xray: bytes, tmp_path, caplog,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit of machine failures: on a full disk the service answered 200 with verdicts whose audit lines were
    lost, printed a 55-line traceback per request, stayed ready, and failed to stop. Now: 503, /readyz 503, one
    log line; the first request after the disk has room again is answered and audited."""
    import errno

    from pneumo.serve import audit

    path = tmp_path / "audit.log"
    client = make_client(audit_log=str(path))
    trail = next(h for h in logging.getLogger("pneumo.serve.audit").handlers if isinstance(h, audit._Trail))
    real_write, full = trail.stream.write, [True]

    def write(text: str) -> int:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(text)

    monkeypatch.setattr(trail.stream, "write", write)
    caplog.set_level(logging.INFO)
    post = {"content": xray, "headers": {"Content-Type": "application/octet-stream"}}
    first, second = (client.post(PREDICT, **post) for _ in range(2))
    assert first.status_code == second.status_code == 503 and "p_pneumonia" not in first.json()
    assert first.json()["detail"].startswith("the audit log cannot be written (No space left on device)")
    assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 200
    said = [r for r in caplog.records if "audit log" in r.getMessage()]
    assert len(said) == 1 and not any(r.exc_info for r in caplog.records)  # one line, no traceback per request
    full[0] = False  # room again: the refusal's audit line is written, then the next request gets its verdict
    assert client.post(PREDICT, **post).status_code == 503 and client.post(PREDICT, **post).status_code == 200
    assert client.get("/readyz").status_code == 200 and "outcome=verdict" in path.read_text()
    full[0] = True
    client.__exit__(None, None, None)  # stops cleanly on a full disk


def test_a_request_cancelled_at_shutdown_is_one_log_line_and_one_audit_line(
        client: TestClient, xray: bytes, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM with a slow upload still arriving: a 68-line traceback in the log and no audit line (CancelledError
    is a BaseException and slipped past the handler; an operations review)."""
    import asyncio
    import sys

    from pneumo.commands.serve import _uvicorn_logging
    from pneumo.serve import app as app_module
    from pneumo.serve.http import OneLineCancelled

    async def cancelled(*args: object, **kwargs: object) -> bytes:
        raise asyncio.CancelledError("Task cancelled, timeout graceful shutdown exceeded")

    monkeypatch.setattr(app_module, "_receive", cancelled)
    caplog.set_level(logging.INFO, logger="pneumo.serve.audit")
    answer = client.post(PREDICT, content=xray, headers={"Content-Type": "application/octet-stream",
                                                         "X-Request-ID": "late-1"})
    assert answer.status_code == 500
    assert [r.getMessage() for r in caplog.records if r.name == "pneumo.serve.audit"] == [
        "no prediction request=late-1 client=testclient model=" + client.app.state.service.predictor.model_id
        + " status=500"]
    try:
        raise asyncio.CancelledError("Task cancelled")
    except asyncio.CancelledError:
        record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", (),
                                   sys.exc_info())
    assert OneLineCancelled().filter(record)
    assert "\n" not in logging.Formatter().format(record) and "cancelled at shutdown" in record.getMessage()
    config = _uvicorn_logging()
    assert "one_line_cancelled" in config["handlers"]["default"]["filters"]
