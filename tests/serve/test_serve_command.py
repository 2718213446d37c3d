"""`pneumo serve`: arguments -> ServeConfig, a bad model fails before binding, uvicorn gets the app."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.cli import main


def test_serve_runs_uvicorn_with_the_configured_app(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.delenv("PNEUMO_API_KEY", raising=False)
    code = main(["serve", "--model", str(checkpoint), "--port", "8123", "--max-upload-mb", "2", "--threads", "1"])
    assert code == 0
    app, options = calls[0]
    assert options["host"] == "127.0.0.1" and options["port"] == 8123
    assert app.state.service.config.max_upload_mb == 2.0


def test_serve_with_a_missing_model_fails_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "model not found" in capsys.readouterr().err


def test_serve_rejects_an_impossible_port(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--model", str(checkpoint), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_serve_takes_the_api_key_from_the_environment(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    monkeypatch.setenv("PNEUMO_API_KEY", "k3y")
    assert main(["serve", "--model", str(checkpoint), "--threads", "1"]) == 0
    assert calls[0].state.service.config.api_key == "k3y"
