"""The runtime's imports form no cycle, and configuration is layered: model, parsers, resolve.

Read from the source with `ast`, so an import inside a function (the usual way to hide a cycle)
counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
PACKAGE = "pulsarfunc.runtime"


def imported_modules(path: Path) -> set[str]:
    """The `pulsarfunc.runtime` modules that `path` imports anywhere, by short name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:  # relative: `from .x import y` or `from . import x`
                base = PACKAGE + (f".{node.module}" if node.module else "")
            else:
                base = "" if node.level else node.module or ""
            names = [base] if base != PACKAGE else [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + "."):
                found.add(name.split(".")[2])
    return found


def runtime_graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in RUNTIME.glob("*.py") if path.stem != "__init__"}
    others = {name: modules.keys() - {name} for name in modules}
    return {name: imported_modules(path) & others[name] for name, path in modules.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return []


def reachable(graph: Mapping[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_is_read_from_function_level_imports_too(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from pulsarfunc.runtime.config import FunctionConfig\n"
        "def f():\n"
        "    from pulsarfunc.runtime import options\n"
        "    import pulsarfunc.runtime.formats as formats\n"
        "    from .resolve import resolve\n"
    )
    assert imported_modules(source) == {"config", "options", "formats", "resolve"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_runtime_imports_have_no_cycle() -> None:
    graph = runtime_graph()
    assert {"config", "options", "formats", "function_config_yaml", "resolve"} <= graph.keys()
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    ("module", "never"),
    [
        ("config", {"options", "formats", "function_config_yaml", "resolve"}),  # the data model
        ("options", {"resolve", "formats", "function_config_yaml"}),  # flags and variables
        ("formats", {"resolve", "options"}),  # Pulsar's formats
        ("function_config_yaml", {"resolve", "options", "config"}),
    ],
)
def test_configuration_is_layered(module: str, never: set[str]) -> None:
    assert not reachable(runtime_graph(), module) & never
