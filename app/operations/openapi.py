"""`GET /openapi.json`: the HTTP API described from the msgspec Structs the endpoints use.

Like app.main, this module sees both sides: it documents them, it never calls them. Schemas
come from the very Structs that decode requests and encode responses, and every parameter's
pattern and bound from the constant the server checks it with, so they cannot drift.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from starlette.convertors import UUIDConvertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.commands.http import ENTITY_TAG, HEADER_TOKEN, HEADER_TOKEN_MAX, IF_MATCH
from app.commands.order_rules import OrderResult, PlaceOrder
from app.commands.products import CreateProduct, ProductResult, RestockProduct, RestockResult
from app.contracts.events import CUSTOMER_ID_CHARS, CUSTOMER_ID_MAX, ORDER_STATUSES, TEXT_END
from app.queries.cursors import CURSOR_TEXT, MAX_CURSOR_CHARS
from app.queries.documents import CustomerBody, OrderBody, PageBody, ProductBody
from app.queries.params import MAX_LIMIT, MAX_POSITION, UUID_TEXT

_DESCRIPTION: Final = (
    "Orders & inventory, CQRS and event-driven. Errors are RFC 9457 application/problem+json."
    " A method a path does not list answers 405 with an `Allow` header"
    " (#/components/responses/MethodNotAllowed); an unknown path, a trailing slash included,"
    " answers 404 (#/components/responses/NotFound)."
)
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


def _whole(pattern: str) -> str:
    """The ECMA-262 pattern (JSON Schema's, which searches) matching what the server's Python
    regex matches whole (`fullmatch`)."""
    return f"^(?:{pattern}){TEXT_END}"


def _header(schema: dict[str, Any], description: str, required: bool = True) -> dict[str, Any]:
    return {"schema": schema, "description": description, "required": required}


_POSITION: Final = {"type": "integer", "minimum": 0, "maximum": MAX_POSITION}
_ETAG: Final = _header({"type": "string", "pattern": _whole(ENTITY_TAG)}, 'The version: "<n>"')
_READ_POSITION: Final = {
    "X-Read-Position": _header(_POSITION, "The log position this answer reflects.")
}
_RETRY_AFTER: Final = {"Retry-After": _header({"type": "string"}, "Seconds to wait.")}
_TOKEN: Final = {"type": "string", "minLength": 1, "maxLength": HEADER_TOKEN_MAX}
_COMMAND_HEADERS: Final = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "schema": {**_TOKEN, "pattern": _whole(HEADER_TOKEN)},
        "description": "Replays the stored answer to a repeat of this request (24 h); 400 if"
        " not 1 to 200 visible ASCII characters.",
    },
    {
        "name": "X-Correlation-ID",
        "in": "header",
        "schema": {"type": "string"},
        "description": "Kept when 1 to 200 visible ASCII characters, else a new one is made.",
    },
]
_IF_MATCH: Final = {
    "name": "If-Match",
    "in": "header",
    "schema": {"type": "string", "pattern": _whole(IF_MATCH)},
    "description": '"*" or the version the order must still be at ("3"); 412 otherwise.',
}
_AFTER: Final = {
    "name": "after",
    "in": "query",
    "schema": _POSITION,
    "description": "Wait until the read model has applied this position (503 past the bound).",
}
_CURSOR: Final = {
    "name": "cursor",
    "in": "query",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_CURSOR_CHARS,
        "pattern": _whole(CURSOR_TEXT),
    },
    "description": "A next_cursor exactly as received; 400 for any other.",
}


def _limit(default: int) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": default}
    return {"name": "limit", "in": "query", "schema": schema}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*statuses: int, always: dict[str, Any] | None = None) -> dict[str, Any]:
    """Problem answers; `always` are headers every one of them carries."""
    headers = {
        401: {"WWW-Authenticate": _header({"type": "string"}, "The Bearer challenge.")},
        412: {"ETag": _ETAG},
        503: _RETRY_AFTER,
    }
    return {
        str(s): {
            "description": "problem",
            "headers": {**(always or {}), **headers.get(s, {})},
            "content": {"application/problem+json": {"schema": _PROBLEM}},
        }
        for s in sorted(statuses)
    }


# Bearer JWTs, required when the service runs with AUTH_MODE=jwt (README "Access control")
_BEARER: Final = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "Required when the service runs with AUTH_MODE=jwt; claims sub and role.",
}
_SECURED: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


def _id(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


# Commands route ids with Starlette's uuid convertor, queries check them with UUID_TEXT
_COMMAND_UUID: Final = {"type": "string", "pattern": _whole(UUIDConvertor.regex)}
_QUERY_UUID: Final = {"type": "string", "pattern": _whole(UUID_TEXT)}
_CUSTOMER_ID: Final = {
    "type": "string",
    "minLength": 1,
    "maxLength": CUSTOMER_ID_MAX,
    "pattern": _whole(CUSTOMER_ID_CHARS),
}


def _command(
    operation_id: str,
    summary: str,
    result: str,
    status: int,
    errors: tuple[int, ...],
    *,
    body: str | None = None,
    parameters: tuple[dict[str, Any], ...] = (),
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A POST: 400, 401, 422 (a reused Idempotency-Key) and 503 besides `errors`; a body brings
    413, 415 and its validation."""
    headers = {
        "X-Event-Position": _header(_POSITION, "The position of the last event logged."),
        "X-Correlation-ID": _header({"type": "string"}, "The request's correlation id."),
        "Idempotent-Replayed": _header(
            {"const": "true"}, "Present on a replayed answer.", required=False
        ),
        **({"Location": _header({"type": "string"}, "The new resource.")} if status == 201 else {}),
        **({"ETag": _ETAG} if result == "OrderResult" else {}),
    }
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [*parameters, *_COMMAND_HEADERS],
        "security": _SECURED,
        "responses": {
            str(status): {
                "description": "done",
                "headers": headers,
                "content": {"application/json": {"schema": _ref(result)}},
                **({"links": links} if links else {}),
            },
            **_problems(400, 401, 422, 503, *errors, *((413, 415) if body else ())),
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return {"post": operation}


def _query(
    operation_id: str,
    summary: str,
    result: str,
    *parameters: dict[str, Any],
    errors: tuple[int, ...] = (),
    secured: bool = True,
    answers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A GET: 422 (a parameter) and 503 (`after` not reached in time) besides `errors`; 401
    when `secured`; every answer with X-Read-Position."""
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [*parameters, _AFTER],
        "responses": {
            "200": {
                "description": "found",
                "headers": _READ_POSITION,
                "content": {"application/json": {"schema": _ref(result)}},
            },
            **(answers or {}),
            **_problems(422, 503, *errors, *((401,) if secured else ()), always=_READ_POSITION),
        },
    }
    if secured:
        operation["security"] = _SECURED
    return {"get": operation}


_LAST_EVENT_ID: Final = {
    "name": "Last-Event-ID",
    "in": "header",
    "description": "Resume after this event's id (a log position): only later changes are sent.",
    "schema": _POSITION,
}


def _stream(operation_id: str, summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
    """A server-sent event stream (app/queries/streams.py): the GET's answers, plus 400 (a bad
    Last-Event-ID) and 503 (past STREAM_MAX_OPEN, or `after` not reached in time)."""
    operation = _query(operation_id, summary, "OrderBody", *parameters, errors=(400, 403, 404))
    operation["get"]["parameters"].append(_LAST_EVENT_ID)
    operation["get"]["responses"]["200"] = {
        "description": "text/event-stream: `order` events (data: OrderBody, id: a position)",
        "headers": _READ_POSITION,
        # OpenAPI 3.1 has no itemSchema (3.2): tools read `schema` as the shape of one event
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    }
    return operation


_SSE_EVENT: Final = {
    "type": "object",
    "description": "One parsed event: `order` (data: an OrderBody as JSON) or, on the "
    "customer stream, `ready` first (data: {customer_id, position}, the position it starts "
    "after).",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["order", "ready"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer"},
    },
}


def _link(operation_id: str, description: str, **parameters: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "description": description, "parameters": parameters}


_AFTER_IT: Final = "$response.body#/position"
_PRODUCT_LINKS: Final = {
    "GetProduct": _link(
        "getProduct",
        "Read it once applied.",
        product_id="$response.body#/product_id",
        after=_AFTER_IT,
    ),
    "RestockProduct": _link(
        "restockProduct", "Restock it.", product_id="$response.body#/product_id"
    ),
    "PlaceOrder": {
        "operationId": "placeOrder",
        "description": "Order one of it.",
        "requestBody": {
            "customer_id": "customer-1",
            "lines": [{"product_id": "$response.body#/product_id", "quantity": 1}],
        },
    },
}
_ORDER_LINKS: Final = {
    "GetOrder": _link(
        "getOrder", "Read it once applied.", order_id="$response.body#/order_id", after=_AFTER_IT
    ),
    "GetCustomer": _link(
        "getCustomer",
        "Its customer once applied.",
        customer_id="$response.body#/customer_id",
        after=_AFTER_IT,
    ),
    "GetCustomerOrders": _link(
        "getCustomerOrders",
        "Its customer's orders once applied.",
        customer_id="$response.body#/customer_id",
        after=_AFTER_IT,
    ),
    **{
        f"{action.capitalize()}Order": _link(
            f"{action}Order",
            f"{action.capitalize()} it at the version just answered.",
            order_id="$response.body#/order_id",
            **{"header.If-Match": "$response.header.ETag"},
        )
        for action in ("pay", "ship", "cancel")
    },
}
_NOT_MODIFIED: Final = {
    "304": {
        "description": "If-None-Match names the current version",
        "headers": {"ETag": _ETAG, **_READ_POSITION},
    }
}
_IF_NONE_MATCH: Final = {
    "name": "If-None-Match",
    "in": "header",
    "schema": {"type": "string"},
    "description": 'Entity tags ("3", W/"3") or "*"; 304 when one is the current version.',
}


def _paths() -> dict[str, Any]:
    return {
        "/products": {
            **_command(
                "createProduct",
                "Create a product",
                "ProductResult",
                201,
                (403, 409),
                body="CreateProduct",
                links=_PRODUCT_LINKS,
            ),
            **_query(
                "listProducts",
                "Products by sku",
                "PageBody_ProductBody_",
                _limit(20),
                _CURSOR,
                errors=(400,),
                secured=False,
            ),
        },
        "/products/{product_id}/restock": _command(
            "restockProduct",
            "Restock a product (409: past the stock limit)",
            "RestockResult",
            200,
            (403, 404, 409),
            body="RestockProduct",
            parameters=(_id("product_id", _COMMAND_UUID),),
        ),
        "/orders": _command(
            "placeOrder",
            "Place an order",
            "OrderResult",
            201,
            (403, 409),
            body="PlaceOrder",
            links=_ORDER_LINKS,
        ),
        **{
            f"/orders/{{order_id}}/{action}": _command(
                f"{action}Order",
                f"{action.capitalize()} an order",
                "OrderResult",
                200,
                (404, 409, 412, *((403,) if action == "ship" else ())),
                parameters=(_id("order_id", _COMMAND_UUID), _IF_MATCH),
            )
            for action in ("pay", "ship", "cancel")
        },
        "/products/{product_id}": _query(
            "getProduct",
            "One product",
            "ProductBody",
            _id("product_id", _QUERY_UUID),
            errors=(404,),
            secured=False,
        ),
        "/orders/{order_id}": _query(
            "getOrder",
            "One order (ETag)",
            "OrderBody",
            _id("order_id", _QUERY_UUID),
            _IF_NONE_MATCH,
            errors=(404,),
            answers=_NOT_MODIFIED,
        ),
        "/customers/{customer_id}": _query(
            "getCustomer",
            "One customer",
            "CustomerBody",
            _id("customer_id", _CUSTOMER_ID),
            errors=(403, 404),
        ),
        "/customers/{customer_id}/orders": _query(
            "getCustomerOrders",
            "A customer's orders, newest first",
            "PageBody_OrderBody_",
            _id("customer_id", _CUSTOMER_ID),
            _limit(20),
            _CURSOR,
            {"name": "status", "in": "query", "schema": {"enum": list(ORDER_STATUSES)}},
            errors=(400, 403, 404),
        ),
        "/orders/{order_id}/stream": _stream(
            "streamOrder", "The order, then again at each change", _id("order_id", _QUERY_UUID)
        ),
        "/customers/{customer_id}/orders/stream": _stream(
            "streamCustomerOrders",
            "A `ready` event, then each change to a customer's orders",
            _id("customer_id", _CUSTOMER_ID),
        ),
        "/reports/top-products": _query(
            "getTopProducts",
            "Best-selling products",
            "PageBody_ProductBody_",
            _limit(10),
            errors=(403,),
        ),
    }


_ROUTING: Final = {
    "MethodNotAllowed": {
        "description": "The path does not serve this method",
        "headers": {"Allow": _header({"type": "string"}, "The methods it serves.")},
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    },
    "NotFound": {
        "description": "No such path (a trailing slash is not redirected)",
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    },
}


def document() -> dict[str, Any]:
    (_, components) = msgspec.json.schema_components(
        _TYPES, ref_template="#/components/schemas/{name}"
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "shop-cqrs", "version": "0.1.0", "description": _DESCRIPTION},
        "paths": _paths(),
        "components": {
            "schemas": {**components, "Problem": _PROBLEM_SCHEMA},
            "responses": _ROUTING,
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
