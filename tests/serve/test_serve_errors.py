"""Every bad request gets a one-line 4xx JSON reason, unexpected failures a bare 500, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from serve_helpers import png_bomb

PREDICT = "/api/v1/predict"


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    for word in words:
        assert word in detail.lower()


def test_no_file_field_is_422(client: TestClient, xray: bytes) -> None:
    assert_error(client.post(PREDICT, files={"image": ("x.jpeg", xray, "image/jpeg")}), 422, "no file")


def test_no_body_at_all_is_415(client: TestClient) -> None:
    assert_error(client.post(PREDICT), 415, "multipart")


def test_empty_file_is_422(client: TestClient) -> None:
    assert_error(client.post(PREDICT, files={"file": ("x.jpeg", b"", "image/jpeg")}), 422, "empty")


def test_text_file_is_422_not_an_image(client: TestClient) -> None:
    assert_error(client.post(PREDICT, files={"file": ("notes.txt", b"hello world\n" * 20, "text/plain")}), 422,
                 "not an image")


def test_html_named_jpg_is_refused_by_its_content(client: TestClient) -> None:
    page = b"<!DOCTYPE html><html><body>hi</body></html>"
    assert_error(client.post(PREDICT, files={"file": ("x.jpg", page, "image/jpeg")}), 422, "not an image", "html")


def test_truncated_jpeg_is_422(client: TestClient, xray: bytes) -> None:
    assert_error(client.post(PREDICT, files={"file": ("x.jpeg", xray[:600], "image/jpeg")}), 422)


def test_upload_over_the_limit_is_413(make_client: Callable[..., TestClient], xray: bytes) -> None:
    client = make_client(max_upload_mb=len(xray) / 2 / 1e6)
    assert_error(client.post(PREDICT, files={"file": ("x.jpeg", xray, "image/jpeg")}), 413, "too large")


def test_upload_limit_is_counted_on_a_stream_without_content_length(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_mb=0.1)
    def chunks() -> Iterator[bytes]:
        for _ in range(100):  # 6.4 MB offered, chunked transfer: no Content-Length to trust
            yield b"\0" * 65536

    response = client.post(PREDICT, content=chunks(), headers={"Content-Type": "application/octet-stream"})
    assert_error(response, 413, "too large")


def test_declared_length_over_the_limit_is_refused_before_reading(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_mb=0.001)
    response = client.post(PREDICT, content=b"\0" * 5000, headers={"Content-Type": "application/octet-stream"})
    assert_error(response, 413, "too large")


def test_decompression_bomb_is_refused_with_the_reason(client: TestClient) -> None:
    response = client.post(PREDICT, files={"file": ("bomb.png", png_bomb(8000, 8000), "image/png")})
    assert_error(response, 422, "too large", "8000x8000")


def test_extreme_decompression_bomb_is_refused(client: TestClient) -> None:
    response = client.post(PREDICT, files={"file": ("bomb.png", png_bomb(60_000, 60_000), "image/png")})
    assert_error(response, 422, "too large")


def test_image_over_the_pixel_limit_is_refused(make_client: Callable[..., TestClient], xray: bytes) -> None:
    client = make_client(max_pixels=10_000)
    assert_error(client.post(PREDICT, files={"file": ("x.jpeg", xray, "image/jpeg")}), 422, "too large")


def test_unsupported_content_type_is_415(client: TestClient) -> None:
    assert_error(client.post(PREDICT, content=b"{}", headers={"Content-Type": "application/json"}), 415)


def test_malformed_multipart_is_400(client: TestClient) -> None:
    body = b"--b\r\nnot a header line at all\r\n\r\ndata"
    response = client.post(PREDICT, content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_error(response, 400, "malformed")


def test_a_1mb_file_name_is_400_saying_the_name_is_too_long(client: TestClient, xray: bytes) -> None:
    response = client.post(PREDICT, files={"file": ("a" * 1_000_000 + ".jpeg", xray, "image/jpeg")})
    assert_error(response, 400, "file name is too long", "rename")
    long_but_fine = client.post(PREDICT, files={"file": ("a" * 4000 + ".jpeg", xray, "image/jpeg")})
    assert long_but_fine.status_code == 200, long_but_fine.text


def test_two_files_in_one_request_are_refused(client: TestClient, xray: bytes) -> None:
    files = [("file", ("a.jpeg", xray, "image/jpeg")), ("file", ("b.jpeg", xray, "image/jpeg"))]
    assert_error(client.post(PREDICT, files=files), 422, "one image")


def test_bad_query_value_is_a_one_line_422(client: TestClient, xray: bytes) -> None:
    response = client.post(PREDICT, params={"heatmap": "perhaps"}, files={"file": ("x.jpeg", xray, "image/jpeg")})
    assert_error(response, 422, "heatmap")


def test_wrong_method_and_unknown_path_are_json_errors(client: TestClient) -> None:
    assert_error(client.get(PREDICT), 405)
    assert_error(client.get("/api/v1/nothing"), 404)


def test_missing_api_key_is_401(make_client: Callable[..., TestClient], xray: bytes) -> None:
    client = make_client(api_key="s3cret")
    assert_error(client.post(PREDICT, files={"file": ("x.jpeg", xray, "image/jpeg")}), 401, "api key")
    assert_error(client.get("/api/v1/model"), 401, "api key")


def test_wrong_api_key_is_401_with_its_request_id_and_one_audit_line(make_client: Callable[..., TestClient],
                                                                    xray: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A docs audit: a refused key was answered without the caller's X-Request-ID and left no audit line."""
    client = make_client(api_key="s3cret")
    with caplog.at_level("INFO", logger="pneumo.serve.audit"):
        response = client.post(PREDICT, files={"file": ("x.jpeg", xray, "image/jpeg")},
                               headers={"X-API-Key": "s3cre", "X-Request-ID": "req-401"})
    assert_error(response, 401, "api key")
    assert response.headers["X-Request-ID"] == response.json()["request_id"] == "req-401"
    refused = client.post(PREDICT, files={"file": ("x.jpeg", b"not an image at all", "image/jpeg")},
                          headers={"X-API-Key": "s3cret", "X-Request-ID": "req-422"})
    assert_error(refused, 422)
    assert refused.json()["request_id"] == "req-422"  # in an error's body too, as USAGE says
    audited = [r.getMessage() for r in caplog.records if r.name == "pneumo.serve.audit"]
    assert len(audited) == 1 and "request=req-401" in audited[0] and "status=401" in audited[0]


def test_right_api_key_is_served(make_client: Callable[..., TestClient], xray: bytes) -> None:
    client = make_client(api_key="s3cret")
    response = client.post(PREDICT, files={"file": ("x.jpeg", xray, "image/jpeg")}, headers={"X-API-Key": "s3cret"})
    assert response.status_code == 200 and response.json()["label"] in ("NORMAL", "PNEUMONIA")


def test_api_key_from_the_environment_is_enforced(make_client: Callable[..., TestClient],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMO_API_KEY", "from-env")
    client = make_client()
    assert client.get("/api/v1/model").status_code == 401
    assert client.get("/api/v1/model", headers={"X-API-Key": "from-env"}).status_code == 200


def test_health_endpoints_and_page_stay_open_with_an_api_key(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="s3cret")
    assert [client.get(p).status_code for p in ("/healthz", "/readyz", "/")] == [200, 200, 200]


def test_server_keeps_serving_after_errors(make_client: Callable[..., TestClient], xray: bytes) -> None:
    client = make_client(max_upload_mb=1.0)
    bad = [client.post(PREDICT, files={"file": ("x.jpg", b"<html></html>", "image/jpeg")}),
           client.post(PREDICT, files={"file": ("b.png", png_bomb(), "image/png")}),
           client.post(PREDICT, content=b"\0" * 1_100_000, headers={"Content-Type": "application/octet-stream"}),
           client.post(PREDICT, content=b"--b\r\n\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"}),
           client.post(PREDICT)]
    assert all(400 <= r.status_code < 500 for r in bad)
    good = client.post(PREDICT, files={"file": ("x.jpeg", xray, "image/jpeg")})
    assert good.status_code == 200 and client.get("/healthz").status_code == 200


def test_an_audit_line_says_what_kind_of_image_was_refused(make_client: Callable[..., TestClient], xray: bytes,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A DICOM audit: a lateral film, a report, a multi-frame object and a corrupt file gave one and the same
    "no prediction ... status=422" line. The line says what the image is (pneumo's words, never the file's)."""
    import numpy as np
    from corpus import dicom_bytes

    client = make_client()
    film = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    uploads = {"lateral": dicom_bytes(film, ViewPosition="LL"), "cine": dicom_bytes(np.stack([film] * 2), frames=2),
               "corrupt": b"\xff\xd8\xff\xe0 not a jpeg", "blank": dicom_bytes(np.full((256, 256), 7, np.uint8))}
    with caplog.at_level("INFO", logger="pneumo.serve.audit"):
        for name, data in uploads.items():
            response = client.post(PREDICT, files={"file": (name, data, "application/octet-stream")},
                                   headers={"X-Request-ID": name})
            assert response.status_code == 422, (name, response.text)
    lines = {r.getMessage().split("request=")[1].split()[0]: r.getMessage() for r in caplog.records
             if r.name == "pneumo.serve.audit"}
    assert lines["lateral"].endswith('status=422 refused="a lateral film"')
    assert lines["cine"].endswith('status=422 refused="a multi-frame DICOM object"')
    assert lines["corrupt"].endswith('status=422 refused="unreadable"')
    assert lines["blank"].endswith('status=422 refused="input gate"')
