"""The API description covers every endpoint and every schema it refers to exists."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route

from app.operations.openapi import document
from app.plumbing.settings import Settings


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[1]} if "$ref" in node else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def test_every_reference_resolves() -> None:
    spec = document()
    assert _refs(spec) <= set(spec["components"]["schemas"])


def test_every_command_and_query_is_described() -> None:
    from app.main import create_app

    app = create_app(Settings())
    spec = document()
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    served = {
        (route.path.replace(":uuid", ""), method.lower())
        for route in app.routes
        if isinstance(route, Route)
        and not route.path.startswith(
            ("/health", "/metrics", "/openapi", "/asyncapi", "/dashboard", "/ops/")
        )
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert served == described


def test_operations_say_when_they_need_a_bearer_token() -> None:
    spec = document()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    open_reads = {("/products", "get"), ("/products/{product_id}", "get")}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            secured = (path, method) not in open_reads
            assert ("security" in operation) is secured, (path, method)
            assert ("401" in operation["responses"]) is secured, (path, method)
