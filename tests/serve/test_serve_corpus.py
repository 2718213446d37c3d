"""Every case of the hostile-input corpus, uploaded to the service: a prediction or a one-line 4xx, never a 5xx,
nothing on disk, and the service keeps serving."""

from __future__ import annotations

import builtins
import mimetypes
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from corpus import ODD_UPLOAD_NAME, PATIENT_ID, PATIENT_NAME, SPECS, CorpusCase, build_corpus
from fastapi.testclient import TestClient
from serve_helpers import decode_png_base64

from pneumo.config import ServeConfig
from pneumo.data.decode import load_image
from pneumo.infer.predictor import Predictor
from pneumo.serve.app import create_app

PREDICT = "/api/v1/predict"
OK_CASES = [spec[0] for spec in SPECS if spec[2] == "ok"]
ERROR_CASES = [spec[0] for spec in SPECS if spec[2] == "error"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusCase]:
    return {case.name: case for case in build_corpus(tmp_path_factory.mktemp("serve_corpus"))}


@pytest.fixture(scope="module")
def corpus_predictor(checkpoint: Path) -> Predictor:
    return Predictor(checkpoint, threads=2)


@pytest.fixture(scope="module")
def corpus_client(corpus_predictor: Predictor) -> Iterator[TestClient]:
    """One service for the whole module: the cases hit the same process one after the other, as in production."""
    with TestClient(create_app(ServeConfig(), corpus_predictor), raise_server_exceptions=False) as client:
        yield client


def case_of(cases: dict[str, CorpusCase], name: str) -> CorpusCase:
    if name not in cases:
        pytest.skip(f"corpus case {name} needs an encoder this machine lacks")
    return cases[name]


def post_case(client: TestClient, case: CorpusCase, **params: str) -> httpx.Response:
    """Upload the case as a browser would: multipart, under its (possibly hostile) file name."""
    content_type = mimetypes.guess_type(case.upload_name)[0] or "application/octet-stream"
    return client.post(PREDICT, params=params,
                       files={"file": (case.upload_name, case.path.read_bytes(), content_type)})


def assert_one_line_4xx(response: httpx.Response, case: CorpusCase) -> None:
    assert 400 <= response.status_code < 500, f"{case.name}: {response.status_code} {response.text[:200]}"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) <= {"detail", "request_id"} and isinstance(body["detail"], str) and body["detail"]
    assert body.get("request_id", response.headers.get("X-Request-ID")) == response.headers.get("X-Request-ID")
    assert "\n" not in body["detail"] and "\r" not in body["detail"] and "Traceback" not in body["detail"]
    for secret in (PATIENT_NAME, PATIENT_ID, case.upload_name, str(case.path.parent)):
        assert secret not in response.text


@pytest.mark.parametrize("name", OK_CASES)
def test_acceptable_corpus_image_gets_the_same_prediction_as_the_predictor(
        name: str, cases: dict[str, CorpusCase], corpus_client: TestClient, corpus_predictor: Predictor) -> None:
    case = case_of(cases, name)
    response = post_case(corpus_client, case)
    assert response.status_code == 200, f"{name}: {response.text[:200]}"
    body = response.json()
    expected = corpus_predictor.predict([load_image(case.path.read_bytes(), target=corpus_predictor.size)])[0]
    assert body["p_pneumonia"] == pytest.approx(expected.p_pneumonia, abs=1e-6)
    assert body["label"] == expected.label and body["model_id"] == corpus_predictor.model_id
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert PATIENT_NAME not in response.text and PATIENT_ID not in response.text


@pytest.mark.parametrize("name", OK_CASES)
def test_acceptable_corpus_image_gets_a_heat_map_and_a_preview_of_its_own_geometry(
        name: str, cases: dict[str, CorpusCase], corpus_client: TestClient) -> None:
    case = case_of(cases, name)
    response = post_case(corpus_client, case, heatmap="true", preview="true")
    assert response.status_code == 200, f"{name}: {response.text[:200]}"
    preview = decode_png_base64(response.json()["preview_png_base64"])
    overlay = decode_png_base64(response.json()["heatmap_png_base64"])
    assert preview.shape == case.shape and overlay.shape[:2] == case.shape


@pytest.mark.parametrize("name", ERROR_CASES)
def test_unacceptable_corpus_input_gets_a_one_line_4xx(name: str, cases: dict[str, CorpusCase],
                                                       corpus_client: TestClient) -> None:
    case = case_of(cases, name)
    assert_one_line_4xx(post_case(corpus_client, case), case)


def test_odd_upload_name_is_neither_echoed_nor_a_problem(cases: dict[str, CorpusCase],
                                                         corpus_client: TestClient) -> None:
    case = case_of(cases, "odd_file_name")
    assert case.upload_name == ODD_UPLOAD_NAME
    response = post_case(corpus_client, case)
    assert response.status_code == 200
    assert "etc/pass" not in response.text and "\u202e" not in response.text and "wd\r" not in response.text


def test_service_keeps_serving_after_the_whole_corpus(cases: dict[str, CorpusCase], checkpoint: Path,
                                                      xray: bytes) -> None:
    # decoding in threads (decode_timeout_s=0), where the spy sees it: the decode workers run the same function
    # (`pneumo.serve.decoding.decode_upload`, tests/serve/test_serve_decode_deadline.py checks they agree)
    with TestClient(create_app(ServeConfig(decode_timeout_s=0), Predictor(checkpoint, threads=2)),
                    raise_server_exceptions=False) as client:
        statuses = {case.name: post_case(client, case).status_code for case in cases.values()}
        assert not {name: code for name, code in statuses.items() if code >= 500}
        after = client.post(PREDICT, files={"file": ("x.jpeg", xray, "image/jpeg")})
        assert after.status_code == 200 and after.json()["label"] in ("NORMAL", "PNEUMONIA")
        assert client.get("/readyz").status_code == 200


def listing(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(folder, name), root)
            for folder, dirs, files in os.walk(root) for name in dirs + files}


def spy_on_file_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file opened for writing through ``open`` or ``os.open`` (the latter catches the unnamed
    ``O_TMPFILE`` files ``tempfile.TemporaryFile`` makes on Linux, which no directory listing shows)."""
    writes: list[str] = []
    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and set(mode) & set("wax+"):
            writes.append(f"open({file!r}, {mode!r})")
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            writes.append(f"os.open({path!r}, {flags:#o})")
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return writes


def test_corpus_uploads_write_nothing_to_disk(cases: dict[str, CorpusCase], checkpoint: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Private, empty working and temporary folders: any spooled upload or stray file would land here, and other
    # processes sharing /tmp cannot disturb the comparison.
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    for variable in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(variable, str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # recomputed from $TMPDIR on the next call
    assert Path(tempfile.gettempdir()) == tmp
    before = (listing(cwd), listing(tmp))
    big = cases["png_bomb"]
    # decoding in threads (decode_timeout_s=0), where the spy sees it: the decode workers run the same function
    # (`pneumo.serve.decoding.decode_upload`, tests/serve/test_serve_decode_deadline.py checks they agree)
    with TestClient(create_app(ServeConfig(decode_timeout_s=0), Predictor(checkpoint, threads=2)),
                    raise_server_exceptions=False) as client, pytest.MonkeyPatch.context() as spy:
        writes = spy_on_file_writes(spy)
        for case in cases.values():
            post_case(client, case)
        padded = big.path.read_bytes() + b"\0" * 2_000_000  # over 1 MB: Starlette's UploadFile would spool it
        assert client.post(PREDICT, files={"file": ("big.png", padded, "image/png")}).status_code == 422
    assert writes == []
    assert (listing(cwd), listing(tmp)) == before == (set(), set())
