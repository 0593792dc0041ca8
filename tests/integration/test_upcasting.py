"""An event stored at an old schema version is projected, rebuilt and verified in the current
shape (real PostgreSQL, RabbitMQ, store)."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest

from app.operations.verify import verify
from app.plumbing.resources import open_resources
from app.plumbing.settings import Settings
from app.projector.rebuild import rebuild
from tests.support.servers import Server, http_client

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(pipeline_stack: Settings) -> Settings:
    return pipeline_stack


async def _place_v1_order(dsn: str, product_id: str, quantity: int) -> tuple[str, int]:
    """What the release before OrderPlaced v2 wrote: the same rows, the event at version 1
    (no item_count)."""
    order_id, placed_at = uuid.uuid4(), datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            product = await conn.fetchrow(
                "UPDATE products SET stock = stock - $2, version = version + 1"
                " WHERE product_id = $1 RETURNING sku, name, price_cents, stock, version",
                uuid.UUID(product_id),
                quantity,
            )
            price = product["price_cents"]
            await conn.execute(
                "INSERT INTO orders (order_id, customer_id, status, total_cents, version,"
                " placed_at, updated_at) VALUES ($1, 'old-customer', 'placed', $2, 1, $3, $3)",
                order_id,
                price * quantity,
                placed_at,
            )
            await conn.execute(
                "INSERT INTO order_lines (order_id, line_no, product_id, quantity,"
                " unit_price_cents) VALUES ($1, 1, $2, $3, $4)",
                order_id,
                uuid.UUID(product_id),
                quantity,
                price,
            )
            line = {"product_id": product_id, "sku": product["sku"], "name": product["name"],
                    "quantity": quantity, "unit_price_cents": price,
                    "line_total_cents": price * quantity}  # fmt: skip
            placed = {"order_id": str(order_id), "customer_id": "old-customer",
                      "lines": [line], "total_cents": price * quantity,
                      "placed_at": placed_at.isoformat()}  # fmt: skip
            reserved = {"product_id": product_id, "order_id": str(order_id), "quantity": quantity,
                        "unit_price_cents": price, "stock": product["stock"]}  # fmt: skip
            position: int = await conn.fetchval(
                "INSERT INTO events (stream_type, stream_id, stream_version, type, schema_version,"
                " data, metadata) VALUES ('order', $1, 1, 'OrderPlaced', 1, $2::jsonb, $6::jsonb),"
                " ('product', $3, $4, 'StockReserved', 1, $5::jsonb, $6::jsonb) RETURNING position",
                str(order_id),
                json.dumps(placed),
                product_id,
                product["version"],
                json.dumps(reserved),
                '{"correlation_id": "v1"}',
            )
    finally:
        await conn.close()
    return str(order_id), position


async def test_a_v1_order_placed_is_projected_rebuilt_and_verified_as_v2(stack: Settings) -> None:
    server = Server(stack)
    await server.start()
    try:
        async with http_client(server.url, timeout=30) as http:
            created = await http.post(
                "/products", json={"sku": "UP-1", "name": "mug", "price_cents": 5, "stock": 10}
            )
            product_id = created.json()["product_id"]
            order_id, _ = await _place_v1_order(stack.database_url, product_id, 3)
            conn = await asyncpg.connect(stack.database_url)
            head = await conn.fetchval("SELECT max(position) FROM events")
            await conn.close()
            order = await http.get(f"/orders/{order_id}", params={"after": head})
            assert order.status_code == 200, order.text
            assert order.json()["item_count"] == 3
            report = await verify(stack, wait_s=10)
            assert report.ok, report.differences
    finally:
        await server.stop()
    rebuilt_settings = replace(stack, mongo_db=f"{stack.mongo_db}_rebuilt")
    async with open_resources(rebuilt_settings) as rebuilt:
        try:
            await rebuild(rebuilt.pool, rebuilt.db)
            document = await rebuilt.db["orders"].find_one({"_id": order_id})
            assert document is not None
            assert document["item_count"] == 3
            report = await verify(rebuilt_settings, wait_s=1)
            assert report.ok, report.differences
        finally:
            await rebuilt.mongo.drop_database(rebuilt.db.name)
