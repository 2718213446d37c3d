"""`pneumo serve`: arguments -> ServeConfig, a bad model fails before binding, uvicorn gets the app."""

from __future__ import annotations

import os
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
    assert options["host"] == "127.0.0.1" and options["port"] == 8123 and options["root_path"] == ""
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


def test_serve_passes_the_slow_client_limits_to_uvicorn_and_the_app(checkpoint: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from pneumo.serve.limits import HeaderDeadlineH11Protocol

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    try:
        assert main(["serve", "--model", str(checkpoint), "--threads", "1", "--header-timeout-s", "3",
                     "--body-timeout-s", "7", "--max-active", "2", "--max-queue", "5", "--queue-timeout-s", "4",
                     "--upload-budget-mb", "100", "--decode-timeout-s", "2.5"]) == 0
        app, options = calls[0]
        assert options["http"] is HeaderDeadlineH11Protocol and HeaderDeadlineH11Protocol.header_timeout_s == 3.0
        assert options["limit_concurrency"] == 1000
        config = app.state.service.config
        assert (config.body_timeout_s, config.max_active, config.max_queue, config.queue_timeout_s,
                config.upload_budget_mb, config.decode_timeout_s) == (7.0, 2, 5, 4.0, 100.0, 2.5)
        assert app.state.service.work.max_active == 2 and app.state.service.work.max_queue == 5
    finally:
        HeaderDeadlineH11Protocol.header_timeout_s = 10.0


@pytest.mark.parametrize("option", [["--header-timeout-s", "0"], ["--body-timeout-s", "-1"], ["--max-active", "0"],
                                    ["--upload-budget-mb", "1"], ["--decode-timeout-s", "-1"]])
def test_serve_rejects_impossible_limits(checkpoint: Path, option: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--model", str(checkpoint), *option]) == 2
    assert option[0] in capsys.readouterr().err


def test_each_worker_configures_its_header_deadline_from_the_settings(checkpoint: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from pneumo.serve.app import create_app_from_env
    from pneumo.serve.limits import HeaderDeadlineH11Protocol

    monkeypatch.setenv("PNEUMO_SERVE_SETTINGS", json.dumps({"model": str(checkpoint), "header_timeout_s": 2.5,
                                                            "max_queue": 3}))
    try:
        app = create_app_from_env()
        assert HeaderDeadlineH11Protocol.header_timeout_s == 2.5
        assert app.state.service.work.max_queue == 3
    finally:
        HeaderDeadlineH11Protocol.header_timeout_s = 10.0


def test_serve_threads_counts_the_batches_run_side_by_side(checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    import uvicorn

    from pneumo.serve.batcher import MicroBatcher

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    assert main(["serve", "--model", str(checkpoint), "--threads", "3"]) == 0
    service = calls[0].state.service
    service.start()
    try:
        assert isinstance(service.batcher, MicroBatcher) and service.batcher.workers == 3
    finally:
        service.stop()
    assert main(["serve", "--model", str(checkpoint), "--threads", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("pneumo serve: error:") and "--threads" in error


def test_serve_refuses_a_sidecar_edited_after_it_was_written(checkpoint: Path, tmp_path: Path, xray_paths: list[Path],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    """Issue 24: a threshold edited by hand within [0, 1] passes every range check; the sidecar's own recorded
    SHA-256 refuses it: serve does not start, predict and evaluate stop, each with one line (exit 2)."""
    import shutil

    import uvicorn

    folder = tmp_path / "edited"
    shutil.copytree(checkpoint.parent, folder)
    sidecar = folder / checkpoint.name
    sidecar.write_text(sidecar.read_text().replace('"threshold": ', '"threshold": 0.01, "was": ', 1))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    for command in (["serve", "--model", str(sidecar), "--threads", "1"], ["predict", str(xray_paths[0]), "--model", str(sidecar)],
                    ["model-card", "--model", str(sidecar)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "changed after pneumo wrote it" in err[0], (command, err)


def test_behind_a_proxys_path_prefix_the_page_and_the_docs_work(checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """https://apps.hospital/pneumo/: the page's CSS, JS and API calls and the docs' schema went to the host's root (an
    operations review). Relative URLs now, and --root-path for the API documentation's requests."""
    import re

    import uvicorn
    from fastapi.testclient import TestClient

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.delenv("PNEUMO_API_KEY", raising=False)
    audit_log = tmp_path / "audit.log"  # (and the audit lines' own file, as the command passes it on)
    assert main(["serve", "--model", str(checkpoint), "--port", "8124", "--root-path", "/pneumo",
                 "--audit-log", str(audit_log)]) == 0
    app, options = calls[0]
    assert options["root_path"] == "/pneumo" and app.state.service.config.audit_log == str(audit_log)
    client = TestClient(app, root_path="/pneumo")
    page, docs = client.get("/").text, client.get("/docs").text
    assert not re.search(r'(?:href|src)="/', page) and 'fetch("/' not in client.get("/static/app.js").text
    assert "'openapi.json'" in docs and 'href="docs/assets/' in docs
    assert client.get("/openapi.json").json()["servers"] == [{"url": "/pneumo"}]
    # a proxy audit: with the root path in front of the path (uvicorn's scope), the docs page lost its script's hash
    # (a blank page) and every API answer its no-store header
    assert "sha256-" in client.get("/pneumo/docs").headers["content-security-policy"]
    assert client.get("/pneumo/api/v1/model").headers["cache-control"] == "no-store"
    assert "cache-control" not in client.get("/pneumo/").headers
    for bad in ("pneumo", "/pneumo/", "/a b"):
        assert main(["serve", "--model", str(checkpoint), "--root-path", bad]) == 2
        assert "--root-path must look like /pneumo" in capsys.readouterr().err


def test_a_host_that_cannot_be_bound_is_the_one_thing_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A docs audit: `serve --host <a name that does not resolve>` warned "listening on ... without an API key" and
    then failed, so the warning read as the cause. The warning is said once the host can be bound, and only then."""
    monkeypatch.delenv("PNEUMO_API_KEY", raising=False)
    assert main(["serve", "--host", "no-such-host.invalid", "--model", str(tmp_path / "nope")]) == 2
    assert "--host no-such-host.invalid" in capsys.readouterr().err
    assert not [r for r in caplog.records if "without an API key" in r.getMessage()]
    import socket

    with socket.socket() as probe:  # a port free now
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--host", "0.0.0.0", "--port", str(port), "--model", str(tmp_path / "nope")]) == 2
    assert [r for r in caplog.records if "without an API key" in r.getMessage()]


def test_the_services_first_warning_carries_its_utc_time(tmp_path: Path) -> None:
    """A proxy audit: the start's "without an API key" warning was the one service line without a time (it came before
    the service's log format was set)."""
    import re
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "pneumo", "serve", "--host", "0.0.0.0", "--port", str(port),
                           "--model", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120, check=False,
                          env={k: v for k, v in os.environ.items() if k != "PNEUMO_API_KEY"})
    warning = next(line for line in done.stderr.splitlines() if "without an API key" in line)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING ", warning), warning


def test_onnx_runtimes_own_log_says_errors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy audit: with a read-only home ONNX Runtime wrote a coloured warning in local time without a zone into
    the service's log, beside the service's UTC lines."""
    import onnxruntime as ort

    from pneumo.infer.predictor import session_options

    said = []
    monkeypatch.setattr(ort, "set_default_logger_severity", said.append)
    session_options(1)
    assert said == [3]


def test_the_api_key_comes_from_a_mounted_secret_file(checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """A proxy audit: the key could be given on the command line (seen in `ps`) or in the environment only; a
    container's secrets are mounted as files."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    monkeypatch.delenv("PNEUMO_API_KEY", raising=False)
    secret = tmp_path / "key"
    secret.write_text("k3y-from-file\n")
    assert main(["serve", "--model", str(checkpoint), "--threads", "1", "--api-key-file", str(secret)]) == 0
    monkeypatch.setenv("PNEUMO_API_KEY_FILE", str(secret))
    assert main(["serve", "--model", str(checkpoint), "--threads", "1"]) == 0
    assert [app.state.service.config.api_key for app in calls] == ["k3y-from-file"] * 2
    (tmp_path / "empty").write_text("\n")
    for argv, words in ((["--api-key", "a", "--api-key-file", str(secret)], "not both"),
                        (["--api-key-file", str(tmp_path / "empty")], "first line is empty"),
                        (["--api-key-file", str(tmp_path / "missing")], "--api-key-file")):
        assert main(["serve", "--model", str(checkpoint), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "k3y" not in err[0], err
    assert len(calls) == 2
