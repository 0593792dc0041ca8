"""The parts stay apart in code (docs/architecture.md §1).

The four parts (commands, relay, projector, queries) never import one another; each may import
only the shared contracts (`app.contracts`) and the plumbing (`app.plumbing`). The contracts
import only the plumbing, the plumbing only itself. Only the composition root (`app.main`), the
CLI (`app.__main__`) and the operator tools (`app.operations`) see more than one part. So
splitting the parts into separate deployables stays configuration.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
PARTS = ("commands", "relay", "projector", "queries")
# what each layer may import from app, besides itself
ALLOWED = {
    **{part: ("contracts", "plumbing") for part in PARTS},
    "contracts": ("plumbing",),
    "plumbing": (),
}


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


def _layer_of(name: str) -> str | None:
    """The top-level package of app that `name` (a module or a name in one) belongs to."""
    parts = name.split(".")
    if parts[0] != "app" or len(parts) < 2:
        return None
    return parts[1]


def offences(layer: str) -> list[str]:
    allowed = {layer, *ALLOWED[layer]}
    return [
        f"{path.relative_to(APP.parent)} imports {name}"
        for path in sorted((APP / layer).rglob("*.py"))
        for name in sorted(_imports(path))
        if (imported := _layer_of(name)) is not None and imported not in allowed
    ]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    assert offences(layer) == []


def test_every_package_of_app_is_a_known_layer() -> None:
    packages = {p.name for p in APP.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {*ALLOWED, "operations"}


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    # the check itself, on a module that breaks the rule: `_imports` and `_layer_of` agree
    module = tmp_path / "m.py"
    module.write_text("from app.queries.reads import find_order\nimport app.relay.runner\n")
    layers = {_layer_of(name) for name in _imports(module)}
    assert {"queries", "relay"} <= layers
