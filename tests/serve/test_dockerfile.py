"""The Dockerfile (docker cannot run here): CPU torch from the PyTorch index, non-root, health check, serve."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_installs_cpu_torch_then_the_package_and_runs_as_non_root() -> None:
    steps = instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [arg for op, arg in steps if op == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "torch==2.14.1" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_step]
    assert any("pip install" in r and "." in r.split() for r in runs[torch_step + 1 :])
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_dockerfile_exposes_8000_checks_health_and_serves_on_all_interfaces() -> None:
    steps = dict(instructions())
    assert steps["EXPOSE"] == "8000"
    assert "/healthz" in steps["HEALTHCHECK"]
    assert "pneumo" in steps["CMD"] and "serve" in steps["CMD"] and "0.0.0.0" in steps["CMD"]


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip().strip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "runs", "data", ".cache"} <= ignored
