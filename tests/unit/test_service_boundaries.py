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
