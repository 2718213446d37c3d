"""The Dockerfile (docker cannot run here): CPU torch from the PyTorch index, non-root, health check, serve, and a
wheel built from exactly what it copies ships the model, the page, the presets and the CLI."""

from __future__ import annotations

import configparser
import json
import posixpath
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def installs_the_package(run: str) -> bool:
    """A RUN step whose first command is `pip install ... .` or `.[extras]` (quoted or not)."""
    first = run.split("&&")[0].split()
    return "pip" in first and "install" in first and any(w.strip("'\"").split("[")[0] == "." for w in first)


def build_args(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in steps if op == "ARG" and "=" in arg)


def test_dockerfile_base_image_is_a_build_argument_defaulting_to_python_311_slim() -> None:
    steps = instructions()
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert next(arg for op, arg in steps if op == "FROM") == "${BASE_IMAGE}"


def test_dockerfile_installs_cpu_torch_then_the_package_and_runs_as_non_root() -> None:
    steps = instructions()
    runs = [arg for op, arg in steps if op == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "torch==2.14.1" in r)
    assert "--index-url ${TORCH_INDEX_URL}" in runs[torch_step]
    assert build_args(steps)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"  # real users: CPU wheels
    assert any(installs_the_package(r) for r in runs[torch_step + 1 :])
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_dockerfile_exposes_8000_checks_health_and_serves_on_all_interfaces() -> None:
    steps = dict(instructions())
    assert steps["EXPOSE"] == "8000"
    assert "/healthz" in steps["HEALTHCHECK"]
    assert "pneumo" in steps["CMD"] and "serve" in steps["CMD"] and "0.0.0.0" in steps["CMD"]


def test_the_image_installs_the_versions_the_tests_ran_against(tmp_path: Path) -> None:
    """`pip install .` took whatever PyPI had on the day of the build; constraints.txt pins every dependency, and the
    tests run against those pins (the README's install and .ci/run use it too)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    install = next(arg for op, arg in instructions() if op == "RUN" and installs_the_package(arg))
    assert "-c constraints.txt" in install
    assert (build_context(instructions(), tmp_path / "image") / "constraints.txt").is_file()
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    for text in metadata.requires("pneumo"):
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # a test extra
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is not in constraints.txt: run python tools/constraints.py"
        assert req.specifier.contains(pinned, prereleases=True), (req, pinned)
        installed = metadata.version(req.name).split("+")[0]
        assert installed == pinned, f"{req.name} {installed} installed, {pinned} pinned: pip install -c constraints.txt"
    for line in (REPO / ".ci" / "run").read_text().splitlines() + (REPO / "README.md").read_text().splitlines():
        if "pip install" in line and "-e '.[test]'" in line:
            assert "-c constraints.txt" in line, line


def test_the_image_installs_the_dicom_decoders_at_pinned_versions() -> None:
    """A PACS exports JPEG Lossless / JPEG-LS / 12-bit JPEG DICOM, which pydicom decodes only with pylibjpeg: the image
    installs the `dicom` extra (a read-only container cannot `pip install` the hint's packages later), each pinned."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    install = next(arg for op, arg in instructions() if op == "RUN" and installs_the_package(arg))
    target = next(w.strip("'\"") for w in install.split("&&")[0].split() if w.strip("'\"").startswith("."))
    assert "dicom" in target.partition("[")[2].rstrip("]").split(","), install
    pinned = {canonicalize_name(Requirement(line).name) for line in (REPO / "constraints.txt").read_text().splitlines()
              if line and not line.startswith("#")}
    extra = [Requirement(t) for t in metadata.requires("pneumo")
             if Requirement(t).marker is not None and Requirement(t).marker.evaluate({"extra": "dicom"})
             and not Requirement(t).marker.evaluate({"extra": ""})]
    assert {canonicalize_name(r.name) for r in extra} >= {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"}
    assert {canonicalize_name(r.name) for r in extra} <= pinned, "run python tools/constraints.py"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip().strip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", "runs", "data", ".cache"} <= ignored


def build_context(steps: list[tuple[str, str]], root: Path) -> Path:
    """Lay out what the Dockerfile's COPY steps put in the image under ``root``; returns the folder (the WORKDIR)
    where ``pip install .`` runs. Leftovers of local builds stay out, as in a fresh clone: a stale
    ``*.egg-info/SOURCES.txt`` would make setuptools ship files that package-data forgets."""
    workdir, build_dir = "/", None
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for op, arg in steps:
        if op == "WORKDIR":
            workdir = posixpath.join(workdir, arg)
        elif op == "COPY":
            *sources, dest = json.loads(arg) if arg.startswith("[") else [a for a in arg.split() if a[:2] != "--"]
            target = root / posixpath.join(workdir, dest).lstrip("/")
            for source in (path for pattern in sources for path in sorted(REPO.glob(pattern))):
                if source.is_dir():
                    shutil.copytree(source, target, ignore=skip, dirs_exist_ok=True)
                else:
                    into = target / source.name if dest.endswith("/") else target
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, into)
        elif op == "RUN" and installs_the_package(arg):
            build_dir = root / workdir.lstrip("/")
    assert build_dir is not None, "the Dockerfile never runs `pip install .`"
    return build_dir


def test_wheel_built_from_the_docker_context_ships_what_the_service_needs(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="77", reason="the build backend (PEP 639 license) needs setuptools 77")
    context = build_context(instructions(), tmp_path / "image")
    # `docker build --build-arg PNEUMO_COMMIT=...`: the context has no .git, the step records the commit for the build
    record = next(arg for op, arg in instructions() if op == "RUN" and "BUILD_COMMIT" in arg)
    subprocess.run(["sh", "-c", record], cwd=context, env={"PNEUMO_COMMIT": "abc1234", "PATH": "/usr/bin:/bin"},
                   check=True)
    # The image's `pip install .` would fetch the build backend; offline, the test venv's setuptools builds instead.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-q", "-w", str(tmp_path / "wheels"), str(context)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheels").glob("pneumo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
        entry_points = next(n for n in shipped if n.endswith(".dist-info/entry_points.txt"))
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode("utf-8"))
    package = REPO / "src" / "pneumo"
    needed = {
        "default model": [package / "assets" / f"default-model.{ext}"
                          for ext in ("safetensors", "json", "md", "ood.safetensors")],
        "web page": sorted(p for p in (package / "serve" / "static").rglob("*") if p.is_file()),
        "config presets": sorted((package / "configs").glob("*.yaml")),
        "modules": sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts),
    }
    assert all(needed.values()), needed
    missing = {what: [f for f in files if f.relative_to(package.parent).as_posix() not in shipped]
               for what, files in needed.items()}
    assert not any(missing.values()), missing
    assert scripts["console_scripts"]["pneumo"] == "pneumo.cli:main"
    with zipfile.ZipFile(wheel) as archive:  # the image's outputs name the commit it was built from
        assert archive.read("pneumo/BUILD_COMMIT").decode().strip() == "abc1234"
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())


def _exec_form(arg: str) -> list[str]:
    """A Dockerfile exec-form argument (JSON array), the ``CMD`` of a ``HEALTHCHECK`` included."""
    return json.loads(arg[arg.index("[") :])


def test_the_image_command_serves_the_shipped_model_offline_and_its_health_check_passes(tmp_path: Path) -> None:
    """What `docker run` would do, minus Docker: the image's CMD in a fresh home, probed by the image's HEALTHCHECK."""
    import os
    import socket
    import time

    steps = dict(instructions())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    cmd, check = _exec_form(steps["CMD"]), _exec_form(steps["HEALTHCHECK"])
    assert cmd[0] == "pneumo" and "--model" not in cmd and "--port" not in cmd  # the shipped model, the image's port
    env = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMO_")}
    env.update(HOME=str(tmp_path), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    # the build step that exports the shipped model into the image's cache, then that cache read-only (docker run
    # --read-only): the service runs the export on ONNX Runtime without writing
    image_env = dict(item.split("=", 1) for op, arg in instructions() if op == "ENV" for item in arg.split())
    assert image_env["PNEUMO_PORT"] == steps["EXPOSE"] == "8000"
    env["PNEUMO_PORT"] = port  # `docker run -e PNEUMO_PORT=...`: the service and its health check move together
    cache = tmp_path / image_env["PNEUMO_CACHE"].lstrip("/")
    export = next(arg for op, arg in instructions() if op == "RUN" and "Predictor(None" in arg).split(" && ")[0]
    env["PNEUMO_CACHE"] = str(cache)
    subprocess.run(["sh", "-c", export.replace("python ", f"{sys.executable} ", 1)], env=env, check=True, timeout=300)
    for path in [cache, *cache.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, healthy = time.monotonic() + 90, False
        while not healthy and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
            healthy = subprocess.run(check, env=env, capture_output=True, timeout=10, check=False).returncode == 0
        assert healthy, server.stderr.read().decode(errors="replace")[-2000:] if server.poll() is not None else ""
        import httpx

        while time.monotonic() < deadline and httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
            time.sleep(0.5)
        assert json.loads(httpx.get(f"http://127.0.0.1:{port}/readyz").text)["backend"] == "onnx"
    finally:
        server.terminate()
        server.wait(timeout=20)
