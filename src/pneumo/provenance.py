"""Where an output came from: the code (pneumo's version and commit), the libraries that computed it, the thread count
and the time. `record()` goes into every metrics.json, adapt.json and site.json, and a model's sidecar carries the
commit it was trained or adapted at, so that a reviewer holding only those files can tell what to rerun.

Values are strings: they describe a result, they are not one (golden tests compare every number of an output)."""

from __future__ import annotations

import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from pneumo import __version__

LIBRARIES = ("torch", "numpy", "onnxruntime", "scikit-learn", "pillow", "pydicom", "timm")


def utc_now() -> str:
    """The time as every output records it: ``2026-12-06T07:01:02Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_commit() -> str:
    """The commit of the pneumo checkout this code runs from, ``-dirty`` when its tracked files are changed (a run of
    modified code is not a run of the commit); outside a checkout, the commit an installed wheel was built from (its
    ``BUILD_COMMIT``, written by setup.py), else "unknown" (an installed package that sits inside another repository
    does not take that repository's commit). Git gets a minute: on a machine short of memory it took over 5 s and a
    run recorded "unknown"."""
    package = Path(__file__).resolve().parent  # src/pneumo
    built = package / "BUILD_COMMIT"
    if built.is_file():  # an installed build (a checkout never holds one: setup.py writes it into the build only)
        return built.read_text().strip()[:64] or "unknown"

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=60, check=False, cwd=package)
        return out.stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or (Path(top) / "src" / "pneumo").resolve() != package:
            return "unknown"
        commit = git("rev-parse", "--short=7", "HEAD")  # (describe would name a tag once one exists)
        return f"{commit}-dirty" if commit and git("status", "--porcelain", "--untracked-files=no") else commit or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version(name: str) -> str:
    """An installed distribution's version, or "not installed"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# bump when a change to pneumo's code alters a model's outputs for the same weights and pixels (the golden tests of the
# shipped model's outputs, tests/infer/test_golden_outputs.py, fail on such a change)
MODEL_CODE_VERSION = 1
MODEL_LIBRARIES = ("torch", "timm", "onnx", "onnxruntime")


def model_code() -> str:
    """What besides the weights decides a model's outputs (`MODEL_CODE_VERSION` and the versions of the libraries
    that build and run it), as a short tag: kept ONNX exports, val-fold logits and probe features are keyed on it
    (a cache review: with pneumo's model code changed, the old export and logits were served; the package version is
    the same at every commit)."""
    import hashlib

    libraries = "|".join(f"{name}={package_version(name)}" for name in MODEL_LIBRARIES)
    return f"m{MODEL_CODE_VERSION}-{hashlib.sha256(libraries.encode()).hexdigest()[:8]}"


def record() -> dict[str, str]:
    """pneumo's version and commit, Python's and the numerical libraries' versions, the CPU threads torch uses (the
    last digits of a result can move with them) and the time."""
    import torch

    return {"pneumo": __version__, "commit": git_commit(), "python": platform.python_version(),
            **{name: package_version(name) for name in LIBRARIES}, "threads": str(torch.get_num_threads()),
            "created": utc_now()}
