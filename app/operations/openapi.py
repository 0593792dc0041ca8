"""`GET /openapi.json`: the HTTP API described from the msgspec Structs the endpoints use.

Like app.main, this module sees both sides: it documents them, it never calls them. Schemas
come from the very Structs that decode requests and encode responses, so they cannot drift.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.commands.order_rules import OrderResult, PlaceOrder
from app.commands.products import CreateProduct, ProductResult, RestockProduct, RestockResult
from app.contracts.events import ORDER_STATUSES
from app.queries.documents import CustomerBody, OrderBody, PageBody, ProductBody

_PROBLEM: Final = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_SCHEMA: Final = {
    "type": "object",
    "description": "RFC 9457 problem details; extra members name what was wrong.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}
_TYPES: Final = (
    CreateProduct,
    RestockProduct,
    ProductResult,
    RestockResult,
    PlaceOrder,
    OrderResult,
    OrderBody,
    ProductBody,
    CustomerBody,
    PageBody[OrderBody],
    PageBody[ProductBody],
)
_POSITION_HEADER: Final = {"X-Event-Position": {"schema": {"type": "integer"}}}
_COMMAND_HEADERS: Final = [
    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200}},
    {"name": "X-Correlation-ID", "in": "header", "schema": {"type": "string"}},
]
_AFTER: Final = {
    "name": "after",
    "in": "query",
    "schema": {"type": "integer", "minimum": 0},
    "description": "Wait until the read model has applied this position (503 past the bound).",
}
_PAGE: Final = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "problem",
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
        for s in statuses
    }


# Bearer JWTs, required when the service runs with AUTH_MODE=jwt (README "Access control")
_BEARER: Final = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "Required when the service runs with AUTH_MODE=jwt; claims sub and role.",
}
_SECURED: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


def _command(
    summary: str, body: str | None, result: str, status: int, errors: tuple[int, ...]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": list(_COMMAND_HEADERS),
        "security": _SECURED,
        "responses": {
            str(status): {
                "description": "done",
                "headers": _POSITION_HEADER,
                "content": {"application/json": {"schema": _ref(result)}},
            },
            **_errors(400, 401, 403, 413, 415, 422, 503, *errors),
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return {"post": operation}


def _query(
    summary: str, result: str, *parameters: dict[str, Any], secured: bool = True
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [_AFTER, *parameters],
        "responses": {
            "200": {
                "description": "found",
                "content": {"application/json": {"schema": _ref(result)}},
            },
            **_errors(400, 404, 422, 503, *((401, 403) if secured else ())),
        },
    }
    if secured:
        operation["security"] = _SECURED
    return {"get": operation}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def document() -> dict[str, Any]:
    (_, components) = msgspec.json.schema_components(
        _TYPES, ref_template="#/components/schemas/{name}"
    )
    transitions = ("pay", "ship", "cancel")
    paths: dict[str, Any] = {
        "/products": {
            **_command("Create a product", "CreateProduct", "ProductResult", 201, (409,)),
            **_query("Products by sku", "PageBody_ProductBody_", *_PAGE, secured=False),
        },
        "/products/{product_id}/restock": _command(
            "Restock a product", "RestockProduct", "RestockResult", 200, (404,)
        ),
        "/orders": _command("Place an order", "PlaceOrder", "OrderResult", 201, (409,)),
        **{
            f"/orders/{{order_id}}/{action}": _command(
                f'{action.capitalize()} an order (If-Match: "<version>" optional)',
                None,
                "OrderResult",
                200,
                (404, 409, 412),
            )
            for action in transitions
        },
        "/products/{product_id}": _query(
            "One product", "ProductBody", _id("product_id"), secured=False
        ),
        "/orders/{order_id}": _query("One order (ETag)", "OrderBody", _id("order_id")),
        "/customers/{customer_id}": _query("One customer", "CustomerBody", _id("customer_id")),
        "/customers/{customer_id}/orders": _query(
            "A customer's orders, newest first",
            "PageBody_OrderBody_",
            _id("customer_id"),
            *_PAGE,
            {
                "name": "status",
                "in": "query",
                "schema": {"enum": list(ORDER_STATUSES)},
            },
        ),
        "/reports/top-products": _query("Best-selling products", "PageBody_ProductBody_", _PAGE[0]),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shop-cqrs",
            "version": "0.1.0",
            "description": "Orders & inventory, CQRS and event-driven.",
        },
        "paths": paths,
        "components": {
            "schemas": {**components, "Problem": _PROBLEM_SCHEMA},
            "securitySchemes": {"bearer": _BEARER},
        },
    }


async def openapi(request: Request) -> Response:
    body: bytes = request.app.state.openapi
    return Response(body, media_type="application/json")


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi, methods=["GET"])]


def encoded() -> bytes:
    return msgspec.json.encode(document())
