"""The import layering of ``src/pneumo`` (see docs/ARCHITECTURE.md): imports go one way, down the data flow.

Every ``import`` statement counts, also inside functions and under ``if TYPE_CHECKING:``; the graph is read from the
source with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# The allowed order, written once: a module may import its own layer and the layers before it, never a later one.
LAYERS = (
    ("pneumo", "pneumo.errors", "pneumo.atomic", "pneumo.allocator", "pneumo.config", "pneumo.templates"),  # the core
    ("pneumo.data",),
    ("pneumo.models",),
    ("pneumo.train",),
    ("pneumo.evaluate",),
    ("pneumo.explain",),
    ("pneumo.infer",),
    ("pneumo.adapt",),
    ("pneumo.serve",),
    ("pneumo.commands",),
    ("pneumo.cli", "pneumo.__main__"),
)
SIBLINGS_APART = ("pneumo.commands",)  # modules in here never import one another
# Below the line but still out of bounds: prediction and the service never need training code (checkpoint I/O and
# device choice live in models, the image cache in data).
FORBIDDEN = {"pneumo.infer": ("pneumo.train",), "pneumo.serve": ("pneumo.train",)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / "pneumo").rglob("*.py"))}


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


def layer_of(name: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[0]


def graph() -> dict[str, set[tuple[str, int]]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


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
    for name in modules():
        layer_of(name)


def test_no_module_imports_a_later_layer() -> None:
    upward = [f"{name}:{line} imports {target}"
              for name, targets in graph().items() for target, line in sorted(targets)
              if layer_of(target) > layer_of(name)]
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
