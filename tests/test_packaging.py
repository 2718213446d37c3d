"""What an install without the checkout gets (an install review): the wheel and source archive built from a clone of
this commit carry the licence, every file the package reads at run time, and the commit they were built from, which
an installed pneumo records in its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    tmp = tmp_path_factory.mktemp("build")
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    for ignored in ("tests/e2e/artifacts/shot.png", "tests/__pycache__/x.cpython-311.pyc"):  # a used checkout's
        (clone / ignored).parent.mkdir(parents=True, exist_ok=True)
        (clone / ignored).write_bytes(b"local")
    dist = tmp / "dist"
    dist.mkdir()
    def build(hook: str) -> Path:  # a process each: setuptools keeps the first command's options for the next
        code = f"from setuptools import build_meta as b; import sys; print('BUILT', b.{hook}(sys.argv[1]))"
        out = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=clone, capture_output=True, text=True,
                             check=True).stdout
        return dist / out.split("BUILT")[-1].strip()

    return {"wheel": build("build_wheel"), "sdist": build("build_sdist"), "tmp": tmp,
            "commit": _git("rev-parse", "--short=7", "HEAD", cwd=clone)}


def test_the_wheel_holds_the_licence_the_run_time_files_and_the_commit_it_was_built_from(built: dict) -> None:
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        assert wheel.read("pneumo/BUILD_COMMIT").decode().strip() == built["commit"]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    tracked = _git("ls-files", "src/pneumo", cwd=ROOT).splitlines()
    data = [t.removeprefix("src/") for t in tracked if not t.endswith(".py")]
    assert data and not [d for d in data if d not in names]  # the shipped model, static page, templates, presets
    assert any(n.startswith("pneumo/assets/default-model") for n in data)


def test_an_installed_build_records_its_commit_in_its_outputs(built: dict) -> None:
    site = built["tmp"] / "site"
    with zipfile.ZipFile(built["wheel"]) as wheel:
        wheel.extractall(site)
    code = "import json; from pneumo.provenance import record; print(json.dumps(record()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=built["tmp"], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout)["commit"] == built["commit"]


def test_the_source_archive_holds_the_licence_the_pins_the_tests_and_the_commit(built: dict) -> None:
    with tarfile.open(built["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        top = sdist.getnames()[0].split("/")[0]
        assert sdist.extractfile(f"{top}/src/pneumo/BUILD_COMMIT").read().decode().strip() == built["commit"]
    assert {"LICENSE", "constraints.txt", "setup.py", "tests/conftest.py"} <= names
    assert not [n for n in names if n.startswith("tests/e2e/artifacts/") or "__pycache__" in n]  # git-ignored
