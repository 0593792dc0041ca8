"""Malformed, mistyped, oversized and hostile requests: the documented 4xx as problem+json,
never a 500, and nothing written."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

JSON = {"content-type": "application/json"}
GOOD_PRODUCT = {"sku": "HOSTILE-1", "name": "Target", "price_cents": 100, "stock": 5}


def _order(product_id: Any, quantity: Any = 1, **extra: Any) -> dict[str, Any]:
    return {
        "customer_id": "c1",
        "lines": [{"product_id": product_id, "quantity": quantity}],
        **extra,
    }


PRODUCT_CASES: list[tuple[str, bytes | str, dict[str, str], int]] = [
    ("not json", b"{sku: 1", JSON, 400),
    ("empty body", b"", JSON, 400),
    ("invalid utf-8", b'{"sku": "\xff\xfe"}', JSON, 400),
    ("json array", b"[1, 2]", JSON, 422),
    ("json null", b"null", JSON, 422),
    ("operator for a string", b'{"sku": {"$ne": null}, "name": "x", "price_cents": 1}', JSON, 422),
    (
        "sql in sku",
        b'{"sku": "x\'; DROP TABLE products;--", "name": "x", "price_cents": 1}',
        JSON,
        422,
    ),
    ("missing field", b'{"sku": "A1", "name": "x"}', JSON, 422),
    ("unknown field", b'{"sku": "A1", "name": "x", "price_cents": 1, "admin": true}', JSON, 422),
    ("negative price", b'{"sku": "A1", "name": "x", "price_cents": -1}', JSON, 422),
    ("float price", b'{"sku": "A1", "name": "x", "price_cents": 1.5}', JSON, 422),
    ("bool stock", b'{"sku": "A1", "name": "x", "price_cents": 1, "stock": true}', JSON, 422),
    (
        "huge price",
        b'{"sku": "A1", "name": "x", "price_cents": 1000000000000000000000000}',
        JSON,
        422,
    ),
    ("string price", b'{"sku": "A1", "name": "x", "price_cents": "100"}', JSON, 422),
    ("nul in name", b'{"sku": "A1", "name": "a\\u0000b", "price_cents": 1}', JSON, 422),
    ("lone surrogate", b'{"sku": "A1", "name": "a\\ud800b", "price_cents": 1}', JSON, 400),
    ("empty sku", b'{"sku": "", "name": "x", "price_cents": 1}', JSON, 422),
    # `$` matches before a final newline: "NL-1" and "NL-1\n" must not both be skus
    ("trailing newline in sku", b'{"sku": "NL-1\\n", "name": "x", "price_cents": 1}', JSON, 422),
    ("trailing newline in name", b'{"sku": "NL-1", "name": "x\\n", "price_cents": 1}', JSON, 422),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, JSON, 413),
    ("nested deep but small", b'{"sku": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON, 422),
    (
        "megabyte name",
        '{"sku": "A1", "name": "' + "x" * 1_048_576 + '", "price_cents": 1}',
        JSON,
        413,
    ),
    (
        "text/plain",
        b'{"sku": "A1", "name": "x", "price_cents": 1}',
        {"content-type": "text/plain"},
        415,
    ),
    ("no content type", b'{"sku": "A1", "name": "x", "price_cents": 1}', {}, 415),
    ("form", b"sku=A1&name=x", {"content-type": "application/x-www-form-urlencoded"}, 415),
]


@pytest.mark.parametrize(
    ("case", "body", "headers", "status"), PRODUCT_CASES, ids=[c[0] for c in PRODUCT_CASES]
)
async def test_bad_product_bodies(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    case: str,
    body: bytes | str,
    headers: dict[str, str],
    status: int,
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM events")
    response = await client.post("/products", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("/problems/")
    assert problem["detail"]
    assert await pool.fetchval("SELECT count(*) FROM events") == before


async def test_validation_errors_name_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", json=_order(str(uuid.uuid4()), 10**12))
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "$.lines[0].quantity"


@pytest.fixture
async def product_id(client: httpx.AsyncClient) -> str:
    response = await client.post(
        "/products", json={**GOOD_PRODUCT, "sku": f"H-{uuid.uuid4().hex[:8]}"}
    )
    assert response.status_code == 201
    pid: str = response.json()["product_id"]
    return pid


ORDER_CASES: list[tuple[str, Any, int]] = [
    ("quantity 10^12", lambda p: _order(p, 10**12), 422),
    ("zero quantity", lambda p: _order(p, 0), 422),
    ("negative quantity", lambda p: _order(p, -3), 422),
    ("sql as product id", lambda p: _order("1' OR '1'='1"), 422),
    ("operator as product id", lambda p: _order({"$gt": ""}), 422),
    ("no lines", lambda p: {"customer_id": "c1", "lines": []}, 422),
    (
        "too many lines",
        lambda p: {
            "customer_id": "c1",
            "lines": [{"product_id": str(uuid.uuid4()), "quantity": 1} for _ in range(51)],
        },
        422,
    ),
    (
        "repeated product",
        lambda p: {
            "customer_id": "c1",
            "lines": [{"product_id": p, "quantity": 1}, {"product_id": p, "quantity": 2}],
        },
        422,
    ),
    ("unknown product", lambda p: _order(str(uuid.uuid4())), 422),
    ("customer id too long", lambda p: {**_order(p), "customer_id": "c" * 65}, 422),
    ("customer id with operator", lambda p: {**_order(p), "customer_id": {"$ne": None}}, 422),
    ("customer id with spaces", lambda p: {**_order(p), "customer_id": "a b"}, 422),
    ("customer id with a final newline", lambda p: {**_order(p), "customer_id": "c1\n"}, 422),
    ("more than in stock", lambda p: _order(p, 6), 409),
]


@pytest.mark.parametrize(("case", "build", "status"), ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
async def test_bad_orders(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    product_id: str,
    case: str,
    build: Any,
    status: int,
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM events")
    response = await client.post("/orders", json=build(product_id))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await pool.fetchval("SELECT count(*) FROM events") == before
    stock = await pool.fetchval(
        "SELECT stock FROM products WHERE product_id = $1", uuid.UUID(product_id)
    )
    assert stock == GOOD_PRODUCT["stock"]


REQUEST_CASES: list[tuple[str, str, str, dict[str, str], bytes | None, int]] = [
    ("unknown route", "GET", "/nope", {}, None, 404),
    ("wrong method", "DELETE", "/orders", {}, None, 405),
    (
        "sql in path",
        "POST",
        "/products/1';DROP TABLE products;--/restock",
        JSON,
        b'{"quantity": 1}',
        404,
    ),
    ("not a uuid", "POST", "/orders/abc/pay", {}, None, 404),
    ("unknown order", "POST", f"/orders/{uuid.uuid4()}/cancel", {}, None, 404),
    ("bad if-match", "POST", f"/orders/{uuid.uuid4()}/pay", {"if-match": "3"}, None, 400),
    (
        "bad idempotency key",
        "POST",
        "/orders",
        {**JSON, "idempotency-key": "k" * 201},
        b'{"customer_id": "c1", "lines": [{"product_id": "%s", "quantity": 1}]}'
        % str(uuid.uuid4()).encode(),
        400,
    ),
    ("restock zero", "POST", f"/products/{uuid.uuid4()}/restock", JSON, b'{"quantity": 0}', 422),
    (
        "restock too much",
        "POST",
        f"/products/{uuid.uuid4()}/restock",
        JSON,
        b'{"quantity": 1000000000000000}',
        422,
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "headers", "body", "status"),
    REQUEST_CASES,
    ids=[c[0] for c in REQUEST_CASES],
)
async def test_bad_requests(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    case: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM events")
    response = await client.request(method, path, headers=headers, content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await pool.fetchval("SELECT count(*) FROM events") == before


@pytest.mark.parametrize(
    ("path", "allowed"),
    [("/orders", {"POST"}), ("/products", {"GET", "HEAD", "POST"})],  # /products: two routes
)
async def test_wrong_method_lists_allowed(
    client: httpx.AsyncClient, path: str, allowed: set[str]
) -> None:
    response = await client.delete(path)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == allowed


@pytest.mark.parametrize("path", ["/products/", "/orders/"])
async def test_a_trailing_slash_is_an_unknown_path_not_a_redirect(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.request("GET" if path == "/products/" else "POST", path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_whole_float_is_the_integer_it_spells(client: httpx.AsyncClient) -> None:
    """JSON Schema's integers, the OpenAPI document's, include 2.0 (2.5 is refused above)."""
    body = b'{"sku": "WHOLE-%s", "name": "x", "price_cents": 250.0, "stock": 1e1}'
    response = await client.post(
        "/products", content=body % uuid.uuid4().hex[:8].encode(), headers=JSON
    )
    assert response.status_code == 201, response.text
    assert (response.json()["price_cents"], response.json()["stock"]) == (250, 10)


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{}",
        b"POST /products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}",
    ],
    ids=["body cut short", "invalid chunk size"],
)
async def test_a_client_that_goes_away_mid_body_is_not_an_error_of_ours(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, request_head: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
    writer.write(request_head)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    del reader
    # the server is still well, and logged no traceback for it
    response = await client.get("/health/live")
    assert response.status_code == 200
    await asyncio.sleep(0.2)
    tracebacks = [r for r in caplog.records if r.exc_info is not None or r.levelname == "ERROR"]
    assert tracebacks == []
