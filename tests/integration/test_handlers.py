"""Command handlers against real PostgreSQL: the events they append, with the right versions,
and rollback leaving no trace."""

from __future__ import annotations

import uuid

import asyncpg
import msgspec
import pytest

from app.commands.errors import InsufficientStock, SkuTaken
from app.commands.order_rules import LineRequest, PlaceOrder
from app.commands.orders import place_order, transition_order
from app.commands.outbox import EventMetadata
from app.commands.products import CreateProduct, RestockProduct, create_product, restock_product
from app.contracts.events import decode_data

META = EventMetadata(correlation_id="test")


async def _new_product(conn: asyncpg.Connection, stock: int = 10, price: int = 100) -> uuid.UUID:
    async with conn.transaction():
        result = await create_product(
            conn,
            CreateProduct(
                sku=f"S-{uuid.uuid4().hex[:10]}", name="Thing", price_cents=price, stock=stock
            ),
            META,
        )
    return result.product_id


async def _stream(conn: asyncpg.Connection, stream_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT position, stream_version, type, data::text AS data, metadata::text AS metadata"
        " FROM events WHERE stream_id = $1 ORDER BY position",
        str(stream_id),
    )


async def test_product_stream_versions_follow_each_change(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        pid = await _new_product(conn, stock=3)
        async with conn.transaction():
            result = await restock_product(conn, pid, RestockProduct(quantity=2), META)
        events = await _stream(conn, pid)
    assert [(e["stream_version"], e["type"]) for e in events] == [
        (1, "ProductCreated"),
        (2, "ProductRestocked"),
    ]
    assert result.position == events[-1]["position"]
    restocked = decode_data("ProductRestocked", events[-1]["data"].encode())
    assert restocked.stock == 5  # type: ignore[attr-defined]
    assert msgspec.json.decode(events[-1]["metadata"]) == {"correlation_id": "test"}


async def test_place_order_appends_order_then_reservations(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        a, b = await _new_product(conn, price=300), await _new_product(conn, price=50)
        async with conn.transaction():
            result = await place_order(
                conn,
                PlaceOrder(
                    customer_id="c9",
                    lines=(
                        LineRequest(product_id=a, quantity=1),
                        LineRequest(product_id=b, quantity=4),
                    ),
                ),
                META,
            )
        rows = await conn.fetch(
            "SELECT position, stream_type, stream_id, stream_version, type FROM events"
            " WHERE position > $1 - 3 AND position <= $1 ORDER BY position",
            result.position,
        )
    assert [(r["stream_type"], r["type"], r["stream_version"]) for r in rows] == [
        ("order", "OrderPlaced", 1),
        ("product", "StockReserved", 2),
        ("product", "StockReserved", 2),
    ]
    assert rows[0]["stream_id"] == str(result.order_id)
    assert result.total_cents == 300 + 4 * 50
    assert result.position == rows[-1]["position"]


async def test_failed_command_leaves_no_trace(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        pid = await _new_product(conn, stock=1)
        before = await conn.fetchval("SELECT max(position) FROM events")
        orders_before = await conn.fetchval("SELECT count(*) FROM orders")
        with pytest.raises(InsufficientStock):
            async with conn.transaction():
                await place_order(
                    conn,
                    PlaceOrder(customer_id="c1", lines=(LineRequest(product_id=pid, quantity=2),)),
                    META,
                )
        assert await conn.fetchval("SELECT max(position) FROM events") == before
        assert await conn.fetchval("SELECT count(*) FROM orders") == orders_before
        assert await conn.fetchval("SELECT stock FROM products WHERE product_id = $1", pid) == 1


async def test_a_taken_sku_writes_nothing(pool: asyncpg.Pool) -> None:
    sku = f"S-{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        async with conn.transaction():
            await create_product(conn, CreateProduct(sku=sku, name="x", price_cents=1), META)
        before = await conn.fetchval("SELECT max(position) FROM events")
        with pytest.raises(SkuTaken):
            async with conn.transaction():
                await create_product(conn, CreateProduct(sku=sku, name="y", price_cents=2), META)
        assert await conn.fetchval("SELECT max(position) FROM events") == before


async def test_cancel_releases_every_line(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        a, b = await _new_product(conn, stock=5), await _new_product(conn, stock=5)
        async with conn.transaction():
            placed = await place_order(
                conn,
                PlaceOrder(
                    customer_id="c1",
                    lines=(
                        LineRequest(product_id=a, quantity=2),
                        LineRequest(product_id=b, quantity=5),
                    ),
                ),
                META,
            )
        async with conn.transaction():
            cancelled = await transition_order(conn, placed.order_id, "cancel", 1, META)
        stocks = await conn.fetch(
            "SELECT product_id, stock, version FROM products WHERE product_id = ANY($1)", [a, b]
        )
        order_events = await _stream(conn, placed.order_id)
    assert cancelled.status == "cancelled"
    assert cancelled.version == 2
    assert {r["product_id"]: (r["stock"], r["version"]) for r in stocks} == {a: (5, 3), b: (5, 3)}
    assert [e["type"] for e in order_events] == ["OrderPlaced", "OrderCancelled"]


async def test_writers_cannot_choose_positions(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        position = await conn.fetchval(
            "INSERT INTO events (position, stream_type, stream_id, stream_version, type, data)"
            " VALUES (-5, 'order', $1, 1, 'Probe', '{}') RETURNING position",
            str(uuid.uuid4()),
        )
        assert position > 0


async def test_the_log_is_append_only(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for statement in ("UPDATE events SET type = 'x'", "DELETE FROM events", "TRUNCATE events"):
            with pytest.raises(asyncpg.RestrictViolationError):
                await conn.execute(statement)


async def test_a_stream_version_cannot_repeat(pool: asyncpg.Pool) -> None:
    stream = str(uuid.uuid4())
    async with pool.acquire() as conn:
        insert = (
            "INSERT INTO events (stream_type, stream_id, stream_version, type, data)"
            " VALUES ('order', $1, 1, 'Probe', '{}')"
        )
        await conn.execute(insert, stream)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, stream)
