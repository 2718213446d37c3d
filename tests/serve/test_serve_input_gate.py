"""The service refuses what cannot be a chest radiograph, images over the decode budget and DICOM numbers that cannot be
pixels: a one-line 422, no label, no warning in the log (issue 12 items 3, 5 and 6)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from corpus import SPECS, CorpusCase, dicom_bytes, gradient
from fastapi.testclient import TestClient

PREDICT = "/api/v1/predict"
REFUSED_CASES = [spec[0] for spec in SPECS if spec[2] == "refused"]


def _post(client: TestClient, data: bytes, name: str = "upload.bin"):
    return client.post(PREDICT, files={"file": (name, data, "application/octet-stream")})


@pytest.mark.parametrize("name", REFUSED_CASES)
def test_image_that_cannot_be_a_radiograph_gets_a_422_and_no_label(name: str, corpus: dict[str, CorpusCase],
                                                                   client: TestClient) -> None:
    response = _post(client, corpus[name].path.read_bytes(), corpus[name].path.name)
    assert response.status_code == 422, response.text[:200]
    detail = response.json()["detail"]
    assert detail.startswith("not a chest radiograph") and "\n" not in detail and "label" not in response.json()


def test_real_radiograph_passes_the_gate(client: TestClient, xray: bytes) -> None:
    assert _post(client, xray, "xray.jpeg").status_code == 200


def test_upload_over_the_decode_budget_gets_a_422_before_decoding(client: TestClient) -> None:
    header_only = dicom_bytes(None, Rows=7000, Columns=7000, SamplesPerPixel=1, BitsAllocated=64,
                              PhotometricInterpretation="MONOCHROME2", DoubleFloatPixelData=np.zeros(16).tobytes())
    response = _post(client, header_only, "huge.dcm")  # 49 M float64 pixels, twice, + the result: 833 MB
    assert response.status_code == 422
    assert "too large to decode: 49000000 pixels x 17 bytes = 833 MB > limit 256 MB" in response.json()["detail"]


@pytest.mark.parametrize("elements", [{"RescaleSlope": "1e308", "RescaleIntercept": "0"},
                                      {"RescaleSlope": "1", "RescaleIntercept": "1e300"}])
def test_dicom_rescale_overflow_is_a_422_without_overflow_warnings(elements: dict[str, str], client: TestClient,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    data = dicom_bytes(gradient(72, 96).astype(np.uint16) * 16, bits_stored=12, **elements)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = _post(client, data, "overflow.dcm")
    assert response.status_code == 422 and "out of range" in response.json()["detail"]
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [text for text in said if "overflow" in text.lower() and "out of range" not in text]


def test_dicom_window_width_zero_falls_back_and_is_served(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    stored = (np.add.outer(np.arange(96), np.arange(128)) * 16).astype(np.uint16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = _post(client, dicom_bytes(stored, bits_stored=12, WindowCenter="0", WindowWidth="0"), "w0.dcm")
    assert response.status_code == 200 and response.json()["label"] in ("NORMAL", "PNEUMONIA")
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
