"""Every third-party package that ``src/pneumo`` imports is declared in ``pyproject.toml``'s dependencies."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_top_level_names() -> dict[str, str]:
    """Top-level module name -> the first file importing it (relative imports and the stdlib left out)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "pneumo").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "pneumo" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    providers = importlib.metadata.packages_distributions()
    wanted = declared()
    missing = []
    for module, where in sorted(imported_top_level_names().items()):
        distributions = {canonical(d) for d in providers.get(module, [])}
        if not distributions & wanted:
            missing.append(f"{module} (imported in {where}; provided by {sorted(distributions) or 'nothing installed'})")
    assert not missing, "add to pyproject.toml [project] dependencies: " + "; ".join(missing)


def test_the_scan_finds_imports_inside_functions() -> None:
    names = imported_top_level_names()
    assert {"torch", "numpy", "cv2", "captum"} <= set(names)  # captum is imported inside a function only
