"""Security properties the other service tests leave open: internal errors at every stage stay bare and the service
recovers, the API key is compared in constant time, CORS is opt-in and narrow, DICOM patient data stays out of the
logs even at DEBUG, and the size limits hold at their edges."""

from __future__ import annotations

import hmac
import importlib
import io
import logging
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import dicom_bytes, png_bytes

from pneumo.data.decode import load_image
from pneumo.infer.predictor import Predictor

PREDICT = "/api/v1/predict"
PATIENT = "Zzyzx^Quentin^Marguerite"
PATIENT_ID = "MRN-PX-80412"


def jpeg_upload(xray: bytes) -> dict:
    return {"file": ("x.jpeg", xray, "image/jpeg")}


def assert_bare_500(response) -> None:
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}  # no traceback, no exception text
    assert response.headers["x-content-type-options"] == "nosniff"  # the Guard's headers even on its own 500


def _raise(*args: object, **kwargs: object) -> None:
    raise RuntimeError("secret-internals in /srv/pneumo/model.py line 42")


# Where an unexpected exception can start: (owner, attribute, the request that reaches it). The owner is a module
# path or "predictor"; the failure is switched off afterwards to check that the service recovers.
FAILURE_POINTS = {
    "decoding": ("pneumo.data.decode", "load_image", "post", {}),
    "preprocessing": ("pneumo.data.preprocess", "prepare", "post", {}),
    "inference": ("predictor", "predict_prepared", "post", {}),
    "heat map": ("pneumo.explain.cam", "heatmap_overlay_png", "post", {"heatmap": "true"}),
    "model card": ("pneumo.serve.app", "model_card_of", "get", {}),
}


@pytest.mark.parametrize("stage", list(FAILURE_POINTS))
def test_internal_error_at_any_stage_is_a_bare_500_and_the_service_recovers(
        stage: str, make_client: Callable[..., TestClient], predictor: Predictor, xray: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    owner_name, attribute, method, params = FAILURE_POINTS[stage]
    owner = predictor if owner_name == "predictor" else importlib.import_module(owner_name)
    real, failing = getattr(owner, attribute), [True]

    def sometimes_broken(*args: object, **kwargs: object) -> object:
        return _raise() if failing[0] else real(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, sometimes_broken)  # before the app starts: the batcher keeps its callable
    # decoding in threads, where the patch reaches (a failure inside a decode worker: test_serve_decode_deadline.py)
    client = make_client(predictor, decode_timeout_s=0)

    def request():
        if method == "post":
            return client.post(PREDICT, params=params, files=jpeg_upload(xray))
        return client.get("/api/v1/model")

    assert_bare_500(request())
    failing[0] = False
    after = request()
    assert after.status_code == 200 and after.json()["model_id"] == predictor.model_id
    assert client.post(PREDICT, files=jpeg_upload(xray)).status_code == 200


def test_repeated_internal_errors_leave_the_batcher_serving(make_client: Callable[..., TestClient],
                                                            predictor: Predictor, xray: bytes,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = predictor.predict_prepared
    failures = iter([True] * 5 + [False])
    monkeypatch.setattr(predictor, "predict_prepared", lambda batch: _raise() if next(failures) else real(batch))
    client = make_client(predictor)
    for _ in range(5):
        assert_bare_500(client.post(PREDICT, files=jpeg_upload(xray)))
    assert client.post(PREDICT, files=jpeg_upload(xray)).status_code == 200


def test_an_internal_error_reaches_an_allowed_origin_as_a_500_not_as_a_cors_failure(
        make_client: Callable[..., TestClient], predictor: Predictor, xray: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard answers the 500 outside CORSMiddleware: without the header, a viewer page of an allowed origin could not
    read the status and showed a network error; another origin still gets no header."""
    monkeypatch.setattr(predictor, "predict_prepared", _raise)
    client = make_client(predictor, cors_origins=["https://viewer.example"])
    allowed = client.post(PREDICT, files=jpeg_upload(xray), headers={"Origin": "https://viewer.example"})
    other = client.post(PREDICT, files=jpeg_upload(xray), headers={"Origin": "https://evil.example"})
    assert_bare_500(allowed)
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.example"
    assert_bare_500(other)
    assert "access-control-allow-origin" not in other.headers


@pytest.fixture()
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record every ``hmac.compare_digest`` call (its arguments), still comparing for real."""
    calls: list[tuple] = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return calls


def test_api_key_is_compared_in_constant_time(make_client: Callable[..., TestClient], compare_calls: list[tuple],
                                              xray: bytes) -> None:
    client = make_client(api_key="s3cret-key")
    wrong = client.post(PREDICT, files=jpeg_upload(xray), headers={"X-API-Key": "s3cret-kez"})
    right = client.post(PREDICT, files=jpeg_upload(xray), headers={"X-API-Key": "s3cret-key"})
    assert (wrong.status_code, right.status_code) == (401, 200)
    assert [(bytes(a), bytes(b)) for a, b in compare_calls] == [(b"s3cret-kez", b"s3cret-key"),
                                                               (b"s3cret-key", b"s3cret-key")]


def test_non_ascii_api_key_is_a_401_not_a_500(make_client: Callable[..., TestClient], xray: bytes) -> None:
    client = make_client(api_key="s3cret")
    response = client.post(PREDICT, files=jpeg_upload(xray), headers={"X-API-Key": "s3cr\xe9t".encode("latin-1")})
    assert response.status_code == 401 and "api key" in response.json()["detail"].lower()


def test_cors_preflight_is_not_answered_by_default(client: TestClient) -> None:
    response = client.options(PREDICT, headers={"Origin": "https://elsewhere.example",
                                                "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-methods" not in response.headers


def test_cors_preflight_allows_only_the_configured_origin_and_the_api_key_header(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(cors_origins=["https://viewer.example"])
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    allowed = client.options(PREDICT, headers={"Origin": "https://viewer.example", **preflight})
    other = client.options(PREDICT, headers={"Origin": "https://evil.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.example"
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    for answer in (allowed, other):  # preflights carry the security headers too (CORS answered them outside Guard)
        assert "content-security-policy" in answer.headers and answer.headers["x-content-type-options"] == "nosniff"


def test_cors_headers_only_for_a_configured_origin(client: TestClient, make_client: Callable[..., TestClient]) -> None:
    """A simple request: no CORS header by default, the configured origin echoed, an unlisted one not (the CORS tests
    of two files in one)."""
    elsewhere = client.get("/api/v1/model", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in elsewhere.headers
    configured = make_client(cors_origins=["https://viewer.example"])
    listed = configured.get("/api/v1/model", headers={"Origin": "https://viewer.example"})
    assert listed.headers["access-control-allow-origin"] == "https://viewer.example"
    unlisted = configured.get("/api/v1/model", headers={"Origin": "https://evil.example"})
    assert unlisted.status_code == 200 and "access-control-allow-origin" not in unlisted.headers


def identified_dicom(gray: np.ndarray) -> bytes:
    """A DICOM of ``gray`` carrying a patient's name, ID and birth date."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(gray, patient_name=PATIENT)))
    ds.PatientID, ds.PatientBirthDate = PATIENT_ID, "19870302"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_patient_tags_and_pixels_never_reach_the_logs_at_debug_level(
        client: TestClient, xray: bytes, caplog: pytest.LogCaptureFixture) -> None:
    gray = load_image(xray)
    dicom = identified_dicom(gray)
    assert PATIENT.encode() in dicom and PATIENT_ID.encode() in dicom
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    uploads = [dicom, dicom[:-5000], dicom.replace(b"MONOCHROME2", b"MONOCHROME9")]
    statuses = [client.post(PREDICT, params={"preview": "true"},
                            files={"file": (f"{PATIENT}.dcm", data, "application/dicom")}).status_code
                for data in uploads]
    assert statuses[0] == 200 and all(400 <= code < 500 for code in statuses[1:])
    assert caplog.records, "nothing was logged at all: the test would prove nothing"
    logged = caplog.text + " ".join(repr(record.args) for record in caplog.records)
    pixel_bytes = (gray.astype(np.uint16) * 16).tobytes()
    for secret in (PATIENT, "Zzyzx", "Quentin", PATIENT_ID, "19870302", pixel_bytes[:48].hex(),
                   repr(pixel_bytes[:24])[2:-1], repr(dicom[132:180])[2:-1]):
        assert secret not in logged


def test_dicom_over_the_pixel_limit_is_refused_by_its_header(make_client: Callable[..., TestClient],
                                                             xray: bytes) -> None:
    gray = load_image(xray)
    client = make_client(max_pixels=gray.size - 1)
    response = client.post(PREDICT, files={"file": ("scan.dcm", dicom_bytes(gray), "application/dicom")})
    assert response.status_code == 422 and "too large" in response.json()["detail"].lower()
    assert make_client(max_pixels=gray.size).post(
        PREDICT, files={"file": ("scan.dcm", dicom_bytes(gray), "application/dicom")}).status_code == 200


def test_upload_exactly_at_the_limit_is_accepted_and_one_byte_more_is_not(
        make_client: Callable[..., TestClient]) -> None:
    image = png_bytes(np.tile(np.arange(64, dtype=np.uint8), (64, 1)))
    limit_mb = len(image) / 1e6
    assert int(limit_mb * 1_000_000) == len(image)  # the service's own MB -> bytes conversion lands exactly
    client = make_client(max_upload_mb=limit_mb)
    at_limit = client.post(PREDICT, files={"file": ("x.png", image, "image/png")})
    over = client.post(PREDICT, files={"file": ("x.png", image + b"\0", "image/png")})
    raw_over = client.post(PREDICT, content=image + b"\0", headers={"Content-Type": "image/png"})
    assert (at_limit.status_code, over.status_code, raw_over.status_code) == (200, 413, 413)


def test_large_extra_form_fields_count_against_the_body_limit(make_client: Callable[..., TestClient],
                                                              xray: bytes) -> None:
    client = make_client(max_upload_mb=len(xray) / 1e6)
    padding = io.BytesIO(b"x" * (len(xray) + 200_000))
    response = client.post(PREDICT, files={"file": ("x.jpeg", xray, "image/jpeg"),
                                           "comment": ("c.txt", padding, "text/plain")})
    assert response.status_code == 413 and "too large" in response.json()["detail"]
