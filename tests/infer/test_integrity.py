"""Model integrity that cannot be bypassed (issue 12 item 4): with a warm ONNX cache, a flipped byte in the weights or in
the cached export is refused by `pneumo predict --model` and `pneumo serve`, with one clear line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pneumo.cli import main
from pneumo.config import ServeConfig
from pneumo.errors import IntegrityError
from pneumo.infer import export
from pneumo.infer.export import cached_onnx, export_onnx, sha256_file
from pneumo.infer.predictor import Predictor
from pneumo.serve.app import create_app


@pytest.fixture()
def model(tiny_model: Path, tmp_path: Path, cache_dir: Path) -> Path:
    """A private copy of the tiny checkpoint whose ONNX export is already in the (per-test) cache."""
    folder = tmp_path / "run"
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(tiny_model.with_suffix(suffix), folder / f"model{suffix}")
    assert Predictor(folder, backend="auto").backend == "onnx"  # warms the cache
    return folder / "model.json"


@pytest.fixture()
def xray(full_data: Path) -> Path:
    return min((full_data / "test" / "NORMAL").glob("*.jpeg"))


def _flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _cached(cache_dir: Path) -> Path:
    [onnx_path] = (cache_dir / "onnx").glob("*.onnx")
    return onnx_path


def _one_line_refusal(captured: str) -> str:
    lines = [line for line in captured.splitlines() if line.strip()]
    assert len(lines) == 1, captured
    assert "checksum mismatch" in lines[0]
    return lines[0]


def test_warm_cache_is_used_as_long_as_nothing_changed(model: Path, xray: Path, cache_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "_export", lambda *a: pytest.fail("exported again"))
    assert main(["predict", str(xray), "--model", str(model)]) == 0
    record = json.loads((cache_dir / "onnx" / (_cached(cache_dir).name + ".sha256")).read_text())
    assert record == {"onnx_sha256": sha256_file(_cached(cache_dir)),
                      "weights_sha256": json.loads(model.read_text())["sha256"]}


@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_flipped_byte_in_the_weights_is_refused_by_predict(model: Path, xray: Path, backend: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    _flip_byte(model.with_suffix(".safetensors"))
    assert main(["predict", str(xray), "--model", str(model), "--backend", backend]) == 2
    captured = capsys.readouterr()
    assert "model.safetensors" in _one_line_refusal(captured.err) and captured.out == ""


@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_flipped_byte_in_the_cached_export_is_refused_by_predict(model: Path, xray: Path, cache_dir: Path,
                                                                 backend: str, capsys: pytest.CaptureFixture) -> None:
    _flip_byte(_cached(cache_dir))
    assert main(["predict", str(xray), "--model", str(model), "--backend", backend]) == 2
    assert ".onnx" in _one_line_refusal(capsys.readouterr().err)


def test_flipped_byte_in_the_weights_stops_serve_before_it_listens(model: Path, capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    _flip_byte(model.with_suffix(".safetensors"), at=100)
    assert main(["serve", "--model", str(model)]) == 2
    _one_line_refusal(capsys.readouterr().err)


def test_flipped_byte_in_the_cached_export_keeps_the_service_not_ready(model: Path, cache_dir: Path) -> None:
    _flip_byte(_cached(cache_dir))
    with TestClient(create_app(ServeConfig(), model=str(model), backend="auto")) as client:
        deadline = time.monotonic() + 60
        while (response := client.get("/readyz")).status_code == 503 and "checksum" not in response.text:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.1)
        assert response.status_code == 503 and "checksum mismatch" in response.json()["detail"]
        assert client.post("/api/v1/predict", files={"file": ("x.jpeg", b"x")}).status_code == 503


def test_a_cache_entry_without_a_record_is_exported_again(model: Path, cache_dir: Path) -> None:
    onnx_path = _cached(cache_dir)
    onnx_path.with_name(onnx_path.name + ".sha256").unlink()  # made by an older version
    _flip_byte(onnx_path)
    assert cached_onnx(model) == onnx_path
    assert Predictor(model, backend="onnx").backend == "onnx"


def test_export_from_other_weights_is_refused(model: Path, cache_dir: Path) -> None:
    onnx_path = _cached(cache_dir)
    record = onnx_path.with_name(onnx_path.name + ".sha256")
    record.write_text(json.dumps({**json.loads(record.read_text()), "weights_sha256": "0" * 64}))
    with pytest.raises(IntegrityError, match="exported from other weights"):
        cached_onnx(model)


def test_the_run_own_export_is_verified_too(model: Path, tmp_path: Path) -> None:
    onnx_path = export_onnx(model)  # next to the checkpoint: used instead of the cache
    assert Predictor(model, backend="onnx").backend == "onnx"
    _flip_byte(onnx_path)
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        Predictor(model, backend="auto")
