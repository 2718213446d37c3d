"""The service's endpoints on the happy path: predict, heat map, preview, model card, health, docs and the page."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import decode_png_base64, dicom_bytes
from sidecars import signed

from pneumo import LOG_DATEFMT, LOG_FORMAT, LOG_TIME
from pneumo.config import ServeConfig
from pneumo.data.decode import load_image
from pneumo.infer.predictor import Predictor
from pneumo.serve.app import create_app

PREDICT = "/api/v1/predict"


def upload(xray: bytes, name: str = "x.jpeg") -> dict:
    return {"file": (name, xray, "image/jpeg")}


def test_predict_returns_the_documented_fields(client: TestClient, xray: bytes) -> None:
    body = client.post(PREDICT, files=upload(xray)).json()
    assert set(body) == {"p_pneumonia", "p_calibrated", "label", "threshold", "threshold_calibrated",
                         "threshold_policy", "probabilities", "model_id", "request_id", "timings_ms", "assessed"}
    assert body["assessed"] is True and (body["p_calibrated"] >= body["threshold_calibrated"]) == (
        body["p_pneumonia"] >= body["threshold"])
    assert set(body["timings_ms"]) == {"decode", "inference", "total"}


def test_predict_matches_the_predictor_on_the_same_image(client: TestClient, predictor: Predictor,
                                                         xray: bytes) -> None:
    expected = predictor.predict([load_image(xray, target=predictor.size)])[0]
    body = client.post(PREDICT, files=upload(xray)).json()
    assert body["p_pneumonia"] == pytest.approx(expected.p_pneumonia, abs=1e-6)
    assert body["p_calibrated"] == pytest.approx(expected.p_calibrated, abs=1e-6)
    assert body["label"] == expected.label
    assert body["model_id"] == predictor.model_id


def test_predict_label_follows_the_checkpoint_threshold(client: TestClient, xray_paths: list[Path]) -> None:
    for path in xray_paths[:4]:
        body = client.post(PREDICT, files=upload(path.read_bytes())).json()
        assert body["threshold"] == 0.5 and body["threshold_policy"] == "youden"
        assert body["label"] == ("PNEUMONIA" if body["p_pneumonia"] >= body["threshold"] else "NORMAL")
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_accepts_the_raw_image_as_the_body(client: TestClient, xray: bytes) -> None:
    multipart = client.post(PREDICT, files=upload(xray)).json()
    raw = client.post(PREDICT, content=xray, headers={"Content-Type": "application/octet-stream"}).json()
    assert raw["p_pneumonia"] == pytest.approx(multipart["p_pneumonia"], abs=1e-6)


def test_heatmap_is_a_png_with_the_image_geometry(client: TestClient, xray: bytes, fake_heatmap: list) -> None:
    body = client.post(PREDICT, params={"heatmap": "true"}, files=upload(xray)).json()
    overlay = decode_png_base64(body["heatmap_png_base64"])
    gray = load_image(xray, target=64)
    assert overlay.shape[:2] == gray.shape
    assert fake_heatmap == [(gray.shape, body["label"])]
    assert "heatmap" in body["timings_ms"]


def test_heatmap_from_the_real_grad_cam_has_the_preview_geometry(client: TestClient, xray: bytes) -> None:
    pytest.importorskip("pneumo.explain.cam", reason="the explanation module is not there yet")
    body = client.post(PREDICT, params={"heatmap": "true", "preview": "true"}, files=upload(xray)).json()
    overlay = decode_png_base64(body["heatmap_png_base64"])
    preview = decode_png_base64(body["preview_png_base64"])
    assert overlay.ndim == 3 and overlay.shape[:2] == preview.shape


def test_a_large_uploads_heat_map_is_drawn_at_the_page_size_on_the_scored_input(
        client: TestClient, predictor: Predictor, xray: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2,600 x 1,950 upload: the decode hands back the image shrunk to the page's 1,024 px (aspect kept), the
    Grad-CAM is of the model input the verdict was scored on, and the overlay and preview have that geometry (a 7000 x
    7000 heat map was drawn full size in the server process: ~1.9 GB each, a red-team review)."""
    import io

    from PIL import Image

    from pneumo.explain import cam
    from pneumo.serve.decoding import VIEW_MAX_SIDE, viewable

    big = Image.fromarray(load_image(xray, target=64)).resize((2600, 1950), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    seen, real = [], cam.explain_image
    monkeypatch.setattr(cam, "explain_image", lambda p, gray, **kw: seen.append((gray.shape, kw["prepared"])) or real(
        p, gray, **kw))
    body = client.post(PREDICT, params={"heatmap": "true", "preview": "true"},
                       files=upload(buffer.getvalue(), "big.png")).json()
    overlay, preview = decode_png_base64(body["heatmap_png_base64"]), decode_png_base64(body["preview_png_base64"])
    assert overlay.shape[:2] == preview.shape == (768, VIEW_MAX_SIDE) == seen[0][0]
    expected = predictor.preprocess(load_image(buffer.getvalue(), target=predictor.size))  # from the full image
    assert np.array_equal(seen[0][1], expected)
    assert body["p_pneumonia"] == pytest.approx(predictor.predict_prepared(expected[None])[0].p_pneumonia, abs=1e-6)
    small = np.zeros((300, 200), np.uint8)
    assert viewable(small) is small and viewable(np.zeros((3000, 1000), np.uint8)).shape == (1024, 341)


def test_heatmap_without_the_explanation_module_is_501(client: TestClient, xray: bytes,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pneumo.explain.cam", None)  # makes the import fail
    response = client.post(PREDICT, params={"heatmap": "true"}, files=upload(xray))
    assert response.status_code == 501
    assert response.json()["detail"].startswith("heat maps need")


def test_heatmap_of_an_onnx_only_model_is_501(make_client, predictor: Predictor, xray: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Predictor, "torch_model", property(lambda self: None))
    response = make_client(predictor).post(PREDICT, params={"heatmap": "true"}, files=upload(xray))
    assert response.status_code == 501 and "onnx-only" in response.json()["detail"].lower()


def test_heatmap_with_the_onnx_backend_uses_the_eager_checkpoint(make_client, checkpoint: Path, xray: bytes,
                                                                  cache_dir: Path) -> None:
    onnx_predictor = Predictor(checkpoint, backend="onnx", threads=2)
    assert onnx_predictor.backend == "onnx"
    body = make_client(onnx_predictor).post(PREDICT, params={"heatmap": "true"}, files=upload(xray)).json()
    overlay = decode_png_base64(body["heatmap_png_base64"])
    assert overlay.ndim == 3 and overlay.shape[2] == 3 and overlay.std() > 0


def test_a_heatmap_after_the_folder_was_retrained_is_refused_not_drawn_by_the_new_weights(
        make_client, checkpoint: Path, xray: bytes, cache_dir: Path, tmp_path: Path) -> None:
    """The ONNX backend loads the eager weights on the first heat map: a folder retrained since start-up gave the
    old model's verdict beside the new model's heat map (a review). Refused now, in a line without the folder."""
    import shutil

    import torch

    from pneumo.models import create
    from pneumo.models.checkpoint import load_checkpoint, save_checkpoint

    folder = tmp_path / "served"
    shutil.copytree(checkpoint.parent, folder)
    served = Predictor(folder / checkpoint.name, backend="onnx", threads=2)
    _, meta = load_checkpoint(folder / checkpoint.name)
    torch.manual_seed(1)
    save_checkpoint(folder / checkpoint.stem, create("scratch_cnn", num_classes=2, weights="none"),
                    {k: v for k, v in meta.to_json().items() if k in ("task", "classes", "input_size", "threshold")})
    response = make_client(served).post(PREDICT, params={"heatmap": "true"}, files=upload(xray))
    detail = response.json()["detail"]
    assert response.status_code == 503 and "other weights than the ones loaded" in detail and str(tmp_path) not in detail


def test_heatmap_is_absent_unless_asked(client: TestClient, xray: bytes, fake_heatmap: list) -> None:
    body = client.post(PREDICT, files=upload(xray)).json()
    assert "heatmap_png_base64" not in body and fake_heatmap == []


def test_preview_is_the_decoded_gray_image(client: TestClient, xray: bytes) -> None:
    body = client.post(PREDICT, params={"preview": "true"}, files=upload(xray)).json()
    np.testing.assert_array_equal(decode_png_base64(body["preview_png_base64"]), load_image(xray, target=64))


def test_dicom_upload_is_predicted_and_previewed(client: TestClient, xray: bytes) -> None:
    dicom = dicom_bytes(load_image(xray), patient_name="Doe^Jane")
    response = client.post(PREDICT, params={"preview": "true"},
                           files={"file": ("scan.dcm", dicom, "application/dicom")})
    assert response.status_code == 200
    preview = decode_png_base64(response.json()["preview_png_base64"])
    np.testing.assert_array_equal(preview, load_image(dicom))
    assert "Doe^Jane" not in response.text  # no patient data travels back


def test_model_card_has_the_sidecar_and_the_markdown(client: TestClient, predictor: Predictor) -> None:
    card = client.get("/api/v1/model").json()
    assert card["model_id"] == predictor.model_id
    assert card["classes"] == ["NORMAL", "PNEUMONIA"] and card["input_size"] == 64
    assert card["temperature"] == 1.5 and card["threshold_policy"] == "youden"
    assert card["card_markdown"].startswith("# Tiny test model")


def test_model_card_hides_training_internals_and_non_finite_numbers(client: TestClient) -> None:
    card = client.get("/api/v1/model").json()
    assert "config" not in card and "private" not in str(card)
    assert card["operating_point"]["chosen_on"] == {"kind": "labelled CSV", "location": "site.csv"}
    assert card["operating_point"]["derived_from"]["model"] == "model.json"
    assert card["metrics"]["test"] == {"roc_auc": 0.5, "sensitivity": None}


def test_healthz_answers(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_once_the_model_is_loaded(client: TestClient, predictor: Predictor) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["model_id"] == predictor.model_id
    assert response.json()["backend"] == predictor.backend
    from pneumo import __version__  # which code answers, for an upgrade or a roll-back (an operations review)

    assert response.json()["pneumo_version"] == __version__


def test_model_is_loaded_in_the_background_when_no_predictor_is_given(checkpoint: Path) -> None:
    with TestClient(create_app(ServeConfig(), model=str(checkpoint), threads=1)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200


def test_readyz_is_503_with_the_reason_when_the_model_cannot_load(tmp_path: Path) -> None:
    with TestClient(create_app(ServeConfig(), model=str(tmp_path / "missing"))) as client:
        deadline = time.monotonic() + 10
        while "failed" not in client.get("/readyz").text and time.monotonic() < deadline:
            time.sleep(0.02)
        ready, health = client.get("/readyz"), client.get("/healthz")
        predict = client.post(PREDICT, content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert ready.status_code == 503 and ready.json()["detail"].startswith("model failed to load")
    # a process that can never serve is not healthy: a health probe (Docker's HEALTHCHECK) restarts it; a worker of
    # `serve --workers` that failed to load answered 503 to every request under a healthy /healthz
    assert health.status_code == 503 and health.json()["detail"] == ready.json()["detail"]
    assert predict.status_code == 503


def test_a_model_changed_on_disk_is_not_served_by_a_restarted_worker(predictor: Predictor, tmp_path: Path) -> None:
    """`serve --workers` pins the sidecar its parent loaded: a worker restarted after the folder was changed served
    another operating point under the same model_id, beside workers at the old one."""
    import hashlib
    import shutil

    folder = tmp_path / "live"
    shutil.copytree(predictor.sidecar.parent, folder)
    sidecar = folder / predictor.sidecar.name
    pinned = hashlib.sha256(sidecar.read_bytes()).hexdigest()
    with TestClient(create_app(ServeConfig(), model=str(sidecar), backend="torch", pinned=pinned)) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = client.get("/readyz").json()
        meta = json.loads(sidecar.read_text())
        meta["threshold"] = 0.25  # another operating point written over the live folder
        sidecar.write_text(json.dumps(signed(meta)))
        card = client.get("/api/v1/model").json()  # the card of the model loaded, not of the edited file
        assert card["threshold"] == pytest.approx(predictor.threshold) and "0.2500" not in card["card_markdown"]
    assert ready["threshold"] == pytest.approx(predictor.threshold)  # which operating point answers, said
    assert ready["threshold_policy"] == predictor.meta.threshold_policy
    with TestClient(create_app(ServeConfig(), model=str(sidecar), backend="torch", pinned=pinned)) as client:
        deadline = time.monotonic() + 20
        while "failed" not in client.get("/readyz").text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 503 and "changed on disk" in client.get("/readyz").text
        assert client.get("/healthz").status_code == 503


def test_openapi_schema_lists_every_endpoint(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/v1/predict", "/api/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
    body = schema["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["file"]
    # what the service does is in the contract: raw image/* and DICOM bodies, the 408 of a slow upload, /readyz's body
    assert {"application/octet-stream", "application/dicom", "image/*"} <= set(body)
    assert "408" in schema["paths"]["/api/v1/predict"]["post"]["responses"]
    ready = schema["paths"]["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    fields = schema["components"]["schemas"][ready.rsplit("/", 1)[-1]]["properties"]
    assert set(client.get("/readyz").json()) == set(fields) == {"status", "model_id", "backend", "threshold",
                                                                "threshold_policy", "pneumo_version"}
    probabilities = schema["components"]["schemas"]["PredictResponse"]["properties"]["probabilities"]
    assert "calibrated" in probabilities["description"]


def test_docs_page_is_served(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200 and "swagger" in response.text.lower()


def test_page_has_the_research_use_notice_and_its_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Research use only — not a medical device" in page.text
    text = " ".join(page.text.split())  # what a clinician reads beside a verdict (a clinical review): the intended
    assert "frontal chest X-rays of young children" in text and "for adults, check the site" in text  # use, that a
    assert "not where disease is" in text and "not a patient's risk" in text  # heat map does not localise, that the
    assert "read this film without the model" in text  # temperature-scaled score is no risk
    for asset in ("static/app.js", "static/style.css"):  # relative: the page also works under a proxy's prefix
        assert f'"{asset}"' in page.text and client.get("/" + asset).status_code == 200


def test_page_loads_nothing_from_other_hosts(client: TestClient) -> None:
    texts = [client.get(p).text for p in ("/", "/static/app.js", "/static/style.css")]
    assert not any("http://" in t or "https://" in t or "//cdn" in t for t in texts)
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]


def test_the_service_tells_no_folder_when_a_model_fails_or_in_a_derived_models_card(
        make_client, full_data: Path, tmp_path: Path) -> None:
    """A model that failed to load put its server path in /readyz's 503 (no key needed); a derived model's card
    carried the absolute paths of the files it left out as keys, and an adapted model's markdown its data's folder."""
    import json
    import shutil

    from fastapi.testclient import TestClient

    from pneumo.cli import main
    from pneumo.config import ServeConfig
    from pneumo.serve.app import create_app

    secret = tmp_path / "hospital-secret-folder"
    with TestClient(create_app(ServeConfig(), None, model=str(secret / "nonexist"), backend="torch"),
                    raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10  # the model loads in the background: wait for its failure, as above
        while "failed" not in client.get("/readyz").text and time.monotonic() < deadline:
            time.sleep(0.02)
        body = client.get("/readyz")
        assert body.status_code == 503 and "model not found: nonexist" in body.text and str(secret) not in body.text
    site = secret / "site"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label).mkdir(parents=True)
        for path in sorted((full_data / "test" / label).glob("*.jpeg"))[:3]:
            shutil.copyfile(path, site / label / path.name)
    (site / "NORMAL" / "bad.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert main(["operating-point", "--threshold-policy", "youden", "--data", str(site), "--out",
                 str(secret / "op")]) == 0
    from pneumo.infer.predictor import Predictor

    client = make_client(Predictor(secret / "op", backend="torch", threads=1))
    card = client.get("/api/v1/model").json()
    assert card["operating_point"]["chosen_on"]["n_left_out"] == 1  # counted, not named: the folder travels
    assert "bad.jpeg" not in json.dumps(card) and str(secret) not in json.dumps(card)


def test_serve_refuses_a_taken_port_a_bad_origin_and_a_bad_count_in_one_line_before_loading(
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A taken port exited 3 after the model loaded and uvicorn's lines; an origin with a trailing slash never
    matched a browser's; '--workers, --limit-concurrency and --threads must be at least 1' named no flag."""
    import socket

    import uvicorn

    from pneumo.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    from pneumo.infer.predictor import Predictor

    monkeypatch.setattr(Predictor, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [(["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
                 (["--cors-origin", "https://pacs.example.org/"], "is not an origin"),
                 (["--cors-origin", "pacs.example.org"], "is not an origin"),
                 (["--cors-origin", "https://PACS.example.org"], "in lower case"),  # a browser sends it lower case
                 (["--cors-origin", "https://pacs.example.org:443"], "the default port"),
                 (["--threads", "0"], "--threads must be at least 1, got 0")]
        for extra, message in cases:
            assert main(["serve", "--model", "/no/such/model", *extra]) == 2, extra
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and message in err, err
        # the port from $PNEUMO_PORT (the Docker image's health check reads it too), checked as the flag is
        for value, message in (("http", "$PNEUMO_PORT must be a TCP port"), ("70000", "$PNEUMO_PORT must be"),
                               (str(port), f"cannot listen on 127.0.0.1:{port}")):
            monkeypatch.setenv("PNEUMO_PORT", value)
            assert main(["serve", "--model", "/no/such/model"]) == 2, value
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and message in err, err


def test_serve_hands_uvicorn_the_shutdown_bound_and_a_log_in_utc_without_query_strings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow upload in flight held SIGTERM for 23 s (uploads may take the 60 s body timeout); docker stop kills
    after 10 s: uvicorn gets the bound (what uvicorn does with it on SIGTERM is its own, not run here)."""
    import socket

    import uvicorn

    from pneumo.cli import main

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    import logging

    for handler in logging.getLogger().handlers:  # the command sets the service's format: undone after the test
        monkeypatch.setattr(handler, "formatter", handler.formatter)
    monkeypatch.setattr(logging.Formatter, "converter", logging.Formatter.converter)  # (and the UTC switch)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert main(["serve", "--port", port, "--shutdown-timeout-s", "3"]) == 0
    assert seen["timeout_graceful_shutdown"] == 3.0
    # an operator reads the log later: every line of the service and of uvicorn carries the time
    assert all(f["fmt"].startswith(f"{LOG_TIME} ") and f["datefmt"] == LOG_DATEFMT
               for f in seen["log_config"]["formatters"].values())
    # and no query string: a client wrote ?patient=Smith_John into the access log
    import logging

    from pneumo.serve.http import WithoutQuery

    named = seen["log_config"]["handlers"]["access"]["filters"]
    assert [seen["log_config"]["filters"][n]["()"] for n in named] == ["pneumo.serve.http.WithoutQuery"]
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "POST", "/api/v1/predict?patient=Smith_John", "1.1", 200), None)
    assert WithoutQuery().filter(record) and record.getMessage() == '127.0.0.1:5 - "POST /api/v1/predict HTTP/1.1" 200'
    assert all(h.formatter._fmt.startswith(f"{LOG_TIME} ") for h in logging.getLogger().handlers if h.formatter)
    # in UTC, with its zone (an audit-trail review: local time without one)
    stamp = logging.Formatter(f"{LOG_TIME} {LOG_FORMAT}", LOG_DATEFMT).format(record_at(86400.25))
    assert stamp.startswith("1970-01-02T00:00:00.250Z INFO test: ")
    assert main(["serve", "--port", port]) == 0 and seen["timeout_graceful_shutdown"] == 8.0  # < docker stop's 10 s


def record_at(created: float) -> logging.LogRecord:
    record = logging.LogRecord("test", logging.INFO, __file__, 1, "x", None, None)
    record.created, record.msecs = created, (created % 1) * 1000
    return record


def test_a_card_whose_folder_changed_since_start_is_a_503_with_why(make_client, checkpoint: Path,
                                                                    tmp_path: Path) -> None:
    """A sidecar edited on disk after start-up made /api/v1/model a bare 500 "internal error" (an operations review):
    503 now, with the one-line reason and no folder."""
    import json
    import shutil

    folder = tmp_path / "served"
    shutil.copytree(checkpoint.parent, folder)
    served = Predictor(folder / checkpoint.name, threads=1)
    sidecar = folder / checkpoint.name
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "threshold": 0.25}))
    response = make_client(served).get("/api/v1/model")
    detail = response.json()["detail"]
    assert response.status_code == 503 and detail.startswith("model card unavailable") and str(tmp_path) not in detail
