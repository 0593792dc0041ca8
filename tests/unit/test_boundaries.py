"""The sides stay apart in code: commands, projector and queries never import each other.

What they may share is the event contract and the plumbing below them (app.events,
app.eventlog, app.broker, app.settings, app.problems); only the composition root (app.main),
the CLI, `verify` and the API description (app.openapi) see more than one side.
Splitting them into separate deployables stays configuration.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
SIDES = ("commands", "projector", "queries")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            pytest.fail(f"{path}: use absolute imports so the boundary check can see them")
    return names


@pytest.mark.parametrize("side", SIDES)
def test_a_side_never_imports_another(side: str) -> None:
    forbidden = tuple(f"app.{other}" for other in SIDES if other != side)
    offences = [
        f"{path.relative_to(APP.parent)} imports {name}"
        for path in sorted((APP / side).rglob("*.py"))
        for name in sorted(_imports(path))
        if name.startswith(forbidden) or name == "app.main"
    ]
    assert offences == []


def test_shared_modules_import_no_side() -> None:
    sides = tuple(f"app.{side}" for side in SIDES)
    offences = [
        f"{path.name} imports {name}"
        for path in sorted(APP.glob("*.py"))
        if path.name not in {"main.py", "__main__.py", "verify.py", "openapi.py"}
        for name in sorted(_imports(path))
        if name.startswith(sides)
    ]
    assert offences == []
