"""The import layering of ``src/pneumo`` (see docs/ARCHITECTURE.md): imports go one way, down the data flow.

Every ``import`` statement counts, also inside functions and under ``if TYPE_CHECKING:``; the graph is read from the
source with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# The allowed order, written once: a module may import its own layer and the layers before it, never a later one.
# An entry names a module and its submodules, except the root package "pneumo", which names only itself: as a
# prefix it would put every module that is in no layer (a new subpackage) in the core, below everything.
ROOT = "pneumo"
LAYERS = (
    (ROOT, "pneumo.errors", "pneumo.atomic", "pneumo.allocator", "pneumo.policy", "pneumo.schema", "pneumo.config",
     "pneumo.provenance", "pneumo.templates"),  # the core
    ("pneumo.data",),
    ("pneumo.models",),
    ("pneumo.infer",),  # images -> logits (Predictor): below everything that trains, evaluates or explains
    ("pneumo.train",),
    ("pneumo.evaluate",),  # scoring labelled data, metrics, operating points, reports (explanations passed in)
    ("pneumo.explain",),
    ("pneumo.adapt",),
    ("pneumo.serve",),
    ("pneumo.commands", "pneumo.argparsing"),  # argparsing: the options the commands and the cli share
    ("pneumo.cli", "pneumo.__main__"),
)
SIBLINGS_APART = ("pneumo.commands",)  # modules in here never import one another
# Below the line but still out of bounds: prediction and the service never need training code (checkpoint I/O and
# device choice live in models, the image cache in data).
FORBIDDEN = {"pneumo.serve": ("pneumo.train",)}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package under ``src`` (the folder that holds ``pneumo/``), by dotted name."""
    return {module_name(path, src): path for path in sorted((src / ROOT).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[tuple[str, int]]:
    """(imported pneumo module, line) for every import statement in the file, wherever it stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pneumo import atomic` imports the module pneumo.atomic
                full = f"{base}.{alias.name}"
                found.add((full if full in known else base, node.lineno))
    return {(target, line) for target, line in found if target == "pneumo" or target.startswith("pneumo.")}


def layer_of(name: str) -> int | None:
    """The index in LAYERS of the longest entry that names ``name``; None when none does."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            names_it = name == prefix or (prefix != ROOT and name.startswith(prefix + "."))
            if names_it and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def graph(src: Path = SRC) -> dict[str, set[tuple[str, int]]]:
    found = modules(src)
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def unlayered(src: Path = SRC) -> list[str]:
    return [name for name in modules(src) if layer_of(name) is None]


def upward_imports(src: Path = SRC) -> list[str]:
    """``module:line imports target`` for every import of a later layer, or of a module in no layer."""
    found = []
    for name, targets in graph(src).items():
        own = layer_of(name)
        for target, line in sorted(targets):
            there = layer_of(target)
            if own is not None and (there is None or there > own):
                found.append(f"{name}:{line} imports {target}" + (" (in no layer)" if there is None else ""))
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_every_module_belongs_to_a_layer() -> None:
    assert not unlayered(), "in no layer: add them to LAYERS"


def test_no_module_imports_a_later_layer() -> None:
    upward = upward_imports()
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_there_are_no_import_cycles() -> None:
    edges = {name: {target for target, _ in targets if target != name} for name, targets in graph().items()}
    assert not cycles(edges), f"import cycles: {cycles(edges)}"


def test_inference_and_the_service_do_not_import_training() -> None:
    reaching = [f"{name}:{line} imports {target}"
                for name, targets in graph().items() for target, line in sorted(targets)
                for user, banned in FORBIDDEN.items() if name == user or name.startswith(user + ".")
                for bad in banned if target == bad or target.startswith(bad + ".")]
    assert not reaching, "move what both need down to models or data:\n" + "\n".join(reaching)


def test_commands_do_not_import_each_other() -> None:
    crossing = [f"{name}:{line} imports {target}"
                for name, targets in graph().items() for target, line in sorted(targets)
                for group in SIBLINGS_APART
                if name.startswith(group + ".") and target.startswith(group + ".") and target != name]
    assert not crossing, "shared code belongs in the library, not in another command:\n" + "\n".join(crossing)


@pytest.mark.parametrize(("source", "expected"), [
    ("from pneumo.serve import app\n", {"pneumo.serve.app"}),
    ("def f():\n    import pneumo.serve.app\n", {"pneumo.serve.app"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pneumo.serve.app import x\n", {"pneumo.serve.app"}),
    ("from . import cache\n", {"pneumo.data.cache"}),
    ("from ..serve.app import x\n", {"pneumo.serve.app"}),
])
def test_the_checker_sees_every_kind_of_import(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = {target for target, _ in imports_of("pneumo.data.probe", path, set(modules()))}
    assert found == expected
    assert layer_of("pneumo.data.probe") < layer_of(next(iter(expected))) or expected == {"pneumo.data.cache"}


def test_the_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_checker_reports_an_upward_import_and_a_package_in_no_layer(tmp_path: Path) -> None:
    """The checks above on a copy of the package with the two mistakes they exist for."""
    shutil.copytree(SRC / ROOT, tmp_path / ROOT, ignore=shutil.ignore_patterns("__pycache__"))
    assert unlayered(tmp_path) == [] and upward_imports(tmp_path) == []  # the copy is as clean as the source
    manifest = tmp_path / ROOT / "data" / "manifest.py"
    manifest.write_text(manifest.read_text(encoding="utf-8") + "\nfrom pneumo.serve import app\n", encoding="utf-8")
    (tmp_path / ROOT / "extra").mkdir()
    (tmp_path / ROOT / "extra" / "__init__.py").write_text("from pneumo.serve import app\n", encoding="utf-8")
    cache = tmp_path / ROOT / "data" / "cache.py"
    cache.write_text("import pneumo.extra\n" + cache.read_text(encoding="utf-8"), encoding="utf-8")
    assert unlayered(tmp_path) == ["pneumo.extra"]  # a new subpackage is not silently part of the core
    reported = upward_imports(tmp_path)
    line = len(manifest.read_text(encoding="utf-8").splitlines())
    assert reported == ["pneumo.data.cache:1 imports pneumo.extra (in no layer)",
                        f"pneumo.data.manifest:{line} imports pneumo.serve.app"]


MAX_LINES = 400  # the house's module size (issue 21)


def long_modules(src: Path = SRC) -> dict[str, int]:
    """Modules of ``src`` longer than `MAX_LINES` lines, with their length."""
    lengths = {str(path.relative_to(src)): len(path.read_text(encoding="utf-8").splitlines())
               for path in sorted((src / ROOT).rglob("*.py"))}
    return {name: n for name, n in lengths.items() if n > MAX_LINES}


def test_no_module_is_longer_than_400_lines(tmp_path: Path) -> None:
    assert long_modules() == {}
    (tmp_path / ROOT / "data").mkdir(parents=True)  # and the check sees one that is
    (tmp_path / ROOT / "data" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / ROOT / "small.py").write_text("x = 1\n" * MAX_LINES)
    assert long_modules(tmp_path) == {f"{ROOT}/data/big.py": MAX_LINES + 1}
