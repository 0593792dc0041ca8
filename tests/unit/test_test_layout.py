"""Tests share helpers through tests/support only: no test module or conftest imports another
test module or a conftest."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"tests(\.\w+)*\.(test_\w+|conftest)")


def forbidden_imports(source: str, package: str) -> list[str]:
    """The test modules and conftests that `source`, a module of `package`, imports."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            parts = [*(base if node.level else []), *([node.module] if node.module else [])]
            module = ".".join(parts)
            names += [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return sorted({n for n in names if FORBIDDEN.fullmatch(n)})


def _package(path: Path) -> str:
    return ".".join(("tests", *path.parent.relative_to(TESTS).parts))


def test_no_test_module_or_conftest_imports_another() -> None:
    files = [*TESTS.rglob("test_*.py"), *TESTS.rglob("conftest.py")]
    assert len(files) > 10
    found = {
        str(path.relative_to(TESTS)): names
        for path in files
        if (names := forbidden_imports(path.read_text(), _package(path)))
    }
    assert found == {}, "move what they share into tests/support"


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("from tests.conftest import Server", True),
        ("import tests.conftest", True),
        ("from tests.e2e.test_process import AppProcess", True),
        ("from tests.e2e import test_process", True),
        ("import tests.integration.test_relay as relay", True),
        ("from .test_verify import env", True),
        ("from .. import conftest", True),
        ("from ..e2e.test_process import AppProcess", True),
        ("from tests.support.servers import Server", False),
        ("from tests.support import waiting", False),
        ("from app.relay.session import lock_key", False),
    ],
)
def test_the_check_sees_every_spelling_of_such_an_import(source: str, forbidden: bool) -> None:
    assert bool(forbidden_imports(source, "tests.unit")) == forbidden
