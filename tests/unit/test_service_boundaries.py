"""The services meet over HTTP or the database, never by import: no module of one service imports
another service, and nothing in shared/ imports a service. What they share lives in shared/ (the
distillation control plane is shared/distillation/).

services/cli.py, services/local.py and services/demo.py are the launcher and the demo client: they
start the services or call them, so they may import any of them, and are not checked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("teacher", "trainer", "student")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every module `path` imports, at any depth (lazy imports too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from services import trainer` imports services.trainer: count each imported name as a module too.
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def forbidden_imports(folder: Path, forbidden: tuple[str, ...]) -> list[tuple[str, int]]:
    """(file, line) of every import in `folder` of a module under one of `forbidden`."""
    problems: set[tuple[str, int]] = set()
    for path in folder.rglob("*.py"):
        for line, name in imported_modules(path):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden):
                problems.add((str(path.relative_to(folder)), line))
    return sorted(problems)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str):
    others = tuple(f"services.{other}" for other in SERVICES if other != service)
    assert forbidden_imports(ROOT / "services" / service, others) == []


def test_shared_imports_no_service():
    assert forbidden_imports(ROOT / "shared", ("services",)) == []


def test_the_check_sees_every_form_of_import(tmp_path: Path):
    """The parser finds plain, from-, nested and lazy imports (so a passing test above means something)."""
    module = tmp_path / "module.py"
    module.write_text(
        "import services.trainer.runs\n"
        "from services.trainer.config import X\n"
        "from services import student\n"
        "def later():\n"
        "    from services.trainer import worker\n"
        "from shared.db import models\n",
        encoding="utf-8",
    )
    assert forbidden_imports(tmp_path, ("services.trainer", "services.student")) == [("module.py", 1), ("module.py", 2),
                                                                                     ("module.py", 3), ("module.py", 5)]


def import_graph(*packages: str) -> dict[str, set[str]]:
    """Module → the modules of `packages` it imports, at any depth (lazy and type-only imports too).
    `from pkg import sub` counts as importing pkg.sub where that is a module; a module's own parent
    packages are left out (Python loads them first whatever the module says)."""
    modules = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {known(name) for _, name in imported_modules(path)}
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_cycle_in_shared_or_services():
    """The import graph is a DAG, lazy imports included: the order of things can be read off it."""
    graph = import_graph("shared", "services")
    assert len(graph) > 100 and graph["services.trainer.training"] >= {"services.trainer.distill", "services.trainer.parallel"}
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]] and cycles({"a": {"b"}, "b": set()}) == []
