"""The write side over real HTTP: statuses, bodies, headers, and what lands in the log."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx


async def create_product(client: httpx.AsyncClient, stock: int = 10, price: int = 250) -> str:
    response = await client.post(
        "/products",
        json={
            "sku": f"SKU-{uuid.uuid4().hex[:10]}",
            "name": "Test product",
            "price_cents": price,
            "stock": stock,
        },
    )
    assert response.status_code == 201, response.text
    product_id: str = response.json()["product_id"]
    return product_id


async def place(
    client: httpx.AsyncClient, lines: list[tuple[str, int]], customer: str = "cust-1", **kwargs: Any
) -> httpx.Response:
    return await client.post(
        "/orders",
        json={
            "customer_id": customer,
            "lines": [{"product_id": p, "quantity": q} for p, q in lines],
        },
        **kwargs,
    )


async def stock_of(pool: asyncpg.Pool, product_id: str) -> int:
    stock: int = await pool.fetchval(
        "SELECT stock FROM products WHERE product_id = $1", uuid.UUID(product_id)
    )
    return stock


async def test_create_product_answers_201_with_position(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/products",
        json={"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "Lamp", "price_cents": 1999},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["stock"] == 0
    assert body["version"] == 1
    assert response.headers["x-event-position"] == str(body["position"])
    assert response.headers["location"] == f"/products/{body['product_id']}"


async def test_taken_sku_is_409(client: httpx.AsyncClient) -> None:
    payload = {"sku": f"SKU-{uuid.uuid4().hex[:8]}", "name": "Lamp", "price_cents": 1}
    assert (await client.post("/products", json=payload)).status_code == 201
    response = await client.post("/products", json=payload)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["sku"] == payload["sku"]


async def test_restock_and_unknown_product(client: httpx.AsyncClient) -> None:
    product = await create_product(client, stock=1)
    response = await client.post(f"/products/{product}/restock", json={"quantity": 4})
    assert response.status_code == 200
    assert response.json()["stock"] == 5
    assert response.json()["version"] == 2
    missing = await client.post(f"/products/{uuid.uuid4()}/restock", json={"quantity": 4})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_order_is_priced_at_placement(client: httpx.AsyncClient) -> None:
    a = await create_product(client, stock=5, price=300)
    b = await create_product(client, stock=5, price=125)
    response = await place(client, [(a, 2), (b, 3)])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["total_cents"] == 2 * 300 + 3 * 125
    assert body["status"] == "placed"
    assert response.headers["etag"] == '"1"'
    assert response.headers["x-event-position"] == str(body["position"])


async def test_insufficient_stock_names_each_short_product(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    a = await create_product(client, stock=1)
    b = await create_product(client, stock=9)
    c = await create_product(client, stock=0)
    response = await place(client, [(a, 2), (b, 3), (c, 1)])
    assert response.status_code == 409
    problem = response.json()
    assert problem["type"] == "/problems/insufficient-stock"
    short = {s["product_id"]: (s["requested"], s["available"]) for s in problem["shortfalls"]}
    assert short == {a: (2, 1), c: (1, 0)}
    assert await stock_of(pool, b) == 9


async def test_unknown_product_is_422(client: httpx.AsyncClient) -> None:
    a = await create_product(client)
    ghost = str(uuid.uuid4())
    response = await place(client, [(a, 1), (ghost, 1)])
    assert response.status_code == 422
    assert response.json()["product_ids"] == [ghost]


async def test_lifecycle_and_if_match(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    a = await create_product(client, stock=4)
    order = (await place(client, [(a, 3)])).json()
    oid = order["order_id"]
    assert (await client.post(f"/orders/{oid}/ship")).status_code == 409
    stale = await client.post(f"/orders/{oid}/pay", headers={"If-Match": '"7"'})
    assert stale.status_code == 412
    assert stale.headers["etag"] == '"1"'
    paid = await client.post(f"/orders/{oid}/pay", headers={"If-Match": '"1"'})
    assert paid.status_code == 200
    assert paid.json()["status"] == "paid"
    assert paid.headers["etag"] == '"2"'
    assert (await client.post(f"/orders/{oid}/pay")).status_code == 409
    assert await stock_of(pool, a) == 1
    cancelled = await client.post(f"/orders/{oid}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert await stock_of(pool, a) == 4
    assert (await client.post(f"/orders/{oid}/ship")).status_code == 409
    assert (await client.post(f"/orders/{uuid.uuid4()}/pay")).status_code == 404


async def test_shipped_order_cannot_be_cancelled(client: httpx.AsyncClient) -> None:
    a = await create_product(client, stock=4)
    oid = (await place(client, [(a, 1)])).json()["order_id"]
    assert (await client.post(f"/orders/{oid}/pay")).status_code == 200
    assert (await client.post(f"/orders/{oid}/ship")).status_code == 200
    response = await client.post(f"/orders/{oid}/cancel")
    assert response.status_code == 409
    assert response.json()["order_status"] == "shipped"


async def test_sixty_concurrent_orders_for_ten_units(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await create_product(client, stock=10)
    responses = await asyncio.gather(
        *(place(client, [(product, 1)], customer=f"c{i}") for i in range(60))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 10
    assert statuses.count(409) == 50
    assert await stock_of(pool, product) == 0
    reserved = await pool.fetchval(
        "SELECT count(*) FROM events WHERE stream_id = $1 AND type = 'StockReserved'", product
    )
    assert reserved == 10


async def test_crossing_two_line_orders_never_deadlock(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    a = await create_product(client, stock=1000)
    b = await create_product(client, stock=1000)
    responses = await asyncio.gather(
        *(
            place(client, [(a, 1), (b, 2)] if i % 2 else [(b, 2), (a, 1)], customer=f"c{i}")
            for i in range(80)
        )
    )
    assert [r.status_code for r in responses] == [201] * 80
    assert await stock_of(pool, a) == 1000 - 80
    assert await stock_of(pool, b) == 1000 - 160


async def test_concurrent_requests_with_one_idempotency_key(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await create_product(client, stock=50)
    key = f"key-{uuid.uuid4()}"
    responses = await asyncio.gather(
        *(place(client, [(product, 2)], headers={"Idempotency-Key": key}) for _ in range(12))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert len({r.headers["x-event-position"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 11
    assert await stock_of(pool, product) == 48
    orders = await pool.fetchval(
        "SELECT count(*) FROM events"
        " WHERE type = 'OrderPlaced' AND metadata->>'idempotency_key' = $1",
        key,
    )
    assert orders == 1
    other = await place(client, [(product, 3)], headers={"Idempotency-Key": key})
    assert other.status_code == 422
    assert other.json()["type"] == "/problems/idempotency-key-reused"


async def test_rejected_request_with_key_can_be_retried(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await create_product(client, stock=1)
    key = f"key-{uuid.uuid4()}"
    first = await place(client, [(product, 2)], headers={"Idempotency-Key": key})
    assert first.status_code == 409
    await client.post(f"/products/{product}/restock", json={"quantity": 1})
    second = await place(client, [(product, 2)], headers={"Idempotency-Key": key})
    assert second.status_code == 201


async def test_per_stream_versions_run_one_to_n(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    product = await create_product(client, stock=100)
    results = await asyncio.gather(*(place(client, [(product, 1)]) for _ in range(20)))
    for r in results[:5]:
        await client.post(f"/orders/{r.json()['order_id']}/cancel")
    versions = await pool.fetch(
        "SELECT stream_version FROM events WHERE stream_type = 'product' AND stream_id = $1"
        " ORDER BY position",
        product,
    )
    assert [v["stream_version"] for v in versions] == list(range(1, 27))
