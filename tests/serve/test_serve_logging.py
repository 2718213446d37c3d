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
