"""Build hook (the rest of the build is pyproject.toml): a wheel or source archive records the commit it was built
from in ``pneumo/BUILD_COMMIT``, so that the outputs of an installed pneumo name their code as a checkout's do
(`pneumo.provenance.git_commit`; an install review: every installed build recorded "unknown")."""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
RECORD = "BUILD_COMMIT"


def built_commit() -> str:
    """The checkout's commit (``-dirty`` with changed tracked files), else the record a source archive carries, else
    ""."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    if git("rev-parse", "--show-toplevel") and Path(git("rev-parse", "--show-toplevel")).resolve() == ROOT:
        commit = git("rev-parse", "--short=7", "HEAD")
        if commit:
            return f"{commit}-dirty" if git("status", "--porcelain", "--untracked-files=no") else commit
    record = ROOT / "src" / "pneumo" / RECORD
    return record.read_text().strip() if record.is_file() else ""


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        package = Path(self.build_lib) / "pneumo"  # absent in an editable install: the checkout names its commit
        if package.is_dir() and (commit := built_commit()):
            (package / RECORD).write_text(commit + "\n")


class Sdist(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        if commit := built_commit():
            (Path(base_dir) / "src" / "pneumo" / RECORD).write_text(commit + "\n")


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
